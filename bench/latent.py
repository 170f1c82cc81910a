"""End-to-end latent tokenization (``configs/latent.py``) against the two-stage systems, and with each
part of its hierarchy-guarantee protocol turned off, on the synthetic data (or Scientific).

    python bench/latent.py [--quick] [--variant scientific] [--epochs N] [--seed S] [--features DIR]
                           [--workdir runs/latent-bench] [--runs latent,no_margin,...]

Runs (each skipped when its workdir already holds ``eval/metrics.json``; delete it to redo):

- ``latent``: the defaults; ablations, one part off each: ``no_residual_targets`` (§5.2's sum loss
  instead of per-level targets), ``no_margin``, ``no_entropy``, ``no_orthogonality``, ``no_match``
  (no user-code/item-code cross-entropy), ``user_trains_codebooks`` (the user side moves the shared
  codebooks too), ``no_kmeans_init``; ``no_protocol``: the four parts of §5.4 off at once;
- ``latent_full_catalogue``: the ``latent`` run's model ranking every item by its user vector
  (``eval.index=scann``, exact on small catalogues): what the code beams' candidates lose;
- ``crbr``: routing over fixed-size codebooks, exact retrieval (``configs/crbr.py``);
- ``rqkmeans`` (tokenize only, 64 codes per level like ``latent``) then ``tiger_rqkmeans``: TIGER on
  its SIDs (imported through ``index.json``), the two-stage pipeline, with TIGER's CPU budget of one
  encoder vector per history item;
- ``tiger_latent``: TIGER on the SIDs the ``latent`` run learned (``train/index.json``).

One JSON line per run: ``{"name": "retrieval", "run", "valid_ndcg@10", "test_recall@10", "test_ndcg@10",
"test_tail_recall@10", "seconds"}``, and for the runs with learned SIDs also ``{"name": "codes", "run", "unique_sids",
"collision_rate", "max_items_per_sid", "item_perplexity" [per level], "energy_ratio" [per level],
+ the last logged training diagnostics: "explained", "margin_satisfied", "agreement" [per level],
"agreement_path", "user_perplexity"}`` and their hierarchy: ``"category_purity"`` per level (SID prefixes against
the true category prefixes; the synthetic data's generating tree) and ``"category_purity_shuffled"`` (chance).

The ablation runs (``latent`` and its variants) share one features stage (MiniLM text, the CF
model): each links ``--features DIR`` when given (a features stage's output, e.g. of
``configs/two_tower.py:scientific --config.stages=data,features``), else the features of an earlier
ablation run in the same workdir; the features stage then reuses them when their config matches.

``--quick`` runs the ``:tiny`` variants for 1 epoch: a minute or two per run, for checking the
script, not for numbers. ``--variant scientific`` runs every config's ``:scientific`` variant (the
configs' own Scientific budgets; CRBR's and latent's are the same). ``--epochs N`` gives every run
the same shorter budget (the ablations).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import emit, load_config  # noqa: E402
from gr_jax import stages  # noqa: E402
from gr_jax.tokenizers.prism_quantizer import category_purity, category_tags  # noqa: E402
from gr_jax.tokenizers.sid_table import SIDTable  # noqa: E402
from gr_jax.training.trainer import Preempted  # noqa: E402

ABLATIONS = {"latent": {}, "no_residual_targets": {"residual_targets": False}, "no_margin": {"margin_weight": 0.0},
             "no_entropy": {"entropy_weight": 0.0}, "no_orthogonality": {"orthogonality_weight": 0.0},
             "no_match": {"match_weight": 0.0}, "user_trains_codebooks": {"user_trains_codebooks": True},
             "no_kmeans_init": {"kmeans_init": False},
             "no_protocol": {"residual_targets": False, "margin_weight": 0.0, "entropy_weight": 0.0,
                             "orthogonality_weight": 0.0}}
RUNS = tuple(ABLATIONS) + ("latent_full_catalogue", "crbr", "rqkmeans", "tiger_rqkmeans", "tiger_latent")


def run_config(name: str, args):
    variant = "tiny" if args.quick else args.variant
    if name in ABLATIONS:
        config = load_config(f"latent:{variant or ''}")
        config.model.update(ABLATIONS[name])
    elif name == "latent_full_catalogue":
        config = load_config(f"latent:{variant or ''}")
        config.update(stages="data,eval")
        config.eval.index = "scann"  # the user vector against every item (exactly under scann.brute_force_below)
    elif name == "rqkmeans":
        config = load_config(f"rqkmeans:{variant or ''}")
        config.tokenizer.rq_kmeans.update(codebook_size=8 if args.quick else 64, seed=args.seed)
        config.tokenizer.health.enforce = False  # its health report is part of the comparison
    elif name.startswith("tiger_"):
        config = load_config(f"tiger:{variant or ''}")
        source = "train" if name == "tiger_latent" else "tokenize"
        config.tokenizer.update(name="index_json", index_json=os.path.join(args.workdir, name[6:], source,
                                                                           "index.json"))
        config.tokenizer.health.enforce = False  # the imported SIDs' collisions are what is compared
        config.stages = "data,tokenize,train,eval"
        # TIGER's CPU budget (as tiger.py:scientific): one encoder vector per history item, ~6x the
        # examples/s of one token per code on these cores
        config.model.item_level_history = True
    else:
        config = load_config(f"{name}:{variant or ''}")
    if args.quick or args.epochs:
        config.train.num_epochs = 1 if args.quick else args.epochs
    config.seed = args.seed
    return config


def linked_parts(name: str, args) -> dict[str, str]:
    """The workdir parts a run links instead of computing: ``latent_full_catalogue`` evaluates the
    ``latent`` run's model; an ablation run takes ``--features``, else an earlier ablation run's."""
    if name == "latent_full_catalogue":
        return {part: os.path.join(args.workdir, "latent", part) for part in ("data", "features", "train")}
    if name not in ABLATIONS:
        return {}
    if args.features:
        return {"features": args.features}
    for other in ABLATIONS:
        path = os.path.join(args.workdir, other, "features")
        if other != name and os.path.isfile(os.path.join(path, "cf_config.json")):
            return {"features": path}
    return {}


def run(name: str, args) -> tuple[str, float]:
    workdir = os.path.join(args.workdir, name)
    done = os.path.join(workdir, "tokenize", "summary.json") if name == "rqkmeans" else \
        os.path.join(workdir, "eval", "metrics.json")
    tic = time.time()
    os.makedirs(workdir, exist_ok=True)
    for part, source in linked_parts(name, args).items():
        if not os.path.exists(os.path.join(workdir, part)):
            os.symlink(os.path.abspath(source), os.path.join(workdir, part))
    if not os.path.isfile(done):
        stages.run(run_config(name, args), workdir)
    return workdir, round(time.time() - tic, 1)


def last_logged(workdir: str) -> dict:
    """The last training metrics line that carries the diagnostics."""
    rows = [json.loads(line) for line in open(os.path.join(workdir, "train", "metrics.jsonl"))]
    return next(row for row in reversed(rows) if "train/agreement_path" in row)


def per_level(row: dict, name: str) -> list[float]:
    return [row[key] for key in sorted(k for k in row if k.startswith(f"train/{name}_l"))]


def hierarchy_purity(workdir: str, config, sid_dir: str) -> dict:
    """``category_purity`` per level l of the items' SID prefixes of length l + 1 against their true
    category path prefixes of depth l (synthetic data: the generating tree), and the same with the
    items' SIDs shuffled (chance: same code sizes, no relation to the categories)."""
    dataset = stages.Artifacts(config, workdir).dataset
    table = SIDTable.load(sid_dir)
    rows = np.arange(len(table.codes)) if table.sid_item is None else np.asarray(table.sid_item)
    codes = np.zeros((dataset.num_items, table.codes.shape[1]), np.int64)
    codes[rows] = table.codes
    tags = category_tags(dataset.items.categories, codes.shape[1])  # the constant root levels skipped
    depth = int((tags.ids >= 0).any(0).sum())
    shuffled = codes[np.random.default_rng(0).permutation(len(codes))]

    def purity(item_codes):
        return [round(category_purity(np.unique(item_codes[:, :level + 1], axis=0, return_inverse=True)[1].ravel(),
                                      tags.ids[:, level]), 4) for level in range(depth)]

    return {"category_purity": purity(codes), "category_purity_shuffled": purity(shuffled)}


def report(name: str, workdir: str, seconds: float, args) -> None:
    common = {"run": name, "seconds": seconds}
    if name != "rqkmeans":
        metrics = json.load(open(os.path.join(workdir, "eval", "metrics.json")))
        emit({"name": "retrieval", "valid_ndcg@10": metrics["valid"]["ndcg@10"],
              "test_recall@10": metrics["test"]["recall@10"], "test_ndcg@10": metrics["test"]["ndcg@10"],
              "test_tail_recall@10": metrics["test/tail"]["recall@10"]} | common)
    health_dir = os.path.join(workdir, "train" if name in ABLATIONS else "tokenize")
    if name in ABLATIONS or name == "rqkmeans":
        health = json.load(open(os.path.join(health_dir, "health.json")))
        codes = {"name": "codes", "unique_sids": health["num_unique_sids"], "collision_rate": health["collision_rate"],
                 "max_items_per_sid": health["max_items_per_sid"],
                 "item_perplexity": [level["perplexity"] for level in health["levels"]],
                 "energy_ratio": [level["energy_ratio"] for level in health["levels"]]} | common
        if name in ABLATIONS:
            row = last_logged(workdir)
            codes |= {key: per_level(row, key) for key in ("explained", "margin_satisfied", "agreement",
                                                           "user_perplexity")}
            codes["agreement_path"] = row["train/agreement_path"]
        codes |= hierarchy_purity(workdir, run_config(name, args), health_dir)
        emit(codes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="runs/latent-bench")
    parser.add_argument("--runs", default=",".join(RUNS), help=f"comma-separated, in order; of {', '.join(RUNS)}")
    parser.add_argument("--quick", action="store_true", help=":tiny variants, 1 epoch (checks the script)")
    parser.add_argument("--variant", default="", choices=("", "scientific"),
                        help="config variant of every run: '' (synthetic data) or 'scientific'")
    parser.add_argument("--features", default="", help="features stage output the ablation runs link")
    parser.add_argument("--epochs", type=int, default=0, help="train every run for this many epochs (0: the configs')")
    parser.add_argument("--seed", type=int, default=0,
                        help="config.seed of every run (initialisation, batch order, CF features; not the data)")
    args = parser.parse_args()
    names = [n for n in args.runs.split(",") if n]
    unknown = [n for n in names if n not in RUNS]
    if unknown:
        parser.error(f"unknown runs {unknown}; choose from {', '.join(RUNS)}")
    try:
        for name in names:
            report(name, *run(name, args), args)
    except Preempted as stop:  # the checkpoint is saved: the same command resumes the run
        print(f"{stop}; run the same command to resume", file=sys.stderr)
        sys.exit(128 + stop.signum)


if __name__ == "__main__":
    main()
