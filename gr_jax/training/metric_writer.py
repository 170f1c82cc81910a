"""Scalars to TensorBoard (tensorboardX, no TensorFlow needed) and to a JSONL file."""

from __future__ import annotations

import json
import os

from tensorboardX import SummaryWriter


class MetricWriter:
    """Writes ``{name: float}`` per step to ``DIR/tensorboard`` and ``DIR/metrics.jsonl``."""

    def __init__(self, logdir: str, enabled: bool = True):
        self.enabled = enabled  # False on non-primary hosts of a multi-host run
        if not enabled:
            return
        os.makedirs(logdir, exist_ok=True)
        self._tb = SummaryWriter(os.path.join(logdir, "tensorboard"))
        self._jsonl = open(os.path.join(logdir, "metrics.jsonl"), "a")

    def write(self, step: int, scalars: dict[str, float]) -> None:
        if not self.enabled:
            return
        for name, value in scalars.items():
            self._tb.add_scalar(name.replace("@", "_at_"), float(value), step)
        self._jsonl.write(json.dumps({"step": int(step)} | {k: float(v) for k, v in scalars.items()}) + "\n")
        self._jsonl.flush()

    def close(self) -> None:
        if not self.enabled:
            return
        self._tb.close()
        self._jsonl.close()
