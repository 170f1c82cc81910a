"""Pctx's per-item context clustering on Scientific's shapes: time and within-cluster error.

    python bench/pctx_clusters.py [--reference_commit fea7707]

Contexts are random (64-d, around a random centre per item) at the real per-item counts and
centroid allocation of Scientific's training split. Prints one JSON line per implementation: the
shared JAX k-means (``pctx_tokenizer.cluster_items``: first call, compiling, and a second call)
and, with ``--reference_commit``, the per-item NumPy k-means++ that commit carried (loaded from
git history), for the record of what the shared k-means replaced.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import emit, load_config, load_dataset  # noqa: E402
from gr_jax.data.splits import train_event_mask  # noqa: E402
from gr_jax.tokenizers import pctx_tokenizer  # noqa: E402
from gr_jax.tokenizers.configs import PctxConfig  # noqa: E402


def reference_module(commit: str):
    """The Pctx tokenizer module of ``commit`` (its per-item NumPy ``kmeans_pp``)."""
    source = subprocess.run(["git", "show", f"{commit}:gr_jax/tokenizers/pctx.py"], capture_output=True, text=True,
                            check=True).stdout
    path = os.path.join(tempfile.mkdtemp(), "reference_pctx.py")
    with open(path, "w") as f:
        f.write(source)
    spec = importlib.util.spec_from_file_location("reference_pctx", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["reference_pctx"] = module
    spec.loader.exec_module(module)
    return module


def squared_error(groups, fits) -> float:
    return float(sum(((x - centroids[labels]) ** 2).sum() for x, (centroids, labels) in zip(groups, fits)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference_commit", default="", help="also time this commit's NumPy per-item k-means")
    args = parser.parse_args()
    config = load_config("pctx:scientific")
    dataset = load_dataset(config)
    settings = PctxConfig(**config.tokenizer.pctx.to_dict())
    items = dataset.users.items
    train = np.flatnonzero(train_event_mask(dataset.users))
    counts = np.bincount(items[train], minlength=dataset.num_items)
    ks = pctx_tokenizer.centroid_counts(counts, settings)
    by_item = np.split(train[np.argsort(items[train], kind="stable")], np.cumsum(counts)[:-1])
    rng = np.random.default_rng(0)
    contexts = rng.normal(size=(len(items), 64)) + 2.0 * rng.normal(size=(dataset.num_items, 64))[items]
    active = [i for i in range(dataset.num_items) if len(by_item[i])]
    groups, group_ks = [contexts[by_item[i]] for i in active], [int(ks[i]) for i in active]
    shape = {"items": len(active), "clustered": sum(k > 1 for k in group_ks), "max_contexts": max(map(len, groups))}
    for attempt in ("first_call", "second_call"):
        tic = time.perf_counter()
        fits = pctx_tokenizer.cluster_items(groups, group_ks, settings.kmeans_iters, settings.seed)
        emit({"name": "pctx_clusters", "implementation": "jax_kmeans_groups", "call": attempt, **shape,
              "seconds": round(time.perf_counter() - tic, 2), "centroids": sum(len(c) for c, _ in fits),
              "squared_error": round(squared_error(groups, fits), 1)})
    if args.reference_commit:
        reference = reference_module(args.reference_commit)
        generator, tic = np.random.default_rng(settings.seed), time.perf_counter()
        fits = [reference.kmeans_pp(x, k, generator, settings.kmeans_iters) for x, k in zip(groups, group_ks)]
        emit({"name": "pctx_clusters", "implementation": f"numpy_kmeans_pp@{args.reference_commit}", **shape,
              "seconds": round(time.perf_counter() - tic, 2), "centroids": sum(len(c) for c, _ in fits),
              "squared_error": round(squared_error(groups, fits), 1)})


if __name__ == "__main__":
    main()
