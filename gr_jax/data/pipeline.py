"""Grain input pipelines over leave-one-out examples.

Training: example index -> shuffle(seed) -> repeat -> global batch -> this process's slice ->
assemble. Slicing whole global batches (not the example stream) makes a run on P processes see
exactly the global batches of a one-process run, so the two train the same model.
Batches are assembled vectorised from the in-memory ragged sequences (one numpy gather per
batch), so the pipeline costs microseconds per example. The iterator state is a small
dict (``get_state``/``set_state``) saved with the model checkpoint.
"""

from __future__ import annotations

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
                  with_partner: bool = False, rows: np.ndarray | None = None) -> grain.MapDataset:
    """Shuffled, repeated training batches for this process: rows ``[i·B/P, (i+1)·B/P)`` of each
    global batch of ``B = global_batch_size`` for process ``i`` of ``P``.

    ``rows``: the training examples, (user, target position) rows (default: every one of the train
    split). ``with_partner`` adds ``partner_history``/``partner_history_mask``: the history of
    another training example with the same target (DuoRec's supervised positive).
    """
    index, count = shard or _process_shard()
    if global_batch_size % count:
        raise ValueError(f"train.batch_size={global_batch_size} must be divisible by the {count} processes")
    rows = example_index(interactions, "train") if rows is None else rows
    if not len(rows):
        raise ValueError("no training examples: every user needs at least 4 events for a training target")
    partners = same_target_partners(interactions, rows, seed) if with_partner else None

    def assemble(example_ids: np.ndarray) -> dict[str, np.ndarray]:
        batch = assemble_batch(interactions, rows[example_ids], max_history)
        if partners is not None:
            partner = assemble_batch(interactions, rows[partners[example_ids]], max_history)
            batch |= {"partner_history": partner["history"], "partner_history_mask": partner["history_mask"]}
        return batch

    # Grain reshuffles epoch e with seed + e, so neighbouring user seeds are decorrelated first.
    shuffle_seed = int(np.random.SeedSequence(seed).generate_state(1)[0])
    local = global_batch_size // count
    ds = grain.MapDataset.source(np.arange(len(rows))).shuffle(seed=shuffle_seed).repeat(num_epochs)
    ds = ds.batch(global_batch_size, drop_remainder=True)
    return ds.map(lambda ids: assemble(np.asarray(ids)[index * local:(index + 1) * local]))


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
