"""TIGER (Rajput et al., 2023): RQ-VAE semantic IDs + T5-style generative retrieval.

Variants: default (synthetic), ``:tiny`` (tests), ``:scientific`` (CPU budget),
``:scientific_full`` (paper-scale budget for a GPU/TPU).

The names in capitals are the budgets that PRISM and Pctx reuse, so that their rows compare
with TIGER's at equal budget (``configs/prism.py``, ``configs/pctx.py``).
"""

import ml_collections

from configs import common, features, tokenizers

TRAIN = {"learning_rate": 2e-3, "warmup_steps": 200, "weight_decay": 0.01, "num_epochs": 30}
# CPU budget (<= 45 min on 2 cores for the whole pipeline): 10 epochs with one encoder vector per
# history item (4x shorter encoder input than one token per code).
SCIENTIFIC = {"num_epochs": 10, "eval_every_epochs": 2}
# Paper-scale budget for a GPU/TPU: one token per code, up to 200 epochs with early stopping.
SCIENTIFIC_FULL = {"num_epochs": 200, "eval_every_epochs": 5, "early_stop_patience": 4}
TINY_MODEL = {"num_user_buckets": 50, "embed_dim": 32, "num_encoder_layers": 1, "num_decoder_layers": 1,
              "num_heads": 2, "head_dim": 16, "mlp_dim": 64, "beam_size": 10}
# A laptop-sized encoder-decoder for the synthetic default runs of the systems built on TIGER.
LAPTOP_MODEL = {"item_level_history": True, "embed_dim": 64, "num_encoder_layers": 2, "num_decoder_layers": 2,
                "num_heads": 4, "head_dim": 16, "mlp_dim": 256}


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
    c.dropout_impl = "hash"  # hash: counter-based, faster steps on CPU (BENCHMARKS.md) | threefry: jax.random
    c.item_level_history = False  # True: one encoder vector per history item (sum of its code embeddings)
    c.beam_size = 20
    c.trie = "auto"  # constrained decoding tables: dense [L, prefixes, K] (small catalogues), compact O(L·SIDs) or auto
    # Hybrid retrieval (LIGER-style, gr_jax.models.tiger.TigerRecommender); all off by default: TIGER as published.
    c.item_id_input = False  # add a learned item-ID embedding to each history item's SID input
    c.dense_weight = 0.0  # > 0: train a dense next-item head (full-softmax CE) with this loss weight
    # The dense head's item vectors: codes_id (summed code embeddings + an ID embedding) | text (the item's
    # text embedding through a learned projection: LIGER's item side, for items with little history) | codes_id_text.
    c.dense_item = "codes_id"
    # The dense head's loss: softmax (cross-entropy over the whole catalogue, logits q·v/sqrt(d)) | infonce (cosine
    # logits / dense_temperature against the batch's other targets, as the two-tower model trains; in-batch
    # negatives are drawn by popularity, so popular items are pushed down more than by a full softmax).
    c.dense_loss = "softmax"
    c.dense_temperature = 0.05
    c.retrieval = "beam"  # beam | dense (the dense head over all items) | hybrid (beam ∪ dense top-W, fused score)
    c.hybrid_gen_weight = 1.0  # hybrid score: log p_dense(item) + this · log p_gen(SID)
    c.hybrid_dense_slots = 0  # hybrid: the last this many of the top-k go to the dense head's best unranked items
    c.popularity_penalty = 0.0  # rank items by score - this · log(1 + training count): 0 = off, > 0 favours rare items
    c.vocab_multiple = 1  # pad the token table to a multiple of this; 128 splits it over any model axis up to 128
    common.add_precision(c)
    return c


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    common.check_variant(arg, ("tiny", "scientific", "scientific_full"))
    c = common.base_config("tiger", stages="data,features,tokenize,train,eval")
    c.features = features.features_config(text=True, cf=False)
    c.tokenizer = tokenizers.tokenizer_config("rq_vae", embeddings="text")
    c.model = model_config()
    c.train.update(TRAIN)
    if arg == "tiny":
        common.use_tiny(c)
        tokenizers.shrink_for_tiny(c.tokenizer)
        c.model.update(TINY_MODEL)
    elif arg == "scientific":
        common.use_scientific(c)
        c.model.item_level_history = True
        c.train.update(SCIENTIFIC)
    elif arg == "scientific_full":
        common.use_scientific(c)
        c.train.update(SCIENTIFIC_FULL)
    return c
