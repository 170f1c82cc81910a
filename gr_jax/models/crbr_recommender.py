"""CRBR behind the trainer's model interface: Q-Former -> Gumbel-routed residual codes -> queries.

- User side: the Q-Former (``user_tower.QFormer``) reads the history's frozen item features into
  M query states; ``crbr.CRBR`` routes them through ``len(codebook_sizes)`` codebooks into a
  unit query (training: straight-through Gumbel-softmax whose temperature anneals with the
  optimizer step, ``crbr.gumbel_temperature(step, model.gumbel_temperature,
  model.gumbel_temperature_min, model.gumbel_decay_rate)``; a rate of 0 keeps it fixed).
- Item side: the two-tower model's trainable ``ItemTower`` over the same frozen features.
- Loss: ``crbr.crbr_loss`` of the routed query against the item tower's vector of the next
  item (InfoNCE with in-batch negatives, same-target ones masked, + alignment + load balance), optionally plus
  ``aux_weight`` times the Q-Former pre-training losses (off by default).
- Retrieval (``query_set``, ``topk``): ``crbr.route_beams`` gives ``model.beam_size`` (W) queries
  per user; ``QFormerBase.topk`` takes each path's exact top-k over the whole catalogue
  (``retrieval.exact``; item vectors from ``eval_params``, computed once per evaluation round) and
  merges the W lists per item by max score, all inside jit; ``eval.index='scann'`` serves the
  same queries from a ScaNN index (``retrieval.serving``).

Params: ``{"qformer", "crbr", "item_tower"}``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import ml_collections

from gr_jax.models.crbr import CRBR, crbr_loss, gumbel_temperature, route_beams
from gr_jax.models.two_tower import FeatureTowerBase


class CRBRRecommender(FeatureTowerBase):
    """CRBR; ``query_set`` gives the beam-searched queries ``[B, W, E]``; the loss follows the
    optimizer step (Gumbel temperature schedule)."""

    def __init__(self, model_config: ml_collections.ConfigDict, features, pretrained_qformer: dict | None = None):
        super().__init__(model_config, features, pretrained_qformer)
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

    def temperature(self, step) -> jax.Array:
        """The Gumbel-softmax temperature at optimizer ``step``."""
        c = self.config
        return gumbel_temperature(step, c.gumbel_temperature, c.gumbel_temperature_min, c.gumbel_decay_rate)

    def loss(self, params: dict, batch: dict, rng: jax.Array, step=0) -> tuple[jax.Array, dict]:
        dropout_rng, gumbel_rng, aux_rng = jax.random.split(rng, 3)
        c = self.config
        states = self.query_states(params, batch, dropout_rng)
        temperature = self.temperature(step)
        outputs = self.crbr.apply({"params": params["crbr"]}, states, gumbel_rng, temperature, c.straight_through)
        positives = self.item_vectors(params, batch["target"])
        loss, metrics = crbr_loss(outputs, positives, batch["target"], c.temperature, c.alignment_weight,
                                  c.balance_weight, c.alignment_layers)
        metrics = metrics | {"gumbel_temperature": temperature}
        if c.aux_weight <= 0:
            return loss, metrics
        aux, aux_metrics = self.aux_loss(params, batch, aux_rng)
        return loss + c.aux_weight * aux, metrics | {"aux_loss": aux} | aux_metrics

    def query_set(self, params: dict, batch: dict) -> jax.Array:
        """Unit queries ``[B, W, E]`` of the W = ``model.beam_size`` best routing paths, best first."""
        queries, _, _ = route_beams(self.crbr, params["crbr"], self.query_states(params, batch),
                                    self.config.beam_size)
        return queries
