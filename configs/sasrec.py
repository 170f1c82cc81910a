"""SASRec: causal self-attention over item ids (Kang & McAuley, 2018).

Variants: ``configs/sasrec.py`` (synthetic default), ``:tiny`` (tests), ``:scientific``.
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = common.base_config("sasrec", stages="data,train,eval")
    c.model = ml_collections.ConfigDict()
    c.model.name = "sasrec"
    c.model.embed_dim = 64
    c.model.num_blocks = 2
    c.model.num_heads = 2
    c.model.mlp_dim = 256
    c.model.dropout = 0.2
    c.model.loss = "ce"  # ce (full softmax) | sampled_softmax | bce
    c.model.num_negatives = 128  # sampled_softmax / bce
    c.model.contrastive = "none"  # none | unsupervised | supervised (DuoRec)
    c.model.contrastive_weight = 0.1  # DuoRec lambda
    c.model.contrastive_temperature = 1.0  # DuoRec tau
    c.train.num_epochs = 30
    c.train.learning_rate = 1e-3
    c.train.weight_decay = 0.0
    common.apply_variant(c, arg)
    if arg == "tiny":
        c.model.embed_dim = 16
        c.model.mlp_dim = 32
    return c
