"""Two-tower retrieval (user modeling, approach A): Q-Former + Set Transformer pooling user tower,
MLP item tower over frozen MiniLM text and SASRec CF item features, InfoNCE, exact top-k.

Variants: default (synthetic), ``:tiny`` (tests), ``:scientific`` (Scientific on 2 CPU cores;
time per stage: BENCHMARKS.md, user modeling).

``qformer_model``, ``add_qformer_losses``, ``add_item_tower``, ``TRAIN``, ``SCIENTIFIC`` and
``use_tiny`` are shared with ``configs/qformer.py`` and ``configs/crbr.py``, the other models on
the Q-Former user tower (``configs/gat.py`` uses ``qformer_model``).
"""

import dataclasses

import ml_collections

from configs import common, features, sasrec
from gr_jax.retrieval.scann_config import ScannConfig

TRAIN = {"learning_rate": 1e-3, "warmup_steps": 100, "weight_decay": 0.01, "num_epochs": 20, "eval_every_epochs": 2}
SCIENTIFIC = {"num_epochs": 25, "eval_every_epochs": 5, "early_stop_patience": 2}
TINY_MODEL = {"num_queries": 8, "embed_dim": 32, "num_layers": 1, "num_heads": 2, "head_dim": 16, "mlp_dim": 64,
              "dropout": 0.0, "set_num_heads": 2, "set_mlp_dim": 64, "item_dim": 32, "item_hidden_dim": 64,
              "num_sampled_negatives": 32}


def qformer_model(name: str) -> ml_collections.ConfigDict:
    """The Q-Former user tower over frozen item features, with its pre-training losses."""
    c = ml_collections.ConfigDict()
    c.name = name
    c.item_features = "text+cf"  # frozen item features: text | cf | text+cf (rows L2-normalised)
    c.num_queries = 32  # M learnable queries
    c.embed_dim = 64  # D of the query states
    c.num_layers = 2  # Q-Former blocks
    c.num_heads = 4
    c.head_dim = 16
    c.mlp_dim = 256  # Q-Former feed-forward width
    c.recency_scale = 64.0  # history positions per unit of a recency slope
    c.dropout = 0.1  # Q-Former dropout
    c.history_read = "first"  # first: only block 0 reads the history (O(M) appends) | every: every block
    common.add_precision(c)
    return c


def add_qformer_losses(c: ml_collections.ConfigDict) -> None:
    """The Q-Former's pre-training losses: the whole loss of configs/qformer.py, an auxiliary of the
    two-tower and CRBR models (``aux_weight``)."""
    c.aux_temperature = 0.07  # ITC temperature
    c.aux_mask_ratio = 0.15  # history items hidden for the reconstruction loss
    c.aux_reconstruction_weight = 1.0
    c.aux_orthogonality_weight = 0.1


def add_item_tower(c: ml_collections.ConfigDict) -> None:
    """The trainable item tower, the InfoNCE temperature and fine-tuning from a pre-trained Q-Former."""
    c.item_dim = 64  # E: item vectors, also the user vector / query size
    c.item_hidden_dim = 256
    c.item_num_layers = 1  # hidden GELU layers
    c.temperature = 0.05  # InfoNCE temperature (user . item / tau)
    c.aux_weight = 0.0  # weight of the Q-Former pre-training losses as an auxiliary, 0 = off
    # Pre-training -> fine-tuning: a finished configs/qformer.py run's WORKDIR; the Q-Former starts
    # from its best checkpoint (its shape fields must match). '' = random init.
    c.init_qformer_from = ""


def retrieval_config(model: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Data, MiniLM text + SASRec CF features, training budget and evaluation of the Q-Former models."""
    c = common.base_config(model.name, stages="data,features,train,eval")
    c.features = features.features_config(text=True, cf=True)
    c.model = model
    c.train.update(TRAIN)
    # Final evaluation: exact in-jit top-k, or each user's queries served from a ScaNN index of the
    # item vectors (config.scann; catalogues under scann.brute_force_below are searched exactly).
    # Validation during training is always exact.
    c.eval.index = "exact"  # exact | scann
    c.scann = ml_collections.ConfigDict(dataclasses.asdict(ScannConfig()))
    return c


def use_tiny(c: ml_collections.ConfigDict) -> None:
    """The ``:tiny`` data and budget, a 1-epoch 16-d CF model and small towers."""
    common.use_tiny(c)
    sasrec.shrink_for_tiny(c.features.cf.model, c.features.cf.train)
    c.model.update({k: v for k, v in TINY_MODEL.items() if k in c.model})


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    common.check_variant(arg, ("tiny", "scientific"))
    m = qformer_model("two_tower")
    add_qformer_losses(m)
    add_item_tower(m)
    # Set Transformer block + PMA pooling over the M query states.
    m.set_num_heads = 4
    m.set_mlp_dim = 256
    m.num_sampled_negatives = 256  # uniform catalogue negatives per batch, on top of the in-batch ones
    c = retrieval_config(m)
    if arg == "tiny":
        use_tiny(c)
    elif arg == "scientific":
        common.use_scientific(c)
        c.train.update(SCIENTIFIC)
    return c
