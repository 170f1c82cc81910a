"""Orbax checkpoints: the latest state (with the Grain iterator state) for resume, and the best by metric."""

from __future__ import annotations

import os

import orbax.checkpoint as ocp


def has_best_checkpoint(directory: str) -> bool:
    """Whether ``DIR/best`` (``Checkpoints``' layout) holds a finished checkpoint."""
    best = os.path.join(directory, "best")
    return os.path.isdir(best) and any(name.isdigit() for name in os.listdir(best))


class Checkpoints:
    """Two Orbax managers under ``DIR``: ``latest/`` (resume) and ``best/`` (highest ``metric``)."""

    def __init__(self, directory: str, metric: str, keep: int = 2):
        directory = os.path.abspath(directory)
        self.metric = metric
        self.latest = ocp.CheckpointManager(
            os.path.join(directory, "latest"), item_names=("state", "data"),
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))
        self.best = ocp.CheckpointManager(
            os.path.join(directory, "best"), item_names=("params",),
            options=ocp.CheckpointManagerOptions(max_to_keep=1, best_fn=lambda m: m[metric], best_mode="max",
                                                 create=True))

    def save_latest(self, step: int, state, data_state: dict) -> None:
        """Saves the train state and a JSON dict (iterator state and loop bookkeeping)."""
        self.latest.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                       data=ocp.args.JsonSave(data_state)))

    def save_best(self, step: int, params, metrics: dict) -> None:
        self.best.save(step, args=ocp.args.Composite(params=ocp.args.StandardSave(params)),
                       metrics={self.metric: float(metrics[self.metric])})

    def restore_latest(self, abstract_state):
        """(state, data_state) of the latest checkpoint, or None when there is none."""
        step = self.latest.latest_step()
        if step is None:
            return None
        restored = self.latest.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
        return restored.state, restored.data

    def restore_best(self, abstract_params):
        step = self.best.best_step()
        if step is None:
            return None
        return self.best.restore(step, args=ocp.args.Composite(
            params=ocp.args.StandardRestore(abstract_params))).params

    def wait(self) -> None:
        self.latest.wait_until_finished()
        self.best.wait_until_finished()

    def close(self) -> None:
        self.latest.close()
        self.best.close()
