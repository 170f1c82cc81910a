"""RQ-KMeans fitting at catalogue scale: streamed k-means over the local devices (issue "catalogue scale").

    python bench/tokenize_scale.py --vectors 1000000 [--dim 64] [--chunk_size 65536]
    XLA_FLAGS=--xla_force_host_platform_device_count=8 python bench/tokenize_scale.py --vectors 1000000

Fits 3 levels × 256 codes (``RQKMeansConfig`` defaults but ``chunk_size``) to ``--vectors`` random
clustered vectors (4,096 Gaussian centres, seed 0), then the codebook health report. One JSON line:
``vectors``, ``devices``, ``seconds`` (fit), ``health_seconds``, ``peak_rss_gb`` and per-level
usage/perplexity with the collision rate.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import emit  # noqa: E402
from gr_jax.tokenizers.health import compute_health  # noqa: E402
from gr_jax.tokenizers.rq_kmeans import RQKMeansConfig, fit_rq_kmeans  # noqa: E402


def clustered_vectors(n: int, dim: int, seed: int = 0, centres: int = 4096) -> np.ndarray:
    """``n`` float32 vectors around random centres, generated in blocks (no float64 copy of all)."""
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(centres, dim)).astype(np.float32)
    out = np.empty((n, dim), np.float32)
    for start in range(0, n, 1 << 20):
        stop = min(n, start + (1 << 20))
        out[start:stop] = means[rng.integers(0, centres, stop - start)]
        out[start:stop] += 0.3 * rng.standard_normal((stop - start, dim), np.float32)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vectors", type=int, required=True)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--chunk_size", type=int, default=65_536)
    parser.add_argument("--num_iters", type=int, default=RQKMeansConfig.num_iters)
    args = parser.parse_args()
    x = clustered_vectors(args.vectors, args.dim)
    config = RQKMeansConfig(chunk_size=args.chunk_size, num_iters=args.num_iters)
    tic = time.perf_counter()
    result = fit_rq_kmeans(x, config)
    seconds = time.perf_counter() - tic
    tic = time.perf_counter()
    health = compute_health(result.codes, config.codebook_size, residual_energy=result.residual_energy)
    health_seconds = time.perf_counter() - tic
    report = health.to_dict()
    emit({"name": "tokenize_scale", "vectors": args.vectors, "dim": args.dim, "devices": len(jax.local_devices()),
          "levels": config.num_levels, "codebook_size": config.codebook_size, "chunk_size": args.chunk_size,
          "num_iters": args.num_iters, "seconds": round(seconds, 1), "health_seconds": round(health_seconds, 1),
          "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
          "recon_error": round(result.recon_error, 4),
          "health": {k: v for k, v in report.items() if k != "levels"}
          | {"levels": [{k: lv[k] for k in ("usage", "perplexity") if k in lv} for lv in report["levels"]]},
          "cpu_count": os.cpu_count()})


if __name__ == "__main__":
    main()
