"""Builds the model named by ``config.model.name``."""

from __future__ import annotations

import ml_collections

from gr_jax.models import baselines, sasrec

MODELS = ("popularity", "cooccurrence", "sasrec")


def build(config: ml_collections.ConfigDict, num_items: int):
    name = config.model.name
    if name in ("popularity", "cooccurrence"):
        return baselines.build(config.model, num_items)
    if name == "sasrec":
        return sasrec.SASRecRecommender(config.model, num_items, config.data.max_history)
    raise ValueError(f"config.model.name={name!r}; expected one of {MODELS}")
