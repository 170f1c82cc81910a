"""Residual k-means (RQ-KMeans): one k-means codebook per level, fit on the previous level's residuals.

Level ``l`` fits k-means to the residuals ``r_l`` (``r_0`` = the input, L2-normalized per row when
``normalize_input``), the code is the assignment, and the residual is updated with the assigned
centroid ``c``:

* ``euclidean``: ``r ← r − c`` (plain k-means);
* ``tangent``: spherical k-means (unit centroids, cosine assignment) and ``r ← r − (rᵀc) c``, which
  projects the centroid direction out, so each residual is orthogonal to its centroid.

An item's vector is ``Σ_l s_l c_l`` plus the final residual, with scale ``s_l = 1`` (euclidean) or
``s_l = rᵀc`` (tangent). Codes alone do not carry the tangent scales, so ``reconstruct`` uses, per
code, the mean scale of the items that were fit to it, unless per-item scales are given.
"""

from __future__ import annotations

import dataclasses
import logging
import time

import jax.numpy as jnp
import numpy as np

from gr_jax.ops import l2_normalize
from gr_jax.tokenizers.configs import RQKMeansConfig
from gr_jax.tokenizers.health import HealthReport, compute_health
from gr_jax.tokenizers.kmeans import kmeans, kmeans_streamed, nearest_centroid, squared_distances
from gr_jax.tokenizers.sid_table import SIDTable


def _residual_update(r: np.ndarray, centroid: np.ndarray, tangent: bool) -> tuple[np.ndarray, np.ndarray]:
    """Next residual and the scale ``[N]`` applied to each row's assigned ``centroid``."""
    scale = np.sum(r * centroid, axis=1) if tangent else np.ones(len(r), r.dtype)
    return r - scale[:, None] * centroid, scale


def _prepare(x, normalize: bool) -> np.ndarray:
    """Inputs as float32, L2-normalized per row when ``normalize``."""
    x = jnp.asarray(x, jnp.float32)
    return np.asarray(l2_normalize(x) if normalize else x)


def _energy(r: np.ndarray) -> float:
    """Mean squared row norm."""
    return float(np.mean(np.sum(r.astype(np.float64) ** 2, axis=1)))


@dataclasses.dataclass
class RQResult:
    """A fitted RQ-KMeans tokenizer and the codes of the items it was fit on."""

    config: RQKMeansConfig
    codes: np.ndarray  # int32 [N, L]
    codebooks: np.ndarray  # float32 [L, K, D]; unit rows when tangent
    scales: np.ndarray  # float32 [N, L], per-item scale of each level's centroid
    code_scales: np.ndarray  # float32 [L, K], mean scale of the items fit to each code (1 for unused)
    residual_energy: np.ndarray  # float64 [L + 1], mean squared norm of the residual entering each level
    recon_error: float  # Σ‖x − reconstruct(codes)‖² / Σ‖x‖², x normalized as configured
    fit_seconds: float

    def prepare(self, x) -> np.ndarray:
        """Inputs as float32, L2-normalized per row when the config says so."""
        return _prepare(x, self.config.normalize_input)

    def _walk(self, x, codes: np.ndarray | None) -> tuple[np.ndarray, list[np.ndarray]]:
        """Codes ``[N, L]`` and residuals ``r_0 .. r_L`` of ``x``, following ``codes`` or nearest centroids."""
        r = self.prepare(x)
        chosen, residuals = [], [r]
        for level, codebook in enumerate(self.codebooks):
            code = (np.asarray(nearest_centroid(r, codebook, spherical=self.config.tangent)) if codes is None
                    else np.asarray(codes)[:, level])
            r, _ = _residual_update(r, codebook[code], self.config.tangent)
            chosen.append(code)
            residuals.append(r)
        return np.stack(chosen, axis=1).astype(np.int32), residuals

    def residuals(self, x, codes: np.ndarray | None = None) -> list[np.ndarray]:
        """Residuals ``r_0 .. r_L`` of ``x`` following ``codes`` (nearest centroids when None)."""
        return self._walk(x, codes)[1]

    def encode(self, x) -> np.ndarray:
        """Codes ``[N, L]`` of new items by nearest centroid per level (no balancing)."""
        return self._walk(x, None)[0]

    def reconstruct(self, codes: np.ndarray, scales: np.ndarray | None = None) -> np.ndarray:
        """``Σ_l s_l c_l`` for codes ``[N, L]``; ``scales`` ``[N, L]`` default to ``code_scales``."""
        codes = np.asarray(codes)
        levels = range(codes.shape[1])
        if scales is None:
            scales = np.stack([self.code_scales[l][codes[:, l]] for l in levels], axis=1)
        return sum(scales[:, l, None] * self.codebooks[l][codes[:, l]] for l in levels)

    def last_level_costs(self, x) -> np.ndarray:
        """Cost ``[N, K]`` of giving each fitted item each last-level code (for ``reassign_last_level``).

        Squared distance from the residual entering the last level to each centroid (for tangent,
        between the unit residual and the unit centroid, i.e. ``2 − 2 cos``).
        """
        r = jnp.asarray(self.residuals(x, self.codes)[-2])
        if self.config.tangent:
            r = l2_normalize(r)
        return np.asarray(squared_distances(r, jnp.asarray(self.codebooks[-1])))

    def health(self) -> HealthReport:
        """Codebook health of the fitted codes."""
        sizes = (self.config.codebook_size,) * self.config.num_levels
        return compute_health(self.codes, sizes, residual_energy=self.residual_energy,
                              recon_error=self.recon_error)

    def to_sid_table(self) -> SIDTable:
        """The fitted codes and codebooks as a ``SIDTable`` (config in ``meta``)."""
        return SIDTable(codes=self.codes, codebook_sizes=(self.config.codebook_size,) * self.config.num_levels,
                        codebooks=list(self.codebooks),
                        meta={"tokenizer": "rq_kmeans", **dataclasses.asdict(self.config)})


def _code_scales(codes: np.ndarray, scales: np.ndarray, k: int) -> np.ndarray:
    counts = np.stack([np.bincount(c, minlength=k) for c in codes.T])
    sums = np.stack([np.bincount(c, weights=s, minlength=k) for c, s in zip(codes.T, scales.T)])
    return np.where(counts > 0, sums / np.maximum(counts, 1), 1.0).astype(np.float32)


def fit_rq_kmeans(x, config: RQKMeansConfig = RQKMeansConfig()) -> RQResult:
    """Fits RQ-KMeans to item vectors ``x [N, D]`` (needs ``N >= codebook_size``)."""
    start = time.perf_counter()
    x = np.asarray(x, np.float32)
    if x.ndim != 2:
        raise ValueError(f"RQ-KMeans expects item vectors of shape [N, D], got {x.shape}")
    x = r = _prepare(x, config.normalize_input)
    codes, codebooks, scales, energy = [], [], [], [_energy(r)]
    for level in range(config.num_levels):
        if config.chunk_size:
            centroids, code, _ = kmeans_streamed(r, config.codebook_size, num_iters=config.num_iters,
                                                 seed=config.seed + level, spherical=config.tangent,
                                                 chunk_size=config.chunk_size)
        else:
            centroids, code = kmeans(r, config.codebook_size, num_iters=config.num_iters, seed=config.seed + level,
                                     balanced=config.balanced, spherical=config.tangent)
        centroids, code = np.asarray(centroids), np.asarray(code)
        r, scale = _residual_update(r, centroids[code], config.tangent)
        codes.append(code)
        codebooks.append(centroids)
        scales.append(scale)
        energy.append(_energy(r))
        logging.info("RQ-KMeans level %d: residual energy %.4g -> %.4g, %d of %d codes used.", level,
                     energy[-2], energy[-1], len(np.unique(code)), config.codebook_size)
    codes = np.stack(codes, axis=1).astype(np.int32)
    scales = np.stack(scales, axis=1).astype(np.float32)
    result = RQResult(config=config, codes=codes, codebooks=np.stack(codebooks).astype(np.float32),
                      scales=scales, code_scales=_code_scales(codes, scales, config.codebook_size),
                      residual_energy=np.asarray(energy), recon_error=0.0, fit_seconds=0.0)
    error = np.sum((x - result.reconstruct(codes)).astype(np.float64) ** 2)
    result.recon_error = float(error / max(np.sum(x.astype(np.float64) ** 2), 1e-30))
    result.fit_seconds = time.perf_counter() - start
    return result
