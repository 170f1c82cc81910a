"""Ranks a trained TIGER/PRISM run's beam with the popularity penalty (``model.popularity_penalty``)
over a grid of penalties and selects one on validation.

    python bench/popularity_penalty.py --run runs/prism-sci-expertmajor[,runs/prism-s1,...] [--beam 100] \\
        [--penalties 0,0.1,0.25,0.5,1]

The beam's ``--beam`` best items and their SIDs' log-probabilities (``beam_candidates``) are
recorded once per user and split, in ``RUN/popularity/candidates_b<W>_<hash of the training config
and best checkpoint>.npz``; each penalty β then
reranks them with the model's own ``popularity_rerank`` by log p(SID) − β · log(1 + training count),
which is what ``--config.model.popularity_penalty=β --config.model.beam_size=W`` ranks. β = 0 is
the plain beam at width W. JSON lines: ``"popularity_candidates"`` per run (the share of valid and
test targets, and of tail targets, among the W candidates: the ceiling of any reranking),
``"popularity_variant"`` per run and β (valid and test
R@5/10, N@5/10, test tail R@10), ``"popularity_mean"`` per β (mean and sample std over the runs),
then ``"popularity_selected"``: the β with the best mean valid N@10 (test never consulted).
"""

from __future__ import annotations

import argparse
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import common  # noqa: E402
from gr_jax import stages  # noqa: E402
from gr_jax.data.splits import example_index, train_item_counts  # noqa: E402
from gr_jax.evaluation.evaluator import tail_items  # noqa: E402
from gr_jax.models.tiger import popularity_rerank  # noqa: E402


def beam_candidates(run: str, width: int):
    """(artifacts, ``{split: (items [users, W], scores [users, W])}``) of the run's beam at ``width``."""
    artifacts = common.open_run(run, "popularity", beam_size=width)
    cache = artifacts.path(f"candidates_b{width}_{common.trained_fingerprint(run)}.npz")
    if not os.path.exists(cache):
        model = artifacts.model()
        precision = model.precision
        params = jax.jit(lambda p: model.eval_params(precision.for_compute(p)))(
            stages.load_params(artifacts, "Ranking with"))
        search = jax.jit(lambda p, b: model.beam_candidates(p, precision.for_compute(b), width))
        recorded = common.per_user(lambda batch: search(params, {k: jnp.asarray(v) for k, v in batch.items()}),
                                   artifacts, f"{run}: beam {width}")
        common.save_npz(cache, **{f"{split}_{name}": array for split, arrays in recorded.items()
                                  for name, array in zip(("items", "scores"), arrays)})
    with np.load(cache) as saved:
        return artifacts, {split: (saved[f"{split}_items"], saved[f"{split}_scores"]) for split in common.SPLITS}


def candidate_recall(candidates: dict, artifacts) -> dict:
    """The share of valid/test targets (and of tail targets) among the recorded candidates: the
    ceiling of any reranking of them."""
    users, config = artifacts.dataset.users, artifacts.config
    tail = tail_items(users, artifacts.dataset.num_items, config.eval.tail_fraction)
    record = {}
    for split in common.SPLITS:
        rows = example_index(users, split)
        targets = users.items[users.offsets[rows[:, 0]] + rows[:, 1]]
        found = (candidates[split][0][rows[:, 0]] == targets[:, None]).any(1)
        record[f"{split}_candidate_recall"] = round(float(found.mean()), 4)
        record[f"{split}_tail_candidate_recall"] = round(float(found[tail[targets]].mean()), 4)
    return record


def penalised(candidates: dict, log_counts: jax.Array, penalty: float, size: int):
    """``rank(split, users)``: the users' recorded candidates reranked under ``penalty``."""
    def rank(split, users):
        items, scores = candidates[split]
        return np.asarray(popularity_rerank(jnp.asarray(items[users]), jnp.asarray(scores[users]), log_counts,
                                            penalty, size))

    return rank


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="finished TIGER/PRISM runs, comma-separated (e.g. one per seed)")
    parser.add_argument("--beam", type=int, default=100, help="beam width: the candidates the penalty reranks")
    parser.add_argument("--penalties", default="0,0.1,0.25,0.5,1", help="popularity penalties β to try")
    args = parser.parse_args()
    penalties = [float(p) for p in args.penalties.split(",")]
    by_penalty = {p: [] for p in penalties}
    for run in args.run.split(","):
        artifacts, candidates = beam_candidates(run, args.beam)
        dataset, size = artifacts.dataset, artifacts.config.eval.list_size
        common.emit({"name": "popularity_candidates", "run": run, "beam": args.beam}
                    | candidate_recall(candidates, artifacts))
        log_counts = jnp.log1p(jnp.asarray(train_item_counts(dataset.users, dataset.num_items), jnp.float32))
        for penalty in penalties:
            record = {"name": "popularity_variant", "run": run, "beam": args.beam, "penalty": penalty}
            rank = penalised(candidates, log_counts, penalty, size)
            by_penalty[penalty].append(record | common.evaluate_per_user(rank, artifacts))
            common.emit(by_penalty[penalty][-1])
    means = [{"name": "popularity_mean", "beam": args.beam, "penalty": p, "runs": len(records)}
             | common.seed_summary(records) for p, records in by_penalty.items()]
    for record in means:
        common.emit(record)
    common.emit(max(means, key=lambda r: r["valid_ndcg@10"]) | {"name": "popularity_selected"})


if __name__ == "__main__":
    main()
