"""Runs a model's top-K lists over leave-one-out splits and averages the metrics.

Besides the all-users row of each split, ``eval.tail_fraction > 0`` adds ``SPLIT/head`` and
``SPLIT/tail`` rows: users whose target is among the least frequent ``tail_fraction`` of the
catalogue (by training-split interaction count) versus the rest.
"""

from __future__ import annotations

from collections.abc import Callable

import ml_collections
import numpy as np

from gr_jax.data.dataset import Interactions
from gr_jax.data.pipeline import eval_dataset
from gr_jax.data.splits import train_item_counts
from gr_jax.evaluation.metrics import MetricAccumulator

TopK = Callable[[dict], np.ndarray]  # batch -> [B, list_size] ranked item ids


def tail_items(interactions: Interactions, num_items: int, tail_fraction: float) -> np.ndarray:
    """Boolean ``[num_items]``: the ``tail_fraction`` least frequent items in training (ties by id)."""
    counts = train_item_counts(interactions, num_items)
    order = np.argsort(counts, kind="stable")
    tail = np.zeros(num_items, bool)
    tail[order[:int(round(tail_fraction * num_items))]] = True
    return tail


def evaluate_split(topk: TopK, interactions: Interactions, split: str, data: ml_collections.ConfigDict,
                   evaluation: ml_collections.ConfigDict, tail: np.ndarray | None = None) -> dict[str, float]:
    """Recall/NDCG@ks and MRR of ``topk`` on one split, over every user of this process.

    With ``tail`` (a boolean item mask) the result also holds ``head`` and ``tail`` sub-dicts
    for the users whose target is outside / inside it."""
    groups = {"": None} if tail is None else {"": None, "head": ~tail, "tail": tail}
    accumulators = {name: MetricAccumulator(evaluation.ks, evaluation.list_size) for name in groups}
    for batch in eval_dataset(interactions, split, max_history=data.max_history, batch_size=evaluation.batch_size):
        ranked, targets, valid = np.asarray(topk(batch)), batch["target"], np.asarray(batch["valid"], bool)
        for name, members in groups.items():
            keep = valid if members is None else valid & members[targets]
            accumulators[name].add(ranked, targets, keep)
    result = accumulators.pop("").result()
    return result | {name: acc.result(allow_empty=True) for name, acc in accumulators.items()}


def evaluate(topk: TopK, interactions: Interactions, config: ml_collections.ConfigDict,
             num_items: int | None = None) -> dict[str, dict]:
    """Metrics for every split in ``config.eval.splits`` (plus head/tail rows, see the module doc)."""
    splits = [s.strip() for s in config.eval.splits.split(",") if s.strip()]
    tail = None
    if config.eval.tail_fraction > 0:
        if num_items is None:
            raise ValueError("eval.tail_fraction > 0 needs the catalogue size (num_items)")
        tail = tail_items(interactions, num_items, config.eval.tail_fraction)
    results = {}
    for split in splits:
        metrics = evaluate_split(topk, interactions, split, config.data, config.eval, tail)
        groups = {name: metrics.pop(name) for name in ("head", "tail") if name in metrics}
        results[split] = metrics
        results.update({f"{split}/{name}": values for name, values in groups.items()})
    return results


def format_table(results: dict[str, dict], title: str = "") -> str:
    """A fixed-width table: one row per split (or split/group), one column per metric."""
    names = [n for n in next(iter(results.values())) if n != "num_users"]
    header = f"{'split':<11}" + "".join(f"{n:>11}" for n in names) + f"{'users':>8}"
    rows = [f"{split:<11}" + "".join(f"{m.get(n, float('nan')):>11.4f}" for n in names) + f"{m['num_users']:>8d}"
            for split, m in results.items()]
    return "\n".join(([title] if title else []) + [header, "-" * len(header)] + rows)
