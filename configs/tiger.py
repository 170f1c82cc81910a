"""TIGER (Rajput et al., 2023): RQ-VAE semantic IDs + T5-style generative retrieval.

Variants: default (synthetic), ``:tiny`` (tests), ``:scientific`` (CPU budget),
``:scientific_full`` (paper-scale budget for a GPU/TPU).
"""

import ml_collections

from configs import common, features, tokenizers


def model_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.name = "tiger"
    c.num_user_buckets = 2000  # hashed user tokens
    c.embed_dim = 128
    c.num_encoder_layers = 4
    c.num_decoder_layers = 4
    c.num_heads = 6
    c.head_dim = 64
    c.mlp_dim = 1024
    c.dropout = 0.1
    c.dropout_impl = "hash"  # hash: counter-based, ~2x faster steps on CPU | threefry: jax.random reference
    c.item_level_history = False  # True: one encoder vector per history item (sum of its code embeddings)
    c.beam_size = 20
    return c


def use_laptop_model(c: ml_collections.ConfigDict) -> None:
    """A laptop-sized encoder-decoder (2+2 layers, d 64, one vector per history item) for the
    synthetic default runs of the systems built on TIGER."""
    c.model.update(item_level_history=True, embed_dim=64, num_encoder_layers=2, num_decoder_layers=2, num_heads=4,
                   head_dim=16, mlp_dim=256)


def apply_budget(c: ml_collections.ConfigDict, arg: str | None) -> None:
    """Training defaults and per-variant budgets shared by the SID generators (TIGER, PRISM), so
    that their ``:scientific`` rows compare at equal budget."""
    c.train.learning_rate = 2e-3
    c.train.warmup_steps = 200
    c.train.weight_decay = 0.01
    c.train.num_epochs = 30
    common.apply_variant(c, arg)
    if arg == "scientific":
        # CPU budget (<= 45 min on 2 cores for TIGER's whole pipeline): one vector per history item
        # (4x shorter encoder input than one token per code), 10 epochs of 131 steps.
        c.model.item_level_history = True
        c.train.num_epochs = 10
        c.train.eval_every_epochs = 2
    elif arg == "scientific_full":
        # Paper-scale budget for a GPU/TPU: one token per code, up to 200 epochs with early stopping.
        c.train.num_epochs = 200
        c.train.eval_every_epochs = 5
        c.train.early_stop_patience = 4
    elif arg == "tiny":
        tokenizers.shrink_for_tiny(c.tokenizer)
        c.model.update(num_user_buckets=50, embed_dim=32, num_encoder_layers=1, num_decoder_layers=1, num_heads=2,
                       head_dim=16, mlp_dim=64, beam_size=10)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = common.base_config("tiger", stages="data,features,tokenize,train,eval")
    c.features = features.features_config(text=True, cf=False)
    c.tokenizer = tokenizers.tokenizer_config("rq_vae", embeddings="text")
    c.model = model_config()
    apply_budget(c, arg)
    return c
