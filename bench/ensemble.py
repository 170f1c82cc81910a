"""Ensembles of finished runs (e.g. generative models over different tokenizations) by weighted
reciprocal rank fusion of their top-K lists, the weights selected on validation.

    python bench/ensemble.py --runs runs/prism-s0,runs/tiger-s0 [--runs runs/prism-s1,runs/tiger-s1 ...] \
        [--weights 0,0.25,0.5,1,2,4] [--constant 60]

Each ``--runs`` is one ensemble (repeat it, e.g. once per seed, with the members in the same
order). Each run's valid and test lists are ranked once by its own trained model and eval config
(in ``RUN/ensemble``, linking the run's data, features, SIDs and parameters; the lists are kept in
``RUN/ensemble/rankings_<hash of the training config and best checkpoint>.npz`` and read back by
later calls). The first member has weight 1; every
other member takes each of ``--weights``, so the grid holds every subset containing the first.
JSON lines: ``"ensemble_member"`` per run (its lists ranked alone: they must match its own eval
stage), ``"ensemble_variant"`` per ensemble and weight vector (``weights``, valid and test R@5/10,
N@5/10 and test tail R@10, scored by the first run's evaluator: its ``eval.ks``,
``eval.list_size`` and tail fraction), ``"ensemble_mean"`` per weight vector (mean and sample std
over the ensembles), then ``"ensemble_selected"``: the weights with the best mean valid N@10 (test
never consulted). Every run must hold the same users and items.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import common  # noqa: E402
from gr_jax import stages  # noqa: E402
from gr_jax.evaluation.fusion import RRF_CONSTANT, reciprocal_rank_fusion  # noqa: E402
from gr_jax.training import trainer  # noqa: E402


class Member:
    """One finished run: its artifacts and every user's valid/test top-K list (``rankings[split]``,
    ``[users, K]``), ranked once by its own trained model and kept under ``RUN/ensemble``."""

    def __init__(self, run: str):
        self.run = run
        self.artifacts = common.open_run(run, "ensemble")
        self.config, self.dataset = self.artifacts.config, self.artifacts.dataset
        cache = self.artifacts.path(f"rankings_{common.trained_fingerprint(run)}.npz")
        if not os.path.exists(cache):
            params = stages.load_params(self.artifacts, "Ranking with")
            with trainer.mesh_context(self.config) as mesh:
                topk = trainer.jit_topk(self.artifacts.model(), mesh, None, self.config.eval.list_size)(params)
                lists = common.per_user(lambda batch: (topk(batch),), self.artifacts, f"{run}: ranked")
            common.save_npz(cache, **{split: arrays[0] for split, arrays in lists.items()})
        with np.load(cache) as lists:
            self.rankings = {split: lists[split] for split in common.SPLITS}


def score(members: list[Member], weights: tuple[float, ...], constant: float) -> dict:
    """Valid/test metrics (and the tail's) of the members' fused lists, by the first member's evaluator."""
    def fused(split, users):
        return reciprocal_rank_fusion([m.rankings[split][users] for m in members], weights,
                                      members[0].config.eval.list_size, constant)

    return common.evaluate_per_user(fused, members[0].artifacts)


def check_same_catalogue(members: list[Member]) -> None:
    first = members[0]
    for m in members[1:]:
        same = (m.dataset.users.user_keys == first.dataset.users.user_keys
                and m.dataset.items.keys == first.dataset.items.keys)
        if not same:
            raise ValueError(f"{m.run} ranks another dataset than {first.run} ({len(m.dataset.users)} vs "
                             f"{len(first.dataset.users)} users, {m.dataset.num_items} vs {first.dataset.num_items} "
                             f"items): ensemble runs trained on the same data config")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", action="append", required=True,
                        help="one ensemble's finished runs, comma-separated, the first of weight 1; repeat per seed")
    parser.add_argument("--weights", default="0,0.25,0.5,1,2,4", help="weights tried for every other member")
    parser.add_argument("--constant", type=float, default=RRF_CONSTANT, help="the RRF rank constant")
    args = parser.parse_args()
    ensembles = [[Member(run) for run in spec.split(",")] for spec in args.runs]
    if len({len(members) for members in ensembles}) > 1:
        raise ValueError(f"every --runs needs the same number of members, got {[len(m) for m in ensembles]}")
    check_same_catalogue([m for members in ensembles for m in members])
    for members in ensembles:
        for i, member in enumerate(members):
            alone = tuple(float(j == i) for j in range(len(members)))
            common.emit({"name": "ensemble_member", "run": member.run} | score(members, alone, args.constant))
    grid = [float(w) for w in args.weights.split(",")]
    means = []
    for rest in itertools.product(grid, repeat=len(ensembles[0]) - 1):
        weights, records = (1.0,) + rest, []
        for members in ensembles:
            records.append({"name": "ensemble_variant", "runs": [m.run for m in members], "weights": weights,
                            "constant": args.constant} | score(members, weights, args.constant))
            common.emit(records[-1])
        means.append({"name": "ensemble_mean", "weights": weights, "ensembles": len(records)}
                     | common.seed_summary(records))
        common.emit(means[-1])
    common.emit(max(means, key=lambda r: r["valid_ndcg@10"]) | {"name": "ensemble_selected"})


if __name__ == "__main__":
    main()
