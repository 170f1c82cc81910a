"""Two-tower retrieval (user modeling, approach A): Q-Former + Set Transformer pooling user tower,
MLP item tower over frozen MiniLM text and SASRec CF item features, InfoNCE, exact top-k.

Variants: default (synthetic), ``:tiny`` (tests), ``:scientific`` (Scientific on 2 CPU cores,
whole pipeline within 45 min: features ~10 min (MiniLM + the 30-epoch SASRec CF table),
training 25 epochs of 131 steps at batch 256, ~25 min at the ~2.4 steps/s measured on a loaded 2-core
machine for two_tower, ~3.5 for crbr; estimated from synthetic-data throughput, not yet run on Scientific).
"""

import dataclasses

import ml_collections

from configs import common, features
from gr_jax.retrieval.scann_index import ScannConfig


def model_config() -> ml_collections.ConfigDict:
    """The knobs shared by ``two_tower`` and ``crbr`` (Q-Former, item tower, loss)."""
    c = ml_collections.ConfigDict()
    c.name = "two_tower"
    c.item_features = "text+cf"  # frozen item features of both towers: text | cf | text+cf (rows L2-normalised)
    # Q-Former user tower (gr_jax.models.user_tower.QFormer).
    c.num_queries = 32  # M learnable queries
    c.embed_dim = 64  # D of the query states
    c.num_layers = 2  # Q-Former blocks
    c.num_heads = 4
    c.head_dim = 16
    c.mlp_dim = 256  # Q-Former feed-forward width
    c.recency_scale = 64.0  # history positions per unit of a recency slope
    c.dropout = 0.1  # Q-Former dropout
    c.history_read = "first"  # first: only block 0 reads the history (O(M) appends) | every: every block
    # Set Transformer block + PMA pooling over the M query states (two_tower only).
    c.set_num_heads = 4
    c.set_mlp_dim = 256
    # Item tower: MLP over the frozen features -> unit vectors of item_dim (E, also the user vector size).
    c.item_dim = 64
    c.item_hidden_dim = 256
    c.item_num_layers = 1  # hidden GELU layers
    # Loss.
    c.temperature = 0.05  # InfoNCE temperature (user . item / tau)
    c.num_sampled_negatives = 256  # uniform catalogue negatives per batch, on top of the in-batch ones
    # Auxiliary Q-Former pre-training losses (ITC + reconstruction + orthogonality), 0 = off.
    c.aux_weight = 0.0
    c.aux_temperature = 0.07  # ITC temperature
    c.aux_mask_ratio = 0.15  # history items hidden for the reconstruction loss
    c.aux_reconstruction_weight = 1.0
    c.aux_orthogonality_weight = 0.1
    # Pre-training -> fine-tuning: a finished configs/qformer.py run's WORKDIR; the Q-Former starts
    # from its best checkpoint (its shape fields must match). '' = random init.
    c.init_qformer_from = ""
    return c


def shrink_for_tiny(c: ml_collections.ConfigDict) -> None:
    """Small widths and a 1-epoch CF model for the tests."""
    c.features.cf.model.update(embed_dim=16, mlp_dim=32)
    c.features.cf.train.update(num_epochs=1, batch_size=32, warmup_steps=2, log_every_steps=5)
    c.model.update(num_queries=8, embed_dim=32, num_layers=1, num_heads=2, head_dim=16, mlp_dim=64,
                   set_num_heads=2, set_mlp_dim=64, item_dim=32, item_hidden_dim=64, num_sampled_negatives=32,
                   dropout=0.0)


def base_config(name: str, arg: str | None) -> ml_collections.ConfigDict:
    c = common.base_config(name, stages="data,features,train,eval")
    c.features = features.features_config(text=True, cf=True)
    c.model = model_config()
    c.model.name = name
    c.train.learning_rate = 1e-3
    c.train.warmup_steps = 100
    c.train.weight_decay = 0.01
    c.train.num_epochs = 20
    c.train.eval_every_epochs = 2
    # Final evaluation: exact in-jit top-k, or each user's queries served from a ScaNN index of the
    # item vectors (config.scann; catalogues under scann.brute_force_below are searched exactly).
    # Validation during training is always exact.
    c.eval.index = "exact"  # exact | scann
    c.scann = ml_collections.ConfigDict(dataclasses.asdict(ScannConfig()))
    common.apply_variant(c, arg)
    if arg == "scientific":
        # 2 CPU cores, <= 45 min for the whole pipeline: features ~10 min, then 25 epochs of 131 steps
        # (3,275 steps; ~2.4 steps/s for two_tower, ~3.5 for crbr at batch 256 on 2 loaded cores).
        c.train.num_epochs = 25
        c.train.eval_every_epochs = 5
        c.train.early_stop_patience = 2
    elif arg == "tiny":
        shrink_for_tiny(c)
    return c


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    return base_config("two_tower", arg)
