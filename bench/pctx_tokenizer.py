"""Pctx's personalized tokenizer on Scientific: SIDs per item and how merging (τ) changes them.

    python bench/pctx_tokenizer.py [--workdir runs/pctx-sci] [--data_dir ../shared/data/scientific]
                                   [--taus 0,0.1,0.2,0.3] [--static]

Reads the features stage's event contexts (DuoRec) and MiniLM text from ``WORKDIR/features``
(a ``configs/pctx.py:scientific`` run), fits the tokenizer once per τ with the config's other
defaults, and prints one JSON line each: centroids, SIDs, mean SIDs per item at each step
(clusters -> same-code merge -> τ merge), the final histogram of SIDs per item, the share of
training events whose SID is not their item's most frequent one, and the fit time.
``--static`` adds the one-SID-per-item ablation.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import emit, load_config, load_dataset  # noqa: E402
from gr_jax.data.splits import train_event_mask  # noqa: E402
from gr_jax.stages.features import load_features  # noqa: E402
from gr_jax.tokenizers import pctx_tokenizer as pctx  # noqa: E402
from gr_jax.tokenizers.sid_table import SIDTable  # noqa: E402


def off_mode_share(table: SIDTable, train: np.ndarray) -> float:
    """Share of training events tokenized to a SID other than their item's most frequent one."""
    items = table.sid_item[table.event_sid[train]]
    mode = table.item_sids[np.arange(table.num_items), np.argmax(table.item_sid_counts, 1)]
    return float(np.mean(table.event_sid[train] != mode[items]))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="runs/pctx-sci", help="a pctx run whose features stage is done")
    parser.add_argument("--data_dir", default="../shared/data/scientific")
    parser.add_argument("--taus", default="0,0.1,0.2,0.3")
    parser.add_argument("--static", action="store_true", help="also fit the one-SID-per-item ablation")
    args = parser.parse_args()
    config = load_config("pctx:scientific")
    config.data.dir = args.data_dir
    dataset = load_dataset(config)
    features = load_features(args.workdir)
    if features.contexts is None or len(features.contexts) != len(dataset.users.items):
        raise SystemExit(f"{args.workdir}/features has no event contexts for this dataset; run "
                         f"python -m gr_jax.main --config=configs/pctx.py:scientific --config.stages=data,features "
                         f"--workdir={args.workdir}")
    train = train_event_mask(dataset.users)
    base = pctx.PctxConfig(**config.tokenizer.pctx.to_dict())
    variants = [(f"tau={t}", dataclasses.replace(base, merge_threshold=float(t))) for t in args.taus.split(",")]
    if args.static:
        variants.append(("static", dataclasses.replace(base, personalized=False)))
    for name, cfg in variants:
        tic = time.time()
        table, info = pctx.fit_pctx(features.contexts, dataset.users.items, train, features.get("text"), cfg)
        emit({"name": name, "items": dataset.num_items, "centroids": info["num_centroids"], "sids": info["num_sids"],
              "mean_sids_per_item": info["mean_sids_per_item"], "final_histogram": info["sids_per_item"]["final"],
              "train_events_off_mode": off_mode_share(table, train),
              "prefix_collision_rate": info["prefix_collision_rate"], "seconds": round(time.time() - tic, 1)})


if __name__ == "__main__":
    main()
