"""Ranks with a trained TIGER/PRISM model's generative beam, its dense head, and their fusion, on
validation and test, and selects the fusion weight on validation.

    python bench/hybrid_retrieval.py --run runs/prism-hybrid-s0 [--weights 0,0.25,0.5,1,2]

``--run`` is a finished run trained with ``model.dense_weight > 0`` (the dense head). Each variant
is the eval stage of that run's config, with ``model.retrieval`` (and ``model.hybrid_gen_weight``)
changed, in ``RUN/retrieval/<variant>`` (the run's own ``eval/metrics.json`` for the variant it was
trained with; linking the run's data, features, SIDs and trained
parameters; a variant whose ``eval/metrics.json`` exists is read, not rerun). One JSON line per
variant: ``{"name": "retrieval_variant", "run", "variant", "retrieval", "gen_weight", valid and
test R@5/10 N@5/10, "test_tail_recall@10", "seconds"}``, then ``{"name": "retrieval_selected", ...}``:
the hybrid weight with the best valid N@10 (test never consulted).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import ml_collections

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import emit, ranking_record  # noqa: E402
from gr_jax import stages  # noqa: E402

LINKED = ("data", "features", "tokenize", "train")


def run_config(run: str) -> ml_collections.ConfigDict:
    """The config the run was started with (its last ``start`` record in ``runs.jsonl``)."""
    starts = [json.loads(line) for line in open(os.path.join(run, "runs.jsonl"))]
    starts = [row for row in starts if row.get("event") == "start"]
    if not starts:
        raise ValueError(f"{run}/runs.jsonl has no start record: is --run a gr_jax workdir?")
    config = ml_collections.ConfigDict(starts[-1]["config"])
    if config.model.get("dense_weight", 0.0) <= 0:
        raise ValueError(f"{run} was trained without the dense head (model.dense_weight=0): retrain with "
                         f"--config.model.dense_weight=1.0 to rank with it")
    return config


def evaluate(run: str, config: ml_collections.ConfigDict, retrieval: str, weight: float) -> dict:
    variant = retrieval if retrieval != "hybrid" else f"hybrid_w{weight:g}"
    workdir = os.path.join(run, "retrieval", variant)
    result = os.path.join(workdir, "eval", "metrics.json")
    if config.model.retrieval == retrieval and (retrieval != "hybrid" or config.model.hybrid_gen_weight == weight):
        result = os.path.join(run, "eval", "metrics.json")  # the run's own evaluation
    tic = time.time()
    if not os.path.exists(result):
        os.makedirs(workdir, exist_ok=True)
        for part in LINKED:
            if os.path.exists(os.path.join(run, part)) and not os.path.exists(os.path.join(workdir, part)):
                os.symlink(os.path.abspath(os.path.join(run, part)), os.path.join(workdir, part))
        config = ml_collections.ConfigDict(config.to_dict())
        config.stages = "eval"
        config.model.retrieval, config.model.hybrid_gen_weight = retrieval, weight
        stages.run(config, workdir)
    record = {"name": "retrieval_variant", "run": run, "variant": variant, "retrieval": retrieval,
              "gen_weight": weight if retrieval == "hybrid" else None} | ranking_record(result)
    record["seconds"] = round(time.time() - tic, 1)
    emit(record)
    return record


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="a finished run trained with model.dense_weight > 0")
    parser.add_argument("--weights", default="0,0.25,0.5,1,2", help="hybrid generative weights to try")
    args = parser.parse_args()
    config = run_config(args.run)
    evaluate(args.run, config, "beam", 0.0)
    evaluate(args.run, config, "dense", 0.0)
    hybrids = [evaluate(args.run, config, "hybrid", float(w)) for w in args.weights.split(",")]
    best = max(hybrids, key=lambda r: r["valid_ndcg@10"])
    emit(best | {"name": "retrieval_selected"})


if __name__ == "__main__":
    main()
