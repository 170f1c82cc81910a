"""Tokenize only: MiniLM item text -> residual k-means semantic IDs + health report.

    python -m gr_jax.main --config=configs/rqkmeans.py:scientific --config.tokenizer.rq_kmeans.residual=tangent

Variants as ``configs/rqvae.py``.
"""

import ml_collections

from configs import rqvae


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    return rqvae.tokenize_config("rqkmeans", "rq_kmeans", arg)
