"""Command line: ``python -m gr_jax.main --config=configs/<system>.py[:variant] [--config.x=y] [--workdir=DIR]``."""

from __future__ import annotations

import logging as std_logging
import os
import time

from absl import app, flags, logging
from ml_collections import config_flags

from gr_jax import stages

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/sasrec.py:scientific.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory (default runs/<config>-<timestamp>).")
_MULTIHOST = flags.DEFINE_bool("multihost", False,
                                "Call jax.distributed.initialize() first (TPU pods, multi-host GPU).")
flags.mark_flags_as_required(["config"])


def default_workdir(config_path: str) -> str:
    name = os.path.splitext(os.path.basename(config_path.split(":")[0]))[0]
    variant = config_path.split(":", 1)[1] if ":" in config_path else ""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return os.path.join("runs", f"{name}{'-' + variant if variant else ''}-{stamp}")


class _QuietLibraries:
    """Drops INFO chatter of checkpoint/dataset libraries; their warnings and errors still show."""

    NOISY = ("orbax", "tensorflow_datasets", "etils", "array_record")

    def filter(self, record) -> bool:
        return record.levelno > std_logging.INFO or not any(n in record.pathname for n in self.NOISY)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.INFO)
    logging.get_absl_handler().addFilter(_QuietLibraries())
    if _MULTIHOST.value:
        import jax

        jax.distributed.initialize()
        logging.info("Process %d of %d.", jax.process_index(), jax.process_count())
    workdir = _WORKDIR.value or default_workdir(flags.FLAGS["config"].config_filename)
    logging.info("Workdir: %s", workdir)
    stages.run(_CONFIG.value, workdir)


if __name__ == "__main__":
    app.run(main)
