"""Shared helpers of the benchmark scripts: config loading, dataset build, matmul peak, JSON output."""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from gr_jax.data import tfds_builder


def load_config(spec: str):
    """``'sasrec:scientific'`` -> ``configs.sasrec.get_config('scientific')``."""
    name, _, arg = spec.partition(":")
    return importlib.import_module(f"configs.{name}").get_config(arg or None)


def load_dataset(config, cache_dir: str = "runs/bench-data"):
    """Builds (once) and loads the dataset of ``config.data`` through the TFDS ArrayRecord builder."""
    return tfds_builder.load(tfds_builder.build(config.data, os.path.join(cache_dir, "tfds")))


def matmul_peak_gflops(size: int = 2048, repeats: int = 10, dtype=jnp.float32) -> float:
    """Measured matmul throughput (GFLOP/s) of this process's default device in ``dtype`` (fp32
    matmuls run at XLA's default precision, TF32 on recent NVIDIA GPUs)."""
    a = jnp.asarray(np.random.default_rng(0).standard_normal((size, size), np.float32), dtype)
    matmul = jax.jit(lambda x, y: x @ y)
    matmul(a, a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        tic = time.perf_counter()
        matmul(a, a).block_until_ready()
        best = min(best, time.perf_counter() - tic)
    return 2 * size**3 / best / 1e9


RANKING_METRICS = [f"{split}_{m}@{k}" for split in ("valid", "test") for m in ("recall", "ndcg") for k in (5, 10)]


def ranking_record(metrics_path: str) -> dict:
    """Valid and test R@5/10, N@5/10 and test tail R@10 of an eval stage's ``metrics.json``, flat and rounded."""
    with open(metrics_path) as f:
        return ranking_fields(json.load(f))


def ranking_fields(metrics: dict) -> dict:
    """``ranking_record``'s fields of evaluation results (``gr_jax.evaluation.evaluator.evaluate``'s form)."""
    record = {}
    for key in RANKING_METRICS:
        split, metric = key.split("_", 1)
        record[key] = round(metrics[split][metric], 4)
    record["test_tail_recall@10"] = round(metrics["test/tail"]["recall@10"], 4)
    return record


def seed_summary(records: list[dict]) -> dict:
    """The mean and sample std (0 for one record) of each ``ranking_record`` metric over ``records``
    (one per seed), rounded as ``ranking_record`` rounds."""
    summary = {}
    for key in RANKING_METRICS + ["test_tail_recall@10"]:
        values = np.array([r[key] for r in records])
        summary[key] = round(float(values.mean()), 4)
        summary[f"{key}_std"] = round(float(values.std(ddof=1)), 4) if len(values) > 1 else 0.0
    return summary


LINKED_PARTS = ("data", "features", "tokenize", "train")


def linked_workdir(run: str, *name: str) -> str:
    """``run/<name...>``, a workdir that links the run's data, features, SIDs and trained parameters, so
    stages run there read the run's artifacts and write their own results beside it."""
    workdir = os.path.join(run, *name)
    os.makedirs(workdir, exist_ok=True)
    for part in LINKED_PARTS:
        if os.path.exists(os.path.join(run, part)) and not os.path.exists(os.path.join(workdir, part)):
            os.symlink(os.path.abspath(os.path.join(run, part)), os.path.join(workdir, part))
    return workdir


SPLITS = ("valid", "test")


def trained_fingerprint(run: str) -> str:
    """A short hash of the run's training config and best checkpoint steps: the key of what a bench
    caches from the trained model, so that a run retrained in place is ranked anew."""
    from gr_jax import stages

    digest = hashlib.sha1()
    with open(stages.training_config_path(run), "rb") as f:
        digest.update(f.read())
    best = os.path.join(run, "train", "checkpoints", "best")
    digest.update(",".join(sorted(os.listdir(best)) if os.path.isdir(best) else []).encode())
    return digest.hexdigest()[:10]


def save_npz(path: str, **arrays) -> None:
    """``np.savez`` through a temporary file and a rename, so a killed bench leaves no half-written cache."""
    partial = path + ".partial.npz"
    np.savez(partial, **arrays)
    os.replace(partial, path)


def open_run(run: str, name: str, **model_overrides):
    """A finished run's ``stages.Artifacts`` in ``linked_workdir(run, name)``, under the config the run
    trained with (``model_overrides`` applied), its data stage rerun (reusing the run's dataset, or
    rebuilding it if its source files changed)."""
    from gr_jax import stages

    with open(stages.training_config_path(run)) as f:
        config = ml_collections.ConfigDict(json.load(f))
    config.model.update(model_overrides)
    config.stages = "data"
    return stages.run(config, linked_workdir(run, name))


def per_user(outputs, artifacts, label: str) -> dict[str, list[np.ndarray]]:
    """``{split: [array [num_users, ...] per output]}``: ``outputs(batch) -> tuple of [B, ...] arrays`` on
    every user's valid and test example (rows of users without one stay zero)."""
    from gr_jax.data.pipeline import eval_dataset

    config, users = artifacts.config, artifacts.dataset.users
    result = {}
    for split in SPLITS:
        tic, arrays = time.time(), None
        for batch in eval_dataset(users, split, max_history=config.data.max_history,
                                  batch_size=config.eval.batch_size):
            keep = np.asarray(batch["valid"], bool)
            values = [np.asarray(v) for v in outputs(batch)]
            if arrays is None:
                arrays = [np.zeros((len(users),) + v.shape[1:], v.dtype) for v in values]
            for array, value in zip(arrays, values):
                array[batch["user"][keep]] = value[keep]
        print(f"{label}: {split} in {time.time() - tic:.0f}s", file=sys.stderr, flush=True)
        result[split] = arrays
    return result


def evaluate_per_user(rank, artifacts) -> dict:
    """``ranking_fields`` of ``rank(split, users [B]) -> ranked items [B, K]`` under the run's evaluator
    (its ``eval.ks``, ``eval.list_size`` and tail fraction)."""
    from gr_jax.evaluation.evaluator import evaluate_split, tail_items

    config, dataset = artifacts.config, artifacts.dataset
    tail = tail_items(dataset.users, dataset.num_items, config.eval.tail_fraction)
    results = {}
    for split in SPLITS:
        metrics = evaluate_split(lambda batch, split=split: rank(split, batch["user"]), dataset.users, split,
                                 config.data, config.eval, tail)
        results[split], results[f"{split}/tail"] = metrics, metrics["tail"]
    return ranking_fields(results)


def emit(record: dict) -> None:
    """Prints one JSON line (the benchmark's result)."""
    print(json.dumps(record, default=float), flush=True)
