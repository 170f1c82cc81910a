"""Trie tables over a SID table, for constrained decoding on device: dense for small catalogues,
compact for large ones.

Level l has one row per distinct SID prefix of length l (level 0: the empty prefix). Prefix ids
of level l + 1 are numbered in (parent, code) order, so the children of a prefix are one
contiguous run of ids; at the last level a child id is the full SID's row ("SID row").

- Compact (``offsets``, ``codes``; always built): the children of prefix ``p`` at level ``l`` are
  the ids ``offsets[l, p] .. offsets[l, p + 1] - 1`` and ``codes[l, i]`` is the code of child
  ``i``. Memory ``O(L · num_sids)``: 320 MB at 10M items and 4 levels.
- Dense (``children``, optional): ``children[l, p, c]`` is the child of ``p`` by code ``c`` or -1.
  Memory ``O(L · max_prefixes · K)``: 4 GB at 1M items, 4 levels and 256 codes. A beam step reads
  one row; the compact form rebuilds that row from at most ``fan_out`` children.

``kind="auto"`` builds the dense table while it stays under ``DENSE_LIMIT_BYTES``.
``sid_items[s]`` lists the items that share SID row ``s`` (-1 padded), so SIDs shared by several
items (collisions) map back to all of them. Levels are stacked so decoding can ``lax.scan`` over
depth.

The same trie, built inside jit from SIDs that are themselves computed there (the latent model's
item codes, which change with its parameters): ``prefix_keys`` numbers every prefix by its
mixed-radix key ``Σ_j c_j K^(l−j)``; its levels sorted are the constraint of
``beam_search.key_children`` and ``leaf_members`` maps full keys back to their items.
"""

from __future__ import annotations

import dataclasses

import flax
import jax
import jax.numpy as jnp
import numpy as np

TRIE_KINDS = ("auto", "dense", "compact")
DENSE_LIMIT_BYTES = 256 * 2**20


@dataclasses.dataclass(frozen=True)
class Trie:
    offsets: np.ndarray  # int32 [L, max_prefixes + 1]: children of prefix p are offsets[l, p] .. offsets[l, p+1]-1
    codes: np.ndarray  # int32 [L, max_children]: the code of each child (ascending within a parent)
    sid_items: np.ndarray  # int32 [num_sids, max_items_per_sid], -1 padded
    item_sid: np.ndarray  # int32 [num_items]: SID row of each item
    prefix_counts: tuple[int, ...]  # distinct prefixes per level (level 0 = 1)
    codebook_size: int
    children: np.ndarray | None = None  # int32 [L, max_prefixes, K] dense table, or None (compact only)

    @property
    def num_levels(self) -> int:
        return self.codes.shape[0]

    @property
    def kind(self) -> str:
        return "compact" if self.children is None else "dense"

    @property
    def fan_out(self) -> int:
        """The most children any prefix has."""
        return int(self.num_children().max())

    def num_children(self) -> np.ndarray:
        """``[L, max_prefixes]`` count of valid next codes per prefix (0 for padding rows)."""
        return np.diff(self.offsets, axis=1)

    def child(self, level: int, prefixes: np.ndarray, codes: np.ndarray) -> np.ndarray:
        """The child ids of ``prefixes`` by ``codes`` at ``level`` (-1 where there is none)."""
        prefixes, codes = np.asarray(prefixes, np.int64), np.asarray(codes, np.int64)
        offsets = self.offsets[level]
        parents = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
        # Children are numbered in (parent, code) order: their keys ascend.
        keys = parents * self.codebook_size + self.codes[level, :offsets[-1]]
        wanted = prefixes * self.codebook_size + codes
        found = np.minimum(np.searchsorted(keys, wanted), len(keys) - 1)
        return np.where(keys[found] == wanted, found, -1).astype(np.int32)

    def nbytes(self) -> int:
        """Bytes of the decoding tables (without ``sid_items``)."""
        return self.offsets.nbytes + self.codes.nbytes + (0 if self.children is None else self.children.nbytes)


def dense_bytes(prefix_counts: tuple[int, ...], codebook_size: int) -> int:
    return len(prefix_counts) * max(prefix_counts) * codebook_size * 4


def build_trie(codes: np.ndarray, codebook_size: int, kind: str = "auto") -> Trie:
    """Builds the tables from ``codes`` ``[num_items, L]`` with values in ``[0, codebook_size)``;
    ``kind``: ``dense``, ``compact`` or ``auto`` (dense under ``DENSE_LIMIT_BYTES``)."""
    if kind not in TRIE_KINDS:
        raise ValueError(f"trie kind {kind!r}; choose from {TRIE_KINDS}")
    codes = np.asarray(codes, np.int64)
    if codes.ndim != 2 or not len(codes):
        raise ValueError(f"codes must be a non-empty [num_items, L] array, got shape {codes.shape}")
    if codes.min() < 0 or codes.max() >= codebook_size:
        raise ValueError(f"codes must lie in [0, {codebook_size}); found {codes.min()}..{codes.max()}")
    num_items, num_levels = codes.shape
    parent = np.zeros(num_items, np.int64)  # prefix id of each item at the current level
    levels, counts = [], [1]  # per level: (parent of each child, code of each child)
    for level in range(num_levels):
        keys = parent * codebook_size + codes[:, level]
        unique_keys, child = np.unique(keys, return_inverse=True)
        levels.append((unique_keys // codebook_size, unique_keys % codebook_size))
        counts.append(len(unique_keys))
        parent = child.reshape(-1)
    width = max(counts[:-1])
    offsets = np.zeros((num_levels, width + 1), np.int32)
    child_codes = np.zeros((num_levels, max(counts[1:])), np.int32)
    for level, (parents, level_codes) in enumerate(levels):
        per_parent = np.bincount(parents, minlength=counts[level])
        offsets[level, 1:counts[level] + 1] = np.cumsum(per_parent)
        offsets[level, counts[level] + 1:] = len(parents)  # padding rows: no children
        child_codes[level, :len(level_codes)] = level_codes
    children = None
    if kind == "dense" or (kind == "auto" and dense_bytes(tuple(counts[:-1]), codebook_size) <= DENSE_LIMIT_BYTES):
        children = np.full((num_levels, width, codebook_size), -1, np.int32)
        for level, (parents, level_codes) in enumerate(levels):
            children[level, parents, level_codes] = np.arange(len(parents))
    num_sids = counts[-1]
    order = np.argsort(parent, kind="stable")
    per_sid = np.bincount(parent, minlength=num_sids)
    sid_items = np.full((num_sids, per_sid.max()), -1, np.int32)
    rank = np.arange(num_items) - np.repeat(np.cumsum(per_sid) - per_sid, per_sid)
    sid_items[parent[order], rank] = order
    return Trie(offsets=offsets, codes=child_codes, sid_items=sid_items, item_sid=parent.astype(np.int32),
                prefix_counts=tuple(counts[:-1]), codebook_size=codebook_size, children=children)


@flax.struct.dataclass
class TrieTables:
    """A trie's decoding tables on device: a jittable pytree (pass it as an argument, or close over
    it as a constant for a small catalogue)."""

    offsets: jax.Array
    codes: jax.Array
    children: jax.Array | None
    codebook_size: int = flax.struct.field(pytree_node=False)
    fan_out: int = flax.struct.field(pytree_node=False)

    @classmethod
    def of(cls, trie: Trie) -> TrieTables:
        children = None if trie.children is None else jnp.asarray(trie.children)
        return cls(offsets=jnp.asarray(trie.offsets), codes=jnp.asarray(trie.codes), children=children,
                   codebook_size=trie.codebook_size, fan_out=trie.fan_out)

    def children_of(self, level, prefixes: jax.Array) -> jax.Array:
        """The child id of every next code ``[..., K]`` of ``prefixes [...]`` at ``level`` (-1: none)."""
        if self.children is not None:
            return self.children[level][prefixes]
        start = self.offsets[level][prefixes]
        count = self.offsets[level][prefixes + 1] - start
        slot = jnp.arange(self.fan_out)
        ids = start[..., None] + slot  # [..., F]
        valid = slot < count[..., None]
        codes = jnp.where(valid, self.codes[level][jnp.where(valid, ids, 0)], self.codebook_size)  # K: dropped
        rows = jnp.full(prefixes.shape + (self.codebook_size,), -1, jnp.int32)
        index = jnp.indices(codes.shape, sparse=True)[:-1]
        return rows.at[(*index, codes)].set(ids.astype(jnp.int32), mode="drop")

    def child(self, level, prefixes: jax.Array, codes: jax.Array) -> jax.Array:
        """The child of each of ``prefixes`` by its code at ``level`` (-1: none)."""
        if self.children is not None:
            return self.children[level][prefixes, codes]
        return jnp.take_along_axis(self.children_of(level, prefixes), codes[..., None], -1)[..., 0]


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
