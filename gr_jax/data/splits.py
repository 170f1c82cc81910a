"""Leave-one-out splits and vectorised batch assembly.

For a user with n events: the last is the test target, the second-to-last the
validation target, and every earlier position t >= 1 of the first n - 2 events is a
training target with the events before it as history. Histories keep the most recent
``max_history`` events and are left-padded, so the newest event is always last.
"""

from __future__ import annotations

import numpy as np

from gr_jax.data.dataset import Interactions

SPLITS = ("train", "valid", "test")


def example_index(lengths: np.ndarray, split: str) -> np.ndarray:
    """``[num_examples, 2]`` int64 rows of (user, target position) for a split."""
    lengths = np.asarray(lengths, np.int64)
    if split == "train":
        per_user = np.maximum(lengths - 3, 0)  # targets 1 .. n-3
        users = np.repeat(np.arange(len(lengths)), per_user)
        starts = np.concatenate([[0], np.cumsum(per_user)[:-1]])
        positions = np.arange(per_user.sum()) - np.repeat(starts, per_user) + 1
        return np.stack([users, positions], axis=1)
    if split in ("valid", "test"):
        users = np.flatnonzero(lengths >= 3)
        return np.stack([users, lengths[users] - (2 if split == "valid" else 1)], axis=1)
    raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")


def same_target_partners(interactions: Interactions, rows: np.ndarray, seed: int = 0) -> np.ndarray:
    """For each example row, another row with the same target item (itself when the target is unique).

    The supervised positive of DuoRec: partners are a seeded random cycle within each target group.
    """
    targets = interactions.items[interactions.offsets[rows[:, 0]] + rows[:, 1]]
    order = np.random.default_rng(seed).permutation(len(rows))
    order = order[np.argsort(targets[order], kind="stable")]  # grouped by target, random within group
    sorted_targets = targets[order]
    starts = np.flatnonzero(np.r_[True, sorted_targets[1:] != sorted_targets[:-1]])
    sizes = np.diff(np.r_[starts, len(order)])
    group_start = np.repeat(starts, sizes)
    offset_in_group = np.arange(len(order)) - group_start
    nxt = group_start + (offset_in_group + 1) % np.repeat(sizes, sizes)
    partners = np.empty(len(rows), np.int64)
    partners[order] = order[nxt]
    return partners


def event_window(interactions: Interactions, users: np.ndarray, ends: np.ndarray,
                 length: int) -> tuple[np.ndarray, np.ndarray]:
    """Flat event indices ``[B, length]`` (0 where padded) and mask of each user's events at positions
    ``[end - length, end)``, left-padded so the newest is last."""
    rel = np.asarray(ends)[:, None] - length + np.arange(length)[None, :]
    mask = rel >= 0
    return np.where(mask, interactions.offsets[users][:, None] + np.maximum(rel, 0), 0), mask


def assemble_batch(interactions: Interactions, rows: np.ndarray, max_history: int) -> dict[str, np.ndarray]:
    """Gathers histories and targets for ``rows`` of (user, target position).

    ``history_event``/``target_event`` are flat event indices into ``interactions.items`` (0 where
    padded): models whose tokens depend on the event, not only the item (Pctx), key on them.
    """
    users, positions = rows[:, 0], rows[:, 1]
    flat, mask = event_window(interactions, users, positions, max_history)
    target_flat = interactions.offsets[users] + positions
    batch = {
        "user": users.astype(np.int32),
        "history": np.where(mask, interactions.items[flat], 0).astype(np.int32),
        "history_mask": mask,
        "target": interactions.items[target_flat].astype(np.int32),
        "history_event": flat.astype(np.int32),
        "target_event": target_flat.astype(np.int32),
    }
    if interactions.actions is not None:
        batch["history_actions"] = np.where(mask, interactions.actions[flat], 0).astype(np.int32)
        batch["target_action"] = interactions.actions[target_flat].astype(np.int32)
    return batch


def train_event_mask(interactions: Interactions) -> np.ndarray:
    """True for events in the training part (all but the last two events of each user)."""
    keep = np.ones(len(interactions.items), bool)
    ends = interactions.offsets[1:][interactions.lengths >= 3]
    keep[ends - 1] = False
    keep[ends - 2] = False
    return keep


def train_item_counts(interactions: Interactions, num_items: int) -> np.ndarray:
    """Interaction count of each item over the training part."""
    return np.bincount(interactions.items[train_event_mask(interactions)], minlength=num_items)
