"""Pctx (Zhong et al., 2025): personalized context tokenization for generative recommendation.

DuoRec context of every event -> per-item k-means++ centroids -> fused with text -> RQ 3×256 +
collision digit -> merged SIDs; a TIGER-size model trained with SID augmentation and decoded with
the n-copy ensemble. Ablations (switches): ``--config.tokenizer.pctx.personalized=False`` (one
SID per item: no clustering), ``--config.tokenizer.pctx.merge_threshold=0`` (no merging),
``--config.model.augment_prob=0`` (no augmentation), ``--config.model.num_copies=1`` (no ensemble).

Variants: default (synthetic, laptop-sized model), ``:tiny`` (tests), ``:scientific`` (TIGER's CPU
budget), ``:scientific_full`` (TIGER's paper-scale budget, for a GPU/TPU).
"""

import ml_collections

from configs import common, duorec, features, sasrec, tiger, tokenizers


def model_config() -> ml_collections.ConfigDict:
    c = tiger.model_config()  # the same T5 (4+4, d 128, d_ff 1024, 6 heads × 64, dropout 0.1)
    c.name = "pctx"
    c.augment_prob = 0.7  # γ: a position's SID is redrawn from its item's SIDs with this probability
    c.num_copies = 5  # n: tokenizations of the history fused at inference
    c.selection_copies = 1  # copies used for validation during training (checkpoint selection)
    c.copy_seed = 0  # seeds the inference copies' draws (keyed by event, so batching does not matter)
    c.beam_size = 50  # per copy
    return c


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    common.check_variant(arg, ("tiny", "scientific", "scientific_full"))
    c = common.base_config("pctx", stages="data,features,tokenize,train,eval")
    c.features = features.features_config(text=True, cf=True)
    c.features.cf.model.update(duorec.CONTRASTIVE)  # the context encoder is a DuoRec
    c.features.cf.contexts = True
    c.tokenizer = tokenizers.tokenizer_config("pctx", embeddings="text")
    # The fused vectors are PCA-whitened (a flat spectrum), so each residual level removes less energy
    # than on raw embeddings (BENCHMARKS.md, Pctx tokenizer); usage and perplexity limits still apply.
    c.tokenizer.health.max_energy_ratio = -1.0
    c.model = model_config()
    c.train.update(tiger.TRAIN)
    if not arg:
        # A laptop-sized model (as configs/prism.py) and 64-code levels.
        c.features.cf.train.num_epochs = 10
        c.tokenizer.pctx.codebook_size = 64
        c.model.update(tiger.LAPTOP_MODEL)
        c.model.beam_size = 20
        c.train.update(num_epochs=10, eval_every_epochs=5)
    elif arg == "tiny":
        common.use_tiny(c)
        sasrec.shrink_for_tiny(c.features.cf.model, c.features.cf.train)
        tokenizers.shrink_for_tiny(c.tokenizer)
        c.model.update(tiger.TINY_MODEL)
        c.model.num_copies = 3
    elif arg == "scientific":
        common.use_scientific(c)
        c.model.item_level_history = True
        c.train.update(tiger.SCIENTIFIC)
        c.model.augment_prob = 0.9  # the authors' Scientific setting
        c.model.beam_size = 20  # TIGER's beam; 5 copies x 20 keeps the final evaluation ~5x TIGER's
    elif arg == "scientific_full":
        common.use_scientific(c)
        c.train.update(tiger.SCIENTIFIC_FULL)
        c.model.augment_prob = 0.9
    return c
