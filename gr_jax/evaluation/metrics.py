"""Recall / NDCG / MRR from ranked item lists (leave-one-out, one target per user).

Every model hands the evaluator a ranked top-K list of item ids per user; the target's
0-based position in that list is its rank (K when absent). Recall@k = 1[rank < k],
NDCG@k = 1/log2(rank + 2) when rank < k, MRR = 1/(rank + 1) when the target is in the
list (so MRR is truncated at the list length K).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


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


def expand_sid_ranking(ranked_sids: np.ndarray, sid_items: list[np.ndarray], list_size: int) -> np.ndarray:
    """Collision-aware item ranking: each ranked SID expands to every item that shares it.

    ``ranked_sids`` ``[B, S]`` holds SID-row ids (-1 = empty); ``sid_items[s]`` lists the
    items of SID row ``s`` in tie-break order. The expanded list is truncated to
    ``list_size`` and padded with -1, so an item that shares its SID with others is
    pushed down by them instead of being credited for the whole group.
    """
    out = np.full((len(ranked_sids), list_size), -1, np.int64)
    for b, row in enumerate(ranked_sids):
        expanded = [sid_items[s] for s in row if s >= 0]
        if expanded:
            flat = np.concatenate(expanded)[:list_size]
            out[b, :len(flat)] = flat
    return out


class MetricAccumulator:
    """Sums per-user metrics over batches; ``result()`` gives means over all users seen."""

    def __init__(self, ks: Sequence[int], list_size: int):
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

    def result(self) -> dict[str, float]:
        if not self._count:
            raise ValueError("no users were evaluated (empty evaluation split)")
        return {name: total / self._count for name, total in self._sums.items()} | {"num_users": self._count}
