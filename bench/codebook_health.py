"""Codebook health of RQ-VAE and RQ-KMeans (Euclidean / tangent, plain / balanced) on Scientific MiniLM text.

    python bench/codebook_health.py [--data_dir ../shared/data/scientific]

Prints one JSON line per tokenizer: per-level usage, perplexity, energy ratio, hubness
(coefficient of variation and skewness of items per code, largest code share), collision
rate before and after the de-dup digit, reconstruction error and fit time.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import emit, load_config, load_dataset  # noqa: E402
from configs import tokenizers  # noqa: E402
from gr_jax.stages.tokenize import fit_tokenizer, sid_table_from_fit  # noqa: E402
from gr_jax.text.item_text import embed_items  # noqa: E402
from gr_jax.tokenizers import health  # noqa: E402

VARIANTS = {
    "rq_vae": {},
    "rq_kmeans_euclidean": {"residual": "euclidean"},
    "rq_kmeans_euclidean_balanced": {"residual": "euclidean", "balanced": True},
    "rq_kmeans_tangent": {"residual": "tangent"},
    "rq_kmeans_tangent_balanced": {"residual": "tangent", "balanced": True},
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", default="../shared/data/scientific")
    parser.add_argument("--only", default="", help="comma-separated subset of " + ",".join(VARIANTS))
    args = parser.parse_args()
    config = load_config("rqvae:scientific")
    config.data.dir = args.data_dir
    dataset = load_dataset(config)
    text = config.features.text
    x = embed_items(dataset.items, None, os.path.expanduser("~/.cache/gr_jax/text"), text.template, text.max_length)
    for name, overrides in VARIANTS.items():
        if args.only and name not in args.only.split(","):
            continue
        tok = tokenizers.tokenizer_config("rq_vae" if name == "rq_vae" else "rq_kmeans", embeddings="text")
        tok[tok.name].update(overrides)
        fit = fit_tokenizer(x, tok)
        report = health.compute_health(fit.codes, fit.codebooks.shape[1], residual_energy=fit.residual_energy,
                                       recon_error=fit.recon_error)
        table = sid_table_from_fit(fit, tok)
        emit({"name": name, "items": len(x), "input": "minilm_text",
              "usage": [round(l.usage, 3) for l in report.levels],
              "perplexity": [round(l.perplexity, 1) for l in report.levels],
              "energy_ratio": [round(l.energy_ratio, 3) for l in report.levels],
              "count_cv": [round(l.count_cv, 3) for l in report.levels],
              "count_skewness": [round(l.count_skewness, 2) for l in report.levels],
              "max_code_share": [round(l.max_code_share, 4) for l in report.levels],
              "collision_rate_before": round(report.collision_rate, 4),
              "max_items_per_sid": report.max_items_per_sid,
              "collision_rate_after": round(health.compute_health(table.codes, table.codebook_sizes).collision_rate, 4),
              "recon_error": round(report.recon_error, 4), "fit_seconds": round(fit.info["fit_seconds"], 1)})


if __name__ == "__main__":
    main()
