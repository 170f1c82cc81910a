"""The semantic-ID table: L codes per item, saved as ``sid_table.npz`` + ``sid_table.json`` (versioned)."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Sequence

import numpy as np

from gr_jax.data.errors import DataError
from gr_jax.data.lcrec import present_files, read_index_json, write_index_json

FORMAT_VERSION = 1
NPZ_NAME, JSON_NAME = "sid_table.npz", "sid_table.json"


@dataclasses.dataclass
class SIDTable:
    """Codes ``[N, L]`` (item ``i``'s SID is row ``i``) with level ``l`` drawn from ``codebook_sizes[l]`` codes.

    ``codebooks[l]`` (float32 ``[codebook_sizes[l], D]``) may cover only the first levels, e.g. none
    for a de-dup digit; ``meta`` must be JSON-serializable.
    """

    codes: np.ndarray
    codebook_sizes: tuple[int, ...]
    codebooks: list[np.ndarray] | None = None
    meta: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        self.codes = np.asarray(self.codes)
        if self.codes.ndim != 2:
            raise DataError(f"SID codes must have shape [num_items, num_levels], got {self.codes.shape}")
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

    @property
    def num_items(self) -> int:
        return len(self.codes)

    @property
    def num_levels(self) -> int:
        return self.codes.shape[1]

    @property
    def num_unique(self) -> int:
        """Number of distinct SIDs."""
        return len(np.unique(self.codes, axis=0)) if self.num_items else 0

    def validate(self, num_items: int) -> None:
        """Raises ``DataError`` unless there is one SID per item and every code is in range."""
        if self.num_items != num_items:
            raise DataError(f"the SID table has {self.num_items} items but the item table has {num_items}; "
                            f"regenerate the SIDs for this item table")
        for level, size in enumerate(self.codebook_sizes):
            column = self.codes[:, level]
            bad = np.flatnonzero((column < 0) | (column >= size))
            if len(bad):
                raise DataError(f"SID level {level}: item {bad[0]} has code {column[bad[0]]}, outside "
                                f"[0, {size}) ({len(bad)} bad codes at this level); regenerate the SIDs or "
                                f"fix codebook_sizes")

    def sid_to_items(self) -> dict[tuple[int, ...], list[int]]:
        """Map from each SID to the items holding it, in item order (for collision-aware evaluation)."""
        out: dict[tuple[int, ...], list[int]] = {}
        for item, row in enumerate(self.codes.tolist()):
            out.setdefault(tuple(row), []).append(item)
        return out

    def prefix_ids(self, level: int) -> np.ndarray:
        """Dense id ``[N]`` of each item's SID prefix of length ``level`` (0 <= level <= L)."""
        if not 0 <= level <= self.num_levels:
            raise ValueError(f"prefix length must be in [0, {self.num_levels}], got {level}")
        if level == 0 or not self.num_items:
            return np.zeros(self.num_items, np.int64)
        return np.unique(self.codes[:, :level], axis=0, return_inverse=True)[1].reshape(-1)

    def save(self, out_dir: str) -> None:
        """Writes ``sid_table.npz`` (codes, codebooks) and ``sid_table.json`` (version, sizes, meta)."""
        os.makedirs(out_dir, exist_ok=True)
        codebooks = self.codebooks or []
        arrays = {"codes": self.codes} | {f"codebook_{l}": c for l, c in enumerate(codebooks)}
        header = {"format_version": FORMAT_VERSION, "num_items": self.num_items, "num_levels": self.num_levels,
                  "codebook_sizes": list(self.codebook_sizes), "num_codebooks": len(codebooks),
                  "has_codebooks": self.codebooks is not None, "meta": self.meta}
        text = json.dumps(header, indent=1)
        np.savez(os.path.join(out_dir, NPZ_NAME), **arrays)
        with open(os.path.join(out_dir, JSON_NAME), "w", encoding="utf-8") as f:
            f.write(text)

    @classmethod
    def load(cls, in_dir: str) -> SIDTable:
        """Reads a table written by ``save``."""
        paths = [os.path.join(in_dir, name) for name in (JSON_NAME, NPZ_NAME)]
        for path in paths:
            if not os.path.isfile(path):
                raise DataError(f"missing {path}; {present_files(in_dir)}. Fit a tokenizer and save its SIDTable")
        with open(paths[0], encoding="utf-8") as f:
            header = json.load(f)
        version = header.get("format_version")
        if version != FORMAT_VERSION:
            raise DataError(f"{paths[0]} has format_version {version}, this code reads {FORMAT_VERSION}; "
                            f"regenerate the SID table")
        with np.load(paths[1]) as arrays:
            codes = arrays["codes"]
            codebooks = [arrays[f"codebook_{l}"] for l in range(header["num_codebooks"])]
        return cls(codes=codes, codebook_sizes=tuple(header["codebook_sizes"]),
                   codebooks=codebooks if header["has_codebooks"] else None, meta=header["meta"])

    @classmethod
    def from_index_json(cls, path: str, item_keys: list[str],
                        codebook_sizes: Sequence[int] | None = None) -> SIDTable:
        """Reads an LC-Rec ``X.index.json``; ``codebook_sizes`` default to max code + 1 per level."""
        codes = read_index_json(path, item_keys)
        if codebook_sizes is None:
            codebook_sizes = tuple(int(k) + 1 for k in codes.max(axis=0)) if codes.size else (0,) * codes.shape[1]
        return cls(codes=codes, codebook_sizes=tuple(codebook_sizes), meta={"source": os.path.basename(path)})

    def to_index_json(self, path: str, item_keys: list[str]) -> None:
        """Writes the codes as an LC-Rec ``X.index.json`` (tokens ``<a_N>``, ``<b_N>``, ...)."""
        write_index_json(path, item_keys, self.codes)
