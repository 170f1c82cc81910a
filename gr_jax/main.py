"""Command line: ``python -m gr_jax.main --config=configs/<system>.py[:variant] [--config.x=y] [--workdir=DIR]``.

Bad input (a config typo, an unknown choice, missing files, a workdir in use, ...) ends the run
with one line on stderr and exit status 2; ``--verbose`` (or ``GR_JAX_TRACEBACK=1``) shows the
traceback. A run stopped by SIGTERM/SIGINT saves a checkpoint first and exits with 128 + signal.
"""

from __future__ import annotations

import difflib
import importlib.util
import logging as std_logging
import os
import re
import sys
import time

import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from gr_jax import stages
from gr_jax.training.trainer import Preempted

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/sasrec.py:scientific.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory (default runs/<config>-<timestamp>).")
_MULTIHOST = flags.DEFINE_bool("multihost", False,
                               "Join a multi-process run with jax.distributed.initialize() first (TPU pods, "
                               "GPU/CPU clusters).")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "--multihost: host:port of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "--multihost: number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "--multihost: this process's id.")
_VERBOSE = flags.DEFINE_bool("verbose", False, "Show the traceback of errors caused by bad input.")
flags.mark_flags_as_required(["config"])

# Errors of the input (config, files, data, workdir): one line, no traceback.
USER_ERRORS = (ValueError, FileNotFoundError, FloatingPointError, stages.WorkdirBusyError)


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


def config_override_error(argv: list[str], error: Exception) -> str:
    """One line for a bad ``--config.a.b=value`` override: the unknown field and the close valid names."""
    message = str(error).replace("\\n", "\n").replace("\\'", "'").strip().strip("'\"")
    match = re.search(r"[A-Za-z_][A-Za-z_0-9]*", message)
    key = match.group(0) if match else ""
    for arg in argv:
        path = arg.split("=", 1)[0]
        parts = path[len("--config."):].split(".") if path.startswith("--config.") else []
        if key not in parts:
            continue
        section = ".".join(parts[:parts.index(key)])
        config = _section(_default_config(argv), section)
        if isinstance(config, ml_collections.ConfigDict):
            close = difflib.get_close_matches(key, list(config.keys()), n=3)
            hint = f"did you mean {' or '.join(close)}? " if close else ""
            return (f"{path}: config{'.' + section if section else ''} has no field {key!r}; {hint}"
                    f"its fields: {', '.join(sorted(config.keys()))}")
    return f"bad --config override: {message.splitlines()[0]}"


def _default_config(argv: list[str]):
    """The config named by ``--config=FILE[:variant]`` before overrides (None when it cannot be loaded)."""
    value = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
    if value is None:
        return None
    path, _, variant = value.partition(":")
    try:
        spec = importlib.util.spec_from_file_location("_gr_jax_config", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module.get_config(variant) if variant else module.get_config()
    except Exception:  # the config file itself is broken: the caller falls back to the library's message
        return None


def _section(config, path: str):
    """``config``'s section at dotted ``path`` (None when absent)."""
    for part in filter(None, path.split(".")):
        if config is None or part not in config:
            return None
        config = config[part]
    return config


def parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing with bad ``--config.*`` overrides reported as one line (exit 2)."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as error:
        raise app.UsageError(str(error)) from error
    except (AttributeError, KeyError, TypeError, ValueError) as error:
        if os.environ.get("GR_JAX_TRACEBACK") or "--verbose" in argv:
            raise
        print(f"error: {config_override_error(argv, error)}", file=sys.stderr)
        sys.exit(2)


def distributed_settings() -> tuple[str | None, int | None, int | None]:
    """Coordinator address, process count and id from the flags, else from ``JAX_COORDINATOR_ADDRESS``,
    ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``; what stays None JAX discovers (TPU VMs, SLURM, ...)."""
    env = os.environ
    count = _NUM_PROCESSES.value if _NUM_PROCESSES.value is not None else env.get("JAX_NUM_PROCESSES")
    index = _PROCESS_ID.value if _PROCESS_ID.value is not None else env.get("JAX_PROCESS_ID")
    return (_COORDINATOR.value or env.get("JAX_COORDINATOR_ADDRESS"), None if count is None else int(count),
            None if index is None else int(index))


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.INFO)
    logging.get_absl_handler().addFilter(_QuietLibraries())
    if _MULTIHOST.value:
        import jax

        jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU processes; GPU/TPU ignore it
        jax.distributed.initialize(*distributed_settings())
        logging.info("Process %d of %d, %d local of %d devices.", jax.process_index(), jax.process_count(),
                     jax.local_device_count(), jax.device_count())
    workdir = _WORKDIR.value or default_workdir(flags.FLAGS["config"].config_filename)
    logging.info("Workdir: %s", workdir)
    try:
        stages.run(_CONFIG.value, workdir)
    except Preempted as stop:
        print(f"stopped by signal {stop.signum} at step {stop.step}; the checkpoint is saved: run the same command "
              f"to resume", file=sys.stderr)
        sys.exit(128 + stop.signum)
    except USER_ERRORS as error:
        if _VERBOSE.value or os.environ.get("GR_JAX_TRACEBACK"):
            raise
        print(f"error: {str(error).strip() or type(error).__name__} (--verbose for the traceback)", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
