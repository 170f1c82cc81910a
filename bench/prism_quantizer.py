"""PRISM's purified semantic quantizer on Scientific: full / no-ACD / no-HSA / neither, plus the plain RQ-VAE.

    python bench/prism_quantizer.py [--workdir runs/sci-features] [--data_dir ../shared/data/scientific]
                                    [--only full,no_acd,...] [--epochs N]

Reads the features stage's MiniLM text and SASRec CF item embeddings from ``WORKDIR/features``,
popularity (training-split counts) and category paths from the LC-Rec data, and prints one JSON
line per variant: collision rate before de-dup (and after), items per SID, per-level usage,
perplexity and category purity (fraction of tagged items whose code's majority tag is their
own, tag of layer ``l`` = category level ``l + 1``), the ACD gate's Spearman correlation with
popularity, the latent quantization error and the fit time. ``neither`` is the PSQ architecture
with both modules off (dual heads on ``[text ; cf]``); ``rq_vae_text+cf`` is the stage's plain
TIGER RQ-VAE on the L2-normalised concatenation, for reference.
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
from gr_jax.data.splits import train_item_counts  # noqa: E402
from gr_jax.features import load_features  # noqa: E402
from gr_jax.tokenizers import health  # noqa: E402
from gr_jax.tokenizers import prism_quantizer as pq  # noqa: E402
from gr_jax.tokenizers.stage import (fit_tokenizer, input_embeddings, residual_energy,  # noqa: E402
                                     sid_table_from_fit)

VARIANTS = {
    "full": {},
    "no_acd": {"acd": False},
    "no_hsa": {"hsa": False},
    "neither": {"acd": False, "hsa": False},
    "rq_vae_text+cf": None,
}


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    rank = lambda v: np.argsort(np.argsort(v, kind="stable"), kind="stable")
    return float(np.corrcoef(rank(a), rank(b))[0, 1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="runs/sci-features", help="a run whose features stage is done")
    parser.add_argument("--data_dir", default="../shared/data/scientific")
    parser.add_argument("--only", default="", help="comma-separated subset of " + ",".join(VARIANTS))
    parser.add_argument("--epochs", type=int, default=0, help="override num_epochs (0: the config's)")
    args = parser.parse_args()
    config = load_config("rqvae:scientific")
    config.data.dir = args.data_dir
    dataset = load_dataset(config)
    features = load_features(args.workdir)
    text, cf = features.get("text"), features.get("cf")
    if not len(text) == len(cf) == dataset.num_items:
        raise SystemExit(f"features ({len(text)}, {len(cf)}) do not match the {dataset.num_items}-item dataset")
    popularity = pq.popularity_scores(train_item_counts(dataset.users, dataset.num_items))
    base = pq.PrismConfig()
    if args.epochs:
        base = dataclasses.replace(base, num_epochs=args.epochs)
    tags = pq.category_tags(dataset.items.categories, base.num_levels, base.tag_level_offset)
    for name, overrides in VARIANTS.items():
        if args.only and name not in args.only.split(","):
            continue
        tic = time.time()
        tok = config.tokenizer.copy_and_resolve_references()
        record = {"name": name, "items": dataset.num_items}
        if overrides is None:
            tok.input = "text+cf"
            if args.epochs:
                tok.rq_vae.num_epochs = args.epochs
            fit = fit_tokenizer(input_embeddings(features, "text+cf"), tok)
            codes, codebooks, energy = fit.codes, fit.codebooks, fit.residual_energy
            record["input"] = "l2(text)+l2(cf), plain RQ-VAE"
        else:
            cfg = dataclasses.replace(base, **overrides)
            result = pq.fit_prism_quantizer(text, cf, popularity, tags.ids, cfg, num_tags=tags.sizes)
            codes, codebooks = result.codes, result.codebooks
            energy = residual_energy(result.latents, codes, codebooks)
            record |= {"acd": cfg.acd, "hsa": cfg.hsa}
            if result.gate_mean is not None:
                record |= {"gate_mean": round(float(result.gate_mean.mean()), 3),
                           "gate_std": round(float(result.gate_mean.std()), 3),
                           "gate_spearman_popularity": round(_spearman(result.gate_mean, popularity), 3)}
            first, last = result.loss_history[0], result.loss_history[-1]
            if cfg.acd:
                record["gate_mse_first_last_batch"] = [round(first["gate_mse"], 4), round(last["gate_mse"], 4)]
            record["class_acc_last_batch"] = [round(last[k], 3) for k in sorted(last) if k.startswith("class_acc_l")]
        seconds = time.time() - tic
        report = health.compute_health(codes, codebooks.shape[1], residual_energy=energy)
        tok.name = "prism" if overrides is not None else "rq_vae"
        table = sid_table_from_fit(_Fit(codes, codebooks), tok)
        record |= {
            "collision_rate_before": round(report.collision_rate, 4),
            "collision_rate_after": round(health.compute_health(table.codes, table.codebook_sizes).collision_rate, 4),
            "unique_sids": report.num_unique_sids, "max_items_per_sid": report.max_items_per_sid,
            "usage": [round(l.usage, 3) for l in report.levels],
            "perplexity": [round(l.perplexity, 1) for l in report.levels],
            "category_purity": [round(pq.category_purity(codes[:, l], tags.ids[:, l]), 3)
                                for l in range(codes.shape[1])],
            "latent_error_ratio": round(float(energy[-1] / energy[0]), 4),
            "tag_level_offset": tags.level_offset, "num_tags": list(tags.sizes),
            "fit_seconds": round(seconds, 1)}
        emit(record)


@dataclasses.dataclass
class _Fit:
    """The two fields ``sid_table_from_fit`` reads (de-dup digit needs no costs)."""

    codes: np.ndarray
    codebooks: np.ndarray
    last_level_costs: None = None


if __name__ == "__main__":
    main()
