"""Tunes the baselines the generative models are measured against (SASRec with full-softmax CE and
with sampled softmax, co-occurrence) on a validation split, then reruns each selected setting
with more seeds.

    python bench/tune_baselines.py [--workdir runs/tune-baselines] [--systems sasrec_ce,sasrec_sampled,cooccurrence]
                                   [--variant scientific] [--seeds 0,1,2] [--quick]

The search is ``SEARCH`` below: per family, a base setting and one-knob changes from it, then
the best value of every knob that beat the base combined (one more run); for co-occurrence the
whole grid. Every run is ``configs/<system>.py:<variant>`` with the listed overrides, seed 0,
selected on valid NDCG@10; the selected setting is rerun with the other ``--seeds`` (not
co-occurrence: it has no randomness). Test metrics are never looked at for selection. A run
whose workdir already holds ``eval/metrics.json`` is read, not rerun (the script resumes; delete
a run's directory to redo it).

One JSON line per run: ``{"name": "baseline_run", "family", "run", "seed", "overrides", valid and
test R@5/10 N@5/10, "test_tail_recall@10", "seconds"}``, then per family ``{"name":
"baseline_selected", "family", "run", "overrides", "seeds", and the mean and sample std of each
metric over the seeds}``. ``--quick``: the ``:tiny`` variants and two candidates per family, for
checking the script.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import emit, load_config, ranking_record, seed_summary  # noqa: E402
from gr_jax import stages  # noqa: E402
from gr_jax.training.trainer import Preempted  # noqa: E402

# family -> (config, base overrides, {candidate name: overrides on top of the base}). The bases spell
# out every searched knob, so the search does not move when a config's defaults take its result.
SASREC_BASE = {"model.embed_dim": 64, "model.mlp_dim": 256, "model.num_blocks": 2, "model.dropout": 0.2,
               "data.max_history": 20, "train.learning_rate": 1e-3}
SEARCH = {
    "sasrec_ce": ("sasrec", SASREC_BASE | {"model.loss": "ce"}, {
        "dropout0.5": {"model.dropout": 0.5},
        "history50": {"data.max_history": 50},
        "blocks1": {"model.num_blocks": 1},
        "dim128": {"model.embed_dim": 128, "model.mlp_dim": 512},
        "lr3e-3": {"train.learning_rate": 3e-3},
    }),
    # eSASRec's recipe (many uniform negatives, long histories, one block) and its neighbours.
    "sasrec_sampled": ("sasrec", SASREC_BASE | {"model.loss": "sampled_softmax", "model.num_negatives": 256,
                                                "model.num_blocks": 1, "data.max_history": 50}, {
        "negatives1024": {"model.num_negatives": 1024},
        "blocks2": {"model.num_blocks": 2},
        "dropout0.5": {"model.dropout": 0.5},
    }),
    # A full grid: each run takes seconds.
    "cooccurrence": ("cooccurrence", {"model.window": 3, "model.horizon": 1, "model.decay": 0.5}, {
        f"window{w}_horizon{h}_decay{d}": {"model.window": w, "model.horizon": h, "model.decay": d}
        for w, h, d in itertools.product((1, 2, 3, 5, 10), (1, 2, 3), (0.3, 0.5, 0.8, 1.0))
        if (w, h, d) != (3, 1, 0.5)}),  # the base
}
DETERMINISTIC = {"cooccurrence"}  # one seed is all there is


def set_overrides(config, overrides: dict) -> None:
    """``{"model.dropout": 0.5, "data.max_history": 50}`` applied to a locked config (unknown keys fail)."""
    for path, value in overrides.items():
        *parents, leaf = path.split(".")
        section = config
        for parent in parents:
            section = section[parent]
        section[leaf] = value


def run(args, family: str, name: str, overrides: dict, seed: int) -> dict:
    """One pipeline run (or its stored result): the metrics record."""
    system = SEARCH[family][0]
    workdir = os.path.join(args.workdir, family, f"{name}-seed{seed}")
    result_path = os.path.join(workdir, "eval", "metrics.json")
    tic = time.time()
    if not os.path.exists(result_path):
        config = load_config(f"{system}:{args.variant}")
        set_overrides(config, overrides)
        config.seed = seed
        stages.run(config, workdir)
    record = {"name": "baseline_run", "family": family, "run": name, "seed": seed, "overrides": overrides}
    record |= ranking_record(result_path)
    record["seconds"] = round(time.time() - tic, 1)
    emit(record)
    return record


def score(record: dict) -> float:
    """The selection criterion: validation NDCG@10."""
    return record["valid_ndcg@10"]


def tune(args, family: str) -> None:
    _, base, candidates = SEARCH[family]
    if args.quick:
        candidates = dict(list(candidates.items())[:2])
    results = {"base": run(args, family, "base", base, seed=0)}
    for name, change in candidates.items():
        results[name] = run(args, family, name, base | change, seed=0)
    # Combine the best value of every knob whose change beat the base.
    best_per_knob: dict[tuple, tuple[str, dict]] = {}
    for name, change in candidates.items():
        knobs = tuple(sorted(change))
        if score(results[name]) > score(results["base"]) and (
                knobs not in best_per_knob or score(results[name]) > score(results[best_per_knob[knobs][0]])):
            best_per_knob[knobs] = (name, change)
    if len(best_per_knob) > 1:
        combined = dict(base)
        for _, change in best_per_knob.values():
            combined |= change
        results["combined"] = run(args, family, "combined", combined, seed=0)
    selected = max(results, key=lambda name: score(results[name]))
    overrides = results[selected]["overrides"]
    seeds = [] if family in DETERMINISTIC else [seed for seed in args.seeds if seed != 0]
    records = [results[selected]] + [run(args, family, selected, overrides, seed) for seed in seeds]
    emit({"name": "baseline_selected", "family": family, "run": selected, "overrides": overrides,
          "seeds": [r["seed"] for r in records]} | seed_summary(records))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="runs/tune-baselines")
    parser.add_argument("--systems", default=",".join(SEARCH))
    parser.add_argument("--variant", default="scientific")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--quick", action="store_true", help=":tiny variants, two candidates per family")
    args = parser.parse_args()
    args.seeds = [int(s) for s in args.seeds.split(",")]
    if args.quick:
        args.variant = "tiny"
    for family in args.systems.split(","):
        if family not in SEARCH:
            parser.error(f"--systems: unknown family {family!r}; choose from {', '.join(SEARCH)}")
    try:
        for family in args.systems.split(","):
            tune(args, family)
    except Preempted as stop:
        sys.exit(f"bench/tune_baselines.py: {stop}; rerun the same command to resume")


if __name__ == "__main__":
    main()
