"""Training curves (loss and validation metrics by step) from ``metrics.jsonl`` as a PNG."""

from __future__ import annotations

import json
import os

from matplotlib.figure import Figure


def read_metrics(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_training_curves(workdir: str, title: str = "") -> str | None:
    """Writes ``WORKDIR/curves.png`` (train loss; valid recall@10 / ndcg@10); returns its path."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return None
    records = read_metrics(path)
    series = lambda key: [(r["step"], r[key]) for r in records if key in r]
    figure = Figure(figsize=(10, 4))
    loss_axes, valid_axes = figure.subplots(1, 2)
    if loss := series("train/loss"):
        loss_axes.plot(*zip(*loss))
    loss_axes.set(xlabel="step", ylabel="train loss", title="training loss")
    for key in ("valid/recall@10", "valid/ndcg@10"):
        if values := series(key):
            valid_axes.plot(*zip(*values), marker="o", label=key.split("/")[1])
    valid_axes.set(xlabel="step", title="validation")
    valid_axes.legend()
    figure.suptitle(title)
    figure.tight_layout()
    out = os.path.join(workdir, "curves.png")
    figure.savefig(out, dpi=100)
    return out
