"""DCCF: disentangled contrastive collaborative filtering (Ren et al., SIGIR 2023) over the
user-item graph of the training split; ``gr_jax/models/dccf.py``. Also a collaborative item table
of the features stage (``--config.features.cf.source=dccf``, ``configs/features.py``).

Variants: default (synthetic), ``:tiny`` (tests), ``:scientific``. ``configs/lightgcn.py`` is the
same model with ``LIGHTGCN``'s switches (plain LightGCN).
"""

import ml_collections

from configs import common

# The switches that reduce DCCF to plain LightGCN (He et al., 2020): no intent prototypes, no
# adaptive augmentation, no residual, the mean of the layers, BPR + L2 only.
LIGHTGCN = {"num_intents": 0, "augmentation": False, "layer_residual": False, "layer_combination": "mean",
            "contrastive_weight": 0.0, "intent_reg": 0.0}


def model_config() -> ml_collections.ConfigDict:
    """DCCF's knobs; defaults are the paper's code's (embedding 32, 2 layers, 128 intents, τ = 1,
    weights 0.1 / 2.5e-5 / 5e-3)."""
    c = ml_collections.ConfigDict()
    c.name = "dccf"
    c.embed_dim = 32
    c.num_layers = 2  # propagation layers
    c.num_intents = 128  # intent prototypes per side; 0: no intent-aware messages and no intent views
    c.augmentation = True  # adaptive augmentation: the graph re-weighted by the ends' similarity
    c.layer_residual = True  # each layer adds its input (DCCF); False: LightGCN
    c.layer_combination = "sum"  # sum (DCCF) | mean (LightGCN) of the ego and layer vectors
    c.contrastive_weight = 0.1  # InfoNCE between the graph view and the intent / augmented views
    c.contrastive_temperature = 1.0
    c.embedding_reg = 2.5e-5  # L2 of the batch's ego vectors, summed over the batch's rows
    c.intent_reg = 5e-3  # L2 of the intent prototypes
    c.exclude_history = True  # rank only items outside the user's history (the training edges)
    common.add_precision(c)
    c.dtype = "float32"  # sparse sums over node degrees: bfloat16 gains nothing here
    return c


def train_config() -> ml_collections.ConfigDict:
    """Adam at the paper's learning rate, constant; each step propagates over the whole graph, so
    large batches. On Scientific DCCF peaks within ~5 epochs and then overfits: early stopping
    after 3 evaluations without a better valid NDCG@10."""
    c = common.train_config()
    c.update(batch_size=2048, num_epochs=30, learning_rate=1e-3, warmup_steps=0, schedule="constant",
             eval_every_epochs=1, early_stop_patience=3, log_every_steps=10)
    return c


def shrink_for_tiny(model: ml_collections.ConfigDict, train: ml_collections.ConfigDict) -> None:
    """The ``:tiny`` DCCF: 16-d, 8 intents, one epoch at batch 32."""
    model.update(embed_dim=16, num_intents=8)
    train.update(num_epochs=1, batch_size=32, warmup_steps=0, log_every_steps=5, eval_every_epochs=1)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    common.check_variant(arg, ("tiny", "scientific"))
    c = common.base_config("dccf", stages="data,train,eval")
    c.model = model_config()
    c.train = train_config()
    if arg == "tiny":
        common.use_tiny(c)
        shrink_for_tiny(c.model, c.train)
    elif arg == "scientific":
        common.use_scientific(c)
    return c
