"""Builds the model named by ``config.model.name``."""

from __future__ import annotations

import ml_collections

from gr_jax.models import baselines, sasrec, tiger

MODELS = ("popularity", "cooccurrence", "sasrec", "tiger")
SID_MODELS = ("tiger",)  # models that generate semantic IDs (need the tokenize stage)


def build(config: ml_collections.ConfigDict, num_items: int, sid_table=None):
    name = config.model.name
    if name in ("popularity", "cooccurrence"):
        return baselines.build(config.model, num_items)
    if name == "sasrec":
        return sasrec.SASRecRecommender(config.model, num_items, config.data.max_history)
    if name == "tiger":
        if sid_table is None:
            raise ValueError("model 'tiger' needs a SID table: add the tokenize stage to config.stages")
        return tiger.TigerRecommender(config.model, sid_table.codes, max(sid_table.codebook_sizes))
    raise ValueError(f"config.model.name={name!r}; expected one of {MODELS}")
