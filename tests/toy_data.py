"""Small SID catalogues and history batches shared by the tests of the SID models (``tests/`` is on
``sys.path`` through its root ``conftest.py``)."""

import jax.numpy as jnp
import numpy as np


def catalog(seed=0, n=30, codebook_size=4, levels=3):
    """Item codes ``[M + 3, levels]``: the distinct rows of ``n`` random SIDs, then three items that
    share their SID with items 0, 1 and 2 (collisions)."""
    codes = np.unique(np.random.default_rng(seed).integers(0, codebook_size, (n, levels)), axis=0)
    return np.concatenate([codes, codes[:3]])


def history_batch(num_items, size=4, seed=0):
    """A batch of ``size`` five-item histories (the first left-padded by two) and random targets."""
    rng = np.random.default_rng(seed)
    mask = np.ones((size, 5), bool)
    mask[0, :2] = False
    return {"history": jnp.asarray(rng.integers(0, num_items, (size, 5)), jnp.int32),
            "history_mask": jnp.asarray(mask), "user": jnp.arange(size, dtype=jnp.int32),
            "target": jnp.asarray(rng.integers(0, num_items, size), jnp.int32)}
