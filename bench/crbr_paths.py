"""CRBR at several beam widths from one trained run: metrics, each path's recall vs merged, code usage.

    python -m gr_jax.main --config=configs/crbr.py:scientific --workdir=runs/crbr-sci
    python bench/crbr_paths.py --workdir runs/crbr-sci [--config crbr:scientific] [--beams 1,2,4]

Restores the run's best checkpoint and, for every beam width B, prints one JSON line with
- the shared evaluation's valid/test Recall/NDCG@5/10 (``gr_jax.evaluation.evaluate``, full
  catalogue, exact top-k per path, merged by max score per item);
- on the test split: recall@10 of each path's own top-10 (path 1 = the best routing path) and of
  the merged top-10;
- code usage per routing layer over the B paths of every test user: the fraction of codes used and
  the perplexity of their use (``tokenizers.health``, the codebook-health report's definitions);
- the same test queries served by a ScaNN index of the item vectors (tree + AH + reorder forced
  with ``brute_force_below=0``; the catalogue is small): merged recall@10 and the overlap of
  its merged top-10 with the exact one.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import emit, load_config  # noqa: E402
from gr_jax import stages  # noqa: E402
from gr_jax.data.pipeline import eval_dataset  # noqa: E402
from gr_jax.evaluation.evaluator import evaluate  # noqa: E402
from gr_jax.models import registry  # noqa: E402
from gr_jax.models.crbr import route_beams  # noqa: E402
from gr_jax.retrieval.exact import exact_topk, topk_recall  # noqa: E402
from gr_jax.retrieval.multi_query import recall, retrieve  # noqa: E402
from gr_jax.retrieval.scann_config import ScannConfig  # noqa: E402
from gr_jax.retrieval.scann_index import build_index  # noqa: E402
from gr_jax.tokenizers.health import compute_health  # noqa: E402
from gr_jax.training import trainer  # noqa: E402

K = 10


def path_report(model, params, interactions, config) -> dict:
    """Test-split recall@10 of each path alone and merged, and per-layer code usage of all paths."""
    catalogue = model.item_embeddings(params)
    search = jax.jit(lambda queries: retrieve(queries, functools.partial(exact_topk, vectors=catalogue), K))
    index = build_index(np.asarray(catalogue), ScannConfig(brute_force_below=0, recall_sample=0))
    scann_hits, overlaps = [], []
    beams = jax.jit(lambda batch: route_beams(model.crbr, params["crbr"], model.query_states(params, batch),
                                              model.config.beam_size))
    path_hits, merged_hits, codes = [], [], []
    for batch in eval_dataset(interactions, "test", max_history=config.data.max_history,
                              batch_size=config.eval.batch_size):
        valid = np.asarray(batch["valid"], bool)
        queries, _, beam_codes = beams({k: v for k, v in batch.items() if k != "valid"})
        found = search(queries)
        targets = np.asarray(batch["target"])[valid]
        path_hits.append(recall(np.asarray(found.path_ids)[valid], targets) * valid.sum())
        merged_hits.append(recall(np.asarray(found.ids)[valid], targets) * valid.sum())
        served = np.asarray(retrieve(np.asarray(queries)[valid], index.search, K).ids)
        scann_hits.append(recall(served, targets) * valid.sum())
        overlaps.append(topk_recall(served, np.asarray(found.ids)[valid]) * valid.sum())
        codes.append(np.asarray(beam_codes)[valid])
    users = sum(len(c) for c in codes)
    codes = np.concatenate(codes).reshape(-1, len(model.crbr.codebook_sizes))
    levels = compute_health(codes, model.crbr.codebook_sizes).levels
    return {"test_users": users,
            "path_recall@10": [round(float(v), 4) for v in np.sum(path_hits, 0) / users],
            "merged_recall@10": round(float(np.sum(merged_hits) / users), 4),
            "scann_merged_recall@10": round(float(np.sum(scann_hits) / users), 4),
            "scann_overlap_with_exact@10": round(float(np.sum(overlaps) / users), 4),
            "scann_leaves": [index.config.num_leaves, index.config.num_leaves_to_search],
            "code_usage": [round(level.usage, 3) for level in levels],
            "code_perplexity": [round(level.perplexity, 1) for level in levels],
            "codebook_sizes": list(model.crbr.codebook_sizes)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, help="a finished crbr run (its train stage is done)")
    parser.add_argument("--config", default="crbr:scientific", help="the run's config, as configs/NAME.py:VARIANT")
    parser.add_argument("--beams", default="1,2,4", help="comma-separated beam widths")
    args = parser.parse_args()
    config = load_config(args.config)
    config.mesh.data = 1
    artifacts = stages.Artifacts(config, args.workdir)
    interactions = artifacts.dataset.users
    params = trainer.restore_best_params(os.path.join(args.workdir, "train"), artifacts.model(), interactions, config)
    for beam_size in (int(b) for b in args.beams.split(",")):
        config.model.beam_size = beam_size
        model = registry.build(config, artifacts)
        with trainer.mesh_context(config) as mesh:
            topk = trainer.jit_topk(model, mesh, None, config.eval.list_size)(params)
            metrics = evaluate(topk, interactions, config, model.num_items)
        rows = {split: {k: round(v, 4) for k, v in metrics[split].items() if k != "num_users"}
                for split in ("valid", "test")}
        emit({"beam_size": beam_size} | rows | path_report(model, params, interactions, config))


if __name__ == "__main__":
    main()
