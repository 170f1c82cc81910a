"""The semantic-ID artifact of every tokenizer: ``sid_table.npz`` + ``sid_table.json`` (versioned).

One format for both kinds of tokenization:

- **static** (RQ-VAE, RQ-KMeans, PRISM, an imported ``index.json``): one SID per item, row ``i``
  of ``codes`` is item ``i``'s (rows may repeat when collisions were left unresolved);
- **personalized** (Pctx): several SIDs per item, one per context cluster, and a SID for every
  event (``event_sid``); ``sid_item`` names each SID's item and ``sid_counts`` its training events
  (the draw weights of augmentation and of the inference copies).

Format version 1 wrote the two kinds to different files (``sid_table.*`` and ``pctx_sids.*``);
``load`` still reads both.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence

import numpy as np

from gr_jax.data.errors import DataError
from gr_jax.data.lcrec import present_files, read_index_json, write_index_json

FORMAT_VERSION = 2
NPZ_NAME, JSON_NAME = "sid_table.npz", "sid_table.json"
LEGACY_PCTX_NPZ, LEGACY_PCTX_JSON = "pctx_sids.npz", "pctx_sids.json"  # format version 1, personalized


@dataclasses.dataclass
class SIDTable:
    """``codes [S, L]`` int32, level ``l`` drawn from ``codebook_sizes[l]`` codes; ``codebooks[l]``
    (float32 ``[codebook_sizes[l], D]``) may cover only the first levels (none for a de-dup digit).

    ``sid_item [S]``: the item of each SID (default: row ``i`` is item ``i``). Personalized tables
    also hold ``event_sid [E]`` (the SID of every event, ``Interactions.items`` order) and
    ``sid_counts [S]`` (training events per SID; 1 for items without training events).
    ``meta`` must be JSON-serializable.
    """

    codes: np.ndarray
    codebook_sizes: tuple[int, ...]
    codebooks: list[np.ndarray] | None = None
    meta: dict = dataclasses.field(default_factory=dict)
    sid_item: np.ndarray | None = None
    event_sid: np.ndarray | None = None
    sid_counts: np.ndarray | None = None

    def __post_init__(self):
        self.codes = np.asarray(self.codes)
        if self.codes.ndim != 2:
            raise DataError(f"SID codes must have shape [num_sids, num_levels], got {self.codes.shape}")
        self.codes = self.codes.astype(np.int32)
        self.codebook_sizes = tuple(int(k) for k in self.codebook_sizes)
        if len(self.codebook_sizes) != self.num_levels:
            raise DataError(f"{len(self.codebook_sizes)} codebook sizes for {self.num_levels} SID levels")
        if self.codebooks is not None:
            self.codebooks = [np.asarray(c, np.float32) for c in self.codebooks]
            if len(self.codebooks) > self.num_levels:
                raise DataError(f"{len(self.codebooks)} codebooks for {self.num_levels} SID levels")
            for level, (codebook, size) in enumerate(zip(self.codebooks, self.codebook_sizes)):
                if codebook.ndim != 2 or len(codebook) != size:
                    raise DataError(f"codebook of level {level} has shape {codebook.shape}, expected [{size}, D]")
        if (self.event_sid is None) != (self.sid_counts is None) or (self.event_sid is not None and
                                                                      self.sid_item is None):
            raise DataError("a personalized SID table needs sid_item, event_sid and sid_counts together")
        if self.sid_item is None:
            self.sid_item = np.arange(len(self.codes), dtype=np.int32)
        self.sid_item = np.asarray(self.sid_item, np.int32)
        if self.personalized:
            self.event_sid = np.asarray(self.event_sid, np.int32)
            self.sid_counts = np.asarray(self.sid_counts, np.int32)

    @property
    def personalized(self) -> bool:
        """Whether SIDs depend on the event's context (Pctx), not only on the item."""
        return self.event_sid is not None

    @property
    def num_sids(self) -> int:
        return len(self.codes)

    @property
    def num_items(self) -> int:
        return int(self.sid_item.max()) + 1 if len(self.sid_item) else 0

    @property
    def num_levels(self) -> int:
        return self.codes.shape[1]

    @property
    def num_unique(self) -> int:
        """Number of distinct code rows."""
        return len(np.unique(self.codes, axis=0)) if self.num_sids else 0

    def sids_per_item(self) -> np.ndarray:
        return np.bincount(self.sid_item, minlength=self.num_items)

    @property
    def item_sids(self) -> np.ndarray:
        """Each item's SID rows ``[num_items, max SIDs per item]`` in row order, -1 padded."""
        per_item = self.sids_per_item()
        order = np.argsort(self.sid_item, kind="stable")
        rank = np.arange(self.num_sids) - np.repeat(np.cumsum(per_item) - per_item, per_item)
        table = np.full((self.num_items, max(per_item.max(initial=0), 1)), -1, np.int32)
        table[self.sid_item[order], rank] = order
        return table

    @property
    def item_sid_counts(self) -> np.ndarray:
        """``sid_counts`` laid out as ``item_sids`` (0 for padding; 1 per SID of a static table)."""
        rows = self.item_sids
        counts = np.ones(self.num_sids, np.int32) if self.sid_counts is None else self.sid_counts
        return np.where(rows >= 0, counts[np.maximum(rows, 0)], 0)

    def validate(self, num_items: int, num_events: int | None = None) -> None:
        """Raises ``DataError`` unless the table covers this dataset's items (and events, when
        personalized) with every code in range."""
        if self.num_items != num_items or (self.personalized and (self.sids_per_item() < 1).any()):
            raise DataError(f"the SID table covers {self.num_items} items but the item table has {num_items}; "
                            f"regenerate the SIDs for this item table (rerun the tokenize stage)")
        for level, size in enumerate(self.codebook_sizes):
            column = self.codes[:, level]
            bad = np.flatnonzero((column < 0) | (column >= size))
            if len(bad):
                raise DataError(f"SID level {level}: SID row {bad[0]} has code {column[bad[0]]}, outside "
                                f"[0, {size}) ({len(bad)} bad codes at this level); regenerate the SIDs or "
                                f"fix codebook_sizes")
        if not self.personalized:
            return
        if num_events is not None and len(self.event_sid) != num_events:
            raise DataError(f"the SID table covers {len(self.event_sid)} events but the dataset has {num_events}; "
                            f"rerun the tokenize stage for this dataset")
        if self.num_unique != self.num_sids:
            raise DataError("personalized SIDs are not unique; the artifact is corrupt, rerun the tokenize stage")
        if self.event_sid.min() < 0 or self.event_sid.max() >= self.num_sids:
            raise DataError("event SIDs out of range; rerun the tokenize stage")

    def save(self, out_dir: str) -> None:
        """Writes ``sid_table.npz`` (arrays) and ``sid_table.json`` (version, sizes, meta)."""
        os.makedirs(out_dir, exist_ok=True)
        codebooks = self.codebooks or []
        arrays = {"codes": self.codes, "sid_item": self.sid_item}
        arrays |= {f"codebook_{l}": c for l, c in enumerate(codebooks)}
        if self.personalized:
            arrays |= {"event_sid": self.event_sid, "sid_counts": self.sid_counts}
        header = {"format_version": FORMAT_VERSION, "num_items": self.num_items, "num_sids": self.num_sids,
                  "num_levels": self.num_levels, "codebook_sizes": list(self.codebook_sizes),
                  "num_codebooks": len(codebooks), "has_codebooks": self.codebooks is not None,
                  "personalized": self.personalized, "meta": self.meta}
        np.savez_compressed(os.path.join(out_dir, NPZ_NAME), **arrays)
        with open(os.path.join(out_dir, JSON_NAME), "w", encoding="utf-8") as f:
            f.write(json.dumps(header, indent=1))

    @classmethod
    def exists(cls, in_dir: str) -> bool:
        return any(os.path.isfile(os.path.join(in_dir, n)) for n in (JSON_NAME, LEGACY_PCTX_JSON))

    @classmethod
    def load(cls, in_dir: str) -> SIDTable:
        """Reads a table written by ``save`` (or by format version 1 of either kind)."""
        legacy_pctx = not os.path.isfile(os.path.join(in_dir, JSON_NAME)) and \
            os.path.isfile(os.path.join(in_dir, LEGACY_PCTX_JSON))
        names = (LEGACY_PCTX_JSON, LEGACY_PCTX_NPZ) if legacy_pctx else (JSON_NAME, NPZ_NAME)
        paths = [os.path.join(in_dir, name) for name in names]
        for path in paths:
            if not os.path.isfile(path):
                raise DataError(f"missing {path}; {present_files(in_dir)}. Run the tokenize stage")
        with open(paths[0], encoding="utf-8") as f:
            header = json.load(f)
        version = header.get("format_version")
        if version not in (1, FORMAT_VERSION):
            raise DataError(f"{paths[0]} has format_version {version}, this code reads 1 and {FORMAT_VERSION}; "
                            f"rerun the tokenize stage")
        with np.load(paths[1]) as arrays:
            arrays = dict(arrays)
        codebooks = [arrays[f"codebook_{l}"] for l in range(header["num_codebooks"])]
        if legacy_pctx:  # per-item count lists -> per-SID counts
            rows, counts = arrays["item_sids"], arrays["item_sid_counts"]
            arrays["sid_counts"] = np.zeros(len(arrays["codes"]), np.int32)
            arrays["sid_counts"][rows[rows >= 0]] = counts[rows >= 0]
        return cls(codes=arrays["codes"], codebook_sizes=tuple(header["codebook_sizes"]),
                   codebooks=codebooks if header.get("has_codebooks", True) else None, meta=header["meta"],
                   sid_item=arrays.get("sid_item"), event_sid=arrays.get("event_sid"),
                   sid_counts=arrays.get("sid_counts"))

    @classmethod
    def from_index_json(cls, path: str, item_keys: list[str],
                        codebook_sizes: Sequence[int] | int | None = None) -> SIDTable:
        """Reads an LC-Rec ``X.index.json``; ``codebook_sizes`` (one per level, or one for every level)
        default to max code + 1 per level. A code outside a declared size is an error naming the item
        and its token."""
        codes = read_index_json(path, item_keys)
        if isinstance(codebook_sizes, int):
            codebook_sizes = (codebook_sizes,) * codes.shape[1]
        if codebook_sizes is None:
            codebook_sizes = tuple(int(k) + 1 for k in codes.max(axis=0)) if codes.size else (0,) * codes.shape[1]
        for level, size in enumerate(codebook_sizes):
            bad = np.flatnonzero(codes[:, level] >= size) if level < codes.shape[1] else []
            if len(bad):
                token = f"<{chr(ord('a') + level)}_{codes[bad[0], level]}>"
                raise DataError(f"{path}: item {item_keys[bad[0]]!r} has {token}, outside level {level}'s codebook of "
                                f"{size} codes ({len(bad)} such items); fix the index or declare the codebook "
                                f"size (tokenizer.index_json_codebook_size)")
        return cls(codes=codes, codebook_sizes=tuple(codebook_sizes), meta={"source": os.path.basename(path)})

    def to_index_json(self, path: str, item_keys: list[str]) -> None:
        """Writes a static table's codes as an LC-Rec ``X.index.json`` (tokens ``<a_N>``, ``<b_N>``, ...)."""
        if self.personalized:
            raise ValueError("an LC-Rec index.json holds one SID per item; this table is personalized")
        write_index_json(path, item_keys, self.codes)
