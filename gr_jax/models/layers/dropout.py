"""Dropout with a choice of random-bit source.

``threefry`` is Flax's ``nn.Dropout`` (jax.random bits per element): the reference.
``hash`` draws one 32-bit seed from the ``dropout`` RNG stream per call and mixes it with
each element's global linear index through a 32-bit integer finaliser (MurmurHash3's
fmix32): a handful of integer ops per element instead of a full Threefry block, which on
CPU halves the cost of a TIGER-size training step. The index is a global ``iota``, so
masks do not depend on how the array is sharded; with ``keys`` (one integer per row of the
leading axes, e.g. an item id) it is ``key * row_size + index within the row``, so a row draws
the same bits wherever it sits in the array.

``relu=True`` applies ReLU first, with the two masks as one predicate: XLA then keeps that boolean
array for the backward pass. ReLU followed by dropout instead lets XLA re-derive the hash mask
inside the transposing backward fusion of every feed-forward layer: nearly a fifth of TIGER's
training step on CPU (BENCHMARKS.md, accelerators; ``bench/step_kernels.py``).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from gr_jax.config_schema import check_choice


def fmix32(x: jax.Array) -> jax.Array:
    """MurmurHash3's 32-bit finaliser: a bijective avalanche mix of uint32 values."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x85EBCA6B)
    x = x ^ (x >> 13)
    x = x * jnp.uint32(0xC2B2AE35)
    return x ^ (x >> 16)


def mix_keys(keys: jax.Array, seed: jax.Array) -> jax.Array:
    """Random-looking uint32 bits of integer ``keys`` under a ``seed`` (broadcastable); same inputs, same bits."""
    return fmix32(keys.astype(jnp.uint32) ^ fmix32(jnp.asarray(seed, jnp.uint32) + jnp.uint32(0x9E3779B9)))


def hash_bits(seed: jax.Array, shape: tuple[int, ...], keys: jax.Array | None = None) -> jax.Array:
    """uint32 bits ``shape`` keyed by each element's global linear index (so sharding does not matter).

    ``keys`` (integers of shape ``shape[:keys.ndim]``): index each row of the leading axes by its
    key instead of its position, so equal keys draw equal bits.
    """
    lead = 0 if keys is None else keys.ndim
    index = jnp.zeros(shape, jnp.uint32)
    stride = 1
    for axis in reversed(range(lead, len(shape))):
        index = index + jax.lax.broadcasted_iota(jnp.uint32, shape, axis) * jnp.uint32(stride % 2**32)
        stride *= shape[axis]
    if keys is None:
        return mix_keys(index, seed)
    rows = keys.astype(jnp.uint32).reshape(keys.shape + (1,) * (len(shape) - lead))
    return mix_keys(index + rows * jnp.uint32(stride % 2**32), seed)


def hash_keep_mask(seed: jax.Array, shape: tuple[int, ...], rate: float, keys: jax.Array | None = None) -> jax.Array:
    """Boolean keep-mask with P(keep) = 1 - rate (to 2^-32), from a uint32 ``seed`` (``keys``: ``hash_bits``)."""
    return hash_bits(seed, shape, keys) >= jnp.uint32(min(int(rate * 2**32), 2**32 - 1))


def masked_relu(x: jax.Array, keep: jax.Array, rate: float) -> jax.Array:
    """``where(keep, relu(x) / (1 - rate), 0)`` with one predicate, ``keep & (x > 0)``: the gradient's
    residual is that boolean array (module docstring)."""
    return jnp.where(keep & (x > 0), x / (1.0 - rate), jnp.zeros_like(x))


def masked_relu_reference(x: jax.Array, keep: jax.Array, rate: float) -> jax.Array:
    """``masked_relu`` as ReLU, then dropout: same values and gradients (tests, ``bench/step_kernels.py``)."""
    return jnp.where(keep, nn.relu(x) / (1.0 - rate), jnp.zeros_like(x))


class Dropout(nn.Module):
    """``nn.Dropout`` semantics (inverted scaling, ``deterministic`` switch) with a selectable RNG."""

    rate: float
    impl: str = "hash"

    def __post_init__(self):
        check_choice("dropout_impl", self.impl)
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool, keys: jax.Array | None = None,
                 seed: jax.Array | None = None, relu: bool = False) -> jax.Array:
        """``keys``: per-row keys of ``x``'s leading axes (``hash_bits``; ignored by ``threefry``);
        ``seed``: a uint32 seed instead of a draw from the ``dropout`` RNG stream; ``relu``: dropout
        of ``relu(x)``, fused (module docstring)."""
        if deterministic or self.rate == 0.0:
            return nn.relu(x) if relu else x
        if self.impl == "threefry":
            rng = None if seed is None else jax.random.PRNGKey(seed)
            return nn.Dropout(self.rate)(nn.relu(x) if relu else x, deterministic=False, rng=rng)
        if seed is None:
            seed = jax.random.bits(self.make_rng("dropout"), (), jnp.uint32)
        keep = hash_keep_mask(seed, x.shape, self.rate, keys)
        if relu:
            return masked_relu(x, keep, self.rate)
        return jnp.where(keep, x / (1.0 - self.rate), jnp.zeros_like(x))
