"""Tokenize only: MiniLM item text -> RQ-VAE semantic IDs (TIGER's tokenizer) + health report.

    python -m gr_jax.main --config=configs/rqvae.py:scientific --config.data.dir=../shared/data/scientific
"""

import ml_collections

from configs import common, features, tokenizers


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = common.base_config("rqvae", stages="data,features,tokenize")
    c.features = features.features_config(text=True, cf=False)
    c.tokenizer = tokenizers.tokenizer_config("rq_vae", embeddings="text")
    common.apply_variant(c, arg)
    if arg == "tiny":
        tokenizers.shrink_for_tiny(c.tokenizer)
    return c
