"""The Generative Action Transformer's training and inference protocol on the synthetic exposure
log: the two-stage curriculum, steering prompts and the distilled one-shot sampler.

    python bench/gat_protocol.py [--quick] [--workdir runs/gat-protocol] [--users N] [--epochs E]

Runs (each skipped when its workdir already holds ``eval/metrics.json``; delete it to redo): the
Q-Former pre-training and GAT's stage 1 of ``bench/gat.py`` (1:1, full model), here also training
the steering prompts (before half of the clicked targets each: one of the target's 10 nearest
items as a seed, ``[EXPLORE]`` if the target lies outside the history's categories, the target's
category prompt); stage 2 from stage 1's
best params (1:2 -> 1:5 -> 1:10, stage 1's number of steps) with the backbone frozen and, for
contrast, unfrozen; and a distilled sampler head trained on the frozen stage-1 model for stage 1's
number of steps. One JSON line per measurement:

- ``{"name": "curriculum", "run", "frozen", "auc", "ece_raw", "ece_calibrated", "true_ece_calibrated",
  "recall@10", "ndcg@10", "recall@10_change", ...}`` (stage 1, stage 2 frozen, stage 2 unfrozen;
  ranking on the held-out exposures, retrieval on the test clicks; the change is relative to stage 1)
- ``{"name": "steering", "prompt": "category", "category_precision@10", "recall@10", + "_unsteered"}``:
  each test user's list after the soft prompt of their test target's top-level category
- ``{"name": "steering", "prompt": "explore", "novelty@10", "recall@10", + "_unsteered"}``: novelty is
  the share of the list outside the categories of the user's engaged history
- ``{"name": "steering", "prompt": "seed", "seed_affinity@10", "seed_category_share@10", + "_unsteered",
  "seed_affinity_random"}``: a random catalogue item as the seed per user; affinity is the generator's
  ``-|z_item - z_seed|²`` of the results (and of random items, for scale)
- ``{"name": "sampler", "recall_ratio", "speedup", "sampler_recall@10", "beam_recall@10",
  "sampler_users_per_s", "beam_users_per_s"}``: both on the same test batches, compiled beforehand

``--quick`` runs 200 users for 1 epoch (about 15 steps a run): minutes, for checking the script, not
for numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import emit  # noqa: E402
from bench.gat import final_metrics  # noqa: E402
from bench.gat import run_config as base_config  # noqa: E402
from configs import gat as gat_config  # noqa: E402
from gr_jax import stages  # noqa: E402
from gr_jax.data import sources, synthetic  # noqa: E402
from gr_jax.data.pipeline import eval_dataset  # noqa: E402

STAGE2 = {"stage2": True, "stage2_unfrozen": False}  # run -> backbone frozen


def run_config(name: str, args, stage1_steps: int):
    """The config of run ``name`` (``qformer``, ``stage1``, ``stage2``, ``stage2_unfrozen``, ``sampler``)."""
    if name == "qformer":
        return base_config("qformer", args, 0)
    config = base_config("gat", args, 0)
    config.model.update(seed_prompt_prob=0.5, explore_prob=0.5, category_prompt_prob=0.5)
    stage1 = os.path.join(args.workdir, "stage1")
    if name in STAGE2:
        gat_config.use_stage2(config)
        config.model.update(init_from=stage1, freeze_backbone=STAGE2[name])
        config.train.num_steps = stage1_steps
    elif name == "sampler":
        config.model.update(init_from=stage1, sampler_dim=args.sampler_dim)
        config.train.num_steps = stage1_steps
    return config


def run(name: str, args, stage1_steps: int = 0):
    """Runs (or reuses) ``name``; returns its config, workdir and seconds (0 when reused)."""
    config, workdir = run_config(name, args, stage1_steps), os.path.join(args.workdir, name)
    tic = time.time()
    if not os.path.isfile(os.path.join(workdir, "eval", "metrics.json")):
        stages.run(config, workdir)
        return config, workdir, round(time.time() - tic, 1)
    return config, workdir, 0.0


def loaded(config, workdir):
    """The run's model, best params, dataset and test batches."""
    artifacts = stages.Artifacts(config, workdir)
    params = stages.load_params(artifacts)
    batches = list(eval_dataset(artifacts.dataset.users, "test", max_history=config.data.max_history,
                                batch_size=config.eval.batch_size, shard=(0, 1)))
    return artifacts.model(), params, artifacts.dataset, batches


def hits(lists: np.ndarray, batch: dict) -> np.ndarray:
    return (lists == batch["target"][:, None]).any(1)


def steering(config, workdir, common: dict) -> None:
    """Category, [EXPLORE] and seed-item prompts against the plain [CLICK] list of the stage-1 model."""
    model, params, dataset, batches = loaded(config, workdir)
    truth = synthetic.generate(sources.synthetic_config(config.data))[1]
    latents = truth.item_latents[[int(key) for key in dataset.items.keys]]
    categories = np.asarray(model.item_categories)
    steer = jax.jit(model.steer, static_argnums=2, static_argnames="explore")
    novel = jax.jit(model.novel)
    rng = np.random.default_rng(0)
    sums: dict[str, float] = {}

    def add(key: str, values: np.ndarray, rows: np.ndarray) -> None:
        sums[key] = sums.get(key, 0.0) + float(values[rows].sum())

    for batch in batches:
        rows = batch["valid"]
        wanted = categories[batch["target"]]
        seed = rng.integers(0, len(latents), len(rows))
        lists = {"plain": steer(params, batch, 10), "explore": steer(params, batch, 10, explore=True),
                 "category": steer(params, batch, 10, category=wanted), "seed": steer(params, batch, 10, seed=seed)}
        lists = {k: np.asarray(v) for k, v in lists.items()}
        real = {k: v >= 0 for k, v in lists.items()}
        for kind in ("plain", "explore", "category"):
            add(f"recall_{kind}", hits(lists[kind], batch), rows)
        for kind in ("plain", "category"):
            inside = (categories[np.maximum(lists[kind], 0)] == wanted[:, None]) & real[kind]
            add(f"precision_{kind}", inside.sum(1) / np.maximum(real[kind].sum(1), 1), rows)
        for kind in ("plain", "explore"):
            share = (np.asarray(novel(batch, lists[kind])) & real[kind]).sum(1) / np.maximum(real[kind].sum(1), 1)
            add(f"novelty_{kind}", share, rows)
        for kind in ("plain", "seed"):
            distance = ((latents[np.maximum(lists[kind], 0)] - latents[seed][:, None]) ** 2).sum(-1)
            add(f"affinity_{kind}", (-distance * real[kind]).sum(1) / np.maximum(real[kind].sum(1), 1), rows)
            same = (categories[np.maximum(lists[kind], 0)] == categories[seed][:, None]) & real[kind]
            add(f"seed_category_{kind}", same.sum(1) / np.maximum(real[kind].sum(1), 1), rows)
        random_items = rng.integers(0, len(latents), (len(rows), 10))
        add("affinity_random", -((latents[random_items] - latents[seed][:, None]) ** 2).sum(-1).mean(1), rows)
    users = sum(int(batch["valid"].sum()) for batch in batches)
    mean = {k: v / users for k, v in sums.items()}
    common = common | {"users": users}
    emit({"name": "steering", "prompt": "category", "category_precision@10": mean["precision_category"],
          "category_precision@10_unsteered": mean["precision_plain"], "recall@10": mean["recall_category"],
          "recall@10_unsteered": mean["recall_plain"]} | common)
    emit({"name": "steering", "prompt": "explore", "novelty@10": mean["novelty_explore"],
          "novelty@10_unsteered": mean["novelty_plain"], "recall@10": mean["recall_explore"],
          "recall@10_unsteered": mean["recall_plain"]} | common)
    emit({"name": "steering", "prompt": "seed", "seed_affinity@10": mean["affinity_seed"],
          "seed_affinity@10_unsteered": mean["affinity_plain"], "seed_affinity_random": mean["affinity_random"],
          "seed_category_share@10": mean["seed_category_seed"],
          "seed_category_share@10_unsteered": mean["seed_category_plain"]} | common)


def timed(fn, batches) -> tuple[list[np.ndarray], float]:
    """``fn``'s lists of every batch (compiled on the first beforehand) and the seconds they took."""
    jax.block_until_ready(fn(batches[0]))
    tic = time.perf_counter()
    out = [jax.block_until_ready(fn(batch)) for batch in batches]
    return [np.asarray(x) for x in out], time.perf_counter() - tic


def sampler(config, workdir, common: dict) -> None:
    """The sampler's one-shot lists against the teacher's beam search on the same test batches."""
    model, params, _, batches = loaded(config, workdir)
    beam_fn, sampler_fn = jax.jit(model.steer, static_argnums=2), jax.jit(model.sampler_topk, static_argnums=2)
    beam, beam_seconds = timed(lambda b: beam_fn(params, b, 10), batches)
    one_shot, sampler_seconds = timed(lambda b: sampler_fn(params, b, 10), batches)
    rows = sum(len(batch["valid"]) for batch in batches)
    users = sum(int(batch["valid"].sum()) for batch in batches)
    recall = {name: sum(int(hits(x, b)[b["valid"]].sum()) for x, b in zip(lists, batches)) / users
              for name, lists in (("beam", beam), ("sampler", one_shot))}
    emit({"name": "sampler", "recall_ratio": recall["sampler"] / max(recall["beam"], 1e-12),
          "speedup": beam_seconds / sampler_seconds, "sampler_recall@10": recall["sampler"],
          "beam_recall@10": recall["beam"], "sampler_users_per_s": rows / sampler_seconds,
          "beam_users_per_s": rows / beam_seconds, "beam_size": model.beam_size,
          "sampler_dim": config.model.sampler_dim, "users": users} | common)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="runs/gat-protocol")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--epochs", type=int, default=0, help="stage-1 epochs (default 10; quick 1)")
    parser.add_argument("--users", type=int, default=0, help="synthetic users (default 400; quick 200)")
    parser.add_argument("--sampler_dim", type=int, default=128)
    args = parser.parse_args()
    args.epochs = args.epochs or (1 if args.quick else 10)
    args.users = args.users or (200 if args.quick else 400)
    common = {"epochs": args.epochs, "users_generated": args.users, "quick": args.quick}
    run("qformer", args)
    config, workdir, stage1_seconds = run("stage1", args)
    with open(os.path.join(workdir, "train", "summary.json")) as f:
        steps = json.load(f)["total_steps"]
    reference = final_metrics(workdir)
    for name, seconds in (("stage1", stage1_seconds), *((n, run(n, args, steps)[2]) for n in STAGE2)):
        metrics = final_metrics(os.path.join(args.workdir, name))
        ranking, test = metrics["ranking"], metrics["test"]
        emit({"name": "curriculum", "run": name, "frozen": STAGE2.get(name, False),
              "ratio": "1:1" if name == "stage1" else "1:2,1:5,1:10", "steps": steps}
             | {k: ranking[k] for k in ("auc", "ece_raw", "ece_calibrated", "true_ece_calibrated")}
             | {"recall@10": test["recall@10"], "ndcg@10": test["ndcg@10"],
                "recall@10_change": test["recall@10"] / reference["test"]["recall@10"] - 1.0, "seconds": seconds}
             | common)
    steering(config, workdir, common)
    sampler(*run("sampler", args, steps)[:2], common)


if __name__ == "__main__":
    main()
