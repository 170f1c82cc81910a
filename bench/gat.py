"""The Generative Action Transformer on the synthetic exposure log: retrieval against TIGER, SASRec
and itself without action tokens, ranking calibration at three training ratios, and its
contextualized residuals on and off.

    python bench/gat.py [--quick] [--workdir runs/gat-bench] [--only gat,tiger,...]

Every run trains on the same generated exposure log (a logging policy shows items; clicks at the
default few-percent CTR) for the same number of epochs — passes over the training clicks; GAT's
1:1 epoch adds as many skips — and is evaluated on the same targets: each user's last two clicks
(``data.targets='positive'``). The 1:5 and 1:10 GAT runs train for the 1:1 run's number of steps.
TIGER, SASRec and ``gat_no_actions`` train on the clicks alone (``data.positives_only``); GAT reads
every exposure, clicks and skips, behind a Q-Former pre-trained on the clicks
(``configs/qformer.py``, first run). One JSON line per
measurement:

- ``{"name": "retrieval", "model", "recall@10", "ndcg@10", "recall@5", "ndcg@5", "valid_ndcg@10", ...}``
- ``{"name": "ranking", "alpha", "negatives_per_positive", "auc", "ece_raw", "ece_calibrated",
  "true_ece_raw", "true_ece_calibrated", ...}`` (GAT at 1:1, 1:5, 1:10 positive:negative training)
- ``{"name": "residual", "contextual_residual", "valid_ndcg@10", "auc", "gate_mean_first",
  "gate_mean_last"}`` (on and off, at 1:1)

1,000 users by default (half the generator's default, for a 2-core CPU budget); ``--quick`` runs 400
users for 2 epochs: a few minutes, for checking the script, not for numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import emit, load_config  # noqa: E402
from gr_jax import stages  # noqa: E402

RUNS = ("qformer", "gat", "gat_1_5", "gat_1_10", "gat_no_residual", "gat_no_actions", "tiger", "sasrec")


def exposure_data(config, args) -> None:
    """The shared exposure log, its targets and budget."""
    config.data.synthetic.exposure_log = True
    config.data.targets = "positive"
    config.data.tfds_dir = os.path.join(args.workdir, "tfds")
    config.train.num_epochs = args.epochs
    config.train.eval_every_epochs = args.epochs
    config.mesh.data = 1
    config.data.synthetic.num_users = args.users


def run_config(name: str, args, gat_steps: int):
    if name == "qformer":
        config = load_config("qformer")
        config.model.item_features = "text"
        config.features.cf.enabled = False
        config.data.positives_only = True
    elif name.startswith("gat"):
        config = load_config("gat")
        config.model.init_qformer_from = os.path.join(args.workdir, "qformer")
        config.model.negatives_per_positive = {"gat_1_5": 5, "gat_1_10": 10}.get(name, 1)
        config.model.contextual_residual = name != "gat_no_residual"
        config.data.positives_only = name == "gat_no_actions"
        if name in ("gat_1_5", "gat_1_10"):  # more negatives per epoch: the 1:1 run's number of steps instead
            config.train.num_steps = gat_steps
    else:
        config = load_config(name)
        config.data.positives_only = True
        if name == "tiger":  # TIGER's CPU setting (configs/tiger.py :scientific), 64-code levels for 1,000 items
            config.model.update(item_level_history=True)
            config.tokenizer.rq_vae.codebook_size = 64
    exposure_data(config, args)
    return config


def final_metrics(workdir: str) -> dict:
    with open(os.path.join(workdir, "eval", "metrics.json")) as f:
        return json.load(f)


def gate_trajectory(workdir: str) -> tuple[float, float]:
    """The mean residual gate at the first and last logged training step."""
    with open(os.path.join(workdir, "train", "metrics.jsonl")) as f:
        values = [row["train/gate_mean"] for row in map(json.loads, f) if "train/gate_mean" in row]
    return values[0], values[-1]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="runs/gat-bench")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--epochs", type=int, default=0, help="training epochs of every run (default 10; quick 2)")
    parser.add_argument("--users", type=int, default=0, help="synthetic users (default 1,000; quick 400)")
    parser.add_argument("--only", default=",".join(RUNS), help="comma-separated subset of " + ",".join(RUNS))
    args = parser.parse_args()
    args.epochs = args.epochs or (2 if args.quick else 10)
    args.users = args.users or (400 if args.quick else 1000)
    gat_steps = 0
    for name in args.only.split(","):
        workdir = os.path.join(args.workdir, name)
        tic = time.time()
        if name in ("gat_1_5", "gat_1_10") and not gat_steps:
            raise SystemExit("the 1:5 and 1:10 runs train for the 1:1 run's steps: run 'gat' first")
        stages.run(run_config(name, args, gat_steps), workdir)
        if name == "gat":
            with open(os.path.join(workdir, "train", "summary.json")) as f:
                gat_steps = json.load(f)["total_steps"]
        metrics, seconds = final_metrics(workdir), round(time.time() - tic, 1)
        common = {"epochs": args.epochs, "users": args.users, "quick": args.quick, "seconds": seconds}
        if name == "qformer":
            emit({"name": "pretraining", "model": "qformer", "test_recall@10": metrics["test"]["recall@10"]} | common)
            continue
        if name in ("gat", "gat_no_actions", "tiger", "sasrec"):
            emit({"name": "retrieval", "model": name, "valid_ndcg@10": metrics["valid"]["ndcg@10"]}
                 | {k: metrics["test"][k] for k in ("recall@5", "recall@10", "ndcg@5", "ndcg@10", "mrr")}
                 | {"test_users": metrics["test"]["num_users"]} | common)
        if name.startswith("gat") and name != "gat_no_actions":
            ranking = metrics["ranking"]
            k = {"gat_1_5": 5, "gat_1_10": 10}.get(name, 1)
            emit({"name": "ranking", "alpha": f"1:{k}", "negatives_per_positive": k,
                  "contextual_residual": name != "gat_no_residual"} | ranking | common)
        if name in ("gat", "gat_no_residual"):
            first, last = gate_trajectory(os.path.join(workdir))
            emit({"name": "residual", "contextual_residual": name == "gat",
                  "valid_ndcg@10": metrics["valid"]["ndcg@10"], "test_recall@10": metrics["test"]["recall@10"],
                  "auc": metrics["ranking"]["auc"], "gate_mean_first": first, "gate_mean_last": last} | common)


if __name__ == "__main__":
    main()
