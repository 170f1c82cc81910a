"""Grain input pipelines over leave-one-out examples.

Training: example index -> shuffle(seed) -> shard by process -> repeat -> batch -> assemble.
Batches are assembled vectorised from the in-memory ragged sequences (one numpy gather per
batch), so the pipeline costs microseconds per example. The iterator state is a small
dict (``get_state``/``set_state``) saved with the model checkpoint.
"""

from __future__ import annotations

import grain
import jax
import numpy as np

from gr_jax.data.dataset import Interactions
from gr_jax.data.splits import assemble_batch, example_index


def _process_shard() -> tuple[int, int]:
    return jax.process_index(), jax.process_count()


def train_dataset(interactions: Interactions, *, max_history: int, global_batch_size: int, seed: int,
                  num_epochs: int | None = None, shard: tuple[int, int] | None = None) -> grain.MapDataset:
    """Shuffled, repeated training batches for this process (``global_batch_size / process_count`` rows)."""
    index, count = shard or _process_shard()
    if global_batch_size % count:
        raise ValueError(f"train.batch_size={global_batch_size} must be divisible by the {count} processes")
    rows = example_index(interactions.lengths, "train")
    if not len(rows):
        raise ValueError("no training examples: every user needs at least 4 events for a training target")
    ds = grain.MapDataset.source(rows).shuffle(seed=seed)[index::count].repeat(num_epochs)
    ds = ds.batch(global_batch_size // count, drop_remainder=True)
    return ds.map(lambda r: assemble_batch(interactions, np.asarray(r), max_history))


def eval_dataset(interactions: Interactions, split: str, *, max_history: int, batch_size: int,
                 shard: tuple[int, int] | None = None) -> grain.MapDataset:
    """Leave-one-out ``split`` ('valid'/'test') batches of fixed size; padding rows have ``valid=False``."""
    index, count = shard or _process_shard()
    rows = example_index(interactions.lengths, split)[index::count]
    num_batches = -(-len(rows) // batch_size)

    def make(b: int) -> dict[str, np.ndarray]:
        chunk = rows[b * batch_size:(b + 1) * batch_size]
        valid = np.zeros(batch_size, bool)
        valid[:len(chunk)] = True
        padded = np.concatenate([chunk, np.repeat(chunk[:1], batch_size - len(chunk), axis=0)])
        return assemble_batch(interactions, padded, max_history) | {"valid": valid}

    return grain.MapDataset.range(num_batches).map(make)


def num_train_examples(interactions: Interactions) -> int:
    return len(example_index(interactions.lengths, "train"))
