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
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import emit, load_config, load_dataset  # noqa: E402
from configs import tokenizers  # noqa: E402
from gr_jax.stages.features import load_features  # noqa: E402
from gr_jax.stages.tokenize import fit_prism, fit_tokenizer, input_embeddings, sid_table_from_fit  # noqa: E402
from gr_jax.tokenizers import health  # noqa: E402
from gr_jax.tokenizers import prism_quantizer as pq  # noqa: E402

VARIANTS = {
    "full": {},
    "no_acd": {"acd": False},
    "no_hsa": {"hsa": False},
    "neither": {"acd": False, "hsa": False},
    "rq_vae_text+cf": None,
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="runs/sci-features", help="a run whose features stage is done")
    parser.add_argument("--data_dir", default="../shared/data/scientific")
    parser.add_argument("--only", default="", help="comma-separated subset of " + ",".join(VARIANTS))
    parser.add_argument("--epochs", type=int, default=0, help="override num_epochs (0: the config's)")
    args = parser.parse_args()
    config = load_config("prism:scientific")
    config.data.dir = args.data_dir
    dataset = load_dataset(config)
    features = load_features(args.workdir)
    text, cf = features.get("text"), features.get("cf")
    if not len(text) == len(cf) == dataset.num_items:
        raise SystemExit(f"features ({len(text)}, {len(cf)}) do not match the {dataset.num_items}-item dataset")
    prism = config.tokenizer.prism
    tags = pq.category_tags(dataset.items.categories, prism.num_levels, prism.tag_level_offset)
    for name, overrides in VARIANTS.items():
        if args.only and name not in args.only.split(","):
            continue
        tic = time.time()
        tok = config.tokenizer.copy_and_resolve_references()
        record = {"name": name, "items": dataset.num_items}
        if overrides is None:  # the stage's plain RQ-VAE on the same inputs
            tok = tokenizers.tokenizer_config("rq_vae", embeddings="text+cf")
            if args.epochs:
                tok.rq_vae.num_epochs = args.epochs
            fit = fit_tokenizer(input_embeddings(features, tok.input), tok)
            record["input"] = "l2(text)+l2(cf), plain RQ-VAE"
        else:
            tok.prism.update(overrides)
            if args.epochs:
                tok.prism.num_epochs = args.epochs
            fit = fit_prism(dataset, features, tok.prism)
            last = fit.info["final_loss"]
            record |= {"acd": tok.prism.acd, "hsa": tok.prism.hsa, "gate": fit.info.get("gate"),
                       "class_acc_last_batch": [round(last[k], 3) for k in sorted(last) if k.startswith("class_acc_l")]}
        seconds = time.time() - tic
        report = health.compute_health(fit.codes, fit.codebooks.shape[1], residual_energy=fit.residual_energy)
        table = sid_table_from_fit(fit, tok)
        record |= {
            "collision_rate_before": round(report.collision_rate, 4),
            "collision_rate_after": round(health.compute_health(table.codes, table.codebook_sizes).collision_rate, 4),
            "unique_sids": report.num_unique_sids, "max_items_per_sid": report.max_items_per_sid,
            "usage": [round(l.usage, 3) for l in report.levels],
            "perplexity": [round(l.perplexity, 1) for l in report.levels],
            "category_purity": [round(pq.category_purity(fit.codes[:, l], tags.ids[:, l]), 3)
                                for l in range(fit.codes.shape[1])],
            "latent_error_ratio": round(fit.recon_error, 4),
            "tag_level_offset": tags.level_offset, "num_tags": list(tags.sizes),
            "fit_seconds": round(seconds, 1)}
        emit(record)


if __name__ == "__main__":
    main()
