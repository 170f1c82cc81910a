"""ScaNN maximum-inner-product index over item vectors: build, batched search, save / load.

A catalogue of at least ``brute_force_below`` items gets ScaNN's tree + asymmetric-hashing
searcher: a k-means tree of ``num_leaves`` leaves of which ``num_leaves_to_search`` are scanned
per query, anisotropic (score-aware) product quantisation of ``dimensions_per_block`` dims per
4-bit block, then the best ``reorder_k`` candidates rescored exactly in float32. A smaller
catalogue gets exact float32 brute force (a tree would not pay for itself), and the log says so.
``build_index`` logs ScaNN's recall@k against ``exact.exact_topk`` on a sample of catalogue rows
used as queries. Scores are dot products, highest first.

``Index.save(dir)`` writes ScaNN's serialized searcher (asset paths relative to ``dir``, so the
folder can be moved) and ``index.json`` (sizes, mode, the resolved config); ``load_index(dir)``
reads both back.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from importlib.metadata import version
from typing import Any

import numpy as np

from gr_jax.retrieval.exact import check_shapes, exact_topk, topk_recall
from gr_jax.retrieval.scann_config import ScannConfig

HEADER = "index.json"
FORMAT_VERSION = 1


def _scann():
    try:
        import scann
    except ImportError as err:
        raise ImportError('ScaNN is not installed; install the retrieval extra: pip install -e ".[retrieval]" '
                          "(x86-64 Linux wheels only)") from err
    return scann


@dataclasses.dataclass(frozen=True)
class Index:
    """A built or loaded ScaNN searcher over ``num_items`` vectors of ``dim`` dims."""

    searcher: Any  # scann.scann_ops_pybind.ScannSearcher
    config: ScannConfig  # resolved: no auto fields (the tree fields go unused in brute_force mode)
    num_items: int
    dim: int
    mode: str  # "tree_ah" or "brute_force"

    def search(self, queries, k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k items of each query ``[B, dim]``: ``ids [B, k]`` int32 and dot-product ``scores [B, k]`` float32.

        ``k`` defaults to ``config.k``; a ``k`` above ``config.reorder_k`` widens the reordered
        candidate list to ``k``. Batches are split across ScaNN's threads.
        """
        k = self.config.k if k is None else k
        queries = np.ascontiguousarray(queries, np.float32)
        check_shapes(queries.shape, (self.num_items, self.dim), k)
        if not len(queries):
            return np.zeros((0, k), np.int32), np.zeros((0, k), np.float32)
        pre_reorder = max(k, self.config.reorder_k) if self.mode == "tree_ah" else None
        ids, scores = self.searcher.search_batched_parallel(
            queries, final_num_neighbors=k, pre_reorder_num_neighbors=pre_reorder,
            batch_size=max(1, -(-len(queries) // (os.cpu_count() or 1))))
        return ids.astype(np.int32), scores.astype(np.float32)

    def save(self, directory: str) -> None:
        """Writes the ScaNN assets and ``index.json`` into ``directory`` (created if missing)."""
        os.makedirs(directory, exist_ok=True)
        self.searcher.serialize(directory, relative_path=True)
        header = {"format_version": FORMAT_VERSION, "num_items": self.num_items, "dim": self.dim,
                  "mode": self.mode, "scann_version": version("scann"), "config": dataclasses.asdict(self.config)}
        with open(os.path.join(directory, HEADER), "w") as f:
            json.dump(header, f, indent=2)


def build_index(vectors, config: ScannConfig = ScannConfig()) -> Index:
    """Builds a dot-product ScaNN index over ``vectors [N, dim]`` and logs its recall@k vs exact."""
    vectors = np.ascontiguousarray(vectors, np.float32)
    check_shapes((1,) + vectors.shape[1:], vectors.shape, 1)
    if not np.isfinite(vectors).all():
        raise ValueError("item vectors contain NaN or inf; fix the embeddings before indexing")
    num_items, dim = vectors.shape
    config = config.resolve(num_items)
    scann = _scann()
    builder = scann.scann_ops_pybind.builder(vectors, config.k, "dot_product")
    if num_items < config.brute_force_below:
        mode = "brute_force"
        logging.info("ScaNN: %d items < brute_force_below=%d, so exact float32 brute force (no tree, no "
                     "hashing).", num_items, config.brute_force_below)
        searcher = builder.score_brute_force().build()
    else:
        mode = "tree_ah"
        searcher = (builder.tree(num_leaves=config.num_leaves, num_leaves_to_search=config.num_leaves_to_search,
                                 training_sample_size=config.training_sample_size)
                    .score_ah(config.dimensions_per_block,
                              anisotropic_quantization_threshold=config.anisotropic_quantization_threshold,
                              training_sample_size=config.training_sample_size)
                    .reorder(config.reorder_k)
                    .build())
        logging.info("ScaNN: tree + AH over %d items x %d dims: %d leaves, %d searched, %d dims/block, "
                     "reorder %d.", num_items, dim, config.num_leaves, config.num_leaves_to_search,
                     config.dimensions_per_block, config.reorder_k)
    index = Index(searcher, config, num_items, dim, mode)
    if config.recall_sample:
        rows = np.random.default_rng(0).choice(num_items, min(num_items, config.recall_sample), replace=False)
        logging.info("ScaNN recall@%d vs exact on %d catalogue rows as queries: %.4f", config.k, len(rows),
                     recall_vs_exact(index, vectors[rows], vectors, config.k))
    return index


def load_index(directory: str) -> Index:
    """Loads an index written by ``Index.save``."""
    path = os.path.join(directory, HEADER)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: {directory} is not an index written by Index.save")
    with open(path) as f:
        header = json.load(f)
    if header.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path} has format_version={header.get('format_version')}; this gr_jax reads "
                         f"{FORMAT_VERSION}; rebuild the index")
    searcher = _scann().scann_ops_pybind.load_searcher(directory)
    return Index(searcher, ScannConfig(**header["config"]), header["num_items"], header["dim"], header["mode"])


def recall_vs_exact(index: Index, queries, vectors, k: int) -> float:
    """Recall@k of the index's top-k against ``exact_topk`` over ``vectors`` (the indexed catalogue)."""
    vectors = np.asarray(vectors)
    if vectors.shape != (index.num_items, index.dim):
        raise ValueError(f"vectors {vectors.shape} are not the indexed catalogue ({index.num_items}, {index.dim})")
    ids, _ = index.search(queries, k)
    exact_ids, _ = exact_topk(queries, vectors, k)
    return topk_recall(ids, exact_ids)
