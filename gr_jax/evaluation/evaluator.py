"""Runs a model's top-K lists over leave-one-out splits and averages the metrics."""

from __future__ import annotations

from typing import Callable

import ml_collections
import numpy as np

from gr_jax.data.dataset import Interactions
from gr_jax.data.pipeline import eval_dataset
from gr_jax.evaluation.metrics import MetricAccumulator

TopK = Callable[[dict], np.ndarray]  # batch -> [B, list_size] ranked item ids


def evaluate_split(topk: TopK, interactions: Interactions, split: str, data: ml_collections.ConfigDict,
                   evaluation: ml_collections.ConfigDict) -> dict[str, float]:
    """Recall/NDCG@ks and MRR of ``topk`` on one split, over every user of this process."""
    accumulator = MetricAccumulator(evaluation.ks, evaluation.list_size)
    for batch in eval_dataset(interactions, split, max_history=data.max_history, batch_size=evaluation.batch_size):
        accumulator.add(np.asarray(topk(batch)), batch["target"], batch["valid"])
    return accumulator.result()


def evaluate(topk: TopK, interactions: Interactions, config: ml_collections.ConfigDict) -> dict[str, dict]:
    """Metrics for every split in ``config.eval.splits``."""
    splits = [s.strip() for s in config.eval.splits.split(",") if s.strip()]
    return {split: evaluate_split(topk, interactions, split, config.data, config.eval) for split in splits}


def format_table(results: dict[str, dict], title: str = "") -> str:
    """A fixed-width table: one row per split, one column per metric."""
    names = [n for n in next(iter(results.values())) if n != "num_users"]
    header = f"{'split':<8}" + "".join(f"{n:>11}" for n in names) + f"{'users':>8}"
    rows = [f"{split:<8}" + "".join(f"{m[n]:>11.4f}" for n in names) + f"{m['num_users']:>8d}"
            for split, m in results.items()]
    return "\n".join(([title] if title else []) + [header, "-" * len(header)] + rows)
