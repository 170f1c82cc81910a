"""Weighted reciprocal rank fusion of ranked item lists (Cormack et al., SIGIR 2009).

Models over different tokenizations score items in incomparable units (log-probabilities of
different SID sequences), so their ensemble fuses ranks, not scores: an item at 0-based place
``r`` of member ``m``'s list earns ``w_m / (constant + r + 1)``, and the fused list orders items by
their summed earnings. Ties keep the order in which the members' lists name the items (member 0
first), so fusing one list returns it unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

RRF_CONSTANT = 60.0  # the paper's k


def reciprocal_rank_fusion(rankings: Sequence[np.ndarray], weights: Sequence[float], list_size: int,
                           constant: float = RRF_CONSTANT) -> np.ndarray:
    """Fused ``[B, list_size]`` item ids (-1 padded) of the members' ranked lists ``[B, K_m]``
    (best first, -1 = empty place) under non-negative ``weights``; members of weight 0 take no part."""
    if len(rankings) != len(weights):
        raise ValueError(f"{len(rankings)} ranked lists but {len(weights)} weights")
    if any(w < 0 for w in weights):
        raise ValueError(f"fusion weights must be non-negative, got {list(weights)}")
    members = [(np.asarray(r), w) for r, w in zip(rankings, weights) if w > 0]
    if not members:
        raise ValueError("every fusion weight is 0: give at least one member a positive weight")
    items = np.concatenate([r for r, _ in members], 1)  # [B, C], candidates in member order
    earned = np.concatenate([np.where(r >= 0, w / (constant + 1.0 + np.arange(r.shape[1])), 0.0)
                             for r, w in members], 1)
    same = (items[:, :, None] == items[:, None, :]) & (items[:, :, None] >= 0)  # [B, C, C]
    score = (same * earned[:, None, :]).sum(-1)
    first = ~np.tril(same, -1).any(-1)  # an item's first mention carries its summed score
    score = np.where(first & (items >= 0), score, -np.inf)
    if items.shape[1] < list_size:
        pad = list_size - items.shape[1]
        items = np.pad(items, ((0, 0), (0, pad)), constant_values=-1)
        score = np.pad(score, ((0, 0), (0, pad)), constant_values=-np.inf)
    order = np.argsort(-score, axis=1, kind="stable")[:, :list_size]
    return np.where(np.take_along_axis(score, order, 1) > -np.inf, np.take_along_axis(items, order, 1), -1)
