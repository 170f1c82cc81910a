"""A pre-computed per-user top-K store: serve a user's list with one key lookup instead of a model call.

``TopKCache`` keeps, for every integer user id, the model's ``k`` best items (int32) and their scores
(float32) as one compact value, plus a 64-bit digest of the history the list was computed from, so
that an incremental ``refresh`` recomputes only the users whose history changed (or who are new).
The values live in a ``TopKStore``: the protocol below is all the cache asks of a store, so a
key-value service can replace ``SQLiteStore``, the embedded default (one file, WAL journal).

Faults lose nothing: every batch of rows is written in one transaction together with the
metadata's user count and update time, so a killed build leaves whole batches behind, and running
the build again (``refresh`` over every user) skips the users already written with the same
history. WAL mode lets other processes look users up while a build or refresh writes.

    cache = TopKCache.create("topk.sqlite", k=20, model_fingerprint="...")
    cache.refresh(recommend_fn, histories, batch_size=1024)      # build, resume or refresh
    items, scores, found = TopKCache.open("topk.sqlite").lookup([7, 42])

``recommend_fn(user_ids [n], histories: list of item-id arrays) -> (items [n, k], scores [n, k])``.
A value is ``k`` little-endian int32 items followed by ``k`` float32 scores; lookups give items
-1 and scores NaN (and ``found`` False) for users not in the cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Protocol, runtime_checkable

import numpy as np

ITEM_DTYPE, SCORE_DTYPE = np.dtype("<i4"), np.dtype("<f4")
FORMAT = "k x int32 items + k x float32 scores, little-endian"
SCHEMA_VERSION = "1"
MAX_USER_ID = 2**63 - 1
_CHUNK = 900  # ids per SQL statement (well under SQLite's bound-parameter limit)
_LOCK_TIMEOUT_S = 30.0  # how long a connection waits for another one's lock

RecommendFn = Callable[[np.ndarray, list], tuple[np.ndarray, np.ndarray]]


class TopKCacheError(ValueError):
    """A cache that cannot be used as asked; the message names the path or field and the fix."""


@runtime_checkable
class TopKStore(Protocol):
    """What ``TopKCache`` needs from a key-value store (keys: non-negative int64 user ids; values:
    bytes; a 64-bit history digest beside each value; string metadata).

    ``put_many`` and ``delete_many`` are atomic: the rows and the metadata's ``num_users`` (kept
    equal to the number of stored users) and ``updated_at`` change together, or not at all."""

    def put_many(self, user_ids: np.ndarray, values: Sequence[bytes], digests: np.ndarray) -> int:
        """Inserts or replaces the rows (``user_ids`` distinct); returns how many were not stored before."""

    def get_many(self, user_ids: np.ndarray) -> dict[int, bytes]:
        """The stored values of those of ``user_ids`` present."""

    def get_digests(self, user_ids: np.ndarray) -> dict[int, int]:
        """The stored history digests of those of ``user_ids`` present."""

    def delete_many(self, user_ids: np.ndarray) -> int:
        """Removes the rows; returns how many were stored."""

    def get_metadata(self) -> dict[str, str]:
        """Every metadata field."""

    def set_metadata(self, values: Mapping[str, str]) -> None:
        """Sets (adds or replaces) metadata fields."""

    def close(self) -> None:
        """Releases the store."""


def history_digest(history: Iterable[int]) -> int:
    """A stable signed 64-bit hash of an item-id sequence (order matters; the same in every process)."""
    data = np.ascontiguousarray(np.asarray(list(history) if not hasattr(history, "__len__") else history,
                                           dtype="<i8")).tobytes()
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little", signed=True)


def history_digests(histories: Iterable[Iterable[int]]) -> np.ndarray:
    """``history_digest`` of each history, as int64 ``[N]``."""
    return np.fromiter((history_digest(h) for h in histories), np.int64)


def pack(items: np.ndarray, scores: np.ndarray) -> list[bytes]:
    """One value per row of ``items``/``scores`` ``[N, k]``: the int32 items then the float32 scores."""
    packed = np.concatenate([np.ascontiguousarray(items, ITEM_DTYPE).view(np.uint8),
                             np.ascontiguousarray(scores, SCORE_DTYPE).view(np.uint8)], axis=1)
    return [row.tobytes() for row in packed]


def unpack(values: Sequence[bytes], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of ``pack``: items int32 ``[N, k]`` and scores float32 ``[N, k]``."""
    raw = np.frombuffer(b"".join(values), np.uint8).reshape(len(values), 8 * k)
    return raw[:, :4 * k].copy().view(ITEM_DTYPE), raw[:, 4 * k:].copy().view(SCORE_DTYPE)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _chunks(array: np.ndarray, size: int = _CHUNK):
    for start in range(0, len(array), size):
        yield array[start:start + size]


class SQLiteStore:
    """``TopKStore`` in one SQLite file: table ``topk(user_id INTEGER PRIMARY KEY, digest, value)``
    and table ``meta(key, value)``; WAL journal, ``synchronous=NORMAL`` (a killed process loses no
    committed transaction; a power cut may lose the last ones but never corrupts the file)."""

    def __init__(self, path: str, create_with: Mapping[str, str] | None = None):
        """Opens the store at ``path``; ``create_with``: creates its tables with this metadata (one
        transaction, so a half-created store cannot exist)."""
        self.path = path
        self.conn = sqlite3.connect(path, isolation_level=None, timeout=_LOCK_TIMEOUT_S)  # explicit transactions
        self.conn.execute("PRAGMA synchronous=NORMAL")
        if create_with is not None:
            self._enable_wal()
            with self._transaction():
                self.conn.execute("CREATE TABLE IF NOT EXISTS topk (user_id INTEGER PRIMARY KEY, "
                                  "digest INTEGER NOT NULL, value BLOB NOT NULL)")
                self.conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
                self._set_metadata(create_with)

    def _enable_wal(self) -> None:
        """Switches the file to the WAL journal (persistent, so readers need not). SQLite answers
        "database is locked" at once, without its busy handler, while another connection has the
        file open, so a reader opening a store that is being created is waited out here."""
        deadline = time.monotonic() + _LOCK_TIMEOUT_S
        while True:
            try:
                self.conn.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as error:
                if "locked" not in str(error) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    @contextlib.contextmanager
    def _transaction(self):
        """One write transaction (taking the write lock at once); rolled back on any error."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def _set_metadata(self, values: Mapping[str, str]) -> None:
        self.conn.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                              [(k, str(v)) for k, v in values.items()])

    def _existing(self, user_ids: np.ndarray) -> int:
        count = 0
        for chunk in _chunks(user_ids):
            marks = ",".join("?" * len(chunk))
            count += self.conn.execute(f"SELECT count(*) FROM topk WHERE user_id IN ({marks})",
                                       [int(u) for u in chunk]).fetchone()[0]
        return count

    def has_schema(self) -> bool:
        names = {r[0] for r in self.conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        return {"topk", "meta"} <= names

    def _add_users(self, delta: int) -> None:
        """Inside a transaction: ``num_users`` += ``delta``, ``updated_at`` = now."""
        self.conn.execute("UPDATE meta SET value = CAST(value AS INTEGER) + ? WHERE key = 'num_users'", (delta,))
        self._set_metadata({"updated_at": _now()})

    def put_many(self, user_ids, values, digests) -> int:
        with self._transaction():
            new = len(user_ids) - self._existing(user_ids)
            self.conn.executemany("INSERT OR REPLACE INTO topk (user_id, digest, value) VALUES (?, ?, ?)",
                                  zip(map(int, user_ids), map(int, digests), values))
            self._add_users(new)
        return new

    def _select(self, column: str, user_ids) -> dict:
        """``user id -> column`` of the stored users among ``user_ids`` (chunked IN queries)."""
        found = {}
        for chunk in _chunks(np.asarray(user_ids)):
            marks = ",".join("?" * len(chunk))
            found.update(self.conn.execute(f"SELECT user_id, {column} FROM topk WHERE user_id IN ({marks})",
                                           [int(u) for u in chunk]))
        return found

    def get_many(self, user_ids) -> dict[int, bytes]:
        return self._select("value", user_ids)

    def get_one(self, user_id: int) -> bytes | None:
        row = self.conn.execute("SELECT value FROM topk WHERE user_id = ?", (int(user_id),)).fetchone()
        return None if row is None else row[0]

    def get_digests(self, user_ids) -> dict[int, int]:
        return self._select("digest", user_ids)

    def delete_many(self, user_ids) -> int:
        with self._transaction():
            removed = 0
            for chunk in _chunks(np.unique(user_ids)):
                marks = ",".join("?" * len(chunk))
                removed += self.conn.execute(f"DELETE FROM topk WHERE user_id IN ({marks})",
                                             [int(u) for u in chunk]).rowcount
            self._add_users(-removed)
        return removed

    def get_metadata(self) -> dict[str, str]:
        return dict(self.conn.execute("SELECT key, value FROM meta"))

    def set_metadata(self, values) -> None:
        with self._transaction():
            self._set_metadata(values)

    def close(self) -> None:
        self.conn.close()


class _Progress:
    """Logs ``done/total users, users/s, ETA`` every ``every`` users (0: never)."""

    def __init__(self, total: int, every: int, label: str):
        self.total, self.every, self.label = total, every, label
        self.tic, self.done, self.next = time.perf_counter(), 0, every

    def add(self, count: int) -> None:
        self.done += count
        if self.every <= 0 or (self.done < self.next and self.done < self.total):
            return
        self.next = (self.done // self.every + 1) * self.every
        rate = self.done / max(time.perf_counter() - self.tic, 1e-9)
        eta = int((self.total - self.done) / max(rate, 1e-9))
        logging.info("%s: %d/%d users (%.0f%%), %.0f users/s, ETA %d:%02d:%02d", self.label, self.done, self.total,
                     100.0 * self.done / max(self.total, 1), rate, eta // 3600, eta % 3600 // 60, eta % 60)


class TopKCache:
    """Per-user top-``k`` lists in a ``TopKStore`` (``SQLiteStore`` by default); see the module doc."""

    def __init__(self, store: TopKStore, path: str = "<store>"):
        self.store, self.path = store, path
        meta = store.get_metadata()
        missing = [f for f in ("k", "model_fingerprint") if f not in meta]
        if missing:
            raise TopKCacheError(f"{path} is not a top-K cache (its metadata lacks {', '.join(missing)}); "
                                 f"build one with TopKCache.create or the cache stage")
        self.k = int(meta["k"])
        self.model_fingerprint = meta["model_fingerprint"]

    # --- opening -------------------------------------------------------------------------------

    @classmethod
    def create(cls, path: str, k: int, model_fingerprint: str, overwrite: bool = False) -> TopKCache:
        """A new, empty cache file at ``path`` for top-``k`` lists of the model ``model_fingerprint``."""
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise TopKCacheError(f"TopKCache.create({path!r}): k={k!r}; give a positive integer list length")
        if os.path.exists(path):
            if not overwrite:
                raise FileExistsError(f"{path} already exists: open it with TopKCache.open to look up, resume or "
                                      f"refresh, or pass overwrite=True to start a new cache")
            remove(path)
        parent = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(parent):
            raise FileNotFoundError(f"TopKCache.create({path!r}): folder {parent} does not exist; create it first")
        now = _now()
        store = SQLiteStore(path, create_with={"k": str(int(k)), "model_fingerprint": str(model_fingerprint),
                                               "created_at": now, "updated_at": now, "num_users": "0",
                                               "format": FORMAT, "schema_version": SCHEMA_VERSION})
        return cls(store, path)

    @classmethod
    def open(cls, path: str, k: int | None = None, model_fingerprint: str | None = None) -> TopKCache:
        """The cache at ``path``; with ``k``/``model_fingerprint``, checks that it holds those lists."""
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no top-K cache at {path}: build it with the cache stage "
                                    f"(--config.stages=...,cache) or TopKCache.create, or fix the path")
        store = None
        try:
            store = SQLiteStore(path)
            schema = store.has_schema()
        except sqlite3.DatabaseError as error:
            if store is not None:
                store.close()
            if isinstance(error, sqlite3.OperationalError):  # e.g. locked past the timeout: not a format problem
                raise
            raise TopKCacheError(f"{path} is not a top-K cache ({error}); point at the cache stage's "
                                 f"cache/topk.sqlite or rebuild it") from None
        if not schema:
            store.close()
            raise TopKCacheError(f"{path} is not a top-K cache (no topk/meta tables); point at the cache stage's "
                                 f"cache/topk.sqlite or rebuild it")
        cache = cls(store, path)
        if k is not None and int(k) != cache.k:
            store.close()
            raise TopKCacheError(f"{path} holds top-{cache.k} lists, not the requested k={k}: open it with "
                                 f"k={cache.k}, or rebuild it with k={k} (TopKCache.create(..., overwrite=True) "
                                 f"or delete the file and rerun the cache stage)")
        if model_fingerprint is not None and str(model_fingerprint) != cache.model_fingerprint:
            store.close()
            raise TopKCacheError(f"{path} was built by model {cache.model_fingerprint}, not {model_fingerprint}: "
                                 f"rebuild it for this model (TopKCache.create(..., overwrite=True))")
        return cache

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> TopKCache:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- metadata ------------------------------------------------------------------------------

    def metadata(self) -> dict:
        """k, model_fingerprint, created_at, updated_at, num_users, format, schema_version."""
        meta: dict = self.store.get_metadata()
        meta["k"], meta["num_users"] = int(meta["k"]), int(meta.get("num_users", 0))
        return meta

    @property
    def num_users(self) -> int:
        return self.metadata()["num_users"]

    def __len__(self) -> int:
        return self.num_users

    # --- writes --------------------------------------------------------------------------------

    def _check_ids(self, user_ids, field: str = "user_ids") -> np.ndarray:
        ids = np.asarray(user_ids)
        if ids.ndim == 0:
            ids = ids[None]
        if ids.ndim != 1:
            raise TopKCacheError(f"{self.path}: {field} has shape {ids.shape}; give a 1-D list of user ids")
        if ids.size and not np.issubdtype(ids.dtype, np.integer):
            raise TopKCacheError(f"{self.path}: {field} has dtype {ids.dtype}; user ids are integers")
        if ids.size and (ids.min() < 0 or ids.max() > MAX_USER_ID):
            raise TopKCacheError(f"{self.path}: {field} holds {int(ids.min())}..{int(ids.max())}; user ids must be "
                                 f"in 0..2^63-1")
        return ids.astype(np.int64)

    def write(self, user_ids, items, scores, history_digests, batch_size: int = 10_000) -> int:
        """Stores (replaces) the lists of ``user_ids`` ``[N]``: ``items`` int ``[N, k]``, ``scores``
        float ``[N, k]``, ``history_digests`` int64 ``[N]`` (``history_digest`` of the history each
        list was computed from); one transaction per ``batch_size`` users. Returns how many of the
        users are new to the cache."""
        ids = self._check_ids(user_ids)
        items, scores = np.asarray(items), np.asarray(scores)
        digests = np.asarray(history_digests)
        n, k = len(ids), self.k
        for field, value in (("items", items), ("scores", scores)):
            if value.shape != (n, k):
                raise TopKCacheError(f"{self.path}: {field} has shape {value.shape}; expected ({n}, {k}) "
                                     f"(one row of k={k} per user id)")
        if not np.issubdtype(items.dtype, np.integer):
            raise TopKCacheError(f"{self.path}: items has dtype {items.dtype}; expected integer item ids")
        if items.size and (items.min() < -1 or items.max() > np.iinfo(np.int32).max):
            raise TopKCacheError(f"{self.path}: items holds {int(items.min())}..{int(items.max())}; item ids are "
                                 f"int32, -1 for no item")
        if digests.shape != (n,) or (n and not np.issubdtype(digests.dtype, np.integer)):
            raise TopKCacheError(f"{self.path}: history_digests has shape {digests.shape} and dtype {digests.dtype}; "
                                 f"expected ({n},) integers (history_digest of each user's history)")
        if len(np.unique(ids)) != n:
            raise TopKCacheError(f"{self.path}: user_ids repeats ids; give each user once per write")
        new = 0
        for start in range(0, n, max(int(batch_size), 1)):
            part = slice(start, start + max(int(batch_size), 1))
            new += self.store.put_many(ids[part], pack(items[part], scores[part]), digests[part].astype(np.int64))
        return new

    def delete(self, user_ids) -> int:
        """Removes the users' lists; returns how many were stored."""
        return self.store.delete_many(self._check_ids(user_ids))

    # --- reads ---------------------------------------------------------------------------------

    def lookup(self, user_ids) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(items int32 ``[N, k]``, scores float32 ``[N, k]``, found bool ``[N]``) for ``user_ids``
        (a list, an array or one id); users not in the cache get items -1, scores NaN, found False."""
        ids = self._check_ids(user_ids)
        items = np.full((len(ids), self.k), -1, np.int32)
        scores = np.full((len(ids), self.k), np.nan, np.float32)
        found = np.zeros(len(ids), bool)
        if len(ids) == 1 and isinstance(self.store, SQLiteStore):  # one user: one indexed SELECT
            value = self.store.get_one(ids[0])
            stored = {} if value is None else {int(ids[0]): value}
        else:
            stored = self.store.get_many(ids)
        if stored:
            rows = [i for i, u in enumerate(ids.tolist()) if u in stored]
            found[rows] = True
            items[rows], scores[rows] = unpack([stored[int(ids[i])] for i in rows], self.k)
        return items, scores, found

    def stale_users(self, user_ids, current_digests) -> np.ndarray:
        """Those of ``user_ids`` whose list is missing or was computed from another history than the
        one ``current_digests`` (``history_digest`` per user) describes, in the given order."""
        ids = self._check_ids(user_ids)
        return ids[self._stale_mask(ids, current_digests, "current_digests")]

    def _stale_mask(self, ids: np.ndarray, current_digests, field: str) -> np.ndarray:
        current = np.asarray(current_digests, np.int64)
        if current.shape != ids.shape:
            raise TopKCacheError(f"{self.path}: {field} has shape {current.shape}; expected {ids.shape} "
                                 f"(one history_digest per user id)")
        stored = self.store.get_digests(ids)
        return np.fromiter((stored.get(u) != d for u, d in zip(ids.tolist(), current.tolist())), bool, len(ids))

    # --- build / resume / refresh --------------------------------------------------------------

    def refresh(self, recommend_fn: RecommendFn, histories: Mapping[int, Sequence[int]], batch_size: int = 1024,
                progress_every: int = 100_000, digests: np.ndarray | None = None) -> dict:
        """Recomputes and rewrites just the users of ``histories`` (user id -> full item sequence) whose
        list is missing or whose history changed since it was computed: builds a new cache, resumes a
        killed build (users already written are skipped) and refreshes a built one.

        ``recommend_fn(user_ids [n], [history, ...]) -> (items [n, k], scores [n, k])`` is called on
        batches of at most ``batch_size`` stale users, each written in its own transaction.
        ``digests``: the histories' ``history_digest``s in ``histories``' order, if already known.
        Returns counts: ``checked``, ``unchanged``, ``changed`` (stored with another history),
        ``new`` (not stored), ``recomputed`` and ``seconds``."""
        tic = time.perf_counter()
        ids = self._check_ids(np.fromiter(histories.keys(), np.int64, len(histories)))
        current = (history_digests(histories[u] for u in ids.tolist()) if digests is None
                   else np.asarray(digests, np.int64))
        stale = self._stale_mask(ids, current, "digests")
        stale_ids, stale_digests = ids[stale], current[stale]
        progress = _Progress(len(stale_ids), progress_every, f"top-{self.k} cache {self.path}")
        new = 0
        batch_size = max(int(batch_size), 1)
        for start in range(0, len(stale_ids), batch_size):
            batch = stale_ids[start:start + batch_size]
            items, scores = recommend_fn(batch, [histories[u] for u in batch.tolist()])
            new += self.write(batch, np.asarray(items), np.asarray(scores), stale_digests[start:start + batch_size],
                              batch_size=batch_size)
            progress.add(len(batch))
        return {"checked": len(ids), "unchanged": len(ids) - len(stale_ids), "changed": len(stale_ids) - new,
                "new": new, "recomputed": len(stale_ids), "seconds": time.perf_counter() - tic}


def remove(path: str) -> None:
    """Deletes a cache file with its WAL and shared-memory files."""
    for suffix in ("", "-wal", "-shm", "-journal"):
        if os.path.exists(path + suffix):
            os.remove(path + suffix)
