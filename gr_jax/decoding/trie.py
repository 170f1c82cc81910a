"""Dense trie tables over a SID table, for constrained decoding on device.

Level l has one row per distinct SID prefix of length l (level 0: the empty prefix).
``children[l, p, c]`` is the id of prefix ``p`` extended by code ``c`` at level l + 1,
or -1 when no item has that prefix; at the last level it is the id of the full SID
("SID row"). ``sid_items[s]`` lists the items that share SID row ``s`` (-1 padded), so
SIDs shared by several items (collisions) map back to all of them. Levels are stacked
into one ``[L, max_prefixes, K]`` table so decoding can ``lax.scan`` over depth.

The same trie, built inside jit from SIDs that are themselves computed there (the latent model's
item codes, which change with its parameters): ``prefix_keys`` numbers every prefix by its
mixed-radix key ``Σ_j c_j K^(l−j)``; its levels sorted are the constraint of
``beam_search.key_children`` and ``leaf_members`` maps full keys back to their items.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class Trie:
    children: np.ndarray  # int32 [L, max_prefixes, K]
    sid_items: np.ndarray  # int32 [num_sids, max_items_per_sid], -1 padded
    item_sid: np.ndarray  # int32 [num_items]: SID row of each item
    prefix_counts: tuple[int, ...]  # distinct prefixes per level (level 0 = 1)

    @property
    def num_levels(self) -> int:
        return self.children.shape[0]

    @property
    def codebook_size(self) -> int:
        return self.children.shape[2]

    def num_children(self) -> np.ndarray:
        """``[L, max_prefixes]`` count of valid next codes per prefix (0 for padding rows)."""
        return (self.children >= 0).sum(-1)


def build_trie(codes: np.ndarray, codebook_size: int) -> Trie:
    """Builds the tables from ``codes`` ``[num_items, L]`` with values in ``[0, codebook_size)``."""
    codes = np.asarray(codes, np.int64)
    if codes.ndim != 2 or not len(codes):
        raise ValueError(f"codes must be a non-empty [num_items, L] array, got shape {codes.shape}")
    if codes.min() < 0 or codes.max() >= codebook_size:
        raise ValueError(f"codes must lie in [0, {codebook_size}); found {codes.min()}..{codes.max()}")
    num_items, num_levels = codes.shape
    parent = np.zeros(num_items, np.int64)  # prefix id of each item at the current level
    tables, counts = [], [1]
    for level in range(num_levels):
        keys = parent * codebook_size + codes[:, level]
        unique_keys, child = np.unique(keys, return_inverse=True)
        table = np.full((counts[-1], codebook_size), -1, np.int64)
        table[unique_keys // codebook_size, unique_keys % codebook_size] = np.arange(len(unique_keys))
        tables.append(table)
        counts.append(len(unique_keys))
        parent = child.reshape(-1)
    width = max(t.shape[0] for t in tables)
    children = np.full((num_levels, width, codebook_size), -1, np.int32)
    for level, table in enumerate(tables):
        children[level, :len(table)] = table
    num_sids = counts[-1]
    order = np.argsort(parent, kind="stable")
    per_sid = np.bincount(parent, minlength=num_sids)
    sid_items = np.full((num_sids, per_sid.max()), -1, np.int32)
    rank = np.arange(num_items) - np.repeat(np.cumsum(per_sid) - per_sid, per_sid)
    sid_items[parent[order], rank] = order
    return Trie(children=children, sid_items=sid_items, item_sid=parent.astype(np.int32),
                prefix_counts=tuple(counts[:-1]))


def leaf_items(trie: Trie, sid_item: np.ndarray) -> np.ndarray:
    """The items ``[num_sids, M]`` (-1 padded) of each trie leaf, given the item of every SID-table
    row (``SIDTable.sid_item``): what ``expand_sid_ranking`` expands ranked leaves into."""
    rows = trie.sid_items
    return np.where(rows >= 0, np.asarray(sid_item)[rows.clip(0)], -1)


def prefix_keys(codes: jax.Array, codebook_size: int) -> jax.Array:
    """Mixed-radix keys ``[N, L]`` int32 of every prefix of ``codes [N, L]``: column l keys the first
    l + 1 codes (equal keys, equal prefixes). Jittable; needs ``codebook_size ** L < 2 ** 31``."""
    if codebook_size ** codes.shape[1] >= 2 ** 31:
        raise ValueError(f"{codes.shape[1]} levels of {codebook_size} codes overflow int32 prefix keys")
    keys, key = [], jnp.zeros(codes.shape[:1], jnp.int32)
    for level in range(codes.shape[1]):
        key = key * codebook_size + codes[:, level].astype(jnp.int32)
        keys.append(key)
    return jnp.stack(keys, 1)


def leaf_members(sorted_keys: jax.Array, order: jax.Array, keys: jax.Array, count: int) -> jax.Array:
    """Up to ``count`` items ``[..., count]`` (-1 padded) whose full key equals each of ``keys [...]``,
    given the full keys sorted ``[N]`` and the items in that order ``[N]``; within a key, the order's
    (a stable sort: the lowest item ids). A key < 0 (a dead beam) has none. Jittable."""
    num = sorted_keys.shape[0]
    position = jnp.searchsorted(sorted_keys, keys)[..., None] + jnp.arange(count)
    clipped = jnp.minimum(position, num - 1)
    return jnp.where((position < num) & (sorted_keys[clipped] == keys[..., None]), order[clipped], -1)
