"""Llama-style decoder-only language model in Flax linen (Llama and Qwen2 layouts).

Pre-RMSNorm residual blocks, rotary positions (Hugging Face's "rotate_half" layout, optionally
with Llama 3's frequency scaling), grouped-query attention, SwiGLU feed-forward, a final norm and
an LM head tied to the token embedding or separate. Numerics follow Hugging Face's modelling code
(RMSNorm normalises in float32 and casts back before the weight; softmax in float32) so imported
checkpoints reproduce ``transformers``' logits (``hf_import``).

Parameter names mirror Hugging Face's (``layers_3/self_attn/q_proj/kernel`` is
``model.layers.3.self_attn.q_proj.weight``); every parameter carries logical axis names
(``embed``, ``heads``, ``kv``, ``mlp``, ``vocab``) for the mesh rules of
``gr_jax.training.sharding``. Projections named in ``lora_targets`` get LoRA adapters
(``lora_a``, ``lora_b``; see ``gr_jax.llm.lora``).

Decoding uses a fixed-size key/value cache (``DecodeCache``) so a whole generation is one
``lax.scan``: ``prefill`` encodes the prompts, ``step`` appends one token per row.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from gr_jax.models.layers.decoder import causal_mask
from gr_jax.models.layers.t5 import KeyValues
from gr_jax.ops import NEG_INF

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ROPE_TYPES = ("default", "llama3")


@dataclasses.dataclass(frozen=True, kw_only=True)
class LlamaConfig:
    """Sizes and numerics of the model; hashable, so it can be a Flax module field."""

    vocab_size: int = 32000
    hidden_size: int = 256
    intermediate_size: int = 688
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2  # fewer than num_heads = grouped-query attention
    head_dim: int = 64
    rope_theta: float = 10_000.0
    # Llama 3.1's frequency scaling ("llama3"); "default" ignores the four fields after it.
    rope_type: str = "default"
    rope_factor: float = 8.0
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_max_positions: int = 8192
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    attention_bias: bool = False  # biases on q/k/v (Qwen2; Llama's attention_bias also sets output_bias)
    output_bias: bool = False  # bias on o_proj
    max_position_embeddings: int = 4096
    dtype: Any = jnp.float32  # compute
    param_dtype: Any = jnp.float32  # storage
    lora_rank: int = 0  # 0 = no adapters
    lora_alpha: float = 16.0
    lora_targets: tuple[str, ...] = ("q_proj", "v_proj")

    def __post_init__(self):
        if self.num_kv_heads < 1 or self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_kv_heads={self.num_kv_heads} must divide num_heads={self.num_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim={self.head_dim} must be even for rotary positions")
        if self.rope_type not in ROPE_TYPES:
            raise ValueError(f"rope_type={self.rope_type!r}; supported: {', '.join(ROPE_TYPES)}")
        if self.rope_type == "llama3" and self.rope_high_freq_factor <= self.rope_low_freq_factor:
            raise ValueError(f"rope_high_freq_factor={self.rope_high_freq_factor} must exceed "
                             f"rope_low_freq_factor={self.rope_low_freq_factor}")
        unknown = set(self.lora_targets) - set(PROJECTIONS)
        if unknown:
            raise ValueError(f"lora_targets {sorted(unknown)} are not projections; choose from {PROJECTIONS}")
        if self.lora_rank < 0:
            raise ValueError(f"lora_rank={self.lora_rank} must be >= 0 (0 = no adapters)")

    def has_lora(self, projection: str) -> bool:
        return self.lora_rank > 0 and projection in self.lora_targets


# ----------------------------------------------------------------------------------------------
# Rotary positions and attention


def rope_frequencies(config: LlamaConfig) -> jax.Array:
    """Inverse frequencies ``[head_dim / 2]``: ``theta^(-2i/D)``, and under "llama3" long wavelengths
    divided by ``rope_factor`` with a smooth blend between the two wavelength thresholds."""
    half = config.head_dim // 2
    inv_freq = config.rope_theta ** (-jnp.arange(half, dtype=jnp.float32) / half)
    if config.rope_type == "default":
        return inv_freq
    factor, low, high = config.rope_factor, config.rope_low_freq_factor, config.rope_high_freq_factor
    context = config.rope_original_max_positions
    wavelength = 2 * math.pi / inv_freq
    scaled = jnp.where(wavelength > context / low, inv_freq / factor, inv_freq)
    smooth = (context / wavelength - low) / (high - low)
    blended = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelength >= context / high) & (wavelength <= context / low)
    return jnp.where(medium, blended, scaled)


def apply_rope(x: jax.Array, positions: jax.Array, inv_freq: jax.Array) -> jax.Array:
    """Rotates ``x [B, T, H, D]`` at ``positions [B, T]``: dimension pairs (i, i + D/2) turn by
    ``position * inv_freq[i]`` (HF's rotate_half layout). cos/sin are computed in float32 and cast
    to ``x``'s dtype first, as Hugging Face does."""
    angles = positions[..., None].astype(jnp.float32) * inv_freq  # [B, T, D/2]
    cos = jnp.cos(angles).astype(x.dtype)[..., None, :]
    sin = jnp.sin(angles).astype(x.dtype)[..., None, :]
    first, second = jnp.split(x, 2, axis=-1)
    return jnp.concatenate([first * cos - second * sin, second * cos + first * sin], -1)


def grouped_query_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    """``softmax(q k^T / sqrt(D)) v`` for ``q [B, T, H, D]`` and ``k, v [B, S, H_kv, D]`` where query
    head h reads key/value head ``h // (H / H_kv)``, without repeating keys; ``mask [B, T, S]`` says
    where a query may attend. The softmax runs in float32."""
    batch, length, num_heads, head_dim = q.shape
    num_kv = k.shape[2]
    q = q.reshape(batch, length, num_kv, num_heads // num_kv, head_dim)
    logits = jnp.einsum("btkgd,bskd->bkgts", q, k) * jnp.asarray(head_dim ** -0.5, q.dtype)
    logits = jnp.where(mask[:, None, None], logits.astype(jnp.float32), NEG_INF)
    weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    return jnp.einsum("bkgts,bskd->btkgd", weights, v).reshape(batch, length, num_heads, head_dim)


# ----------------------------------------------------------------------------------------------
# Layers


class RMSNorm(nn.Module):
    """Hugging Face's RMSNorm: normalise in float32, cast back to the input dtype, then scale."""

    eps: float
    dtype: Any
    param_dtype: Any

    @nn.compact
    def __call__(self, x):
        weight = self.param("weight", nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
                            (x.shape[-1],), self.param_dtype)
        x32 = x.astype(jnp.float32)
        normed = (x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, -1, keepdims=True) + self.eps)).astype(x.dtype)
        return (weight.astype(self.dtype) * normed).astype(self.dtype)


def lora_a_init(num_in_axes: int):
    """Initialiser of LoRA's ``A [in..., r]``: normal, variance 1 / fan-in (``B`` starts at zero)."""
    return nn.initializers.variance_scaling(1.0, "fan_in", "normal", in_axis=tuple(range(num_in_axes)),
                                            out_axis=num_in_axes)


class Projection(nn.Module):
    """Linear map from the trailing ``in_shape`` axes of ``x`` to ``out_shape`` (a Hugging Face
    ``nn.Linear`` with its kernel split into heads), optional bias, and with ``lora_rank > 0`` the
    low-rank update ``(alpha / rank) * x A B`` (B starts at zero, so the update starts at zero)."""

    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    in_names: tuple[str | None, ...]
    out_names: tuple[str | None, ...]
    use_bias: bool = False
    lora_rank: int = 0
    lora_alpha: float = 16.0
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        n_in, n_out = len(self.in_shape), len(self.out_shape)
        in_axes, out_axes = tuple(range(n_in)), tuple(range(n_in, n_in + n_out))
        kernel_init = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal", in_axis=in_axes,
                                                       out_axis=out_axes)
        kernel = self.param("kernel", nn.with_logical_partitioning(kernel_init, self.in_names + self.out_names),
                            self.in_shape + self.out_shape, self.param_dtype)
        x = x.astype(self.dtype)
        contract = tuple(range(x.ndim - n_in, x.ndim))
        y = jax.lax.dot_general(x, kernel.astype(self.dtype), ((contract, in_axes), ((), ())))
        if self.use_bias:
            bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, self.out_names),
                              self.out_shape, self.param_dtype)
            y = y + bias.astype(self.dtype)
        if self.lora_rank:
            a = self.param("lora_a", nn.with_logical_partitioning(lora_a_init(n_in), self.in_names + (None,)),
                           self.in_shape + (self.lora_rank,), self.param_dtype)
            b = self.param("lora_b", nn.with_logical_partitioning(nn.initializers.zeros, (None,) + self.out_names),
                           (self.lora_rank,) + self.out_shape, self.param_dtype)
            low = jax.lax.dot_general(x, a.astype(self.dtype), ((contract, in_axes), ((), ())))
            y = y + (self.lora_alpha / self.lora_rank) * jnp.tensordot(low, b.astype(self.dtype), 1)
        return y


def _projection(config: LlamaConfig, name: str, in_shape, out_shape, in_names, out_names, use_bias=False):
    return Projection(tuple(in_shape), tuple(out_shape), tuple(in_names), tuple(out_names), use_bias,
                      config.lora_rank if config.has_lora(name) else 0, config.lora_alpha, config.dtype,
                      config.param_dtype, name=name)


class Attention(nn.Module):
    """Grouped-query self-attention with rotary positions, optionally through a key/value cache."""

    config: LlamaConfig

    def setup(self):
        c = self.config
        heads, kv_heads = (c.num_heads, c.head_dim), (c.num_kv_heads, c.head_dim)
        embed, head_names = ("embed",), ("heads", "kv")
        self.q_proj = _projection(c, "q_proj", (c.hidden_size,), heads, embed, head_names, c.attention_bias)
        self.k_proj = _projection(c, "k_proj", (c.hidden_size,), kv_heads, embed, head_names, c.attention_bias)
        self.v_proj = _projection(c, "v_proj", (c.hidden_size,), kv_heads, embed, head_names, c.attention_bias)
        self.o_proj = _projection(c, "o_proj", heads, (c.hidden_size,), head_names, embed, c.output_bias)

    def __call__(self, x, positions, mask, cache: KeyValues | None = None, index=0):
        """``x [B, T, d]`` at ``positions [B, T]``. Without ``cache``, queries attend to these T tokens
        where ``mask [B, T, T]``; with a cache ``[B, S, H_kv, D]``, this block's keys and values are
        written at slots ``index..index+T-1`` first and queries attend to the S slots where
        ``mask [B, T, S]``. Returns the output and the keys/values (the updated cache)."""
        inv_freq = rope_frequencies(self.config)
        q = apply_rope(self.q_proj(x), positions, inv_freq)
        k = apply_rope(self.k_proj(x), positions, inv_freq)
        v = self.v_proj(x)
        if cache is not None:
            k = jax.lax.dynamic_update_slice_in_dim(cache.key, k.astype(cache.key.dtype), index, axis=1)
            v = jax.lax.dynamic_update_slice_in_dim(cache.value, v.astype(cache.value.dtype), index, axis=1)
        y = grouped_query_attention(q, k, v, mask)
        return self.o_proj(y), KeyValues(k, v)


class MLP(nn.Module):
    """SwiGLU: ``down(silu(gate(x)) * up(x))``."""

    config: LlamaConfig

    def setup(self):
        c = self.config
        self.gate_proj = _projection(c, "gate_proj", (c.hidden_size,), (c.intermediate_size,), ("embed",), ("mlp",))
        self.up_proj = _projection(c, "up_proj", (c.hidden_size,), (c.intermediate_size,), ("embed",), ("mlp",))
        self.down_proj = _projection(c, "down_proj", (c.intermediate_size,), (c.hidden_size,), ("mlp",), ("embed",))

    def __call__(self, x):
        return self.down_proj(nn.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    """Pre-RMSNorm attention and MLP, each with a residual."""

    config: LlamaConfig

    def setup(self):
        c = self.config
        self.input_layernorm = RMSNorm(c.rms_norm_eps, c.dtype, c.param_dtype)
        self.self_attn = Attention(c)
        self.post_attention_layernorm = RMSNorm(c.rms_norm_eps, c.dtype, c.param_dtype)
        self.mlp = MLP(c)

    def __call__(self, x, positions, mask, cache: KeyValues | None = None, index=0):
        y, kv = self.self_attn(self.input_layernorm(x), positions, mask, cache, index)
        x = x + y
        x = x + self.mlp(self.post_attention_layernorm(x))
        return nn.with_logical_constraint(x, ("batch", "seq", "embed")), kv


@flax.struct.dataclass
class DecodeCache:
    """Fixed-size decoding state; every leaf has the batch axis first (beams flattened into it)."""

    layers: tuple[KeyValues, ...]  # per layer, keys and values [B, S, H_kv, D]
    valid: jax.Array  # [B, S] slots holding a real token


def empty_cache(config: LlamaConfig, batch_size: int, cache_size: int) -> DecodeCache:
    """A cache of ``cache_size`` slots per row, all invalid."""
    zeros = jnp.zeros((batch_size, cache_size, config.num_kv_heads, config.head_dim), config.dtype)
    return DecodeCache(tuple(KeyValues(zeros, zeros) for _ in range(config.num_layers)),
                       jnp.zeros((batch_size, cache_size), bool))


def positions_and_mask(valid: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Positions ``[B, T]`` (0 at each row's first valid token, so left padding does not shift
    them) and the causal mask ``[B, T, T]`` over valid keys, for ``valid [B, T]``."""
    positions = jnp.maximum(jnp.cumsum(valid.astype(jnp.int32), axis=1) - 1, 0)
    return positions, causal_mask(valid.astype(bool))


class LlamaModel(nn.Module):
    """Token embedding, ``num_layers`` decoder layers, final norm and LM head; logits in float32."""

    config: LlamaConfig

    def setup(self):
        c = self.config
        self.embed_tokens = nn.Embed(
            c.vocab_size, c.hidden_size, dtype=c.dtype, param_dtype=c.param_dtype,
            embedding_init=nn.with_logical_partitioning(nn.initializers.normal(0.02), ("vocab", "embed")))
        self.layers = [DecoderLayer(c) for _ in range(c.num_layers)]  # named layers_0, layers_1, ...
        self.norm = RMSNorm(c.rms_norm_eps, c.dtype, c.param_dtype)
        if not c.tie_word_embeddings:
            self.lm_head = Projection((c.hidden_size,), (c.vocab_size,), ("embed",), ("vocab",),
                                      dtype=c.dtype, param_dtype=c.param_dtype)

    def _layers(self, tokens, positions, mask, caches=None, index=0):
        x = nn.with_logical_constraint(self.embed_tokens(tokens), ("batch", "seq", "embed"))
        new_caches = []
        for i, layer in enumerate(self.layers):
            x, kv = layer(x, positions, mask, None if caches is None else caches[i], index)
            new_caches.append(kv)
        return self.norm(x), tuple(new_caches)

    def logits(self, hidden: jax.Array) -> jax.Array:
        """LM-head logits (float32) of final hidden states ``[..., d]``."""
        if self.config.tie_word_embeddings:
            out = self.embed_tokens.attend(hidden)
        else:
            out = self.lm_head(hidden)
        return out.astype(jnp.float32)

    def hidden_states(self, tokens, positions, mask) -> jax.Array:
        """Final-norm hidden states ``[B, T, d]`` (what the LM head reads)."""
        return self._layers(tokens, positions, mask)[0]

    def __call__(self, tokens, positions, mask):
        """Logits ``[B, T, V]`` of ``tokens [B, T]`` at ``positions [B, T]`` with the attention mask
        ``mask [B, T, T]`` (``positions_and_mask(valid)`` gives the usual causal pair)."""
        return self.logits(self.hidden_states(tokens, positions, mask))

    def prefill(self, tokens, valid, cache_size: int):
        """Encodes prompts ``tokens [B, T]`` (``valid [B, T]``: left or right padding) into a cache of
        ``cache_size >= T`` slots. Returns the logits ``[B, V]`` at each row's last valid token and the
        cache; the next token goes to slot T at position ``valid.sum(-1)``."""
        batch, length = tokens.shape
        if cache_size < length:
            raise ValueError(f"cache_size={cache_size} is smaller than the prompt length {length}")
        positions, mask = positions_and_mask(valid)
        mask = jnp.pad(mask, ((0, 0), (0, 0), (0, cache_size - length)))
        cache = empty_cache(self.config, batch, cache_size)
        hidden, layers = self._layers(tokens, positions, mask, cache.layers, 0)
        last = length - 1 - jnp.argmax(valid[:, ::-1], axis=1)  # index of each row's last valid token
        logits = self.logits(jnp.take_along_axis(hidden, last[:, None, None], axis=1)[:, 0])
        return logits, DecodeCache(layers, jax.lax.dynamic_update_slice_in_dim(cache.valid, valid.astype(bool), 0, 1))

    def step(self, token, position, cache: DecodeCache, index):
        """Appends ``token [B]`` at ``position [B]`` into cache slot ``index`` (a scalar below the cache
        size, may be traced) and returns its next-token logits ``[B, V]`` and the updated cache."""
        valid = jax.lax.dynamic_update_slice_in_dim(cache.valid, jnp.ones((cache.valid.shape[0], 1), bool), index, 1)
        hidden, layers = self._layers(token[:, None], position[:, None], valid[:, None, :], cache.layers, index)
        return self.logits(hidden[:, 0]), DecodeCache(layers, valid)


def param_shardings(config: LlamaConfig, mesh, rules) -> dict:
    """``NamedSharding`` of every parameter of ``LlamaModel(config)`` (a tree like its params) under
    the logical ``rules`` (``gr_jax.training.sharding.logical_rules``); nothing is allocated."""
    tokens = jnp.zeros((1, 1), jnp.int32)
    abstract = jax.eval_shape(lambda: LlamaModel(config).init(jax.random.PRNGKey(0), tokens, tokens,
                                                              jnp.ones((1, 1, 1), bool)))
    return nn.logical_to_mesh_sharding(nn.get_partition_spec(abstract), mesh, rules)["params"]
