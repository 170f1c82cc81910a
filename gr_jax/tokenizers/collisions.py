"""Making semantic IDs unique: an extra de-dup digit, or a collision-free last level.

* ``add_dedup_digit`` appends a digit numbering the items that share a full SID (0, 1, 2, ... in
  item order); items with a unique SID get 0. The new level needs ``max digit + 1`` codes.
* ``reassign_last_level`` keeps the SID length: within each group of items sharing the first L−1
  codes that has a collision, the items get distinct last codes by min-cost matching
  (``scipy.optimize.linear_sum_assignment``); groups without a collision are left as they are.
"""

from __future__ import annotations

import logging

import numpy as np
from scipy.optimize import linear_sum_assignment


def _as_codes(codes) -> np.ndarray:
    codes = np.asarray(codes)
    if codes.ndim != 2 or codes.shape[1] < 1:
        raise ValueError(f"codes must have shape [N, L] with L >= 1, got {codes.shape}")
    return codes.astype(np.int32)


def _groups(rows: np.ndarray) -> np.ndarray:
    """Dense group id ``[N]`` of each row (rows equal ⇔ same id)."""
    if rows.shape[1] == 0:
        return np.zeros(len(rows), np.int64)
    return np.unique(rows, axis=0, return_inverse=True)[1].reshape(-1)


def _members(group: np.ndarray) -> list[np.ndarray]:
    """Item indices of each group, in item order (groups by increasing id)."""
    order = np.argsort(group, kind="stable")
    bounds = np.flatnonzero(np.diff(group[order])) + 1
    return np.split(order, bounds) if len(order) else []


def add_dedup_digit(codes) -> np.ndarray:
    """Codes ``[N, L + 1]`` whose last digit numbers the items sharing a full SID, in item order."""
    codes = _as_codes(codes)
    digit = np.zeros(len(codes), np.int32)
    collided = 0
    for members in _members(_groups(codes)):
        digit[members] = np.arange(len(members))
        collided += len(members) if len(members) > 1 else 0
    if len(codes):
        logging.info("De-dup digit: max %d (a codebook of %d codes); %d of %d items share an SID.",
                     digit.max(), digit.max() + 1, collided, len(codes))
    return np.concatenate([codes, digit[:, None]], axis=1)


def reassign_last_level(codes, last_level_costs) -> np.ndarray:
    """Codes with a collision-free last level, via min-cost matching within each colliding group.

    ``last_level_costs`` ``[N, K]`` is the cost of giving item ``i`` last code ``k`` (e.g. its
    distance to that last-level centroid). Raises ``ValueError`` when a group sharing the first
    L−1 codes holds more than K items.
    """
    codes = _as_codes(codes)
    costs = np.asarray(last_level_costs, np.float64)
    if costs.ndim != 2 or len(costs) != len(codes):
        raise ValueError(f"last_level_costs must have shape [{len(codes)}, K], got {costs.shape}")
    k = costs.shape[1]
    if codes.size and codes[:, -1].max() >= k:
        raise ValueError(f"last-level code {codes[:, -1].max()} is out of range for {k} cost columns")
    full = _groups(codes)
    shared = np.bincount(full)[full] > 1
    out = codes.copy()
    for members in _members(_groups(codes[:, :-1])):
        if not shared[members].any():
            continue
        if len(members) > k:
            prefix = tuple(codes[members[0], :-1].tolist())
            raise ValueError(f"{len(members)} items share the SID prefix {prefix} but the last codebook"
                             f" has only {k} codes, so they cannot get distinct last codes; "
                             f"use add_dedup_digit or a larger last codebook")
        rows, cols = linear_sum_assignment(costs[members])
        out[members[rows], -1] = cols
    return out
