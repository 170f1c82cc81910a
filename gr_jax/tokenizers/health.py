"""Codebook health of semantic IDs, for any residual tokenizer (RQ-KMeans, RQ-VAE).

Per level, over the codes ``[N, L]``:

* ``usage``: fraction of the level's K codes given to at least one item (target >= 0.9);
* ``perplexity``: ``exp`` of the entropy of the code distribution (K when uniform). Usage alone
  misses hub collapse (every code used once, one code holding most items, as euclidean residual
  k-means does on noise-like residuals), so ``check_health`` also bounds ``perplexity / K``;
* ``energy_ratio``: ``E_{l+1} / E_l`` with ``E_l`` the mean squared norm of the residual entering
  level ``l`` (``E_0`` = the input), i.e. the share of energy left after the level (should be < 0.8);
* hubness of the code-assignment counts (items per code, unused codes included): ``count_cv``
  (std / mean; 0 when perfectly balanced), ``count_skewness`` (third standardized moment; large and
  positive when a few hub codes take many items) and ``max_code_share`` (largest code's share).

Overall: ``collision_rate`` (fraction of items whose full SID is shared with another item, before
any de-dup) and ``recon_error`` (``Σ‖x − x̂‖² / Σ‖x‖²``) when the tokenizer supplies it.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure

from gr_jax.tokenizers.configs import HealthThresholds


class CodebookHealthError(ValueError):
    """The semantic-ID codebooks fail a health check; the message names each check and its fix."""


@dataclasses.dataclass(frozen=True)
class LevelHealth:
    level: int
    codebook_size: int
    used: int
    usage: float
    perplexity: float
    count_cv: float
    count_skewness: float
    max_code_share: float
    energy_ratio: float | None
    counts: tuple[int, ...]  # items per code


@dataclasses.dataclass(frozen=True)
class HealthReport:
    num_items: int
    levels: tuple[LevelHealth, ...]
    num_unique_sids: int
    max_items_per_sid: int
    collision_rate: float
    recon_error: float | None
    residual_energy: tuple[float, ...] | None  # E_0 .. E_L

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _level_health(level: int, codes: np.ndarray, k: int, energy: Sequence[float] | None) -> LevelHealth:
    counts = np.bincount(codes, minlength=k)
    p = counts / max(len(codes), 1)
    nonzero = p[p > 0]
    std = counts.std()
    centered = counts - counts.mean()
    skewness = float(np.mean(centered ** 3) / std ** 3) if std > 0 else 0.0
    ratio = None
    if energy is not None:
        ratio = float(energy[level + 1] / energy[level]) if energy[level] > 0 else 0.0
    return LevelHealth(level=level, codebook_size=k, used=int(np.count_nonzero(counts)),
                       usage=float(np.count_nonzero(counts) / k),
                       perplexity=float(np.exp(-np.sum(nonzero * np.log(nonzero)))),
                       count_cv=float(std / counts.mean()) if counts.mean() > 0 else 0.0,
                       count_skewness=skewness, max_code_share=float(p.max(initial=0.0)), energy_ratio=ratio,
                       counts=tuple(int(c) for c in counts))


def compute_health(codes: np.ndarray, codebook_sizes: int | Sequence[int], *,
                   residual_energy: Sequence[float] | None = None,
                   recon_error: float | None = None) -> HealthReport:
    """Health report of codes ``[N, L]``; ``residual_energy`` holds ``E_0 .. E_L`` (L + 1 values)."""
    codes = np.asarray(codes)
    if codes.ndim != 2:
        raise ValueError(f"codes must have shape [N, L], got {codes.shape}")
    num_levels = codes.shape[1]
    sizes = (codebook_sizes,) * num_levels if isinstance(codebook_sizes, int) else tuple(codebook_sizes)
    if len(sizes) != num_levels:
        raise ValueError(f"got {len(sizes)} codebook sizes for {num_levels} levels")
    if residual_energy is not None and len(residual_energy) != num_levels + 1:
        raise ValueError(f"residual_energy needs {num_levels + 1} values (E_0 .. E_L), got {len(residual_energy)}")
    if codes.size and (codes.min() < 0 or np.any(codes.max(axis=0) >= np.asarray(sizes))):
        raise ValueError(f"codes must lie in [0, codebook_size) per level, sizes {sizes}")
    _, inverse, group_sizes = np.unique(codes, axis=0, return_inverse=True, return_counts=True)
    shared = group_sizes[inverse.reshape(-1)] > 1
    return HealthReport(
        num_items=len(codes),
        levels=tuple(_level_health(l, codes[:, l], sizes[l], residual_energy) for l in range(num_levels)),
        num_unique_sids=len(group_sizes), max_items_per_sid=int(group_sizes.max(initial=0)),
        collision_rate=float(shared.mean()) if len(codes) else 0.0,
        recon_error=None if recon_error is None else float(recon_error),
        residual_energy=None if residual_energy is None else tuple(float(e) for e in residual_energy))


_FIXES = {
    "usage": "use balanced assignment, a smaller codebook_size, or dead-code reset (RQ-VAE)",
    "perplexity_fraction": "a few hub codes take most items; use balanced assignment or residual='tangent'",
    "energy_ratio": "more num_iters, a larger codebook, or residual='euclidean' instead of 'tangent'; ratios near "
                    "1 at every level mean the embeddings have little cluster structure (check the encoder)",
    "collision_rate": "add a dedup digit (collisions.add_dedup_digit), reassign the last level "
                      "(collisions.reassign_last_level), or use a larger last codebook / more levels",
    "recon_error": "use more levels, larger codebooks or more iterations",
    "count_cv": "use balanced assignment or a smaller codebook_size",
}


def _failures(report: HealthReport, t: HealthThresholds) -> list[str]:
    checks = []  # (name, where, value, threshold, too_high)
    for lv in report.levels:
        where = f"level {lv.level}"
        checks += [("usage", where, lv.usage, t.min_usage, False),
                   ("perplexity_fraction", where, lv.perplexity / lv.codebook_size, t.min_perplexity_fraction, False),
                   ("energy_ratio", where, lv.energy_ratio, t.max_energy_ratio, True),
                   ("count_cv", where, lv.count_cv, t.max_count_cv, True)]
    checks += [("collision_rate", "all levels", report.collision_rate, t.max_collision_rate, True),
               ("recon_error", "all levels", report.recon_error, t.max_recon_error, True)]
    failed = []
    for name, where, value, threshold, too_high in checks:
        if value is None or threshold is None or (value <= threshold if too_high else value >= threshold):
            continue
        bound = "max" if too_high else "min"
        failed.append(f"{where} {name} = {value:.4g} (limit {bound}_{name} = {threshold:g}); fix: {_FIXES[name]}")
    return failed


def check_health(report: HealthReport, thresholds: HealthThresholds = HealthThresholds()) -> None:
    """Raises ``CodebookHealthError`` listing every failed check (value, limit, usual fix)."""
    failed = _failures(report, thresholds)
    if failed:
        raise CodebookHealthError("codebook health check failed:\n  " + "\n  ".join(failed))


def format_health(report: HealthReport) -> str:
    """Readable table of the report."""
    lines = [f"{'level':>5} {'K':>6} {'used':>6} {'usage':>6} {'perplexity':>10} {'energy':>7} "
             f"{'count_cv':>8} {'skew':>7} {'max_share':>9}"]
    for lv in report.levels:
        energy = "-" if lv.energy_ratio is None else f"{lv.energy_ratio:.3f}"
        lines.append(f"{lv.level:>5} {lv.codebook_size:>6} {lv.used:>6} {lv.usage:>6.3f} {lv.perplexity:>10.1f} "
                     f"{energy:>7} {lv.count_cv:>8.3f} {lv.count_skewness:>7.2f} {lv.max_code_share:>9.4f}")
    recon = "-" if report.recon_error is None else f"{report.recon_error:.4f}"
    lines.append(f"items {report.num_items}, unique SIDs {report.num_unique_sids}, collision rate "
                 f"{report.collision_rate:.4f} (max {report.max_items_per_sid} items per SID), recon error {recon}")
    return "\n".join(lines)


def _plot(report: HealthReport, path: str) -> None:
    panels = len(report.levels) + (report.residual_energy is not None)
    fig = Figure(figsize=(4 * panels, 3.2), layout="constrained")
    axes = fig.subplots(1, panels, squeeze=False)[0]
    for ax, lv in zip(axes, report.levels):
        counts = np.sort(np.asarray(lv.counts))[::-1]
        ax.bar(np.arange(len(counts)), counts, width=1.0)
        ax.set_title(f"level {lv.level}: usage {lv.usage:.2f}, ppl {lv.perplexity:.0f}")
        ax.set_xlabel("code (sorted by count)")
        ax.set_ylabel("items")
    if report.residual_energy is not None:
        ax = axes[-1]
        ax.bar(np.arange(len(report.residual_energy)), report.residual_energy)
        ax.set_xticks(np.arange(len(report.residual_energy)))
        ax.set_title("residual energy entering level")
        ax.set_xlabel("level (last = final residual)")
        ax.set_ylabel("mean ‖r‖²")
    fig.savefig(path, dpi=100)


def write_health(report: HealthReport, out_dir: str) -> tuple[str, str]:
    """Writes ``health.json`` and ``health.png`` into ``out_dir``; returns their paths."""
    os.makedirs(out_dir, exist_ok=True)
    json_path, png_path = os.path.join(out_dir, "health.json"), os.path.join(out_dir, "health.png")
    with open(json_path, "w", encoding="utf-8") as f:
        json.dump(report.to_dict(), f, indent=1)
    _plot(report, png_path)
    return json_path, png_path
