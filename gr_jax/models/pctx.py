"""Pctx's generative recommender: TIGER over personalized SIDs (``gr_jax.tokenizers.pctx_tokenizer``).

* Inputs: each history event is its own SID (the one its context was tokenized to), keyed by
  the batch's ``history_event``; the target is the target event's SID.
* Augmentation (training): every position, target included, independently keeps its SID with
  probability 1 − γ (``model.augment_prob``) and otherwise takes a draw from its item's
  SIDs weighted by their training-event counts.
* Inference: the history is tokenized ``num_copies`` times by the same rule (draws keyed by
  event and copy, so they do not depend on batching); all copies decode in one batched beam
  search over the trie of every SID; within a copy, beams that decode to the same item merge
  by logsumexp of their scores; across copies an item scores Σ 1/log2(rank + 2) over the
  copies' top-``k`` lists. Checkpoint selection during training uses ``selection_copies``.

Facts from the authors' code (YoungZ365/Pctx, read only). Deviations: the copy fusion is keyed
by item, not by SID (the SIDs of one item already merged within a copy); augmentation draws
only from training events (theirs also from validation/test positions).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from gr_jax.models.layers.dropout import mix_keys
from gr_jax.models.tiger import TigerRecommender
from gr_jax.tokenizers.sid_table import SIDTable


def hash_uniform(salt: jax.Array, keys: jax.Array) -> jax.Array:
    """Uniforms in [0, 1) from integer ``keys`` (e.g. event ids) and ``salt`` (broadcastable):
    the same (salt, key) always gives the same draw."""
    return (mix_keys(keys, salt) >> 8).astype(jnp.float32) * 2.0 ** -24


def draw_sids(item_sids: jax.Array, item_cdf: jax.Array, items: jax.Array, u: jax.Array) -> jax.Array:
    """SID rows of ``items`` drawn by inverse CDF from uniforms ``u`` (same shape as ``items``)."""
    index = (u[..., None] >= item_cdf[items]).sum(-1)
    index = jnp.minimum(index, item_sids.shape[1] - 1)
    return jnp.take_along_axis(item_sids[items], index[..., None], -1)[..., 0]


def _item_groups(items: jax.Array) -> tuple[jax.Array, jax.Array]:
    """For ``items [B, W]`` (-1 = none): ``same [B, W, W]`` (entries hold the same item) and
    ``first [B, W]`` (the entry is its item's first)."""
    valid = items >= 0
    same = (items[:, :, None] == items[:, None, :]) & valid[:, None, :]
    earlier = jnp.tril(jnp.ones(same.shape[1:], bool), -1)[None]
    return same, valid & ~(same & earlier).any(-1)


def merge_beams(items: jax.Array, scores: jax.Array) -> jax.Array:
    """Per-item logsumexp of the beam ``scores [B, W]`` of ``items [B, W]`` (-1 = none), kept at each
    item's first beam; other beams score -inf."""
    same, first = _item_groups(items)
    merged = jax.nn.logsumexp(jnp.where(same, scores[:, None, :], -jnp.inf), -1)
    return jnp.where(first, merged, -jnp.inf)


def fuse_rankings(items: jax.Array, k: int) -> jax.Array:
    """Top-``k`` items ``[B, k]`` (-1 padded) of several ranked lists ``items [B, C, k']`` (-1 = empty),
    each item scored Σ over lists of 1/log2(rank + 2)."""
    batch, _, width = items.shape
    weights = jnp.broadcast_to(1.0 / jnp.log2(jnp.arange(width) + 2.0), items.shape).reshape(batch, -1)
    items = items.reshape(batch, -1)
    same, first = _item_groups(items)
    fused = (same * weights[:, None, :]).sum(-1)
    top, index = jax.lax.top_k(jnp.where(first, fused, -jnp.inf), k)
    return jnp.where(top > -jnp.inf, jnp.take_along_axis(items, index, 1), -1)


class PctxRecommender(TigerRecommender):
    """TIGER's recommender over a personalized ``SIDTable``: SIDs keyed by event, augmented in
    training, decoded by the copy ensemble."""

    def __init__(self, model_config: ml_collections.ConfigDict, sids: SIDTable, unroll_decoding: bool = False):
        if not sids.personalized:
            raise ValueError("model 'pctx' needs personalized SIDs: set tokenizer.name='pctx' and run the tokenize "
                             "stage (configs/pctx.py does both)")
        if model_config.get("dense_weight", 0.0) > 0:
            raise ValueError("model.dense_weight: the dense head's item vectors need one SID per item, and Pctx's "
                             "items have several; set model.dense_weight=0 and model.retrieval='beam'")
        if model_config.get("popularity_penalty", 0.0):
            raise ValueError("model.popularity_penalty: Pctx ranks by its copy ensemble, which does not apply it; "
                             "set model.popularity_penalty=0")
        super().__init__(model_config, sids, unroll_decoding=unroll_decoding)
        self.event_sid = jnp.asarray(sids.event_sid)
        self.item_sids = jnp.asarray(np.maximum(sids.item_sids, 0))
        counts = sids.item_sid_counts.astype(np.float64)
        self.item_cdf = jnp.asarray(np.cumsum(counts, 1) / counts.sum(1, keepdims=True), jnp.float32)
        self.augment_prob = float(model_config.augment_prob)
        self.num_copies = int(model_config.num_copies)
        self.selection_copies = int(model_config.selection_copies)
        self.copy_seed = int(model_config.copy_seed)
        if not 0.0 <= self.augment_prob <= 1.0 or self.num_copies < 1 or self.selection_copies < 1:
            raise ValueError(f"need model.augment_prob in [0, 1], model.num_copies >= 1, model.selection_copies >= 1; "
                             f"got {self.augment_prob}, {self.num_copies}, {self.selection_copies}")

    def tokenize(self, items: jax.Array, events: jax.Array, u_replace: jax.Array, u_draw: jax.Array) -> jax.Array:
        """SID rows of events: their own SID, or with probability γ a count-weighted draw of their item's."""
        drawn = draw_sids(self.item_sids, self.item_cdf, items, u_draw)
        return jnp.where(u_replace < self.augment_prob, drawn, self.event_sid[events])

    def history_sids(self, batch: dict) -> jax.Array:
        """The SID rows of a tokenized batch (``augmented`` in training, ``copies`` at inference)."""
        return batch["history_sid"]

    def augmented(self, batch: dict, rng: jax.Array) -> dict:
        """The batch with ``history_sid`` and ``target_sid``: every position, target included,
        tokenized by the augmentation rule."""
        items = jnp.concatenate([batch["history"], batch["target"][:, None]], 1)
        events = jnp.concatenate([batch["history_event"], batch["target_event"][:, None]], 1)
        u_replace, u_draw = jax.random.uniform(rng, (2,) + items.shape)
        sids = self.tokenize(items, events, u_replace, u_draw)
        return batch | {"history_sid": sids[:, :-1], "target_sid": sids[:, -1]}

    def example(self, batch: dict, rng: jax.Array) -> tuple[dict, jax.Array, jax.Array]:
        augment_rng, dropout_rng = jax.random.split(rng)
        batch = self.augmented(batch, augment_rng)
        return self.inputs(batch), self.codes[batch["target_sid"]], dropout_rng

    def copies(self, batch: dict, num_copies: int) -> dict:
        """The batch repeated ``num_copies`` times (copy-major), each copy's history tokenized by the
        augmentation rule with draws keyed by (event, copy)."""
        tile = lambda x: jnp.tile(x, (num_copies,) + (1,) * (x.ndim - 1))
        batch = {k: tile(batch[k]) for k in ("history", "history_event", "history_mask", "user")}
        copy = jnp.repeat(jnp.arange(num_copies, dtype=jnp.uint32), batch["history"].shape[0] // num_copies)
        salt = (jnp.uint32(self.copy_seed) * jnp.uint32(1000003) + jnp.uint32(2) * copy)[:, None]
        u_replace = hash_uniform(salt, batch["history_event"])
        u_draw = hash_uniform(salt + jnp.uint32(1), batch["history_event"])
        return batch | {"history_sid": self.tokenize(batch["history"], batch["history_event"], u_replace, u_draw)}

    def ensemble_topk(self, params, batch: dict, k: int, num_copies: int) -> jax.Array:
        """Top-``k`` items ``[B, k]`` of the ``num_copies``-copy ensemble (module docstring)."""
        size = batch["history"].shape[0]
        state = self.search(params, self.inputs(self.copies(batch, num_copies)), max(self.beam_size, k))
        sids, scores = state.results()
        items = jnp.where(sids >= 0, self.leaf_items[jnp.maximum(sids, 0), 0], -1)
        merged = merge_beams(items, scores)
        top, index = jax.lax.top_k(merged, k)
        ranked = jnp.where(top > -jnp.inf, jnp.take_along_axis(items, index, 1), -1)
        return fuse_rankings(ranked.reshape(num_copies, size, k).transpose(1, 0, 2), k)

    def topk(self, params, batch: dict, k: int) -> jax.Array:
        return self.ensemble_topk(params, batch, k, self.num_copies)

    def selection_topk(self, params, batch: dict, k: int) -> jax.Array:
        """The cheaper ranking the trainer selects checkpoints with (``selection_copies`` copies)."""
        return self.ensemble_topk(params, batch, k, self.selection_copies)
