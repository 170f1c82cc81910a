"""Reader and writer for the LC-Rec / LETTER JSON dataset format.

A dataset ``X`` in ``data_dir`` consists of

* ``X.inter.json``: ``{"user_id": [item_id, ...]}``, each list chronological;
* ``X.item.json``: ``{"item_id": {"title", "description", "brand", "categories"}}`` where
  ``categories`` is a comma-separated path, coarse -> fine;
* optionally ``X.index.json``: ``{"item_id": ["<a_12>", "<b_7>", ...]}``, one semantic-ID token
  per level, the prefix letter naming the level (``a`` = 0, ``b`` = 1, ...).
"""

from __future__ import annotations

import glob
import html
import json
import logging
import os
import re
from typing import Any

import numpy as np

from gr_jax.data.dataset import Dataset, Interactions, ItemTable
from gr_jax.data.errors import DataError

ITEM_FIELDS = ("title", "description", "brand", "categories")
_TOKEN = re.compile(r"<([a-z])_(\d+)>")
_MAX_LISTED = 20


def present_files(data_dir: str, limit: int = _MAX_LISTED) -> str:
    """Describes what ``data_dir`` holds (up to ``limit`` names), for error messages."""
    if not os.path.isdir(data_dir):
        return f"the directory {data_dir} does not exist"
    names = sorted(os.listdir(data_dir))
    if not names:
        return f"{data_dir} is empty"
    shown = ", ".join(names[:limit])
    more = f" (and {len(names) - limit} more)" if len(names) > limit else ""
    return f"{data_dir} contains: {shown}{more}"


def clean_text(value: Any) -> str:
    """HTML-unescaped, stripped text; lists of strings are joined with a space, None gives ''."""
    if value is None:
        return ""
    if isinstance(value, list):
        return " ".join(part for part in (clean_text(v) for v in value) if part)
    return html.unescape(str(value)).strip()


def _reject_duplicate_keys(path: str):
    def hook(pairs: list[tuple[str, Any]]) -> dict:
        result = {}
        for key, value in pairs:
            if key in result:
                raise DataError(f"{path}: key {key!r} appears twice in the same object; "
                                f"remove the duplicate (JSON keeps only the last one)")
            result[key] = value
        return result
    return hook


def _load_json(path: str) -> Any:
    if not os.path.isfile(path):
        data_dir = os.path.dirname(path) or "."
        raise DataError(f"missing file {path}; {present_files(data_dir)}. Point --config.data.dir at the "
                        f"directory holding the files and --config.data.name at their name prefix")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f, object_pairs_hook=_reject_duplicate_keys(path))
    except json.JSONDecodeError as e:
        raise DataError(f"{path} line {e.lineno} column {e.colno}: {e.msg} — "
                        f"fix the JSON or re-export the file") from e
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not valid UTF-8 ({e}); re-export the file as UTF-8") from e


def _load_object(path: str) -> dict:
    data = _load_json(path)
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object at the top level, got {type(data).__name__}; "
                        f"re-export the file in the LC-Rec format")
    return data


def _sorted_keys(keys: list[str]) -> list[str]:
    """Numeric order when every key is an integer, else lexicographic."""
    try:
        return sorted(keys, key=int)
    except ValueError:
        return sorted(keys)


def _categories(value: Any) -> tuple[str, ...]:
    """Category path from a comma-separated string (split before unescaping) or a list."""
    if value is None:
        return ()
    parts = value if isinstance(value, list) else str(value).split(",")
    return tuple(c for c in (clean_text(p) for p in parts) if c)


def _read_items(path: str) -> tuple[ItemTable, dict[str, int]]:
    raw = _load_object(path)
    keys = _sorted_keys(list(raw))
    columns: dict[str, list] = {field: [] for field in ITEM_FIELDS}
    missing = dict.fromkeys(ITEM_FIELDS, 0)
    for key in keys:
        record = raw[key]
        if not isinstance(record, dict):
            raise DataError(f"{path}: item {key!r} should map to an object with {', '.join(ITEM_FIELDS)}, "
                            f"got {type(record).__name__}; fix the entry or re-export the file")
        for field in ITEM_FIELDS:
            value = _categories(record.get(field)) if field == "categories" else clean_text(record.get(field))
            columns[field].append(value)
            missing[field] += not value
    for field, count in missing.items():
        if count:
            logging.warning("%d of %d items in %s have no %s; it is left empty.", count, len(keys), path, field)
    report = {f"items_missing_{field}": count for field, count in missing.items()}
    return ItemTable(keys=keys, **columns), report


def _read_sequences(path: str) -> tuple[list[str], list[list[str]]]:
    raw = _load_object(path)
    for user, events in raw.items():
        if not isinstance(events, list):
            raise DataError(f"{path}: user {user!r} should map to a list of item ids, got "
                            f"{type(events).__name__}; fix the entry or re-export the file")
        bad = next((e for e in events if isinstance(e, bool) or not isinstance(e, (int, str))), None)
        if bad is not None:
            raise DataError(f"{path}: user {user!r} has item id {bad!r}; item ids must be strings or "
                            f"integers, fix the entry or re-export the file")
    return list(raw), [[str(e) for e in events] for events in raw.values()]


def _map_items(path: str, item_file: str, sequences: list[list[str]], index: dict[str, int],
               drop_unknown: bool) -> tuple[list[list[int]], int]:
    unknown = [e for events in sequences for e in events if e not in index]
    if unknown and not drop_unknown:
        examples = ", ".join(repr(e) for e in list(dict.fromkeys(unknown))[:5])
        raise DataError(f"{path}: {len(unknown)} events reference item ids absent from {item_file} "
                        f"(e.g. {examples}); add them to {os.path.basename(item_file)} or set "
                        f"--config.data.drop_unknown_items=True")
    if unknown:
        logging.warning("Dropping %d events in %s whose item ids are absent from %s.",
                        len(unknown), path, item_file)
    mapped = [[index[e] for e in events if e in index] for events in sequences]
    return mapped, len(unknown)


def read_lcrec(data_dir: str, name: str, drop_unknown_items: bool = False) -> Dataset:
    """Reads ``{data_dir}/{name}.inter.json`` and ``{name}.item.json`` into a (not yet validated) Dataset.

    Items are ordered numerically by key when every key is an integer, else lexicographically;
    users keep file order. ``report`` counts items missing each text field and dropped events.
    """
    inter_path = os.path.join(data_dir, f"{name}.inter.json")
    item_path = os.path.join(data_dir, f"{name}.item.json")
    items, report = _read_items(item_path)
    user_keys, sequences = _read_sequences(inter_path)
    index = {key: i for i, key in enumerate(items.keys)}
    mapped, dropped = _map_items(inter_path, item_path, sequences, index, drop_unknown_items)
    report["events_dropped_unknown_item"] = dropped
    return Dataset(name=name, items=items, users=Interactions.from_lists(user_keys, mapped), report=report)


def _parse_codes(path: str, key: str, tokens: Any) -> list[int]:
    if not isinstance(tokens, list) or not tokens:
        raise DataError(f"{path}: item {key!r} should map to a non-empty list of tokens like \"<a_12>\", "
                        f"got {tokens!r}; regenerate the index")
    codes = []
    for level, token in enumerate(tokens):
        match = _TOKEN.fullmatch(token) if isinstance(token, str) else None
        if match is None:
            raise DataError(f"{path}: item {key!r} has malformed token {token!r}; expected \"<x_N>\" with a "
                            f"level letter x and a code N, regenerate the index")
        if ord(match.group(1)) - ord("a") != level:
            raise DataError(f"{path}: item {key!r} token {token!r} is at position {level}, expected level "
                            f"letter {chr(ord('a') + level)!r}; tokens must be ordered a, b, c, ... "
                            f"— regenerate the index")
        codes.append(int(match.group(2)))
    return codes


def read_index_json(path: str, item_keys: list[str]) -> np.ndarray:
    """Reads an LC-Rec ``X.index.json`` into int32 codes ``[len(item_keys), L]`` in ``item_keys`` order."""
    raw = _load_object(path)
    missing = [key for key in item_keys if key not in raw]
    if missing:
        examples = ", ".join(repr(k) for k in missing[:5])
        raise DataError(f"{path}: {len(missing)} items have no semantic ID (e.g. {examples}); "
                        f"regenerate the index for this item table")
    extra = len(raw) - len(item_keys)
    if extra > 0:
        logging.warning("Ignoring %d entries in %s for items not in the item table.", extra, path)
    rows = [_parse_codes(path, key, raw[key]) for key in item_keys]
    if not rows:
        return np.zeros((0, 0), np.int32)
    length = len(rows[0])
    for key, row in zip(item_keys, rows):
        if len(row) != length:
            raise DataError(f"{path}: item {key!r} has {len(row)} tokens but item {item_keys[0]!r} has "
                            f"{length}; every item needs the same number of levels, regenerate the index")
    return np.asarray(rows, np.int32)


def write_index_json(path: str, item_keys: list[str], codes: np.ndarray) -> None:
    """Writes codes ``[len(item_keys), L]`` as an LC-Rec ``X.index.json`` (inverse of ``read_index_json``)."""
    codes = np.asarray(codes)
    if codes.ndim != 2 or len(codes) != len(item_keys):
        raise ValueError(f"codes must have shape [{len(item_keys)}, L], got {codes.shape}")
    if codes.shape[1] > 26 or (codes.size and codes.min() < 0):
        raise ValueError("codes need at most 26 levels and non-negative values to be written as <a_N> tokens")
    index = {key: [f"<{chr(ord('a') + level)}_{int(c)}>" for level, c in enumerate(row)]
             for key, row in zip(item_keys, codes)}
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(index, f)
    os.replace(tmp, path)


def lcrec_names(data_dir: str) -> list[str]:
    """Name prefixes of the ``*.inter.json`` files in ``data_dir`` with a matching ``*.item.json``."""
    suffix = ".inter.json"
    names = [os.path.basename(p)[:-len(suffix)] for p in glob.glob(os.path.join(glob.escape(data_dir), "*" + suffix))]
    return sorted(n for n in names if os.path.isfile(os.path.join(data_dir, f"{n}.item.json")))

