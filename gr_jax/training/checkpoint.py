"""Orbax checkpoints: the latest state (with the Grain iterator state) for resume, and the best by metric.

A latest checkpoint that does not restore (a killed write, a damaged disk) is reported by path
and step and skipped for the newest one that does (``checkpoint_keep`` keeps older ones);
directories a killed writer left half-written are removed when the manager opens.
"""

from __future__ import annotations

import logging
import os
import shutil

import jax
import orbax.checkpoint as ocp

TMP_MARK = ".orbax-checkpoint-tmp"


def remove_stale_writes(directory: str) -> list[str]:
    """Deletes the half-written checkpoint directories (``*.orbax-checkpoint-tmp*``) under ``directory``."""
    if not os.path.isdir(directory):
        return []
    stale = [os.path.join(directory, name) for name in os.listdir(directory) if TMP_MARK in name]
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    if stale:
        logging.warning("Removed %d half-written checkpoint(s) of an interrupted run in %s.", len(stale), directory)
    return stale


def has_best_checkpoint(directory: str) -> bool:
    """Whether ``DIR/best`` (``Checkpoints``' layout) holds a finished checkpoint."""
    best = os.path.join(directory, "best")
    return os.path.isdir(best) and any(name.isdigit() for name in os.listdir(best))


class Checkpoints:
    """Two Orbax managers under ``DIR``: ``latest/`` (resume) and ``best/`` (highest ``metric``)."""

    def __init__(self, directory: str, metric: str, keep: int = 2):
        directory = os.path.abspath(directory)
        if jax.process_index() == 0:
            for kind in ("latest", "best"):
                remove_stale_writes(os.path.join(directory, kind))
        self.directory = directory
        self.metric = metric
        # Each manager has its own barrier names: on several processes both save the same step at
        # once, and shared names ("_async_write_complete.<step>") would collide.
        self.latest = ocp.CheckpointManager(
            os.path.join(directory, "latest"), item_names=("state", "data"),
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, multiprocessing_options=(
                ocp.options.MultiprocessingOptions(barrier_sync_key_prefix="latest"))))
        self.best = ocp.CheckpointManager(
            os.path.join(directory, "best"), item_names=("params",),
            options=ocp.CheckpointManagerOptions(max_to_keep=1, best_fn=lambda m: m[metric], best_mode="max",
                                                 create=True, multiprocessing_options=(
                                                     ocp.options.MultiprocessingOptions(
                                                         barrier_sync_key_prefix="best"))))

    def save_latest(self, step: int, state, data_state: dict) -> None:
        """Saves the train state and a JSON dict (iterator state and loop bookkeeping)."""
        self.latest.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                       data=ocp.args.JsonSave(data_state)))

    def save_best(self, step: int, params, metrics: dict) -> None:
        self.best.save(step, args=ocp.args.Composite(params=ocp.args.StandardSave(params)),
                       metrics={self.metric: float(metrics[self.metric])})

    def restore_latest(self, abstract_state):
        """(state, data_state) of the newest checkpoint that restores, or None when there is none."""
        failed = []
        for step in sorted(self.latest.all_steps(), reverse=True):
            try:
                restored = self.latest.restore(step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
            except Exception as error:  # noqa: BLE001 (any failure to read it: skip to the previous one)
                path = os.path.join(self.directory, "latest", str(step))
                logging.warning("Checkpoint %s (step %d) does not restore (%s: %s); trying the previous one.", path,
                                step, type(error).__name__, str(error).splitlines()[0][:200] if str(error) else "")
                failed.append(path)
                continue
            if failed:
                logging.warning("Resuming from step %d; unreadable newer checkpoint(s): %s", step, ", ".join(failed))
            return restored.state, restored.data
        if failed:
            raise ValueError(f"no checkpoint in {self.directory}/latest restores ({', '.join(failed)}); delete them "
                             f"to train from scratch")
        return None

    def restore_best(self, abstract_params):
        step = self.best.best_step()
        if step is None:
            return None
        try:
            return self.best.restore(step, args=ocp.args.Composite(
                params=ocp.args.StandardRestore(abstract_params))).params
        except Exception as error:  # noqa: BLE001
            raise ValueError(f"the best checkpoint {self.directory}/best/{step} does not restore "
                             f"({type(error).__name__}); rerun the train stage") from error

    def wait(self) -> None:
        self.latest.wait_until_finished()
        self.best.wait_until_finished()

    def close(self) -> None:
        self.latest.close()
        self.best.close()
