"""Reader for the raw Amazon Review Data (2018) files (Jianmo Ni, Jiacheng Li, Julian McAuley).

Both files are JSON lines, optionally gzipped, and are streamed line by line:

* reviews (``{name}.json(.gz)`` or the 5-core ``{name}_5.json(.gz)``): ``reviewerID``, ``asin``,
  ``overall`` (rating) and ``unixReviewTime`` (seconds) per line;
* metadata (``meta_{name}.json(.gz)``): ``asin``, ``title``, ``description``, ``brand``,
  ``category`` (coarse -> fine) and ``price`` (e.g. ``"$12.99"``) per line.

Cleaning, each step counted in ``Dataset.report``: duplicate (user, item) reviews keep the
earliest; reviews of items without metadata are dropped; iterative k-core filtering.
Users keep the order of their first review in the file; items are sorted by asin.
"""

from __future__ import annotations

import array
import dataclasses
import gzip
import json
import logging
import math
import os
import zlib
from collections.abc import Iterator
from typing import Any

import numpy as np

from gr_jax.data.dataset import ACTIONS, Dataset, Interactions, ItemTable
from gr_jax.data.errors import DataError
from gr_jax.data.lcrec import clean_text, present_files

SOURCE_HINT = ("The files come from the \"Amazon Review Data (2018)\" page by Jianmo Ni and Julian McAuley "
               "(https://nijianmo.github.io/amazon/index.html): download the per-category \"reviews\" "
               "(or 5-core) file and the \"metadata\" file")


def _first_existing(data_dir: str, name: str, what: str, candidates: list[str]) -> str:
    for candidate in candidates:
        path = os.path.join(data_dir, candidate)
        if os.path.isfile(path):
            return path
    raise DataError(f"no Amazon 2018 {what} file for {name!r} in {data_dir}; expected one of "
                    f"{', '.join(candidates)}; {present_files(data_dir)}. {SOURCE_HINT} into {data_dir} "
                    f"keeping their names, or fix --config.data.dir / --config.data.name")


def find_amazon_files(data_dir: str, name: str) -> tuple[str, str]:
    """Paths of the reviews and metadata files of category ``name``; the full reviews file wins over ``_5``."""
    reviews = _first_existing(data_dir, name, "reviews",
                              [f"{name}.json.gz", f"{name}.json", f"{name}_5.json.gz", f"{name}_5.json"])
    return reviews, _first_existing(data_dir, name, "metadata", [f"meta_{name}.json.gz", f"meta_{name}.json"])


def _json_lines(path: str) -> Iterator[tuple[int, dict]]:
    """Yields (1-based line number, object) per non-blank line, raising DataError on bad lines."""
    if not os.path.isfile(path):
        raise DataError(f"missing file {path}; {present_files(os.path.dirname(path) or '.')}. {SOURCE_HINT}.")
    opener = gzip.open if path.endswith(".gz") else open
    lineno = 0
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{path} line {lineno}: {e.msg} (column {e.colno}) — fix the line or "
                                    f"re-download the file") from e
                if not isinstance(record, dict):
                    raise DataError(f"{path} line {lineno}: expected a JSON object, got "
                                    f"{type(record).__name__} — fix the line or re-download the file")
                yield lineno, record
    except (OSError, EOFError, zlib.error, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read past line {lineno} ({e}); the file is truncated or corrupt, "
                        f"re-download it") from e


def _field(path: str, lineno: int, record: dict, field: str, convert: type) -> Any:
    if field not in record or record[field] is None:
        raise DataError(f"{path} line {lineno}: missing field {field!r}; fix the line or re-download the file")
    try:
        return convert(record[field])
    except (TypeError, ValueError) as e:
        raise DataError(f"{path} line {lineno}: field {field!r} = {record[field]!r} is not a valid "
                        f"{convert.__name__}; fix the line or re-download the file") from e


@dataclasses.dataclass
class _Reviews:
    """All review lines in file order, with users/items as indices into the key lists."""

    user_keys: list[str]
    item_keys: list[str]
    users: np.ndarray  # int64
    items: np.ndarray  # int64
    times: np.ndarray  # int64
    ratings: np.ndarray  # float32


def _read_reviews(path: str) -> _Reviews:
    user_index: dict[str, int] = {}
    item_index: dict[str, int] = {}
    users, items, times, ratings = array.array("q"), array.array("q"), array.array("q"), array.array("f")
    for lineno, record in _json_lines(path):
        user = _field(path, lineno, record, "reviewerID", str)
        item = _field(path, lineno, record, "asin", str)
        users.append(user_index.setdefault(user, len(user_index)))
        items.append(item_index.setdefault(item, len(item_index)))
        ratings.append(_field(path, lineno, record, "overall", float))
        times.append(_field(path, lineno, record, "unixReviewTime", int))
    return _Reviews(list(user_index), list(item_index), np.frombuffer(users, np.int64),
                    np.frombuffer(items, np.int64), np.frombuffer(times, np.int64), np.frombuffer(ratings, np.float32))


def parse_price(value: Any) -> float | None:
    """Price as float: NaN when missing/empty, the lower bound of a "$a - $b" range, None when unparseable."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return math.nan
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    try:
        return float(str(value).split("-")[0].strip().lstrip("$").replace(",", ""))
    except ValueError:
        return None


@dataclasses.dataclass
class _Meta:
    title: str
    description: str
    brand: str
    categories: tuple[str, ...]
    price: float | None  # None: present but unparseable


def _parse_meta(record: dict) -> _Meta:
    categories = record.get("category") or []
    categories = categories if isinstance(categories, list) else [categories]
    return _Meta(clean_text(record.get("title")), clean_text(record.get("description")),
                 clean_text(record.get("brand")), tuple(c for c in map(clean_text, categories) if c),
                 parse_price(record.get("price")))


def _read_metadata(path: str, wanted: set[str]) -> tuple[dict[str, _Meta], int]:
    """Metadata of the ``wanted`` asins (first line wins) and the number of duplicate lines among them."""
    meta: dict[str, _Meta] = {}
    duplicates = 0
    for lineno, record in _json_lines(path):
        asin = _field(path, lineno, record, "asin", str)
        if asin not in wanted:
            continue
        if asin in meta:
            duplicates += 1
            continue
        meta[asin] = _parse_meta(record)
    return meta, duplicates


def _distinct(values: np.ndarray, keep: np.ndarray) -> int:
    return int(np.count_nonzero(np.bincount(values[keep])))


def _first_reviews(reviews: _Reviews) -> np.ndarray:
    """Mask keeping the earliest review (ties: first in file) of every (user, item) pair."""
    order = np.lexsort((np.arange(len(reviews.users)), reviews.times, reviews.items, reviews.users))
    u, i = reviews.users[order], reviews.items[order]
    first = np.ones(len(order), bool)
    first[1:] = (u[1:] != u[:-1]) | (i[1:] != i[:-1])
    keep = np.zeros(len(order), bool)
    keep[order[first]] = True
    return keep


def _kcore(users: np.ndarray, items: np.ndarray, keep: np.ndarray, k: int) -> np.ndarray:
    """Iteratively removes events of users/items with fewer than ``k`` kept events until stable."""
    while True:
        user_counts = np.bincount(users[keep], minlength=users.max(initial=0) + 1)
        item_counts = np.bincount(items[keep], minlength=items.max(initial=0) + 1)
        new = keep & (user_counts[users] >= k) & (item_counts[items] >= k)
        if new.sum() == keep.sum():
            return keep
        keep = new


def _drop(reviews: _Reviews, keep: np.ndarray, new: np.ndarray, reason: str, why: str, report: dict) -> None:
    """Records how many events, users and items going from ``keep`` to ``new`` removes, and logs it."""
    counts = {"events": int(keep.sum() - new.sum()),
              "users": _distinct(reviews.users, keep) - _distinct(reviews.users, new),
              "items": _distinct(reviews.items, keep) - _distinct(reviews.items, new)}
    for what, count in counts.items():
        report[f"{what}_dropped_{reason}"] = count
    if counts["events"]:
        logging.warning("Dropping %d reviews %s (%d users and %d items disappear entirely).",
                        counts["events"], why, counts["users"], counts["items"])


def _filter(reviews: _Reviews, meta: dict[str, _Meta], meta_path: str, min_core: int, report: dict) -> np.ndarray:
    """Mask of the events kept after de-duplication, the metadata check and k-core filtering."""
    has_meta = np.array([key in meta for key in reviews.item_keys], bool)[reviews.items]
    steps = (
        ("duplicate", "repeating a (user, item) pair, keeping the earliest", lambda k: k & _first_reviews(reviews)),
        ("no_metadata", f"of items absent from {meta_path}", lambda k: k & has_meta),
        ("kcore", f"outside the {min_core}-core", lambda k: _kcore(reviews.users, reviews.items, k, min_core)),
    )
    keep = np.ones(len(reviews.users), bool)
    for reason, why, step in steps:
        new = step(keep)
        _drop(reviews, keep, new, reason, why, report)
        keep = new
    return keep


def _item_table(keys: list[str], meta: dict[str, _Meta], path: str, report: dict) -> ItemTable:
    rows = [meta[k] for k in keys]
    for field in ("title", "description", "brand", "categories"):
        missing = sum(1 for row in rows if not getattr(row, field))
        report[f"items_missing_{field}"] = missing
        if missing:
            logging.warning("%d of %d items in %s have no %s; it is left empty.", missing, len(rows), path, field)
    unparsed = sum(1 for row in rows if row.price is None)
    report["items_price_unparsed"] = unparsed
    if unparsed:
        logging.warning("%d items in %s have a price that is not a number like \"$12.99\"; it is set to NaN.",
                        unparsed, path)
    price = np.array([math.nan if row.price is None else row.price for row in rows], np.float32)
    return ItemTable(keys, [r.title for r in rows], [r.description for r in rows], [r.brand for r in rows],
                     [r.categories for r in rows], price)


def _interactions(reviews: _Reviews, keep: np.ndarray, item_ids: np.ndarray) -> Interactions:
    """Kept events grouped by user (first-appearance order), chronological, ties in file order."""
    idx = np.flatnonzero(keep)
    idx = idx[np.lexsort((idx, reviews.times[idx], reviews.users[idx]))]
    user_values, users = np.unique(reviews.users[idx], return_inverse=True)
    offsets = np.concatenate([[0], np.cumsum(np.bincount(users, minlength=len(user_values)))])
    return Interactions([reviews.user_keys[u] for u in user_values], offsets, item_ids[reviews.items[idx]],
                        ratings=reviews.ratings[idx], timestamps=reviews.times[idx])


def rating_actions(ratings: np.ndarray, positive_rating: float, negative_rating: float) -> np.ndarray:
    """Action codes of star ratings: >= ``positive_rating`` a click, <= ``negative_rating`` a skip,
    in between a view (neutral), so an action-aware model can train on reviews."""
    if not negative_rating < positive_rating:
        raise DataError(f"data.negative_rating={negative_rating} must be below data.positive_rating={positive_rating}")
    actions = np.full(len(ratings), ACTIONS.index("view"), np.int8)
    actions[ratings >= positive_rating] = ACTIONS.index("click")
    actions[ratings <= negative_rating] = ACTIONS.index("skip")
    return actions


def read_amazon2018(reviews_path: str, meta_path: str, name: str, min_core: int = 5) -> Dataset:
    """Reads an Amazon 2018 reviews + metadata pair into a (not yet validated) Dataset.

    Drops duplicate reviews (keeping the earliest), reviews of items without metadata and
    everything outside the iterative ``min_core``-core, counting each in ``report``.
    """
    reviews = _read_reviews(reviews_path)
    meta, duplicates = _read_metadata(meta_path, set(reviews.item_keys))
    report = {"events_read": len(reviews.users), "metadata_duplicate_lines": duplicates}
    if duplicates:
        logging.warning("Ignoring %d repeated metadata lines in %s (the first line of each asin is used).",
                        duplicates, meta_path)
    keep = _filter(reviews, meta, meta_path, min_core, report)
    if not keep.any():
        raise DataError(f"no reviews of {reviews_path} are left after removing duplicates, items without "
                        f"metadata in {meta_path} and {min_core}-core filtering (report: {report}); "
                        f"lower --config.data.min_core or check that the two files are the same category")
    kept_items = sorted(np.unique(reviews.items[keep]).tolist(), key=reviews.item_keys.__getitem__)
    item_ids = np.full(len(reviews.item_keys), -1, np.int64)
    item_ids[kept_items] = np.arange(len(kept_items))
    items = _item_table([reviews.item_keys[i] for i in kept_items], meta, meta_path, report)
    return Dataset(name=name, items=items, users=_interactions(reviews, keep, item_ids), report=report)
