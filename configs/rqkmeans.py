"""Tokenize only: MiniLM item text -> residual k-means semantic IDs + health report.

    python -m gr_jax.main --config=configs/rqkmeans.py:scientific --config.tokenizer.rq_kmeans.residual=tangent
"""

import ml_collections

from configs import common, features, tokenizers


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = common.base_config("rqkmeans", stages="data,features,tokenize")
    c.features = features.features_config(text=True, cf=False)
    c.tokenizer = tokenizers.tokenizer_config("rq_kmeans", embeddings="text")
    common.apply_variant(c, arg)
    if arg == "tiny":
        tokenizers.shrink_for_tiny(c.tokenizer)
    return c
