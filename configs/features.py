"""``config.features``: MiniLM item-text embeddings and a SASRec (or DuoRec, or DCCF) collaborative table."""

import ml_collections

from configs import dccf, sasrec


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
    c.cf.source = "sasrec"  # sasrec: SASRec/DuoRec (cf.model, cf.train) | dccf: DCCF (cf.dccf.model, cf.dccf.train)
    c.cf.contexts = False  # also save the CF model's state at every event (Pctx's context vectors)
    c.cf.model = sasrec.model_config()  # SASRec; model.contrastive='supervised' gives DuoRec
    c.cf.train = sasrec.train_config()
    c.cf.dccf = ml_collections.ConfigDict({"model": dccf.model_config(), "train": dccf.train_config()})
    return c
