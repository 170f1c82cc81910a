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


@jax.custom_vjp
def add_batch_shared(x: jax.Array, shared: jax.Array) -> jax.Array:
    """``x + shared`` for ``shared`` of shape ``(1,) + x.shape[1:]`` (e.g. T5's relative-position bias).

    The gradient of ``shared`` sums the batch of cotangents as a dot with a ones vector (float32
    accumulation): XLA:CPU reduces a leading axis of attention logits ~70x slower than it runs that
    dot (``bench/cpu_kernels.py``: ``batch_sum``; the whole step: ``bench/step_kernels.py``).
    """
    if shared.shape != (1,) + x.shape[1:] or shared.dtype != x.dtype:
        raise ValueError(f"add_batch_shared: shared is {shared.dtype}{list(shared.shape)}, expected "
                         f"{x.dtype}{[1, *x.shape[1:]]}")
    return x + shared


def _add_batch_shared_fwd(x, shared):
    return add_batch_shared(x, shared), None


def _add_batch_shared_bwd(_, g):
    return g, batch_sum(g).astype(g.dtype)[None]


add_batch_shared.defvjp(_add_batch_shared_fwd, _add_batch_shared_bwd)


def batch_sum(x: jax.Array) -> jax.Array:
    """``x.sum(0)`` as a dot with a ones vector, accumulated in float32 (``add_batch_shared``)."""
    ones = jnp.ones(x.shape[:1], x.dtype)
    return jax.lax.dot_general(ones, x, (((0,), (0,)), ((), ())), precision=jax.lax.Precision.HIGHEST,
                               preferred_element_type=jnp.float32)


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
