"""Leave-one-out splits and vectorised batch assembly.

For a user with n events: the last is the test target, the second-to-last the
validation target, and every earlier position t >= 1 of the first n - 2 events is a
training target with the events before it as history. When ``Interactions.targets`` marks
the events that may be targets (``data.targets='positive'``: an exposure log's clicks), the
last two *marked* events are the test and validation targets and every event before the
validation target, marked or not, is a training target. Histories keep the most recent
``max_history`` events and are left-padded, so the newest event is always last.
"""

from __future__ import annotations

import numpy as np

from gr_jax.data.dataset import Interactions

SPLITS = ("train", "valid", "test")


def split_points(interactions: Interactions) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per user: the validation and test target positions and whether the user has both (with a
    non-empty history before the validation target)."""
    lengths = np.asarray(interactions.lengths, np.int64)
    if interactions.targets is None:
        return lengths - 2, lengths - 1, lengths >= 3
    user = np.repeat(np.arange(len(lengths)), lengths)
    marked = np.asarray(interactions.targets, bool)
    total = np.cumsum(marked)
    seen = total - np.repeat(np.concatenate([[0], total])[interactions.offsets[:-1]], lengths)  # marked so far
    count = np.bincount(user, weights=marked, minlength=len(lengths)).astype(np.int64)
    position = np.arange(len(marked)) - interactions.offsets[user]
    valid, test = np.full(len(lengths), -1, np.int64), np.full(len(lengths), -1, np.int64)
    last, second = marked & (seen == count[user]), marked & (seen == count[user] - 1)
    test[user[last]], valid[user[second]] = position[last], position[second]
    return valid, test, (count >= 2) & (valid >= 1)


def example_index(interactions: Interactions, split: str) -> np.ndarray:
    """``[num_examples, 2]`` int64 rows of (user, target position) for a split."""
    valid, test, eligible = split_points(interactions)
    if split == "train":
        per_user = np.where(eligible, np.maximum(valid - 1, 0), 0)  # targets 1 .. valid - 1
        users = np.repeat(np.arange(len(per_user)), per_user)
        starts = np.concatenate([[0], np.cumsum(per_user)[:-1]])
        positions = np.arange(per_user.sum()) - np.repeat(starts, per_user) + 1
        return np.stack([users, positions], axis=1)
    if split in ("valid", "test"):
        users = np.flatnonzero(eligible)
        return np.stack([users, (valid if split == "valid" else test)[users]], axis=1)
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


def marked_window(interactions: Interactions, users: np.ndarray, ends: np.ndarray,
                  length: int) -> tuple[np.ndarray, np.ndarray]:
    """Flat indices ``[B, length]`` (0 where padded) and mask of each user's last ``length`` events
    marked in ``interactions.targets`` before position ``end``, left-padded so the newest is last."""
    marked = np.asarray(interactions.targets, bool)
    before = np.concatenate([[0], np.cumsum(marked)])  # marked events in items[:e]
    where = np.flatnonzero(marked)
    starts = interactions.offsets[users]
    ranks = before[starts + np.asarray(ends)][:, None] - length + np.arange(length)[None, :]
    mask = ranks >= before[starts][:, None]
    return np.where(mask, where[np.clip(ranks, 0, max(len(where) - 1, 0))] if len(where) else 0, 0), mask


def assemble_batch(interactions: Interactions, rows: np.ndarray, max_history: int) -> dict[str, np.ndarray]:
    """Gathers histories and targets for ``rows`` of (user, target position).

    ``history_event``/``target_event`` are flat event indices into ``interactions.items`` (0 where
    padded): models whose tokens depend on the event, not only the item (Pctx), key on them. When
    ``interactions.targets`` marks the positive events, ``engaged``/``engaged_mask`` hold the last
    ``max_history`` of them before the target, however many other events lie between.
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
    if interactions.targets is not None:
        engaged, engaged_mask = marked_window(interactions, users, positions, max_history)
        batch["engaged"] = np.where(engaged_mask, interactions.items[engaged], 0).astype(np.int32)
        batch["engaged_mask"] = engaged_mask
        if interactions.actions is not None:
            batch["engaged_actions"] = np.where(engaged_mask, interactions.actions[engaged], 0).astype(np.int32)
    return batch


def train_event_mask(interactions: Interactions) -> np.ndarray:
    """True for events in the training part: before each user's validation target (users without
    a validation target keep every event)."""
    valid, _, eligible = split_points(interactions)
    user = np.repeat(np.arange(len(interactions)), interactions.lengths)
    position = np.arange(len(interactions.items)) - interactions.offsets[user]
    return ~eligible[user] | (position < valid[user])


def train_item_counts(interactions: Interactions, num_items: int) -> np.ndarray:
    """Interaction count of each item over the training part."""
    return np.bincount(interactions.items[train_event_mask(interactions)], minlength=num_items)
