"""ScaNN index settings (``config.scann``); importing them needs no JAX or ScaNN."""

from __future__ import annotations

import dataclasses
import math


@dataclasses.dataclass(frozen=True)
class ScannConfig:
    """ScaNN parameters; 0 means "auto", resolved from the catalogue size by ``resolve``.

    ``anisotropic_quantization_threshold`` is in inner-product units: 0.2 suits unit-norm
    vectors; scale it with the typical norm of un-normalised vectors, or NaN for plain
    (isotropic) quantisation.
    """

    k: int = 10  # neighbours returned by default (and the k of the build-time recall check)
    num_leaves: int = 0  # auto: round(sqrt(N)), so a leaf holds ~sqrt(N) items
    num_leaves_to_search: int = 0  # auto: 5% of the leaves, at least 1
    training_sample_size: int = 0  # auto: min(N, 250_000) rows train the tree and the quantiser
    dimensions_per_block: int = 2
    anisotropic_quantization_threshold: float = 0.2
    reorder_k: int = 0  # auto: max(100, 10 * k), at most N
    brute_force_below: int = 10_000  # smaller catalogues are searched exactly (no tree, no hashing)
    recall_sample: int = 1_000  # catalogue rows used as queries by build_index's recall log; 0 skips it

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.type == "int" and (not isinstance(value, int) or value < 0):
                raise ValueError(f"ScannConfig.{field.name}={value!r} must be a non-negative int")
        if self.k < 1 or self.dimensions_per_block < 1:
            raise ValueError(f"ScannConfig.k={self.k} and ScannConfig.dimensions_per_block="
                             f"{self.dimensions_per_block} must be at least 1")
        if 0 < self.reorder_k < self.k:
            raise ValueError(f"ScannConfig.reorder_k={self.reorder_k} must be at least k={self.k} (0 = auto)")

    def resolve(self, num_items: int) -> ScannConfig:
        """This config with every auto (0) field set for a catalogue of ``num_items``; checks the rest."""
        if self.k > num_items:
            raise ValueError(f"ScannConfig.k={self.k} exceeds the catalogue size {num_items}; lower k")
        num_leaves = self.num_leaves or max(1, round(math.sqrt(num_items)))
        num_leaves_to_search = self.num_leaves_to_search or max(1, round(0.05 * num_leaves))
        if num_leaves > num_items or num_leaves_to_search > num_leaves:
            raise ValueError(f"need num_leaves_to_search={num_leaves_to_search} <= num_leaves={num_leaves} <= "
                             f"num_items={num_items}; lower ScannConfig.num_leaves / num_leaves_to_search "
                             "(0 = auto)")
        return dataclasses.replace(
            self, num_leaves=num_leaves, num_leaves_to_search=num_leaves_to_search,
            training_sample_size=self.training_sample_size or min(num_items, 250_000),
            reorder_k=min(self.reorder_k or max(100, 10 * self.k), num_items))
