"""Frozen config structs for the layers, and the helper that fills a struct from a config section.

Every layer of a model family takes one hashable struct (flax ``examples/wmt``'s
``TransformerConfig`` pattern) instead of re-declaring its sizes; variants (no dropout, another
width) are ``struct.replace(...)``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

from gr_jax.config_schema import check_choice

T = TypeVar("T")


def from_config(cls: type[T], section: Any, **fields) -> T:
    """``cls`` (a dataclass or Flax module) with every field that ``section`` (e.g. ``config.model``)
    holds, then ``fields``; fields missing from both take the class defaults."""
    names = {f.name for f in dataclasses.fields(cls) if f.name not in ("parent", "name")}
    return cls(**{n: section[n] for n in names if n in section and n not in fields}, **fields)


@dataclasses.dataclass(frozen=True, kw_only=True)
class LayerConfig:
    """Sizes and dropout of the attention and feed-forward layers (``layers.t5``)."""

    embed_dim: int = 128
    num_heads: int = 6
    head_dim: int = 64
    mlp_dim: int = 1024
    dropout: float = 0.1
    dropout_impl: str = "hash"  # hash (fast) | threefry (reference)

    def __post_init__(self):
        check_choice("dropout_impl", self.dropout_impl)
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"model.dropout={self.dropout}; expected a rate in [0, 1)")

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)
