"""T5-style encoder-decoder blocks with logical sharding names and a decode-step KV cache.

Pre-RMSNorm residual blocks, bias-free projections, shared relative-position buckets
(bidirectional in the encoder, causal in the decoder), ReLU feed-forward, dropout. The
decoder runs either teacher-forced over all target positions or one step at a time with
a fixed-size self-attention cache (``lax.scan`` friendly) and cross-attention into an
encoder memory shared by all beams of a user.

Every layer takes one frozen ``LayerConfig`` (``layers.structs``); ``T5Config`` adds the
encoder-decoder's own fields.

Logical axes: ``batch``, ``seq``, ``embed``, ``heads``, ``kv``, ``mlp``, ``vocab``.
"""

from __future__ import annotations

import dataclasses
import math

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from gr_jax.config_schema import check_choice
from gr_jax.models.layers.dropout import Dropout
from gr_jax.models.layers.structs import LayerConfig
from gr_jax.ops import NEG_INF, add_batch_shared, softmax


@dataclasses.dataclass(frozen=True, kw_only=True)
class T5Config(LayerConfig):
    """The encoder-decoder over SID codes (TIGER's sizes by default; ``num_levels``/``codebook_size``
    come from the SID table)."""

    num_levels: int
    codebook_size: int
    num_user_buckets: int = 2000
    num_encoder_layers: int = 4
    num_decoder_layers: int = 4
    item_level_history: bool = False  # True: one encoder vector per history item (sum of its code embeddings)
    num_items: int = 0  # catalogue size: the item-ID table's rows (ID+SID inputs, a dense head over IDs)
    item_id_input: bool = False  # add each history item's ID embedding to its SID input (needs num_items)
    dense_head: bool = False  # a dense next-item head on the decoder's BOS state
    dense_item: str = "codes_id"  # the dense head's item vectors: codes_id | text | codes_id_text (tiger.item_vectors)
    dense_loss: str = "softmax"  # softmax (full-catalogue CE) | infonce (cosines, in-batch negatives: dense_logits)
    dense_temperature: float = 0.05  # infonce: logits are cosines / this
    vocab_multiple: int = 1  # token table rows padded to a multiple of this (so `vocab` splits over the model axis)

    def __post_init__(self):
        super().__post_init__()
        check_choice("model.dense_item", self.dense_item)
        check_choice("model.dense_loss", self.dense_loss)
        if (self.item_id_input or self.dense_ids) and self.num_items < 1:
            raise ValueError("item_id_input and a dense head over item IDs need the item-ID table: set num_items "
                             "(TigerRecommender does, from the SID table)")

    @property
    def dense_ids(self) -> bool:
        """Whether the dense head's item vectors hold code and ID embeddings."""
        return self.dense_head and "codes_id" in self.dense_item

    @property
    def dense_text(self) -> bool:
        """Whether the dense head's item vectors hold the projected item text embedding."""
        return self.dense_head and "text" in self.dense_item


@flax.struct.dataclass
class KeyValues:
    """Attention keys and values ``[..., S, H, D]``: a cross-attention memory or a self-attention cache."""

    key: jax.Array
    value: jax.Array


dense_init = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")


def relative_position_bucket(relative: jax.Array, bidirectional: bool, num_buckets: int, max_distance: int):
    """T5 bucketing of ``key_pos - query_pos``: exact for small distances, logarithmic beyond."""
    bucket = jnp.zeros_like(relative)
    n = -relative
    if bidirectional:
        num_buckets //= 2
        bucket = bucket + (n < 0).astype(jnp.int32) * num_buckets
        n = jnp.abs(n)
    else:
        n = jnp.maximum(n, 0)
    exact = num_buckets // 2
    is_small = n < exact
    log_ratio = jnp.log(jnp.maximum(n, 1).astype(jnp.float32) / exact) / math.log(max_distance / exact)
    large = jnp.minimum(exact + (log_ratio * (num_buckets - exact)).astype(jnp.int32), num_buckets - 1)
    return bucket + jnp.where(is_small, n, large)


class RelativeBias(nn.Module):
    """Learned per-head bias from relative-position buckets, ``[1, heads, q, k]``."""

    num_heads: int
    bidirectional: bool
    num_buckets: int = 32
    max_distance: int = 128

    @nn.compact
    def __call__(self, query_pos: jax.Array, key_pos: jax.Array):
        table = self.param("rel_embedding", nn.with_logical_partitioning(nn.initializers.normal(0.1), ("heads", None)),
                           (self.num_heads, self.num_buckets))
        buckets = relative_position_bucket(key_pos[None, :] - query_pos[:, None], self.bidirectional,
                                           self.num_buckets, self.max_distance)
        return jnp.take(table, buckets, axis=1)[None]


class RMSNorm(nn.Module):
    eps: float = 1e-6

    @nn.compact
    def __call__(self, x):
        scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("embed",)), (x.shape[-1],))
        x32 = x.astype(jnp.float32)
        return (x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, -1, keepdims=True) + self.eps) * scale).astype(x.dtype)


class Projection(nn.Module):
    """Bias-free linear map of ``x``'s ``axes`` onto ``features``, its kernel partitioned by logical
    ``names``: ``nn.DenseGeneral``'s parameter (name, shape, initial values) without its flaw of
    applying ``names`` to the kernel while it is still flattened to 2-D, which fails once a mesh is set."""

    features: tuple[int, ...]
    axes: tuple[int, ...]
    names: tuple[str | None, ...]

    @nn.compact
    def __call__(self, x):
        axes = tuple(axis % x.ndim for axis in self.axes)
        in_shape = tuple(x.shape[axis] for axis in axes)

        def init(rng, shape, dtype=jnp.float32):  # fan-in of the flattened kernel, as DenseGeneral's
            return dense_init(rng, (math.prod(in_shape), math.prod(self.features)), dtype).reshape(shape)

        kernel = self.param("kernel", nn.with_logical_partitioning(init, self.names), in_shape + self.features)
        x, kernel = nn.dtypes.promote_dtype(x, kernel)
        return jax.lax.dot_general(x, kernel, ((axes, tuple(range(len(axes)))), ((), ())))


def proj(features, axes, names, name):
    """A ``Projection`` over ``axes`` (an int or tuple) onto ``features`` (an int or tuple)."""
    return Projection(_as_tuple(features), _as_tuple(axes), tuple(names), name=name)


def _as_tuple(value) -> tuple:
    return tuple(value) if isinstance(value, (tuple, list)) else (value,)


def attend(q, k, v, bias, mask):
    """``softmax(q k^T / sqrt(d) + bias) v`` for q ``[B, Q, H, D]`` and k, v ``[B, S, H, D]``."""
    # Heads-first operands: XLA:CPU runs these small batched matmuls ~1.3x faster than on the
    # [B, S, H, D] layout (bench/cpu_kernels.py: attn_bhqd vs attn_bqhd).
    q, k, v = (jnp.swapaxes(t, 1, 2) for t in (q, k, v))
    logits = jnp.einsum("bhqd,bhsd->bhqs", q, k) / jnp.sqrt(q.shape[-1]).astype(q.dtype)
    if bias is not None:
        logits = add_batch_shared(logits, bias.astype(logits.dtype))
    logits = jnp.where(mask, logits, NEG_INF)
    return jnp.swapaxes(jnp.einsum("bhqs,bhsd->bhqd", softmax(logits), v), 1, 2)


class SelfAttention(nn.Module):
    config: LayerConfig

    def setup(self):
        c = self.config
        self.qkv = proj((3, c.num_heads, c.head_dim), -1, ("embed", None, "heads", "kv"), "qkv")
        self.out = proj(c.embed_dim, (-2, -1), ("heads", "kv", "embed"), "out")
        self.drop = Dropout(c.dropout, c.dropout_impl)

    def _output(self, y, train):
        return self.drop(self.out(y), deterministic=not train)

    def __call__(self, x, bias, mask, train: bool):
        q, k, v = jnp.moveaxis(self.qkv(x), 2, 0)
        return self._output(attend(q, k, v, bias, mask), train)

    def step(self, x, cache: KeyValues, position, bias):
        """One decode step for x ``[B, W, d]``; the cache ``[B, W, T, H, D]`` is written at ``position``."""
        q, k, v = jnp.moveaxis(self.qkv(x), 2, 0)  # [B, W, H, D]
        k_cache = jax.lax.dynamic_update_slice_in_dim(cache.key, k[:, :, None], position, axis=2)
        v_cache = jax.lax.dynamic_update_slice_in_dim(cache.value, v[:, :, None], position, axis=2)
        logits = jnp.einsum("bwhd,bwthd->bwht", q, k_cache) / jnp.sqrt(q.shape[-1]).astype(q.dtype)
        logits = logits + bias  # [1, 1, H, T] -> broadcast over (B, W)
        valid = jnp.arange(k_cache.shape[2]) <= position
        logits = jnp.where(valid, logits, NEG_INF)
        y = jnp.einsum("bwht,bwthd->bwhd", softmax(logits), v_cache)
        return self._output(y, False), KeyValues(k_cache, v_cache)


class CrossAttention(nn.Module):
    config: LayerConfig

    def setup(self):
        c = self.config
        self.q = proj((c.num_heads, c.head_dim), -1, ("embed", "heads", "kv"), "q")
        self.kv = proj((2, c.num_heads, c.head_dim), -1, ("embed", None, "heads", "kv"), "kv")
        self.out = proj(c.embed_dim, (-2, -1), ("heads", "kv", "embed"), "out")
        self.drop = Dropout(c.dropout, c.dropout_impl)

    def memory(self, encoded) -> KeyValues:
        """Keys and values of the encoder output, computed once per user."""
        k, v = jnp.moveaxis(self.kv(encoded), 2, 0)
        return KeyValues(k, v)

    def __call__(self, x, memory: KeyValues, memory_mask, train: bool):
        y = attend(self.q(x), memory.key, memory.value, None, memory_mask[:, None, None, :])
        return self.drop(self.out(y), deterministic=not train)


class FeedForward(nn.Module):
    config: LayerConfig

    @nn.compact
    def __call__(self, x, train: bool):
        c = self.config
        h = proj(c.mlp_dim, -1, ("embed", "mlp"), "wi")(x)
        h = nn.with_logical_constraint(h, ("batch", "seq", "mlp"))
        h = Dropout(c.dropout, c.dropout_impl)(h, deterministic=not train, relu=True)
        y = proj(x.shape[-1], -1, ("mlp", "embed"), "wo")(h)
        return Dropout(c.dropout, c.dropout_impl)(y, deterministic=not train)


class EncoderLayer(nn.Module):
    config: LayerConfig

    @nn.compact
    def __call__(self, x, bias, mask, train: bool):
        x = x + SelfAttention(self.config)(RMSNorm()(x), bias, mask, train)
        x = x + FeedForward(self.config)(RMSNorm()(x), train)
        return nn.with_logical_constraint(x, ("batch", "seq", "embed"))


class DecoderLayer(nn.Module):
    config: LayerConfig

    def setup(self):
        self.self_norm, self.cross_norm, self.mlp_norm = RMSNorm(), RMSNorm(), RMSNorm()
        self.self_attention = SelfAttention(self.config)
        self.cross_attention = CrossAttention(self.config)
        self.mlp = FeedForward(self.config)

    def memory(self, encoded):
        return self.cross_attention.memory(encoded)

    def __call__(self, x, bias, causal_mask, memory, memory_mask, train: bool):
        x = x + self.self_attention(self.self_norm(x), bias, causal_mask, train)
        x = x + self.cross_attention(self.cross_norm(x), memory, memory_mask, train)
        x = x + self.mlp(self.mlp_norm(x), train)
        return nn.with_logical_constraint(x, ("batch", "seq", "embed"))

    def step(self, x, cache, position, bias, memory, memory_mask):
        y, cache = self.self_attention.step(self.self_norm(x), cache, position, bias)
        x = x + y
        x = x + self.cross_attention(self.cross_norm(x), memory, memory_mask, False)
        return x + self.mlp(self.mlp_norm(x), False), cache
