"""Two-tower retrieval over frozen item features (user modeling, approach A).

- **User tower**: the Q-Former (``user_tower.QFormer``, default ``history_read``) reads the
  history's frozen item features into M query states ``[B, M, D]``; one Set Transformer block
  (pre-LayerNorm residual multi-head self-attention over the M states, then a GELU MLP) lets the
  queries exchange information; attention pooling by one learned seed (PMA, Lee et al., 2019)
  gives one vector, projected to the item dimension E and L2-normalised.
- **Item tower** (``ItemTower``): a trainable MLP over the item's frozen features (MiniLM text
  and/or the CF table, each row L2-normalised, then concatenated) -> E, L2-normalised. Shared
  with ``crbr_recommender``.
- **Loss**: InfoNCE with temperature τ of the user vector against its next item, negatives =
  the other users' next items in the batch plus ``num_sampled_negatives`` items drawn uniformly
  from the catalogue (shared by the batch); a negative that is the user's own target (a repeated
  in-batch target or an unlucky sample) is masked out. Optionally plus ``aux_weight`` times the
  Q-Former's pre-training losses (ITC, masked-history reconstruction, query orthogonality;
  ``QFormerUserTower.loss``), off by default.
- **Retrieval** (``topk``): exact top-k of ``user · item`` over the whole catalogue inside jit
  (``retrieval.exact.exact_topk``; the catalogue's item vectors are computed once per evaluation
  round by ``eval_params``), or from a ScaNN index with ``eval.index='scann'``; nothing is
  masked (history items may be recommended again, as for every other model of the pipeline).

Params: ``{"qformer", "user_head", "item_tower"}``.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from gr_jax.config_schema import check_choice
from gr_jax.models.layers.structs import from_config
from gr_jax.models.recommender import IndexRetriever
from gr_jax.models.sasrec import SelfAttentionBlock
from gr_jax.models.user_tower import QFormer, QFormerConfig, QFormerUserTower
from gr_jax.ops import contrastive_nll, l2_normalize
from gr_jax.retrieval.exact import exact_topk
from gr_jax.retrieval.multi_query import retrieve


def item_feature_table(model_config: ml_collections.ConfigDict, features) -> np.ndarray:
    """Frozen item features ``[N, F]``: the sources named by ``model.item_features`` ("text",
    "cf" or "text+cf"), each row L2-normalised (so each source weighs the same), concatenated."""
    check_choice("model.item_features", model_config.item_features)
    names = model_config.item_features.split("+")
    if features is None:
        raise ValueError(f"model {model_config.name!r} reads item features: add the features stage to "
                         f"config.stages (with features.{' and features.'.join(names)} enabled)")
    tables = []
    for name in names:
        tables.append(np.asarray(l2_normalize(jnp.asarray(features.get(name), jnp.float32))))
    if len({len(t) for t in tables}) != 1:
        raise ValueError(f"item feature tables of different lengths: {[len(t) for t in tables]}")
    return np.concatenate(tables, -1)


class ItemTower(nn.Module):
    """Frozen item features ``[..., F]`` -> unit item vectors ``[..., out_dim]``: input LayerNorm,
    ``num_layers`` GELU hidden layers of ``hidden_dim``, a linear output."""

    out_dim: int = 64
    hidden_dim: int = 256
    num_layers: int = 1

    @nn.compact
    def __call__(self, features):
        x = nn.LayerNorm(name="input_norm")(features)
        for i in range(self.num_layers):
            x = nn.gelu(nn.Dense(self.hidden_dim, name=f"hidden_{i}")(x))
        return l2_normalize(nn.Dense(self.out_dim, name="out")(x))


class SetPoolingHead(nn.Module):
    """Query states ``[B, M, D]`` -> one unit user vector ``[B, out_dim]``: a Set Transformer
    block (``sasrec.SelfAttentionBlock`` without a mask or dropout: pre-norm self-attention + GELU
    MLP, residual) and attention pooling by one learned seed."""

    num_heads: int = 4
    mlp_dim: int = 256
    out_dim: int = 64

    @nn.compact
    def __call__(self, x):
        d = x.shape[-1]
        x = SelfAttentionBlock(self.num_heads, self.mlp_dim, dropout=0.0, name="set_block")(x, None, False)
        seed = self.param("seed", nn.initializers.normal(0.02), (1, d))
        seeds = jnp.broadcast_to(seed, (x.shape[0], 1, d))
        y = nn.LayerNorm(name="pool_norm")(x)
        pooled = seeds + nn.MultiHeadDotProductAttention(num_heads=self.num_heads, name="pool")(seeds, y)
        return l2_normalize(nn.Dense(self.out_dim, name="out")(nn.LayerNorm(name="out_norm")(pooled[:, 0])))


def info_nce_with_negatives(users, positives, negatives, targets, negative_ids, temperature: float):
    """InfoNCE of unit users ``[B, E]`` against their positives ``[B, E]``; negatives: the other
    rows' positives and ``negatives [S, E]`` (items ``negative_ids [S]``). Columns whose item is
    the row's own target (other than the diagonal) are masked out."""
    candidates = jnp.concatenate([positives, negatives], 0)
    logits = (users @ candidates.T).astype(jnp.float32) / temperature  # [B, B + S]
    return contrastive_nll(logits, jnp.concatenate([targets, negative_ids], 0), targets)


def with_values(boxed: dict, values: dict) -> dict:
    """``boxed`` params (leaves may carry logical-partitioning metadata) with every value replaced
    by the same-shaped array of ``values``, the metadata kept (so sharding rules still apply)."""
    is_box = lambda x: isinstance(x, nn.meta.AxisMetadata)  # noqa: E731

    def replace(old, new):
        shape = (old.unbox() if is_box(old) else old).shape
        if shape != new.shape:
            raise ValueError(f"pre-trained parameter of shape {new.shape} where the model has {shape}")
        return old.replace_boxed(jnp.asarray(new)) if is_box(old) else jnp.asarray(new)

    if jax.tree.structure(boxed, is_leaf=is_box) != jax.tree.structure(values):
        raise ValueError("the pre-trained parameters do not have the model's structure")
    return jax.tree.map(replace, boxed, values, is_leaf=is_box)


class QFormerBase(IndexRetriever):
    """Shared by every model on the Q-Former user tower (pre-training, two-tower, CRBR): the
    frozen feature table, the Q-Former with its pre-training losses, the catalogue cache and
    retrieval. Subclasses define ``item_embeddings(params) -> [N, E]`` (the searched vectors) and
    ``query_set(params, batch) -> [B, P, E]`` (each user's queries, merged by max score)."""

    float_tables = ("features",)

    def __init__(self, model_config: ml_collections.ConfigDict, features):
        self.config = model_config
        self.features = jnp.asarray(item_feature_table(model_config, features))
        self.num_items = self.features.shape[0]
        self.qformer = QFormer(from_config(QFormerConfig, model_config))
        self.qformer_tower = QFormerUserTower(self.qformer, temperature=model_config.aux_temperature,
                                              mask_ratio=model_config.aux_mask_ratio,
                                              reconstruction_weight=model_config.aux_reconstruction_weight,
                                              orthogonality_weight=model_config.aux_orthogonality_weight)

    def qformer_batch(self, batch: dict) -> dict:
        return {"history_features": self.features[batch["history"]], "history_mask": batch["history_mask"],
                "target_features": self.features[batch["target"]]}

    def query_states(self, params: dict, batch: dict, rng: jax.Array | None = None) -> jax.Array:
        """Q-Former query states ``[B, M, D]`` (dropout when ``rng`` is given)."""
        train = rng is not None
        return self.qformer.apply({"params": params["qformer"]}, self.features[batch["history"]],
                                  batch["history_mask"], None, train, rngs={"dropout": rng} if train else None)

    def eval_params(self, params: dict) -> dict:
        """``params`` plus the catalogue's item vectors under ``"item_vectors"``, computed once per
        evaluation round (``trainer.jit_topk``) instead of once per ``topk`` batch."""
        return {**params, "item_vectors": self.item_embeddings(params)}

    def catalogue(self, params: dict) -> jax.Array:
        """The item vectors ``[N, E]`` that ``topk`` searches: ``eval_params``' precomputed ones,
        else computed here."""
        return params["item_vectors"] if "item_vectors" in params else self.item_embeddings(params)

    def topk(self, params: dict, batch: dict, k: int) -> jax.Array:
        """Exact top-k of ``max_p q_p · item`` over the whole catalogue, in jit (``eval.index='scann'``
        serves the same query sets from a ScaNN index: ``retrieval.serving``)."""
        search = functools.partial(exact_topk, vectors=self.catalogue(params))
        return retrieve(self.query_set(params, batch), search, k).ids


class FeatureTowerBase(QFormerBase):
    """Shared by the two-tower and CRBR recommenders: ``QFormerBase`` plus the trainable item
    tower and the Q-Former's pre-training losses as an optional auxiliary.

    ``pretrained_qformer``: Q-Former params to start from instead of a random init (the train
    stage reads them from ``model.init_qformer_from``)."""

    def __init__(self, model_config: ml_collections.ConfigDict, features, pretrained_qformer: dict | None = None):
        super().__init__(model_config, features)
        self.pretrained_qformer = pretrained_qformer
        self.item_tower = ItemTower(out_dim=model_config.item_dim, hidden_dim=model_config.item_hidden_dim,
                                    num_layers=model_config.item_num_layers)

    def init_towers(self, rng: jax.Array, batch: dict) -> dict:
        q_rng, i_rng = jax.random.split(rng)
        qformer = self.qformer_tower.init(q_rng, self.qformer_batch(batch))
        if self.pretrained_qformer is not None:
            qformer = with_values(qformer, self.pretrained_qformer)
        return {"qformer": qformer, "item_tower": self.item_tower.init(i_rng, self.features[:1])["params"]}

    def item_vectors(self, params: dict, ids: jax.Array | None = None) -> jax.Array:
        """Unit item vectors ``[..., E]`` of ``ids`` (all items when None)."""
        features = self.features if ids is None else self.features[ids]
        return self.item_tower.apply({"params": params["item_tower"]}, features)

    def item_embeddings(self, params: dict) -> jax.Array:
        """The item tower's vectors of the whole catalogue ``[N, E]`` (the retrieval index)."""
        return self.item_vectors(params)

    def aux_loss(self, params: dict, batch: dict, rng: jax.Array) -> tuple[jax.Array, dict]:
        loss, metrics = self.qformer_tower.loss(params["qformer"], self.qformer_batch(batch), rng)
        return loss, {f"aux_{k}": v for k, v in metrics.items()}


class TwoTowerRecommender(FeatureTowerBase):
    """Two towers; ``user_vectors`` gives the unit user vectors ``[B, E]``."""

    def __init__(self, model_config: ml_collections.ConfigDict, features, pretrained_qformer: dict | None = None):
        super().__init__(model_config, features, pretrained_qformer)
        self.head = SetPoolingHead(num_heads=model_config.set_num_heads, mlp_dim=model_config.set_mlp_dim,
                                   out_dim=model_config.item_dim)

    def init(self, rng: jax.Array, batch: dict) -> dict:
        tower_rng, head_rng = jax.random.split(rng)
        params = self.init_towers(tower_rng, batch)
        states = jnp.zeros((1, self.config.num_queries, self.config.embed_dim), jnp.float32)
        params["user_head"] = self.head.init(head_rng, states)["params"]
        return params

    def _users(self, params: dict, batch: dict, rng: jax.Array | None = None) -> jax.Array:
        return self.head.apply({"params": params["user_head"]}, self.query_states(params, batch, rng))

    def user_vectors(self, params: dict, batch: dict) -> jax.Array:
        """Unit user vectors ``[B, E]`` (inference: no dropout)."""
        return self._users(params, batch)

    def query_set(self, params: dict, batch: dict) -> jax.Array:
        """One query per user, ``[B, 1, E]``."""
        return self.user_vectors(params, batch)[:, None]

    def loss(self, params: dict, batch: dict, rng: jax.Array, step=None) -> tuple[jax.Array, dict]:
        del step
        dropout_rng, negative_rng, aux_rng = jax.random.split(rng, 3)
        users = self._users(params, batch, dropout_rng)
        targets = batch["target"]
        negative_ids = jax.random.randint(negative_rng, (self.config.num_sampled_negatives,), 0, self.num_items)
        vectors = self.item_vectors(params, jnp.concatenate([targets, negative_ids]))
        positives, negatives = vectors[:targets.shape[0]], vectors[targets.shape[0]:]
        nce = info_nce_with_negatives(users, positives, negatives, targets, negative_ids, self.config.temperature)
        if self.config.aux_weight <= 0:
            return nce, {"info_nce_loss": nce}
        aux, metrics = self.aux_loss(params, batch, aux_rng)
        return nce + self.config.aux_weight * aux, {"info_nce_loss": nce, "aux_loss": aux} | metrics
