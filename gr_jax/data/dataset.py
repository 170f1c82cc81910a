"""The canonical dataset every reader produces and every stage consumes.

Items get dense internal ids ``0..num_items-1`` (``ItemTable.keys`` keeps the original
ids); users get dense ids ``0..num_users-1``. Each user's events are chronological and
stored ragged (``offsets`` into flat arrays), with optional per-event actions, ratings
and timestamps.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

import numpy as np

from gr_jax.data.errors import DataError

# Per-event action vocabulary (index = code stored in ``Interactions.actions``).
ACTIONS = ("view", "click", "cart", "buy", "skip")
POSITIVE_ACTIONS = ("click", "cart", "buy")  # engagement; "skip" is negative, "view" neutral


def positive_events(actions: np.ndarray | None, num_events: int) -> np.ndarray:
    """Boolean ``[num_events]``: events whose action is positive (every event when there are no actions)."""
    if actions is None:
        return np.ones(num_events, bool)
    return np.isin(actions, [ACTIONS.index(a) for a in POSITIVE_ACTIONS])


@dataclasses.dataclass
class ItemTable:
    """Item side information, indexed by internal item id."""

    keys: list[str]
    title: list[str]
    description: list[str]
    brand: list[str]
    categories: list[tuple[str, ...]]  # category path, coarse -> fine
    price: np.ndarray | None = None  # float32 [num_items], NaN when unknown

    def __post_init__(self):
        n = len(self.keys)
        for name in ("title", "description", "brand", "categories"):
            if len(getattr(self, name)) != n:
                raise DataError(f"ItemTable.{name} has {len(getattr(self, name))} entries, expected {n}")
        if self.price is not None and len(self.price) != n:
            raise DataError(f"ItemTable.price has {len(self.price)} entries, expected {n}")

    def __len__(self) -> int:
        return len(self.keys)


@dataclasses.dataclass
class Interactions:
    """Chronological item sequences of all users, stored ragged."""

    user_keys: list[str]
    offsets: np.ndarray  # int64 [num_users + 1]
    items: np.ndarray  # int32 [num_events]
    actions: np.ndarray | None = None  # int8 [num_events], index into ACTIONS
    ratings: np.ndarray | None = None  # float32 [num_events]
    timestamps: np.ndarray | None = None  # int64 [num_events], seconds
    # bool [num_events]: the events that may be validation/test targets (``data.targets='positive'``:
    # the positive actions); None: every event (leave-one-out by position)
    targets: np.ndarray | None = None

    def __post_init__(self):
        self.offsets = np.asarray(self.offsets, np.int64)
        self.items = np.asarray(self.items, np.int32)
        if len(self.offsets) != len(self.user_keys) + 1 or self.offsets[0] != 0:
            raise DataError("Interactions.offsets must have num_users + 1 entries starting at 0")
        if self.offsets[-1] != len(self.items) or np.any(np.diff(self.offsets) < 0):
            raise DataError("Interactions.offsets must be non-decreasing and end at len(items)")
        for name in ("actions", "ratings", "timestamps", "targets"):
            value = getattr(self, name)
            if value is not None and len(value) != len(self.items):
                raise DataError(f"Interactions.{name} has {len(value)} entries, expected {len(self.items)}")

    @classmethod
    def from_lists(cls, user_keys: Sequence[str], sequences: Sequence[Sequence[int]], **per_event) -> Interactions:
        """Builds from one list per user; ``per_event`` values are lists of per-user lists."""
        lengths = np.array([len(s) for s in sequences], np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        flat = lambda seqs, dtype: (np.concatenate([np.asarray(s, dtype) for s in seqs]) if len(seqs)
                                    else np.zeros(0, dtype))
        dtypes = {"actions": np.int8, "ratings": np.float32, "timestamps": np.int64}
        extra = {k: flat(v, dtypes[k]) for k, v in per_event.items() if v is not None}
        return cls(list(user_keys), offsets, flat(sequences, np.int32), **extra)

    def __len__(self) -> int:
        return len(self.user_keys)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def sequence(self, user: int) -> np.ndarray:
        return self.items[self.offsets[user]:self.offsets[user + 1]]

    def select_users(self, keep: np.ndarray) -> Interactions:
        """Keeps the users where ``keep`` is True, in order."""
        keep = np.asarray(keep, bool)
        event_keep = np.repeat(keep, self.lengths)
        pick = lambda a: None if a is None else a[event_keep]
        lengths = self.lengths[keep]
        return Interactions(
            [k for k, kept in zip(self.user_keys, keep) if kept], np.concatenate([[0], np.cumsum(lengths)]),
            self.items[event_keep],
            pick(self.actions), pick(self.ratings), pick(self.timestamps), pick(self.targets))

    def select_events(self, keep: np.ndarray) -> Interactions:
        """Keeps the events where ``keep`` is True (every user stays, possibly shorter)."""
        keep = np.asarray(keep, bool)
        per_user = np.bincount(np.repeat(np.arange(len(self)), self.lengths)[keep], minlength=len(self))
        pick = lambda a: None if a is None else a[keep]
        return Interactions(list(self.user_keys), np.concatenate([[0], np.cumsum(per_user)]), self.items[keep],
                            pick(self.actions), pick(self.ratings), pick(self.timestamps), pick(self.targets))

    def with_targets(self, kind: str) -> Interactions:
        """This sequence set with ``targets`` for ``data.targets``: 'all' (None) or 'positive'."""
        targets = None if kind == "all" else positive_events(self.actions, len(self.items))
        return dataclasses.replace(self, targets=targets)


@dataclasses.dataclass
class Dataset:
    """Item table plus user sequences: what the data stage hands to every later stage."""

    name: str
    items: ItemTable
    users: Interactions
    report: dict = dataclasses.field(default_factory=dict)  # counts of everything cleaned, for the summary

    @property
    def num_items(self) -> int:
        return len(self.items)

    @property
    def num_users(self) -> int:
        return len(self.users)

    def stats(self) -> dict:
        lengths = self.users.lengths
        counts = np.bincount(self.users.items, minlength=self.num_items)
        return {
            "name": self.name,
            "num_users": self.num_users,
            "num_items": self.num_items,
            "num_events": int(lengths.sum()),
            "mean_sequence_length": float(lengths.mean()) if len(lengths) else 0.0,
            "items_without_events": int((counts == 0).sum()),
            "density": float(lengths.sum() / max(1, self.num_users * self.num_items)),
        }


def validate(dataset: Dataset, min_user_events: int = 3, source: str = "", targets: str = "all") -> Dataset:
    """Checks ids, drops users too short for a leave-one-out split (logged count), counts empty text.

    ``targets='positive'``: a user needs ``min_user_events`` positive events (the split's targets).
    Raises DataError for item ids outside the item table. Returns a dataset whose ``report``
    records every count, so nothing is dropped silently.
    """
    where = f" in {source}" if source else ""
    if min_user_events < 3:
        raise DataError(f"data.min_user_events={min_user_events}: leave-one-out needs at least 3 events per user "
                        f"(train, valid, test); set it to 3 or more")
    items = dataset.users.items
    if len(items) and (items.min() < 0 or items.max() >= dataset.num_items):
        bad = int(((items < 0) | (items >= dataset.num_items)).sum())
        raise DataError(f"{bad} events{where} reference item ids outside the item table "
                        f"(0..{dataset.num_items - 1}); rebuild the item table or drop those events in the reader")
    report = dict(dataset.report)
    counted = dataset.users.with_targets(targets)
    if counted.targets is None:
        short = dataset.users.lengths < min_user_events
    else:
        short = np.bincount(np.repeat(np.arange(len(counted)), counted.lengths), weights=counted.targets,
                            minlength=len(counted)) < min_user_events
    if short.all():
        raise DataError(f"every user{where} has fewer than {min_user_events} events; leave-one-out needs "
                        f"at least 3 per user (check that the file holds the interaction histories)")
    users = dataset.users
    if short.any():
        logging.warning("Dropping %d of %d users%s with fewer than %d %sevents (leave-one-out needs them).",
                        int(short.sum()), len(short), where, min_user_events,
                        "positive " if targets == "positive" else "")
        users = users.select_users(~short)
    report["users_dropped_too_short"] = int(short.sum())
    same_user = np.repeat(np.arange(len(users)), users.lengths)
    repeats = int(((users.items[1:] == users.items[:-1]) & (same_user[1:] == same_user[:-1])).sum())
    report["consecutive_repeats_kept"] = repeats
    if repeats:
        logging.info("%d events%s repeat the user's previous item; they are kept (re-interactions).", repeats, where)
    empty_titles = sum(1 for t in dataset.items.title if not t.strip())
    empty_text = sum(1 for t, d in zip(dataset.items.title, dataset.items.description) if not (t.strip() or d.strip()))
    if empty_text:
        logging.warning("%d items%s have neither title nor description; their text will be built from brand/category.",
                        empty_text, where)
    report["items_empty_title"] = empty_titles
    report["items_empty_text"] = empty_text
    return dataclasses.replace(dataset, users=users, report=report)
