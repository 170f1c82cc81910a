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
    c.llm = ml_collections.ConfigDict()
    c.llm.enabled = False  # the LLM's vocabulary and each item's title in its token-embedding space
    c.llm.checkpoint = ""  # a local Hugging Face Llama/Qwen2 dir (its tokenizer and token table); '' = from scratch
    c.llm.vocab_size = 2048  # from scratch: byte-level BPE trained on the item texts and prompt templates
    c.llm.embed_dim = 128  # from scratch: the token table's width (= the LLM's model.hidden_size)
    c.llm.max_title_tokens = 24  # title tokens averaged into an item's text vector
    return c
