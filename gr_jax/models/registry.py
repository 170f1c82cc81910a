"""Builds the model named by ``config.model.name``."""

from __future__ import annotations

import ml_collections

from gr_jax.models import baselines, crbr_recommender, pctx, prism, qformer_pretrain, sasrec, tiger, two_tower

MODELS = ("popularity", "cooccurrence", "sasrec", "tiger", "prism", "pctx", "qformer", "two_tower", "crbr")
SID_MODELS = ("tiger", "prism", "pctx")  # models that generate semantic IDs (need the tokenize stage)
FEATURE_MODELS = ("prism", "qformer", "two_tower", "crbr")  # models that read item features (need the features stage)


def build(config: ml_collections.ConfigDict, num_items: int, sid_table=None, features=None):
    """``features``: a ``gr_jax.features.Features`` (models in ``FEATURE_MODELS``)."""
    name = config.model.name
    if name in ("popularity", "cooccurrence"):
        return baselines.build(config.model, num_items)
    if name == "sasrec":
        return sasrec.SASRecRecommender(config.model, num_items, config.data.max_history)
    if name == "tiger":
        if sid_table is None:
            raise ValueError("model 'tiger' needs a SID table: add the tokenize stage to config.stages")
        return tiger.TigerRecommender(config.model, sid_table.codes, max(sid_table.codebook_sizes))
    if name == "prism":
        if sid_table is None:
            raise ValueError("model 'prism' needs a SID table: add the tokenize stage to config.stages")
        text = cf = None
        if config.model.dsi:
            if features is None:
                raise ValueError("model 'prism' with model.dsi needs item features: add the features stage to "
                                 "config.stages (with features.text and features.cf enabled)")
            text, cf = features.get("text"), features.get("cf")
        return prism.PrismRecommender(config.model, sid_table, text, cf)
    if name == "qformer":
        return qformer_pretrain.QFormerPretrainRecommender(config.model, features)
    if name == "two_tower":
        return two_tower.TwoTowerRecommender(config.model, features)
    if name == "crbr":
        return crbr_recommender.CRBRRecommender(config.model, features)
    if name == "pctx":
        from gr_jax.tokenizers.pctx import PersonalizedSIDs

        if not isinstance(sid_table, PersonalizedSIDs):
            raise ValueError("model 'pctx' needs personalized SIDs: set tokenizer.name='pctx' and run the tokenize "
                             "stage (configs/pctx.py does both)")
        return pctx.PctxRecommender(config.model, sid_table)
    raise ValueError(f"config.model.name={name!r}; expected one of {MODELS}")
