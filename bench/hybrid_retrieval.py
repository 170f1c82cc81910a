"""Ranks with a trained TIGER/PRISM model's generative beam, its dense head, and their fusion, on
validation and test, and selects the fusion weight on validation.

    python bench/hybrid_retrieval.py --run runs/prism-hybrid-s0[,runs/prism-hybrid-s1,...] [--weights 0,0.25,0.5,1,2]
        [--slots 0,2,5]

``--run`` is one or more finished runs (e.g. one per seed), each trained with
``model.dense_weight > 0`` (the dense head). Each variant is the eval stage of that run's config,
with ``model.retrieval`` (and ``model.hybrid_gen_weight``, ``model.hybrid_dense_slots``) changed, in
``RUN/retrieval/<trained model's fingerprint>/<variant>`` (the run's own ``eval/metrics.json`` for the
variant it was trained with; linking the run's data, features, SIDs and trained parameters; a variant
whose ``eval/metrics.json`` exists is read, not rerun, and a run retrained in place gets a new folder).
One JSON line per
variant: ``{"name": "retrieval_variant", "run", "variant", "retrieval", "gen_weight", "dense_slots", valid and
test R@5/10 N@5/10, "test_tail_recall@10", "seconds"}``, then per variant ``{"name": "retrieval_mean",
"variant", "runs", the mean and sample std of each metric over the runs}``, then ``{"name":
"retrieval_selected", ...}``: the hybrid weight (and reserved dense slots, ``--slots``) with the best
mean valid N@10 (test never consulted). A variant with reserved slots ranks a list as long as the largest
``eval.ks`` cut-off (10), so that the slots, the list's last places, fall inside it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import ml_collections

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import emit, linked_workdir, ranking_record, seed_summary, trained_fingerprint  # noqa: E402
from gr_jax import stages  # noqa: E402


def run_config(run: str) -> ml_collections.ConfigDict:
    """The config the run trained with (``stages.training_config_path``)."""
    with open(stages.training_config_path(run)) as f:
        config = ml_collections.ConfigDict(json.load(f))
    if config.model.get("dense_weight", 0.0) <= 0:
        raise ValueError(f"{run} was trained without the dense head (model.dense_weight=0): retrain with "
                         f"--config.model.dense_weight=1.0 to rank with it")
    return config


def evaluate(run: str, config: ml_collections.ConfigDict, retrieval: str, weight: float, slots: int = 0) -> dict:
    variant = retrieval if retrieval != "hybrid" else f"hybrid_w{weight:g}" + (f"_s{slots}" if slots else "")
    folder = ("retrieval", trained_fingerprint(run), variant)
    result = os.path.join(run, *folder, "eval", "metrics.json")
    model = config.model
    own = (model.retrieval, model.get("hybrid_gen_weight", 1.0), model.get("hybrid_dense_slots", 0))
    if own[0] == retrieval and (retrieval != "hybrid" or own[1:] == (weight, slots)):
        result = os.path.join(run, "eval", "metrics.json")  # the run's own evaluation
    tic = time.time()
    if not os.path.exists(result):
        workdir = linked_workdir(run, *folder)
        config = ml_collections.ConfigDict(config.to_dict())
        config.stages = "data,eval"  # data: reuses the run's dataset, or rebuilds it if its source files changed
        config.model.retrieval, config.model.hybrid_gen_weight = retrieval, weight
        config.model.hybrid_dense_slots = slots
        if slots:  # the reserved places end the list: make it as long as the largest cut-off (R@10, N@10)
            config.eval.list_size = max(config.eval.ks)
        stages.run(config, workdir)
    record = {"name": "retrieval_variant", "run": run, "variant": variant, "retrieval": retrieval,
              "gen_weight": weight if retrieval == "hybrid" else None,
              "dense_slots": slots if retrieval == "hybrid" else None} | ranking_record(result)
    record["seconds"] = round(time.time() - tic, 1)
    emit(record)
    return record


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="finished runs trained with model.dense_weight > 0, "
                        "comma-separated (e.g. one per seed)")
    parser.add_argument("--weights", default="0,0.25,0.5,1,2", help="hybrid generative weights to try")
    parser.add_argument("--slots", default="0", help="reserved dense-head places of the top-k to try "
                        "(model.hybrid_dense_slots), e.g. 0,2,5")
    args = parser.parse_args()
    variants = [("beam", 0.0, 0), ("dense", 0.0, 0)] + [("hybrid", float(w), int(r)) for w in args.weights.split(",")
                                                          for r in args.slots.split(",")]
    by_variant = {}
    for run in args.run.split(","):
        config = run_config(run)
        for retrieval, weight, slots in variants:
            record = evaluate(run, config, retrieval, weight, slots)
            by_variant.setdefault(record["variant"], []).append(record)
    means = [{"name": "retrieval_mean", "variant": variant, "runs": [r["run"] for r in records]} | seed_summary(records)
             for variant, records in by_variant.items()]
    for record in means:
        emit(record)
    best = max((r for r in means if r["variant"].startswith("hybrid")), key=lambda r: r["valid_ndcg@10"])
    emit(best | {"name": "retrieval_selected"})


if __name__ == "__main__":
    main()
