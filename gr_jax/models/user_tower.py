"""Q-Former user tower: M learnable queries read a user's history of frozen item embeddings.

Each block is a pre-RMSNorm residual query self-attention, optionally a cross-attention from
the queries into the history items, and a feed-forward (the ``layers.t5`` modules). Items never
attend to each other. The output is ``[B, M, D]`` query states. ``QFormer.history_read`` picks
which blocks read the history:

- ``"first"`` (default; Perceiver-style single read): only block 0 cross-attends into the
  history, and its queries are the learned query parameters after their own self-attention,
  which does not depend on the history. Blocks 1 .. L-1 are query-only (self-attention and
  feed-forward). Per user an encode costs O(N·F·D) to project the items, O(N·D·H·Dh) for
  their keys and values, O(N·M·H·Dh) for the read and O(L·M·(M + mlp)·D) for the query stack.
  (Block 0's query self-attention depends on neither the history nor the user: at inference
  it runs once per call, not per user, in both modes.)
- ``"every"``: every block cross-attends into the history (a BLIP-2 Q-Former), L times the
  key/value and read cost. Past block 0 the queries depend on the history, so an append must
  re-read the whole history in every block: O(N) per append. Kept for quality comparisons.

Items: frozen pre-trained features ``[B, N, F]`` (MiniLM text 384-d, CF 64-d, or both
concatenated on the last axis) through a learned projection, plus
- a position embedding: sinusoids of the item's index counted from the oldest valid item,
  through a learned linear map. No fixed-size table, so any N works, and appending an item
  never moves the others' positions (their keys and values stay valid);
- a recency bias: per reading block, head and query a learned slope s adds ``s · position /
  recency_scale`` to the cross-attention logits. Softmax ignores a per-query constant, so
  this equals an ALiBi penalty ``-s · age`` (age = newest position - position) without
  depending on the newest position: each query picks its own recency horizon and appending
  stays exact.

Padded history positions (``mask`` False; left, right or interleaved padding) are zeroed
before the key/value projections and masked out of the attention: they never influence the
output, and an empty history yields the queries' history-free states.

Pre-training losses (``QFormerUserTower.loss``; each term a pure function below): ITC
(InfoNCE of the query set against the next item, in-batch negatives), masked-history
reconstruction (a light decoder regresses the frozen features of hidden history items from
the query states) and query orthogonality.

Incremental inference (``init_state`` / ``append``; the state's ``output``); the output equals a
full recompute to float rounding in both modes.

- ``"first"``: the read's queries are fixed, so the state is the read's online-softmax
  accumulators per (user, head, query): the running max of the logits ``[B, H, M]``, the
  denominator ``Σ exp(logit - max)`` ``[B, H, M]`` and the numerator ``Σ exp(logit - max) · v``
  ``[B, H, M, Dh]``, plus the per-user length (the next position). No key/value cache and no
  capacity: nothing in the state grows with N. An append projects the new item (O(F·D +
  D·H·Dh)), computes its M logits per head (O(M·H·Dh)), rescales the accumulators and reruns
  the query stack (O(L·M·(M + mlp)·D)): independent of N.
- ``"every"``: every reading block's keys and values of the history are cached in
  fixed-capacity buffers ``[B, C, H, Dh]`` with each slot's position and mask, a per-user
  length and a shared slot counter. An append projects only the new item (O(F·D +
  L·D·H·Dh)) but then re-reads the cache in every block, O(L·C·M·H·Dh): linear in N.

Logical axes: ``batch``, ``seq`` (queries), ``embed``, ``heads``, ``kv``, ``mlp``.
"""

from __future__ import annotations

import dataclasses
import math

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from gr_jax.config_schema import check_choice
from gr_jax.models.layers.structs import LayerConfig
from gr_jax.models.layers.t5 import CrossAttention, FeedForward, KeyValues, RMSNorm, SelfAttention, proj
from gr_jax.ops import NEG_INF, l2_normalize, softmax


@dataclasses.dataclass(frozen=True, kw_only=True)
class QFormerConfig(LayerConfig):
    """The Q-Former's struct, passed to every block."""

    num_queries: int = 32  # M learnable queries
    embed_dim: int = 64
    num_layers: int = 2
    num_heads: int = 4
    head_dim: int = 16
    mlp_dim: int = 256
    dropout: float = 0.0
    recency_scale: float = 64.0  # positions per unit of a recency slope
    history_read: str = "first"  # "first": block 0 reads the history, O(M) appends; "every": every block, O(N)

    def __post_init__(self):
        super().__post_init__()
        check_choice("model.history_read", self.history_read)


@flax.struct.dataclass
class OnlineReadState:
    """Incremental state of ``history_read="first"``: block 0's read as online-softmax accumulators."""

    max: jax.Array  # [B, H, M] running max of the read logits
    denominator: jax.Array  # [B, H, M] sum of exp(logit - max)
    numerator: jax.Array  # [B, H, M, Dh] sum of exp(logit - max) * value
    length: jax.Array  # [B] history length (the next item's position)
    output: jax.Array  # [B, M, D] the query states


@flax.struct.dataclass
class CachedReadState:
    """Incremental state of ``history_read="every"``: every reading block's keys and values of the
    history in fixed-capacity buffers ``[B, C, H, Dh]``."""

    memories: tuple[KeyValues, ...]
    mask: jax.Array  # [B, C] slot holds an item
    positions: jax.Array  # [B, C] each slot's history position
    length: jax.Array  # [B] history length (the next item's position)
    size: jax.Array  # () slots written (shared by the batch)
    output: jax.Array  # [B, M, D] the query states


def history_positions(mask: jax.Array) -> jax.Array:
    """Index of each history item counted from the oldest valid one ``[B, N]`` (padding: don't care)."""
    return jnp.cumsum(mask, axis=1, dtype=jnp.int32) - 1


def sinusoids(positions: jax.Array, dim: int) -> jax.Array:
    """Transformer sinusoids ``[..., dim]`` of integer positions (wavelengths 2π .. 2π·10⁴)."""
    frequencies = jnp.exp(-math.log(10_000.0) * jnp.arange(dim // 2) / (dim // 2))
    angles = positions[..., None].astype(jnp.float32) * frequencies
    return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


def heads_first(t: jax.Array) -> jax.Array:
    """``[B, S, H, Dh] -> [B, H, S, Dh]`` (XLA:CPU runs the attention matmuls faster on this layout)."""
    return jnp.swapaxes(t, 1, 2)


def read_logits(q, k, slopes, positions, recency_scale: float) -> jax.Array:
    """Cross-attention logits with the recency bias ``[B, H, M, S]`` of queries ``[B, M, H, Dh]``
    into keys ``[B, S, H, Dh]`` at ``positions [B, S]``, slopes ``[H, M]``.

    The one formula of both the full read and the online read (``QFormer.read_*``)."""
    logits = jnp.einsum("bhqd,bhsd->bhqs", heads_first(q), heads_first(k)) / jnp.sqrt(q.shape[-1]).astype(q.dtype)
    recency = (positions[:, None, None, :] / recency_scale).astype(logits.dtype)
    return logits + slopes[None, :, :, None] * recency


class BiasedCrossAttention(CrossAttention):
    """``CrossAttention`` split into its query projection and output map, so that the read in
    between can be a softmax over logits with a recency bias (full or online)."""

    def queries(self, x):
        """``[B, M, D] -> [B, M, H, Dh]``."""
        return self.q(x)

    def output(self, y, train: bool):
        """The read ``[B, M, H, Dh]`` back to ``[B, M, D]``."""
        return self.drop(self.out(y), deterministic=not train)


class QFormerBlock(nn.Module):
    """Query self-attention, cross-attention into the history with a recency bias (if
    ``reads_history``), feed-forward."""

    config: QFormerConfig
    reads_history: bool = True

    def setup(self):
        c = self.config
        self.self_norm, self.mlp_norm = RMSNorm(), RMSNorm()
        self.self_attention = SelfAttention(c)
        self.mlp = FeedForward(c)
        if self.reads_history:
            self.cross_norm = RMSNorm()
            self.cross_attention = BiasedCrossAttention(c)
            self.recency = self.param("recency", nn.with_logical_partitioning(nn.initializers.zeros, ("heads", None)),
                                      (c.num_heads, c.num_queries))

    def memory(self, items) -> KeyValues:
        """Cross-attention keys and values ``[B, N, H, Dh]`` of the history items."""
        return self.cross_attention.memory(items)

    def attend_queries(self, x, train: bool):
        """The self-attention residual step (every query sees every query)."""
        return x + self.self_attention(self.self_norm(x), None, True, train)

    def read_queries(self, x):
        """Cross-attention queries ``[B, M, H, Dh]`` of the residual stream after ``attend_queries``."""
        return self.cross_attention.queries(self.cross_norm(x))

    def logits(self, q, k, positions):
        """``read_logits`` with this block's slopes: ``[B, H, M, S]``."""
        return read_logits(q, k, self.recency, positions, self.config.recency_scale)

    def finish(self, x, read, train: bool):
        """Adds the read ``[B, M, H, Dh]`` (None: a query-only block) and the feed-forward."""
        if read is not None:
            x = x + self.cross_attention.output(read, train)
        x = x + self.mlp(self.mlp_norm(x), train)
        return nn.with_logical_constraint(x, ("batch", "seq", "embed"))

    def __call__(self, x, memory, memory_mask, positions, train: bool):
        return self.read(self.attend_queries(x, train), memory, memory_mask, positions, train)

    def read(self, x, memory, memory_mask, positions, train: bool):
        """The block after ``attend_queries``: cross-attention (if ``reads_history``) and feed-forward."""
        read = None
        if self.reads_history:
            valid = memory_mask[:, None, None, :]
            logits = jnp.where(valid, self.logits(self.read_queries(x), memory.key, positions), NEG_INF)
            weights = softmax(logits)
            read = jnp.swapaxes(jnp.einsum("bhqs,bhsd->bhqd", weights, heads_first(memory.value)), 1, 2)
        return self.finish(x, read, train)


class ReconstructionDecoder(nn.Module):
    """One cross-attention layer (no dropout) from position embeddings into the query states, then a
    linear map to the item-feature space."""

    config: QFormerConfig

    @nn.compact
    def __call__(self, x, query_states, feature_dim: int):
        attention = CrossAttention(self.config.replace(dropout=0.0))
        all_queries = jnp.ones(query_states.shape[:2], bool)
        x = x + attention(RMSNorm()(x), attention.memory(query_states), all_queries, False)
        return proj(feature_dim, -1, ("embed", None), "Dense_0")(RMSNorm()(x))  # nn.Dense's old name


class QFormer(nn.Module):
    """``__call__(item_features [B, N, F], mask [B, N]) -> [B, M, D]`` query states."""

    config: QFormerConfig = QFormerConfig()

    def setup(self):
        c = self.config
        self.queries = self.param("queries", nn.with_logical_partitioning(nn.initializers.normal(1.0), (None, "embed")),
                                  (c.num_queries, c.embed_dim))
        self.item_proj = proj(c.embed_dim, -1, (None, "embed"), "item_proj")
        self.position_proj = proj(c.embed_dim, -1, (None, "embed"), "position_proj")
        self.input_norm, self.output_norm = RMSNorm(), RMSNorm()
        self.blocks = [QFormerBlock(c, reads_history=c.history_read == "every" or i == 0)
                       for i in range(c.num_layers)]
        self.decoder = ReconstructionDecoder(c)

    def embed_items(self, item_features):
        """Learned projection of frozen item features ``[..., F] -> [..., D]`` (the ITC item side)."""
        return self.item_proj(item_features)

    def embed_positions(self, positions):
        return self.position_proj(sinusoids(positions, self.config.embed_dim).astype(self.queries.dtype))

    def memories(self, item_features, mask, positions):
        """Per reading block cross-attention (keys, values) ``[B, N, H, Dh]`` of the history; zero
        where padded. ``"first"``: one pair."""
        items = self.input_norm(self.embed_items(item_features) + self.embed_positions(positions))
        items = items * mask[..., None]
        return tuple(block.memory(items) for block in self.blocks if block.reads_history)

    def initial_queries(self, batch_size: int):
        x = jnp.broadcast_to(self.queries, (batch_size,) + self.queries.shape)
        return nn.with_logical_constraint(x, ("batch", "seq", "embed"))

    def attended_queries(self, batch_size: int, train: bool = False):
        """Block 0's residual stream after its query self-attention ``[B, M, D]``. It depends on
        neither the history nor the user: at inference it is computed once and broadcast."""
        if train:  # per-user dropout masks
            return self.blocks[0].attend_queries(self.initial_queries(batch_size), True)
        x = self.blocks[0].attend_queries(self.queries[None], False)
        return nn.with_logical_constraint(jnp.broadcast_to(x, (batch_size,) + x.shape[1:]), ("batch", "seq", "embed"))

    def from_memories(self, memories, mask, positions, train: bool = False):
        """Query states ``[B, M, D]`` from the reading blocks' history keys and values."""
        x = self.attended_queries(mask.shape[0], train)
        memories = iter(memories)
        for i, block in enumerate(self.blocks):
            memory = next(memories) if block.reads_history else None
            x = (block.read if i == 0 else block)(x, memory, mask, positions, train)
        return self.output_norm(x)

    def __call__(self, item_features, mask, positions=None, train: bool = False):
        """Query states ``[B, M, D]``; ``positions`` default to ``history_positions(mask)``."""
        positions = history_positions(mask) if positions is None else positions
        return self.from_memories(self.memories(item_features, mask, positions), mask, positions, train)

    # Online read (``history_read="first"``): block 0's queries do not depend on the history, so
    # its read is a softmax over a set that only grows, kept as running accumulators.

    def _read_start(self, batch_size: int):
        """Block 0's residual stream before the read ``[B, M, D]`` and its queries ``[B, M, H, Dh]``."""
        if self.config.history_read != "first":
            raise ValueError(f"the online read needs history_read='first', not {self.config.history_read!r}")
        x = self.attended_queries(batch_size)
        return x, self.blocks[0].read_queries(x)

    def read_accumulators(self, item_features, mask, positions):
        """Block 0's read of the history as (running max ``[B, H, M]``, denominator ``[B, H, M]``,
        numerator ``[B, H, M, Dh]``), all-padded rows giving (NEG_INF, 0, 0), and the query states
        ``[B, M, D]`` they give."""
        (memory,) = self.memories(item_features, mask, positions)
        x, q = self._read_start(mask.shape[0])
        valid = mask[:, None, None, :]
        logits = jnp.where(valid, self.blocks[0].logits(q, memory.key, positions), NEG_INF)
        top = logits.max(-1)
        weights = jnp.where(valid, jnp.exp(logits - top[..., None]), 0.0)
        denominator, numerator = weights.sum(-1), jnp.einsum("bhqs,bhsd->bhqd", weights, heads_first(memory.value))
        return (top, denominator, numerator), self._from_read(x, denominator, numerator)

    def read_append(self, top, denominator, numerator, item_feature, position):
        """The accumulators after one more item ``[B, F]`` at ``position [B]`` (online softmax) and
        the query states ``[B, M, D]`` they give."""
        new = jnp.ones(position.shape + (1,), bool)
        (memory,) = self.memories(item_feature[:, None], new, position[:, None])
        x, q = self._read_start(position.shape[0])
        logit = self.blocks[0].logits(q, memory.key, position[:, None])[..., 0]  # [B, H, M]
        new_top = jnp.maximum(top, logit)
        rescale, weight = jnp.exp(top - new_top), jnp.exp(logit - new_top)
        numerator = numerator * rescale[..., None] + weight[..., None] * heads_first(memory.value)  # [B, H, 1, Dh]
        denominator = denominator * rescale + weight
        return (new_top, denominator, numerator), self._from_read(x, denominator, numerator)

    def _from_read(self, x, denominator, numerator):
        """Query states ``[B, M, D]`` from block 0's stream before the read ``x`` (``_read_start``) and
        its read accumulators (an empty read adds zero, as the full read of an all-padded history does)."""
        read = numerator / jnp.where(denominator > 0, denominator, 1.0)[..., None]
        x = self.blocks[0].finish(x, jnp.swapaxes(read, 1, 2), False)
        for block in self.blocks[1:]:
            x = block(x, None, None, None, False)
        return self.output_norm(x)

    def reconstruct(self, query_states, positions, feature_dim: int):
        """Predicted frozen features ``[B, K, feature_dim]`` of the items at ``positions [B, K]``."""
        return self.decoder(self.embed_positions(positions), query_states, feature_dim)

    def pretrain_forward(self, item_features, mask, hidden, slots, target_features, train: bool = False):
        """Query states of the history without its ``hidden`` items (positions unchanged), ITC item
        embeddings of the targets, and the reconstructions of the items at ``slots [B, K]``."""
        positions = history_positions(mask)
        states = self(item_features, mask & ~hidden, positions, train)
        slot_positions = jnp.take_along_axis(positions, slots, axis=1)
        predicted = self.reconstruct(states, slot_positions, item_features.shape[-1])
        return states, self.embed_items(target_features), predicted


def itc_loss(query_states: jax.Array, items: jax.Array, temperature: float) -> jax.Array:
    """Symmetric InfoNCE between users' query sets ``[B, M, D]`` and their next items ``[B, D]``.

    Score(user, item) = max over queries of the cosine between query state and item (as BLIP-2's
    ITC): a user with several interests matches an item through one query instead of an average
    that blurs them. Negatives: the other users' next items (and, item side, the other users).
    """
    scores = jnp.einsum("umd,id->uim", l2_normalize(query_states), l2_normalize(items)).max(-1)
    scores = scores.astype(jnp.float32) / temperature
    index = jnp.arange(scores.shape[0])
    user_to_item = jax.nn.logsumexp(scores, 1) - scores[index, index]
    item_to_user = jax.nn.logsumexp(scores, 0) - scores[index, index]
    return 0.5 * jnp.mean(user_to_item + item_to_user)


def reconstruction_loss(predicted: jax.Array, targets: jax.Array, valid: jax.Array) -> jax.Array:
    """Mean ``1 - cosine`` between predicted and frozen features ``[B, K, F]`` over ``valid [B, K]`` slots.

    The targets are the frozen input features, so the loss cannot collapse and needs no
    negatives (an InfoNCE over the batch's hidden items would cost (B·K)² scores).
    """
    cosine = jnp.sum(l2_normalize(predicted) * l2_normalize(targets), -1)
    return jnp.sum((1.0 - cosine) * valid) / jnp.maximum(valid.sum(), 1)


def orthogonality_loss(query_states: jax.Array) -> jax.Array:
    """Mean over users of ``‖Q̂ Q̂ᵀ - I‖_F``, Q̂ the L2-normalised query states ``[B, M, D]``.

    On the outputs rather than the learned query parameters: it is the per-user states that
    must stay distinct for the max-over-queries ITC score. Zero is reachable only when M ≤ D.
    """
    q = l2_normalize(query_states)
    gram = jnp.einsum("bmd,bnd->bmn", q, q) - jnp.eye(q.shape[1])
    return jnp.mean(jnp.sqrt(jnp.sum(gram * gram, (1, 2)) + 1e-12))  # ε: a finite gradient at 0


def mask_history(rng: jax.Array, mask: jax.Array, ratio: float):
    """Picks ``round(ratio · n)`` random valid positions per row (at least 1, at most n - 1 of its n
    items, none if n < 2) to hide.

    Returns ``hidden [B, N]`` and the hidden positions as ``slots [B, K]`` with ``valid [B, K]``,
    K = ceil(ratio · N) (a static shape).
    """
    batch, length = mask.shape
    num_slots = max(1, math.ceil(ratio * length))
    count = mask.sum(1)
    per_row = jnp.clip(jnp.round(ratio * count).astype(jnp.int32), 1, count - 1)
    scores = jnp.where(mask, jax.random.uniform(rng, mask.shape), -1.0)
    slots = jax.lax.top_k(scores, num_slots)[1]
    valid = jnp.arange(num_slots)[None] < per_row[:, None]
    hidden = jnp.zeros(mask.shape, bool).at[jnp.arange(batch)[:, None], slots].set(valid)
    return hidden, slots, valid


class QFormerUserTower:
    """A ``QFormer`` with its pre-training loss and incremental inference.

    Batches: ``history_features [B, N, F]``, ``history_mask [B, N]``, ``target_features [B, F]``
    (the next item's frozen features).
    """

    def __init__(self, module: QFormer, temperature: float = 0.07, mask_ratio: float = 0.15,
                 reconstruction_weight: float = 1.0, orthogonality_weight: float = 0.1):
        if not 0.0 < mask_ratio < 1.0:
            raise ValueError(f"mask_ratio={mask_ratio}; expected a fraction in (0, 1)")
        self.module = module
        self.temperature = temperature
        self.mask_ratio = mask_ratio
        self.reconstruction_weight = reconstruction_weight
        self.orthogonality_weight = orthogonality_weight

    @property
    def single_read(self) -> bool:
        """Whether only block 0 reads the history (O(M) appends, no key/value cache)."""
        return self.module.config.history_read == "first"

    def init(self, rng: jax.Array, batch: dict) -> dict:
        """All parameters (encoder and reconstruction decoder)."""
        hidden, slots, _ = mask_history(rng, batch["history_mask"], self.mask_ratio)
        return self.module.init(rng, batch["history_features"], batch["history_mask"], hidden, slots,
                                batch["target_features"], method=QFormer.pretrain_forward)["params"]

    def encode(self, params: dict, item_features: jax.Array, mask: jax.Array) -> jax.Array:
        """Full recompute: query states ``[B, M, D]``."""
        return self.module.apply({"params": params}, item_features, mask)

    def loss(self, params: dict, batch: dict, rng: jax.Array) -> tuple[jax.Array, dict]:
        """ITC + w_rec · reconstruction + w_orth · orthogonality, on one encode of the history with
        ``mask_ratio`` of its items hidden (the ITC side sees the same partial history)."""
        mask_rng, dropout_rng = jax.random.split(rng)
        features, mask = batch["history_features"], batch["history_mask"]
        hidden, slots, valid = mask_history(mask_rng, mask, self.mask_ratio)
        states, items, predicted = self.module.apply(
            {"params": params}, features, mask, hidden, slots, batch["target_features"], True,
            method=QFormer.pretrain_forward, rngs={"dropout": dropout_rng})
        itc = itc_loss(states, items, self.temperature)
        reconstruction = reconstruction_loss(predicted, jnp.take_along_axis(features, slots[..., None], 1), valid)
        orthogonality = orthogonality_loss(states)
        total = itc + self.reconstruction_weight * reconstruction + self.orthogonality_weight * orthogonality
        return total, {"itc_loss": itc, "reconstruction_loss": reconstruction, "orthogonality_loss": orthogonality}

    def _cached_state(self, params: dict, memories, mask, positions, length, size) -> CachedReadState:
        """``"every"``: the state of a key/value cache, with the query states it gives."""
        output = self.module.apply({"params": params}, memories, mask, positions, method=QFormer.from_memories)
        return CachedReadState(memories=memories, mask=mask, positions=positions, length=length, size=size,
                               output=output)

    def init_state(self, params: dict, item_features: jax.Array, mask: jax.Array,
                   capacity: int | None = None) -> OnlineReadState | CachedReadState:
        """Incremental state of histories ``[B, N, F]``; ``.output`` holds the query states.

        ``"first"``: an ``OnlineReadState`` built in one pass over the history; no buffer, so
        ``capacity`` is unused and appends are unlimited.
        ``"every"``: a ``CachedReadState`` with room for ``capacity`` items (default 2N; static under
        jit). Appends read all ``capacity`` slots, so size it to N + expected appends.
        """
        positions = history_positions(mask)
        length = mask.sum(1, dtype=jnp.int32)
        if self.single_read:
            (top, denominator, numerator), output = self.module.apply(
                {"params": params}, item_features, mask, positions, method=QFormer.read_accumulators)
            return OnlineReadState(max=top, denominator=denominator, numerator=numerator, length=length,
                                   output=output)
        size = mask.shape[1]
        capacity = 2 * size if capacity is None else capacity
        if capacity < size:
            raise ValueError(f"capacity={capacity} is smaller than the history length {size}")
        memories = self.module.apply({"params": params}, item_features, mask, positions, method=QFormer.memories)
        pad = [(0, 0), (0, capacity - size)]
        memories = jax.tree.map(lambda t: jnp.pad(t, pad + [(0, 0)] * (t.ndim - 2)), memories)
        return self._cached_state(params, memories, jnp.pad(mask, pad), jnp.pad(positions, pad), length,
                                  jnp.asarray(size, jnp.int32))

    def append(self, params: dict, state: OnlineReadState | CachedReadState,
               new_item_feature: jax.Array) -> OnlineReadState | CachedReadState:
        """The state after appending one item ``[B, F]`` to every history (jittable).

        ``"first"``: O(M) work, independent of the history length; never full.
        ``"every"``: under jit the caller keeps ``state.size`` below the capacity (a full buffer
        clamps the write onto its last slot); eagerly, overflowing raises.
        """
        position = state.length
        if self.single_read:
            (top, denominator, numerator), output = self.module.apply(
                {"params": params}, state.max, state.denominator, state.numerator, new_item_feature,
                position, method=QFormer.read_append)
            return OnlineReadState(max=top, denominator=denominator, numerator=numerator, length=position + 1,
                                   output=output)
        size = state.size
        capacity = state.mask.shape[1]
        if not isinstance(size, jax.core.Tracer) and int(size) >= capacity:
            raise ValueError(f"the state is full ({capacity} items); init_state with a larger capacity")
        new_mask = jnp.ones((position.shape[0], 1), bool)
        new = self.module.apply({"params": params}, new_item_feature[:, None], new_mask, position[:, None],
                                method=QFormer.memories)

        def write(buffer, value):
            return jax.lax.dynamic_update_slice_in_dim(buffer, value.astype(buffer.dtype), size, axis=1)

        return self._cached_state(params, jax.tree.map(write, state.memories, new), write(state.mask, new_mask),
                                  write(state.positions, position[:, None]), position + 1, size + 1)
