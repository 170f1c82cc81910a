"""SASRec: causal self-attention over item ids (Kang & McAuley, 2018).

Variants: default (synthetic), ``:tiny`` (tests), ``:scientific``.
"""

import ml_collections

from configs import common


def model_config() -> ml_collections.ConfigDict:
    """SASRec's knobs (also the collaborative model of the features stage, ``configs/features.py``)."""
    c = ml_collections.ConfigDict()
    c.name = "sasrec"
    c.embed_dim = 64
    c.num_blocks = 2
    c.num_heads = 2
    c.mlp_dim = 256
    c.dropout = 0.2
    c.loss = "ce"  # ce (full softmax) | sampled_softmax | bce
    c.num_negatives = 128  # sampled_softmax / bce
    c.contrastive = "none"  # none | unsupervised | supervised (DuoRec)
    c.contrastive_weight = 0.1  # DuoRec lambda
    c.contrastive_temperature = 1.0  # DuoRec tau
    common.add_precision(c)
    return c


def train_config() -> ml_collections.ConfigDict:
    c = common.train_config()
    c.update(num_epochs=30, learning_rate=1e-3, weight_decay=0.0)
    return c


def shrink_for_tiny(model: ml_collections.ConfigDict, train: ml_collections.ConfigDict) -> None:
    """The ``:tiny`` SASRec: 16-d, one epoch at batch 32."""
    model.update(embed_dim=16, mlp_dim=32)
    train.update(num_epochs=1, batch_size=32, warmup_steps=2, log_every_steps=5)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    common.check_variant(arg, ("tiny", "scientific"))
    c = common.base_config("sasrec", stages="data,train,eval")
    c.model = model_config()
    c.train = train_config()
    if arg == "tiny":
        common.use_tiny(c)
        shrink_for_tiny(c.model, c.train)
    elif arg == "scientific":
        common.use_scientific(c)
    return c
