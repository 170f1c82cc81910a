"""CRBR behind the trainer's model interface: Q-Former -> Gumbel-routed residual codes -> queries.

- User side: the Q-Former (``user_tower.QFormer``) reads the history's frozen item features into
  M query states; ``crbr.CRBR`` routes them through ``len(codebook_sizes)`` codebooks into a
  unit query (training: straight-through Gumbel-softmax at the fixed temperature
  ``model.gumbel_temperature``; the trainer's loss does not see the step, so no schedule).
- Item side: the two-tower model's trainable ``ItemTower`` over the same frozen features.
- Loss: ``crbr.crbr_loss`` of the routed query against the item tower's vector of the next
  item (InfoNCE with in-batch negatives + alignment + load balance), optionally plus
  ``aux_weight`` times the Q-Former pre-training losses (off by default).
- Retrieval (``topk``): ``crbr.route_beams`` gives ``model.beam_size`` (W) queries per user;
  each path's exact top-k over the whole catalogue (``retrieval.exact``), then the W lists are
  merged per item by max score (``merge_by_max``, the jittable counterpart of
  ``crbr.merge_by_max``). All inside jit.

Params: ``{"qformer", "crbr", "item_tower"}``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import ml_collections

from gr_jax.models.crbr import CRBR, crbr_loss, route_beams
from gr_jax.models.two_tower import FeatureTowerBase
from gr_jax.retrieval.exact import exact_topk


def merge_by_max(ids: jax.Array, scores: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    """Jittable ``crbr.merge_by_max``: the ``k`` best distinct items of candidate rows ``ids, scores
    [n, C]`` (an item scored by its max over its repeats; ties to the lower id; rows with fewer than
    k distinct items pad with id -1 and score -inf)."""
    if ids.ndim != 2 or scores.shape != ids.shape or ids.shape[1] < k:
        raise ValueError(f"ids {ids.shape} and scores {scores.shape} must both be [n, C] with C >= k={k}")
    order = jnp.lexsort((-scores, ids), axis=-1)  # by item, its best score first
    ids, scores = jnp.take_along_axis(ids, order, -1), jnp.take_along_axis(scores, order, -1)
    repeat = jnp.concatenate([jnp.zeros(ids.shape[:1] + (1,), bool), ids[:, 1:] == ids[:, :-1]], -1)
    scores = jnp.where(repeat, -jnp.inf, scores)
    scores, top = jax.lax.top_k(scores, k)  # ties: the lower position, i.e. the lower id
    ids = jnp.take_along_axis(ids, top, -1)
    return jnp.where(jnp.isneginf(scores), -1, ids).astype(jnp.int32), scores


class CRBRRecommender(FeatureTowerBase):
    """CRBR: ``init``, ``loss``, ``topk``, ``item_embeddings``; ``path_queries`` gives the
    beam-searched queries ``[B, W, E]``."""

    def __init__(self, model_config: ml_collections.ConfigDict, features):
        super().__init__(model_config, features)
        self.crbr = CRBR(codebook_sizes=tuple(model_config.codebook_sizes), embed_dim=model_config.embed_dim,
                         item_dim=model_config.item_dim, mlp_dim=model_config.crbr_mlp_dim)
        num_paths = math.prod(self.crbr.codebook_sizes)
        if not 1 <= model_config.beam_size <= num_paths:
            raise ValueError(f"model.beam_size={model_config.beam_size} must be in [1, {num_paths}] (the number "
                             f"of routing paths of model.codebook_sizes={tuple(model_config.codebook_sizes)})")

    def init(self, rng: jax.Array, batch: dict) -> dict:
        tower_rng, crbr_rng = jax.random.split(rng)
        params = self.init_towers(tower_rng, batch)
        states = jnp.zeros((1, self.config.num_queries, self.config.embed_dim), jnp.float32)
        params["crbr"] = self.crbr.init(crbr_rng, states, crbr_rng, self.config.gumbel_temperature)["params"]
        return params

    def loss(self, params: dict, batch: dict, rng: jax.Array) -> tuple[jax.Array, dict]:
        dropout_rng, gumbel_rng, aux_rng = jax.random.split(rng, 3)
        c = self.config
        states = self.query_states(params, batch, dropout_rng)
        outputs = self.crbr.apply({"params": params["crbr"]}, states, gumbel_rng, c.gumbel_temperature,
                                  c.straight_through)
        positives = self.item_vectors(params, batch["target"])
        loss, metrics = crbr_loss(outputs, positives, c.temperature, c.alignment_weight, c.balance_weight)
        if c.aux_weight <= 0:
            return loss, metrics
        aux, aux_metrics = self.aux_loss(params, batch, aux_rng)
        return loss + c.aux_weight * aux, metrics | {"aux_loss": aux} | aux_metrics

    def path_queries(self, params: dict, batch: dict, beam_size: int | None = None) -> jax.Array:
        """Unit queries ``[B, W, E]`` of the W best routing paths, best first."""
        beam_size = self.config.beam_size if beam_size is None else beam_size
        queries, _, _ = route_beams(self.crbr, params["crbr"], self.query_states(params, batch), beam_size)
        return queries

    def topk(self, params: dict, batch: dict, k: int) -> jax.Array:
        queries = self.path_queries(params, batch)
        batch_size, paths, dim = queries.shape
        ids, scores = exact_topk(queries.reshape(batch_size * paths, dim), self.item_embeddings(params), k)
        return merge_by_max(ids.reshape(batch_size, paths * k), scores.reshape(batch_size, paths * k), k)[0]
