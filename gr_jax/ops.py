"""Small numeric helpers shared by models, tokenizers and retrieval."""

from __future__ import annotations

import jax
import jax.numpy as jnp

# Masked attention logits and dead beams: finite, so a fully masked row still softmaxes to a
# uniform distribution instead of NaN. Padding of ranked result lists uses -inf ("no result").
NEG_INF = -1e9


def softmax(logits: jax.Array, axis: int = -1) -> jax.Array:
    """``jax.nn.softmax`` computed in float32 and returned in the logits' dtype (bfloat16 compute
    keeps its attention and gate weights accurate)."""
    return jax.nn.softmax(logits.astype(jnp.float32), axis).astype(logits.dtype)


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    """Rows of ``x`` scaled to unit L2 norm along the last axis (zero rows stay zero)."""
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


def contrastive_nll(logits: jax.Array, column_items: jax.Array, targets: jax.Array) -> jax.Array:
    """Mean cross-entropy of each row ``i`` of ``logits [B, C]`` (C >= B) against its column ``i``, the
    columns holding items ``column_items [C]``; a column other than ``i`` that holds the row's own
    target ``targets[i]`` is masked out (a false negative)."""
    logits = logits.astype(jnp.float32)
    own_column = jnp.arange(logits.shape[1])[None, :] == jnp.arange(len(targets))[:, None]
    false_negative = (column_items[None, :] == targets[:, None]) & ~own_column
    logits = jnp.where(false_negative, NEG_INF, logits)
    return jnp.mean(jax.nn.logsumexp(logits, -1) - jnp.diagonal(logits))


def squared_distances(x: jax.Array, y: jax.Array) -> jax.Array:
    """Squared euclidean distances ``[N, K]`` between the rows of ``x [N, D]`` and ``y [K, D]``
    (full-precision matmul, so argmins agree on every backend; clipped at 0)."""
    xx = jnp.sum(x * x, axis=-1, keepdims=True)
    yy = jnp.sum(y * y, axis=-1)
    return jnp.maximum(xx - 2.0 * jnp.dot(x, y.T, precision=jax.lax.Precision.HIGHEST) + yy, 0.0)
