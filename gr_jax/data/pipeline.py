"""Grain input pipelines over leave-one-out examples.

Training: batch index -> its slice of the shuffled, repeated example stream (``EpochOrder``) ->
this process's part -> assemble. Slicing whole global batches (not the example stream) makes a
run on P processes see exactly the global batches of a one-process run, so the two train the same
model.
Batches are assembled vectorised from the in-memory ragged sequences (one numpy gather per
batch), so the pipeline costs microseconds per example. The iterator state is a small
dict (``get_state``/``set_state``) saved with the model checkpoint.
"""

from __future__ import annotations

import threading

import grain
import jax
import numpy as np
from absl import flags

from gr_jax.data.dataset import Interactions
from gr_jax.data.splits import assemble_batch, example_index, same_target_partners


def _process_shard() -> tuple[int, int]:
    return jax.process_index(), jax.process_count()


def train_dataset(interactions: Interactions, *, max_history: int, global_batch_size: int, seed: int,
                  num_epochs: int | None = None, shard: tuple[int, int] | None = None,
                  with_partner: bool = False, rows: np.ndarray | None = None,
                  phases: tuple[np.ndarray, ...] = (), phase_batches: int = 0) -> grain.MapDataset:
    """Shuffled, repeated training batches for this process: rows ``[i·B/P, (i+1)·B/P)`` of each
    global batch of ``B = global_batch_size`` for process ``i`` of ``P``.

    ``rows``: the training examples, (user, target position) rows (default: every one of the train
    split). ``phases`` (instead of ``rows``): a curriculum, the examples of each phase; global batch
    ``b`` comes from phase ``b // phase_batches`` (the last phase repeats), each phase shuffled by
    its own ``EpochOrder``, so the batch index alone still fixes a batch (resume). ``with_partner``
    adds ``partner_history``/``partner_history_mask``: the history of another training example
    with the same target (DuoRec's supervised positive).
    """
    index, count = shard or _process_shard()
    if global_batch_size % count:
        raise ValueError(f"train.batch_size={global_batch_size} must be divisible by the {count} processes")
    if phases and (rows is not None or num_epochs is not None or with_partner or phase_batches < 1):
        raise ValueError("a curriculum (phases) takes phase_batches >= 1 and neither rows, num_epochs nor partners")
    phases = phases or (example_index(interactions, "train") if rows is None else rows,)
    if not all(len(r) for r in phases):
        raise ValueError("no training examples: every user needs at least 4 events for a training target")
    rows = phases[0]
    partners = same_target_partners(interactions, rows, seed) if with_partner else None

    def assemble(phase_rows: np.ndarray, example_ids: np.ndarray) -> dict[str, np.ndarray]:
        batch = assemble_batch(interactions, phase_rows[example_ids], max_history)
        if partners is not None:
            partner = assemble_batch(interactions, rows[partners[example_ids]], max_history)
            batch |= {"partner_history": partner["history"], "partner_history_mask": partner["history_mask"]}
        return batch

    orders = [EpochOrder(len(r), seed) for r in phases]
    local = global_batch_size // count
    if num_epochs is None:
        num_batches = UNBOUNDED // global_batch_size
    else:
        num_batches = len(rows) * num_epochs // global_batch_size

    def batch_at(b: int) -> dict[str, np.ndarray]:
        phase = min(b // phase_batches, len(phases) - 1) if phase_batches else 0
        start = (b - phase * phase_batches) * global_batch_size + index * local
        return assemble(phases[phase], orders[phase].examples(start, local))

    return grain.MapDataset.range(num_batches).map(batch_at)


UNBOUNDED = 2**62  # examples in a repeat-forever stream


class EpochOrder:
    """The shuffled example stream: epoch ``e`` is a permutation of ``0..n-1`` drawn from
    ``(seed, e)``, epochs concatenated. ``examples(start, count)`` slices the stream with one
    vectorised gather (a per-element Grain shuffle and batch cost ~25 µs per example, 20x the
    assembly itself); the two most recent permutations are cached."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed = n, seed
        self._cache, self._lock = {}, threading.Lock()  # Grain's reader threads share the cache

    def __getstate__(self):  # worker processes (data.workers) start with an empty cache
        return {"n": self.n, "seed": self.seed}

    def __setstate__(self, state):
        self.__init__(state["n"], state["seed"])

    def permutation(self, epoch: int) -> np.ndarray:
        with self._lock:
            permutation = self._cache.get(epoch)
            if permutation is None:
                permutation = np.random.default_rng([self.seed, epoch]).permutation(self.n)
                if len(self._cache) >= 2:
                    self._cache.pop(min(self._cache))
                self._cache[epoch] = permutation
            return permutation

    def examples(self, start: int, count: int) -> np.ndarray:
        positions = np.arange(start, start + count)
        epochs, offsets = positions // self.n, positions % self.n
        out = np.empty(count, np.int64)
        for epoch in np.unique(epochs):
            here = epochs == epoch
            out[here] = self.permutation(int(epoch))[offsets[here]]
        return out


def batch_iterator(ds: grain.MapDataset, workers: int) -> grain.DatasetIterator:
    """A checkpointable iterator over ``ds``: batches assembled in this process by Grain's reader
    threads, or with ``workers`` > 0 in that many worker processes (for accelerator hosts, whose
    step can outrun what one Python process assembles)."""
    it = ds.to_iter_dataset()
    if workers > 0:
        if not flags.FLAGS.is_parsed():  # Grain's workers read absl flags; library callers parse none
            flags.FLAGS.mark_as_parsed()
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
    return iter(it)


def eval_dataset(interactions: Interactions, split: str, *, max_history: int, batch_size: int,
                 shard: tuple[int, int] | None = None) -> grain.MapDataset:
    """Leave-one-out ``split`` ('valid'/'test') batches of fixed size; padding rows have ``valid=False``."""
    index, count = shard or _process_shard()
    all_rows = example_index(interactions, split)
    rows = all_rows[index::count]
    # Every process runs the same number of batches (collective ops must line up across hosts).
    per_process = -(-len(all_rows) // count)
    num_batches = -(-per_process // batch_size)

    def make(b: int) -> dict[str, np.ndarray]:
        chunk = rows[b * batch_size:(b + 1) * batch_size]
        valid = np.zeros(batch_size, bool)
        valid[:len(chunk)] = True
        filler = chunk[:1] if len(chunk) else all_rows[:1]
        padded = np.concatenate([chunk, np.repeat(filler, batch_size - len(chunk), axis=0)])
        return assemble_batch(interactions, padded, max_history) | {"valid": valid}

    return grain.MapDataset.range(num_batches).map(make)


def train_rows(interactions: Interactions) -> np.ndarray:
    """Every training example of the train split, rows of (user, target position)."""
    return example_index(interactions, "train")
