"""Recall / NDCG / MRR from ranked item lists (leave-one-out, one target per user).

Every model hands the evaluator a ranked top-K list of item ids per user; the target's
0-based position in that list is its rank (K when absent). Recall@k = 1[rank < k],
NDCG@k = 1/log2(rank + 2) when rank < k, MRR = 1/(rank + 1) when the target is in the
list (so MRR is truncated at the list length K).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils


def target_ranks(ranked: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """0-based position of each target in its ranked list ``[B, K]``; K when absent."""
    ranked = np.asarray(ranked)
    hits = ranked == np.asarray(targets)[:, None]
    return np.where(hits.any(axis=1), hits.argmax(axis=1), ranked.shape[1])


def per_user_metrics(ranks: np.ndarray, ks: Sequence[int], list_size: int) -> dict[str, np.ndarray]:
    """Per-user metric values from target ranks (rank >= list_size means a miss)."""
    ranks = np.asarray(ranks, np.float64)
    found = ranks < list_size
    out = {}
    for k in ks:
        hit = found & (ranks < k)
        out[f"recall@{k}"] = hit.astype(np.float64)
        out[f"ndcg@{k}"] = np.where(hit, 1.0 / np.log2(ranks + 2.0), 0.0)
    out["mrr"] = np.where(found, 1.0 / (ranks + 1.0), 0.0)
    return out


def expand_sid_ranking(sid_rows, sid_items, list_size: int, scores=None):
    """Collision-aware item ranking: each ranked SID expands to every item that shares it.

    ``sid_rows`` ``[B, S]`` holds SID-row ids (-1 = empty); ``sid_items`` ``[num_sids, M]``
    lists the items of each SID row (-1 padded) in tie-break order. Items sharing a SID follow
    each other, so an item that shares its SID is pushed down by the others instead of being
    credited for the whole group. Returns items ``[B, list_size]`` (-1 padded) and, when
    ``scores`` ``[B, S]`` is given, each item's SID score. Jittable.
    """
    sid_rows, sid_items = jnp.asarray(sid_rows), jnp.asarray(sid_items)
    batch = sid_rows.shape[0]
    items = jnp.where(sid_rows[..., None] >= 0, sid_items[jnp.maximum(sid_rows, 0)], -1).reshape(batch, -1)
    if items.shape[1] < list_size:
        items = jnp.pad(items, ((0, 0), (0, list_size - items.shape[1])), constant_values=-1)
    order = jnp.argsort(items < 0, axis=1, stable=True)[:, :list_size]  # valid items first, rank order kept
    ranked = jnp.take_along_axis(items, order, axis=1)
    if scores is None:
        return ranked
    item_scores = jnp.repeat(jnp.asarray(scores), sid_items.shape[1], axis=1)
    item_scores = jnp.pad(item_scores, ((0, 0), (0, items.shape[1] - item_scores.shape[1])),
                          constant_values=-jnp.inf)
    return ranked, jnp.take_along_axis(item_scores, order, axis=1)


class MetricAccumulator:
    """Sums per-user metrics over batches; ``result()`` gives means over all users seen."""

    def __init__(self, ks: Sequence[int], list_size: int):
        if max(ks) > list_size:
            raise ValueError(f"eval.ks={tuple(ks)} asks for cut-offs beyond eval.list_size={list_size}; "
                             f"raise eval.list_size to at least {max(ks)}")
        self.ks = tuple(ks)
        self.list_size = list_size
        self._sums: dict[str, float] = {}
        self._count = 0

    def add(self, ranked: np.ndarray, targets: np.ndarray, valid: np.ndarray | None = None) -> None:
        """Adds a batch of ranked lists ``[B, K]`` and targets ``[B]``; ``valid`` masks padding rows."""
        ranks = target_ranks(ranked, targets)
        keep = np.ones(len(ranks), bool) if valid is None else np.asarray(valid, bool)
        for name, values in per_user_metrics(ranks, self.ks, self.list_size).items():
            self._sums[name] = self._sums.get(name, 0.0) + float(values[keep].sum())
        self._count += int(keep.sum())

    def result(self, allow_empty: bool = False) -> dict[str, float]:
        """Means over every user seen by every process (sums are all-gathered across hosts).

        An empty accumulator raises unless ``allow_empty``, which gives zeros and ``num_users=0``."""
        names = list(self._sums)  # same insertion order on every process
        totals = np.array([self._sums[n] for n in names] + [self._count], np.float64)
        if jax.process_count() > 1:
            totals = np.asarray(multihost_utils.process_allgather(totals)).sum(0)
        count = int(totals[-1])
        if not count and allow_empty:
            return {name: 0.0 for name in names} | {"num_users": 0}
        if not count:
            raise ValueError("no users were evaluated (empty evaluation split)")
        return {name: float(total / count) for name, total in zip(names, totals[:-1])} | {"num_users": count}
