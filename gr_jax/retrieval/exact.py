"""Exact maximum-inner-product top-k in JAX, and the recall of an approximate top-k against it.

The catalogue is scanned in chunks of ``chunk_size`` rows inside one jitted ``lax.scan``: each
chunk's ``[B, chunk]`` dot products are reduced to their top k and merged with the running top k,
so memory stays ``O(B * chunk)`` however large the catalogue. The last chunk is aligned to the end
of the catalogue and its rows already seen are masked, so the catalogue is never copied or padded.
Ties go to the lower item id (``lax.top_k``'s rule, kept by the merge).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax


def check_shapes(query_shape: tuple, vector_shape: tuple, k: int) -> None:
    """Raises ``ValueError`` naming the problem when queries ``[B, d]``, item vectors ``[N, d]`` and ``k`` disagree."""
    if len(vector_shape) != 2:
        raise ValueError(f"item vectors must be [num_items, dim]; got shape {tuple(vector_shape)}")
    if vector_shape[0] == 0:
        raise ValueError("the catalogue is empty (0 item vectors); nothing to retrieve")
    if len(query_shape) != 2:
        raise ValueError(f"queries must be [batch, dim]; got shape {tuple(query_shape)} "
                         "(use queries[None] for a single query)")
    if query_shape[1] != vector_shape[1]:
        raise ValueError(f"queries have dim {query_shape[1]} but the item vectors have dim {vector_shape[1]}")
    if not 1 <= k <= vector_shape[0]:
        raise ValueError(f"k={k} must be in [1, num_items={vector_shape[0]}]")


@functools.partial(jax.jit, static_argnames=("k", "chunk_size"))
def _topk(queries: jax.Array, vectors: jax.Array, k: int, chunk_size: int) -> tuple[jax.Array, jax.Array]:
    num_items = vectors.shape[0]
    if num_items <= chunk_size:
        scores, ids = lax.top_k(jnp.dot(queries, vectors.T, precision=lax.Precision.HIGHEST), k)
        return ids.astype(jnp.int32), scores

    def step(best, start):
        offset = jnp.minimum(start, num_items - chunk_size)  # the last chunk ends at the catalogue's end
        chunk = lax.dynamic_slice_in_dim(vectors, offset, chunk_size)
        ids = offset + jnp.arange(chunk_size, dtype=jnp.int32)
        scores = jnp.dot(queries, chunk.T, precision=lax.Precision.HIGHEST)
        scores = jnp.where(ids >= start, scores, -jnp.inf)  # rows of the previous chunk
        chunk_scores, pos = lax.top_k(scores, k)
        merged_scores = jnp.concatenate([best[1], chunk_scores], axis=1)
        merged_ids = jnp.concatenate([best[0], ids[pos]], axis=1)
        top_scores, top = lax.top_k(merged_scores, k)
        return (jnp.take_along_axis(merged_ids, top, axis=1), top_scores), None

    batch = queries.shape[0]
    init = (jnp.full((batch, k), -1, jnp.int32), jnp.full((batch, k), -jnp.inf, queries.dtype))
    starts = jnp.arange(0, num_items, chunk_size, dtype=jnp.int32)
    (ids, scores), _ = lax.scan(step, init, starts)
    return ids, scores


def exact_topk(queries, vectors, k: int, chunk_size: int = 65_536) -> tuple[jax.Array, jax.Array]:
    """Exact top-k items by dot product: ``ids [B, k]`` int32 and ``scores [B, k]``, best first.

    ``queries [B, d]`` and ``vectors [N, d]`` may be NumPy or JAX arrays (pass a JAX array to keep
    a large catalogue on device across calls). Dot products run at ``Precision.HIGHEST``, so the
    result is exact on GPU/TPU too.
    """
    queries, vectors = jnp.asarray(queries, jnp.float32), jnp.asarray(vectors, jnp.float32)
    check_shapes(queries.shape, vectors.shape, k)
    return _topk(queries, vectors, k, max(chunk_size, k))


def topk_recall(found_ids, exact_ids) -> float:
    """Recall@k of ``found_ids [B, k]`` against ``exact_ids [B, k]``: the mean of ``|found ∩ exact| / k``."""
    found_ids, exact_ids = np.asarray(found_ids), np.asarray(exact_ids)
    if found_ids.shape != exact_ids.shape or found_ids.ndim != 2:
        raise ValueError(f"found ids {found_ids.shape} and exact ids {exact_ids.shape} must both be [batch, k]")
    hits = (found_ids[:, :, None] == exact_ids[:, None, :]).any(axis=2)
    return float(hits.mean())
