"""The per-user top-K cache (``gr_jax.serving.topk_cache``): build throughput, lookup latency,
incremental refresh, and how stale cached lists get as histories advance.

    python bench/topk_cache.py [--num_users 1000000] [--k 20] [--changed_fraction 0.01]
                               [--staleness_config cooccurrence:scientific | --staleness_workdir WORKDIR]
                               [--truncations 1,2,5]
                               [--skip_synthetic] [--skip_staleness] [--workdir DIR]

Synthetic part (numpy ``default_rng(--seed)``): ``--num_users`` users with 3 + Poisson(12) events
over ``--num_items`` Zipf-distributed items, and a stand-in model that costs nothing (items from
a hash of the user and the last item, descending scores), so the numbers are the cache's own:

- ``build``: ``TopKCache.refresh`` of every user into an empty SQLite cache (the cache stage's
  path: history digests, stale check, packing, one transaction per ``--batch_size`` users);
- ``lookup_single`` / ``lookup_batch``: latency p50/p99 of ``lookup`` of 1 and ``--lookup_batch``
  random stored users (a warm page cache, one connection);
- ``refresh``: ``--changed_fraction`` of the users get one more event; time of the incremental
  refresh over all users (digests, stale check, recompute and rewrite of the changed ones).

Staleness: the trained model of ``--staleness_workdir`` (e.g. the Semantic Convergence LLM of
``configs/semconv.py:scientific``, its best checkpoint), or else the co-occurrence recommender of
``--staleness_config`` fitted on the real data read in place through the repo's data stage. For
each ``t`` of ``--truncations`` the cache is built from every user's history without its last
``t`` events (the lists served ``t`` events ago) and compared with the
top-K recomputed from the full history: ``recall@10`` = |cached top-10 ∩ fresh top-10| / 10 and
``recall@20`` likewise, averaged over users. Prints one JSON line per measurement (``name``).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import emit, load_config, load_dataset  # noqa: E402
from gr_jax.data.dataset import Interactions  # noqa: E402
from gr_jax.serving.topk_cache import TopKCache  # noqa: E402
from gr_jax.stages.cache import UserHistories, recommend_from_interactions, sequence_digests  # noqa: E402


def synthetic_interactions(num_users: int, num_items: int, seed: int) -> Interactions:
    rng = np.random.default_rng(seed)
    lengths = 3 + rng.poisson(12, num_users)
    items = (rng.zipf(1.2, int(lengths.sum())) - 1) % num_items
    return Interactions([""] * num_users, np.concatenate([[0], np.cumsum(lengths)]), items.astype(np.int32))


def synthetic_recommend(interactions: Interactions, num_items: int, k: int):
    """A model that costs nothing: items from the user id and their last item, descending scores."""
    def recommend(users, histories):
        last = np.array([h[-1] for h in histories], np.int64)
        items = (last[:, None] * 7919 + users[:, None] * 31 + np.arange(k) * 104729) % num_items
        return items.astype(np.int32), np.broadcast_to(1.0 / (1.0 + np.arange(k, dtype=np.float32)), items.shape)

    return recommend


def file_bytes(path: str) -> int:
    """The cache's size on disk: the database file and its write-ahead log."""
    return sum(os.path.getsize(path + suffix) for suffix in ("", "-wal") if os.path.exists(path + suffix))


def percentiles_us(seconds: list[float]) -> dict:
    values = np.asarray(seconds) * 1e6
    return {"p50_us": float(np.percentile(values, 50)), "p99_us": float(np.percentile(values, 99)),
            "mean_us": float(values.mean())}


def append_event(interactions: Interactions, users: np.ndarray, num_items: int, seed: int) -> Interactions:
    """``interactions`` with one more event at the end of each of ``users``."""
    extra = np.zeros(len(interactions), np.int64)
    extra[users] = 1
    lengths = interactions.lengths + extra
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    items = np.zeros(offsets[-1], np.int32)
    position = np.arange(len(interactions.items)) + np.repeat(offsets[:-1] - interactions.offsets[:-1],
                                                                interactions.lengths)
    items[position] = interactions.items
    items[offsets[users + 1] - 1] = np.random.default_rng(seed).integers(0, num_items, len(users))
    return Interactions(interactions.user_keys, offsets, items)


def run_synthetic(args, workdir: str) -> None:
    interactions = synthetic_interactions(args.num_users, args.num_items, args.seed)
    recommend = synthetic_recommend(interactions, args.num_items, args.k)
    path = os.path.join(workdir, "synthetic.sqlite")
    cache = TopKCache.create(path, args.k, "synthetic")
    tic = time.perf_counter()
    digests = sequence_digests(interactions)
    digest_seconds = time.perf_counter() - tic
    counts = cache.refresh(recommend, UserHistories(interactions), batch_size=args.batch_size,
                           progress_every=args.num_users // 4, digests=digests)
    seconds = time.perf_counter() - tic
    emit({"name": "build", "users": len(cache), "k": args.k, "seconds": seconds,
          "users_per_second": args.num_users / seconds, "digest_seconds": digest_seconds,
          "write_seconds": counts["seconds"], "batch_size": args.batch_size,
          "bytes_per_user": file_bytes(path) / args.num_users, "model": "synthetic (no model cost)"})

    rng = np.random.default_rng(args.seed + 1)
    times = []
    for user in rng.integers(0, args.num_users, args.single_lookups):
        tic = time.perf_counter()
        cache.lookup(int(user))
        times.append(time.perf_counter() - tic)
    emit({"name": "lookup_single", "users_in_cache": args.num_users, "lookups": args.single_lookups}
         | percentiles_us(times))
    times = []
    for _ in range(args.batched_lookups):
        users = rng.integers(0, args.num_users, args.lookup_batch)
        tic = time.perf_counter()
        _, _, found = cache.lookup(users)
        times.append(time.perf_counter() - tic)
        assert found.all()
    emit({"name": f"lookup_batch{args.lookup_batch}", "users_in_cache": args.num_users,
          "batch": args.lookup_batch, "lookups": args.batched_lookups} | percentiles_us(times)
         | {"users_per_second": args.lookup_batch / np.mean(times)})

    changed = np.sort(rng.choice(args.num_users, int(args.changed_fraction * args.num_users), replace=False))
    advanced = append_event(interactions, changed, args.num_items, args.seed + 2)
    tic = time.perf_counter()
    digests = sequence_digests(advanced)
    digest_seconds = time.perf_counter() - tic
    counts = cache.refresh(synthetic_recommend(advanced, args.num_items, args.k), UserHistories(advanced),
                           batch_size=args.batch_size, progress_every=0, digests=digests)
    seconds = time.perf_counter() - tic
    assert counts["recomputed"] == counts["changed"] == len(changed), counts
    emit({"name": "refresh", "users_in_cache": args.num_users, "changed_fraction": args.changed_fraction,
          "recomputed": counts["recomputed"], "seconds": seconds, "digest_seconds": digest_seconds,
          "stale_check_and_write_seconds": counts["seconds"], "model": "synthetic (no model cost)"})
    cache.close()


def staleness_model(args):
    """(config, dataset, ranking of a batch, model name): the trained model of ``--staleness_workdir``
    (its best checkpoint), else the co-occurrence recommender of ``--staleness_config``, fitted here."""
    if args.staleness_workdir:
        import json

        import jax
        import ml_collections

        from gr_jax import stages

        with open(stages.training_config_path(args.staleness_workdir)) as f:
            config = ml_collections.ConfigDict(json.load(f))
        artifacts = stages.Artifacts(config, args.staleness_workdir)
        model, params = artifacts.model(), stages.load_params(artifacts)
        topk = jax.jit(lambda p, batch: model.topk(p, batch, args.k))
        return config, artifacts.dataset, lambda batch: np.asarray(topk(params, batch)), config.model.name
    from gr_jax.models import baselines

    config = load_config(args.staleness_config)
    if config.model.name != "cooccurrence":
        raise ValueError(f"--staleness_config={args.staleness_config}: expected a cooccurrence config")
    dataset = load_dataset(config)
    model = baselines.build(config.model, dataset.num_items)
    params = model.fit(dataset.users)
    return config, dataset, lambda batch: model.topk(params, batch, args.k), "cooccurrence"


def run_staleness(args, workdir: str) -> None:
    config, dataset, ranking, model_name = staleness_model(args)
    users = dataset.users
    batch_size = config.eval.batch_size

    def top_k(interactions: Interactions) -> np.ndarray:
        recommend = recommend_from_interactions(ranking, interactions, config.data.max_history, batch_size, args.k)
        return recommend(np.arange(len(interactions)), [])[0]

    tic = time.perf_counter()
    fresh = top_k(users)
    fresh_seconds = time.perf_counter() - tic
    position = np.arange(len(users.items)) - np.repeat(users.offsets[:-1], users.lengths)
    for cut in args.truncations:
        keep = position < np.repeat(users.lengths - cut, users.lengths)
        older = users.select_events(keep)
        path = os.path.join(workdir, f"staleness_{cut}.sqlite")
        cache = TopKCache.create(path, args.k, f"{model_name}-truncated-{cut}")
        tic = time.perf_counter()
        recommend = recommend_from_interactions(ranking, older, config.data.max_history, batch_size, args.k)
        cache.refresh(recommend, UserHistories(older), batch_size=batch_size, progress_every=0)
        build_seconds = time.perf_counter() - tic
        served = older.lengths > 0  # users with a history left after the cut
        cached, _, found = cache.lookup(np.arange(len(users)))
        assert found.all()
        result = {"name": f"staleness_{cut}", "events_behind": cut, "dataset": dataset.name,
                  "users": int(served.sum()), "k": args.k, "model": model_name}
        for n in (10, 20):
            overlap = [len(np.intersect1d(cached[u, :n], fresh[u, :n])) / n for u in np.flatnonzero(served)]
            result[f"recall@{n}"] = float(np.mean(overlap))
        emit(result | {"build_seconds": build_seconds, "users_per_second": len(users) / build_seconds,
                       "recompute_full_seconds": fresh_seconds})
        cache.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num_users", type=int, default=1_000_000)
    parser.add_argument("--num_items", type=int, default=50_000)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--batch_size", type=int, default=10_000, help="users per transaction (synthetic)")
    parser.add_argument("--single_lookups", type=int, default=10_000)
    parser.add_argument("--batched_lookups", type=int, default=1_000)
    parser.add_argument("--lookup_batch", type=int, default=256)
    parser.add_argument("--changed_fraction", type=float, default=0.01)
    parser.add_argument("--staleness_config", default="cooccurrence:scientific")
    parser.add_argument("--staleness_workdir", default="",
                        help="a trained run's WORKDIR (e.g. runs/semconv-sci): its model instead of co-occurrence")
    parser.add_argument("--truncations", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2, 5])
    parser.add_argument("--skip_synthetic", action="store_true")
    parser.add_argument("--skip_staleness", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default="", help="where the cache files go (default: a temporary folder)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger().setLevel(logging.INFO)  # progress of long builds (absl may own the root logger)
    workdir = args.workdir or tempfile.mkdtemp(prefix="topk_cache_bench_")
    os.makedirs(workdir, exist_ok=True)
    try:
        if not args.skip_synthetic:
            run_synthetic(args, workdir)
        if not args.skip_staleness:
            run_staleness(args, workdir)
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
