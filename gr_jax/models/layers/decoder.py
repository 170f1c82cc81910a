"""Decoder-only transformer blocks: rotary positions, any boolean attention mask, pre-RMSNorm
residual blocks, grouped-query attention and a decode step against a cached prefix.

Decoding shares one prefix (a user's prompt and history, encoded once by ``prefill``) between
the beams of that user; each beam then caches only its own generated tokens
(``DecoderBlock.step``), so the prefix keys and values are never copied per beam.

Logical axes: ``batch``, ``seq``, ``embed``, ``heads``, ``kv``, ``mlp``.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from gr_jax.models.layers.dropout import Dropout
from gr_jax.models.layers.structs import LayerConfig
from gr_jax.models.layers.t5 import FeedForward, KeyValues, RMSNorm, proj
from gr_jax.ops import NEG_INF, softmax


@dataclasses.dataclass(frozen=True, kw_only=True)
class DecoderConfig(LayerConfig):
    """The decoder stack's struct, passed to every block."""

    num_layers: int = 2
    num_kv_heads: int = 0  # key/value heads; 0 = num_heads (multi-head), fewer = grouped-query attention
    rope_base: float = 10_000.0

    def __post_init__(self):
        super().__post_init__()
        kv = self.kv_heads
        if kv < 1 or self.num_heads % kv:
            raise ValueError(f"model.num_kv_heads={self.num_kv_heads} must divide model.num_heads={self.num_heads}")
        if self.head_dim % 2:
            raise ValueError(f"model.head_dim={self.head_dim} must be even for rotary positions")

    @property
    def kv_heads(self) -> int:
        return self.num_kv_heads or self.num_heads


def rope(x: jax.Array, positions: jax.Array, base: float) -> jax.Array:
    """Rotary position embedding of ``x [..., T, H, D]`` at integer ``positions`` (broadcast to
    ``[..., T]``): dimension pairs (i, i + D/2) rotate by ``position / base^(2i/D)`` (Llama's layout)."""
    half = x.shape[-1] // 2
    frequencies = base ** (-jnp.arange(half, dtype=jnp.float32) / half)
    angles = positions[..., None].astype(jnp.float32) * frequencies  # [..., T, D/2]
    cos, sin = jnp.cos(angles)[..., None, :], jnp.sin(angles)[..., None, :]
    first, second = x[..., :half], x[..., half:]
    return jnp.concatenate([first * cos - second * sin, second * cos + first * sin], -1).astype(x.dtype)


def _expand_heads(t: jax.Array, num_heads: int) -> jax.Array:
    """``[..., S, H_kv, D]`` -> ``[..., S, H, D]`` (each key/value head serves H / H_kv query heads)."""
    return jnp.repeat(t, num_heads // t.shape[-2], axis=-2)


class Attention(nn.Module):
    config: DecoderConfig

    def setup(self):
        c = self.config
        self.q = proj((c.num_heads, c.head_dim), -1, ("embed", "heads", "kv"), "q")
        self.kv = proj((2, c.kv_heads, c.head_dim), -1, ("embed", None, "heads", "kv"), "kv")
        self.out = proj(c.embed_dim, (-2, -1), ("heads", "kv", "embed"), "out")
        self.drop = Dropout(c.dropout, c.dropout_impl)

    def keys_values(self, x, positions) -> KeyValues:
        """Rotated keys and values ``[B, T, H_kv, D]`` of ``x [B, T, d]``."""
        k, v = jnp.moveaxis(self.kv(x), -3, 0)
        return KeyValues(rope(k, positions, self.config.rope_base), v)

    def __call__(self, x, positions, mask, train: bool):
        """``x [B, T, d]`` at ``positions [B, T]`` attending where ``mask [B, T, T]``; also returns its
        keys and values (the cache of a prefix)."""
        c = self.config
        q = rope(self.q(x), positions, c.rope_base)
        memory = self.keys_values(x, positions)
        k, v = _expand_heads(memory.key, c.num_heads), _expand_heads(memory.value, c.num_heads)
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(c.head_dim).astype(q.dtype)
        logits = jnp.where(mask[:, None], logits, NEG_INF)
        y = jnp.einsum("bhqk,bkhd->bqhd", softmax(logits), v)
        return self.drop(self.out(y), deterministic=not train), memory

    def step(self, x, position, prefix: KeyValues, prefix_mask, cache: KeyValues, index):
        """One decode step of every beam: ``x [B, W, d]`` at ``position [B]`` attends to the shared
        ``prefix`` (``[B, P, H_kv, D]``, valid where ``prefix_mask [B, P]``) and to its own cached
        tokens ``[B, W, C, H_kv, D]``, whose slot ``index`` it writes first."""
        c = self.config
        q = rope(self.q(x), position[:, None], c.rope_base)  # [B, W, H, D]
        new = self.keys_values(x, position[:, None])
        cache = KeyValues(jax.lax.dynamic_update_slice_in_dim(cache.key, new.key[:, :, None], index, axis=2),
                          jax.lax.dynamic_update_slice_in_dim(cache.value, new.value[:, :, None], index, axis=2))
        scale = jnp.sqrt(c.head_dim).astype(q.dtype)
        shared = jnp.einsum("bwhd,bphd->bwhp", q, _expand_heads(prefix.key, c.num_heads)) / scale
        shared = jnp.where(prefix_mask[:, None, None, :], shared, NEG_INF)
        own = jnp.einsum("bwhd,bwchd->bwhc", q, _expand_heads(cache.key, c.num_heads)) / scale
        own = jnp.where(jnp.arange(cache.key.shape[2]) <= index, own, NEG_INF)
        weights = softmax(jnp.concatenate([shared, own], -1))
        prefix_length = shared.shape[-1]
        y = jnp.einsum("bwhp,bphd->bwhd", weights[..., :prefix_length], _expand_heads(prefix.value, c.num_heads))
        y = y + jnp.einsum("bwhc,bwchd->bwhd", weights[..., prefix_length:], _expand_heads(cache.value, c.num_heads))
        return self.out(y), cache


class DecoderBlock(nn.Module):
    """Pre-RMSNorm attention and feed-forward, each with a residual."""

    config: DecoderConfig

    def setup(self):
        self.attention_norm, self.mlp_norm = RMSNorm(), RMSNorm()
        self.attention = Attention(self.config)
        self.mlp = FeedForward(self.config)

    def __call__(self, x, positions, mask, train: bool):
        y, memory = self.attention(self.attention_norm(x), positions, mask, train)
        x = x + y
        x = x + self.mlp(self.mlp_norm(x), train)
        return nn.with_logical_constraint(x, ("batch", "seq", "embed")), memory

    def step(self, x, position, prefix: KeyValues, prefix_mask, cache: KeyValues, index):
        y, cache = self.attention.step(self.attention_norm(x), position, prefix, prefix_mask, cache, index)
        x = x + y
        return x + self.mlp(self.mlp_norm(x), False), cache


def causal_mask(valid: jax.Array) -> jax.Array:
    """``[B, T, T]``: token q attends to token k <= q when k is valid (``valid [B, T]``)."""
    length = valid.shape[1]
    return jnp.tril(jnp.ones((length, length), bool))[None] & valid[:, None, :]
