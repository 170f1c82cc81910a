"""Defaults of ``config.features``: MiniLM text embeddings and a SASRec-trained CF table."""

import ml_collections

from configs import sasrec


def features_config(text: bool = True, cf: bool = False) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.text = ml_collections.ConfigDict()
    c.text.enabled = text
    c.text.template = "Title: {title}; Brand: {brand}; Categories: {categories}; Description: {description}"
    c.text.max_length = 128  # tokens
    c.text.batch_size = 32  # fastest on 2 CPU cores (bench/text_encoder.py)
    c.text.cache_dir = ""  # '' = ~/.cache/gr_jax/text, shared by runs (keyed by content)
    c.cf = ml_collections.ConfigDict()
    c.cf.enabled = cf
    c.cf.contexts = False  # also save the CF model's state at every event (Pctx's context vectors)
    cf_defaults = sasrec.get_config()
    c.cf.model = cf_defaults.model  # SASRec by default; model.contrastive='supervised' gives DuoRec
    c.cf.train = cf_defaults.train
    return c
