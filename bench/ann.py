"""ScaNN vs exact top-k retrieval: queries/s at batch 1 and 256, recall@10 against exact.

    python bench/ann.py [--num_vectors 1000000] [--dim 64] [--clusters 1000] [--sigma 0.1] [--queries 10000]
                        [--item_vectors PATH.npy [--skip_synthetic] [--leaves_to_search 0,7]] [--workdir DIR]

Synthetic catalogue (numpy ``default_rng(--seed)``): ``--clusters`` centres ~ N(0, I_dim), each
scaled to unit norm; each of the ``--num_vectors`` items picks a centre uniformly at random and is
``centre + sigma * N(0, I_dim)`` scaled to unit norm. The ``--queries`` queries are drawn the same
way from the same centres. With ``--item_vectors`` the benchmark also runs on the rows of that
``.npy`` file ``[N, d]`` as they are (no normalisation), with ``--queries`` rows drawn at random
as queries (item-to-item retrieval), through the tree even below ``brute_force_below``.

Exact = ``gr_jax.retrieval.exact.exact_topk`` (jitted dot products + ``lax.top_k``, catalogue on
device); ScaNN = ``build_index`` with the default ``ScannConfig`` (auto leaves, AH, reorder) except
``recall_sample=0`` (no recall log inside the timed build).
Batch-256 throughput runs every full batch of 256 queries; batch 1 runs single queries (at most
``--batch1_queries`` for exact, every query for ScaNN); each after a warm-up call. Prints one
JSON line per catalogue: build and save/load seconds, index size, queries/s, ``recall@10`` and
``speedup`` (ScaNN / exact queries/s at batch 256). The index is saved under ``--workdir``
(a temporary folder by default).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import emit  # noqa: E402
from gr_jax.retrieval.exact import exact_topk, topk_recall  # noqa: E402
from gr_jax.retrieval.scann_config import ScannConfig  # noqa: E402
from gr_jax.retrieval.scann_index import build_index, load_index  # noqa: E402

BATCH, K = 256, 10


def clustered(num_items: int, num_queries: int, dim: int, clusters: int, sigma: float, seed: int):
    """Unit items and queries around the same unit centres (see the module docstring)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim), np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)

    def draw(n):
        points = centres[rng.integers(0, clusters, n)] + sigma * rng.standard_normal((n, dim), np.float32)
        return points / np.linalg.norm(points, axis=1, keepdims=True)

    return draw(num_items), draw(num_queries)


def timed_search(search, queries: np.ndarray, batch: int) -> tuple[float, np.ndarray]:
    """Queries/s of ``search(queries) -> (ids, scores)`` over ``queries`` in consecutive batches of
    ``batch`` (after one warm-up batch), and the ids it found ``[len(queries), k]``."""
    jax.block_until_ready(search(queries[:batch]))
    ids = []
    tic = time.perf_counter()
    for start in range(0, len(queries), batch):
        ids.append(jax.block_until_ready(search(queries[start:start + batch]))[0])
    rate = len(queries) / (time.perf_counter() - tic)
    return rate, np.concatenate([np.asarray(i) for i in ids])


def run(name: str, vectors: np.ndarray, queries: np.ndarray, workdir: str, batch1_queries: int,
        config: ScannConfig = ScannConfig(recall_sample=0), **info) -> dict:
    """Builds, saves and reloads the ScaNN index of ``vectors`` and times it against exact top-k
    (``config.recall_sample=0``: recall is measured here, not inside the timed build).

    Returns the JSON record, starting with ``name`` and ``info``."""
    tic = time.perf_counter()
    built = build_index(vectors, config)
    build_s = time.perf_counter() - tic
    directory = os.path.join(workdir, f"scann_{name}")
    built.save(directory)
    tic = time.perf_counter()
    index = load_index(directory)
    load_s = time.perf_counter() - tic
    on_device = jax.device_put(vectors)
    exact = lambda q: exact_topk(q, on_device, K)  # noqa: E731
    full = queries[:len(queries) // BATCH * BATCH]
    exact_256, exact_ids = timed_search(exact, full, BATCH)
    scann_256, scann_ids = timed_search(lambda q: index.search(q, K), full, BATCH)
    config = index.config
    tree = {"num_leaves": config.num_leaves, "num_leaves_to_search": config.num_leaves_to_search,
            "reorder_k": config.reorder_k} if index.mode == "tree_ah" else {}
    return {"name": "ann", "data": name, **info, "num_vectors": len(vectors), "dim": vectors.shape[1],
            "queries": len(full), "mode": index.mode, **tree,
            "build_s": round(build_s, 2), "load_s": round(load_s, 2),
            "index_mb": round(sum(e.stat().st_size for e in os.scandir(directory)) / 2**20, 1),
            "exact_qps_b1": round(timed_search(exact, queries[:batch1_queries], 1)[0], 1),
            "scann_qps_b1": round(timed_search(lambda q: index.search(q, K), queries, 1)[0], 1),
            "exact_qps_b256": round(exact_256, 1), "scann_qps_b256": round(scann_256, 1),
            "recall@10": round(topk_recall(scann_ids, exact_ids), 4), "speedup": round(scann_256 / exact_256, 2),
            "device": str(jax.devices()[0]), "cpu_count": os.cpu_count()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num_vectors", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--clusters", type=int, default=1_000)
    parser.add_argument("--sigma", type=float, default=0.1, help="per-coordinate noise around a unit centre")
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--batch1_queries", type=int, default=100, help="single queries timed for exact top-k")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--item_vectors", help="also benchmark the rows of this .npy file [N, d]")
    parser.add_argument("--skip_synthetic", action="store_true", help="only the --item_vectors catalogue")
    parser.add_argument("--leaves_to_search", default="0",
                        help="--item_vectors: comma-separated ScannConfig.num_leaves_to_search values, one run "
                             "each (0 = auto, 5%% of the leaves)")
    parser.add_argument("--workdir", help="where the indexes are saved (default: a temporary folder)")
    args = parser.parse_args()
    if args.queries < BATCH:
        parser.error(f"--queries={args.queries} must be at least the batch size {BATCH}")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with tempfile.TemporaryDirectory() as scratch:
        workdir = args.workdir or scratch
        if not args.skip_synthetic:
            vectors, queries = clustered(args.num_vectors, args.queries, args.dim, args.clusters, args.sigma,
                                         args.seed)
            emit(run("synthetic", vectors, queries, workdir, args.batch1_queries, clusters=args.clusters,
                     sigma=args.sigma, seed=args.seed))
        if args.item_vectors:
            vectors = np.load(args.item_vectors).astype(np.float32)
            rows = np.random.default_rng(args.seed).choice(len(vectors), args.queries,
                                                           replace=len(vectors) < args.queries)
            # A real catalogue is usually below ScannConfig.brute_force_below: force the tree to measure it.
            for leaves in (int(v) for v in args.leaves_to_search.split(",")):
                config = ScannConfig(recall_sample=0, brute_force_below=0, num_leaves_to_search=leaves)
                emit(run("item_vectors", vectors, vectors[rows], workdir, args.batch1_queries, config,
                         path=args.item_vectors))


if __name__ == "__main__":
    main()
