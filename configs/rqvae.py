"""Tokenize only: MiniLM item text -> RQ-VAE semantic IDs (TIGER's tokenizer) + health report.

    python -m gr_jax.main --config=configs/rqvae.py:scientific

Variants: default (synthetic), ``:tiny`` (tests), ``:scientific``.
"""

import ml_collections

from configs import common, features, tokenizers


def tokenize_config(name: str, tokenizer: str, arg: str | None) -> ml_collections.ConfigDict:
    """data -> features (MiniLM text) -> tokenize with ``tokenizer``, for ``arg``'s variant."""
    common.check_variant(arg, ("tiny", "scientific"))
    c = common.base_config(name, stages="data,features,tokenize")
    c.features = features.features_config(text=True, cf=False)
    c.tokenizer = tokenizers.tokenizer_config(tokenizer, embeddings="text")
    if arg == "tiny":
        common.use_tiny(c)
        tokenizers.shrink_for_tiny(c.tokenizer)
    elif arg == "scientific":
        common.use_scientific(c)
    return c


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    return tokenize_config("rqvae", "rq_vae", arg)
