"""Retrieval with several queries per user, merged per item by max score.

A user is a set of P unit queries ``[n, P, E]`` (CRBR's routing paths, a Q-Former's query
states, or P = 1 for a two-tower user vector). Each query is searched in an index (exact or
ScaNN) and the P lists merge into one: an item scores its best dot product with any of the
user's queries. Because an item's best query ranks it at least as high as the merged list does,
merging per-query exact top-k lists gives the exact top-k of ``max_p q_p · item``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class Retrieved(NamedTuple):
    """``retrieve``'s output: the merged top-k per user and each query's own top-k, best first."""

    ids: jax.Array  # [n, k]
    scores: jax.Array  # [n, k]
    path_ids: jax.Array  # [n, P, k]
    path_scores: jax.Array  # [n, P, k]


def merge_by_max(ids: jax.Array, scores: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    """The ``k`` best distinct items of candidate rows ``ids, scores [n, C]``, an item scored by
    its max over its repeats; ties go to the lower id. Rows with fewer than k distinct items
    pad with id -1 and score -inf. Jittable."""
    ids, scores = jnp.asarray(ids), jnp.asarray(scores, jnp.float32)
    if ids.ndim != 2 or scores.shape != ids.shape or ids.shape[1] < k:
        raise ValueError(f"ids {ids.shape} and scores {scores.shape} must both be [n, C] with C >= k={k}")
    order = jnp.lexsort((-scores, ids), axis=-1)  # by item, its best score first
    ids, scores = jnp.take_along_axis(ids, order, -1), jnp.take_along_axis(scores, order, -1)
    repeat = jnp.concatenate([jnp.zeros(ids.shape[:1] + (1,), bool), ids[:, 1:] == ids[:, :-1]], -1)
    scores = jnp.where(repeat, -jnp.inf, scores)
    scores, top = jax.lax.top_k(scores, k)  # ties: the lower position, i.e. the lower id
    ids = jnp.take_along_axis(ids, top, -1)
    return jnp.where(jnp.isneginf(scores), -1, ids).astype(jnp.int32), scores


def retrieve(query_sets, index_search_fn: Callable, k: int) -> Retrieved:
    """Searches every query of ``query_sets [n, P, E]`` and merges each user's P results.

    ``index_search_fn(queries [n·P, E], k=k) -> (ids, scores)`` each ``[n·P, k]``, higher scores
    better: ``scann_index.Index.search`` or ``functools.partial(exact_topk, vectors=items)``
    (jittable with the latter). An item found by several queries keeps its max score; the merged
    list holds k distinct items.
    """
    if query_sets.ndim != 3:
        raise ValueError(f"query_sets must be [users, queries, dim]; got shape {query_sets.shape}")
    n, paths, dim = query_sets.shape
    ids, scores = index_search_fn(query_sets.reshape(n * paths, dim), k=k)
    ids, scores = jnp.asarray(ids), jnp.asarray(scores, jnp.float32)
    if ids.shape != (n * paths, k) or scores.shape != ids.shape:
        raise ValueError(f"index_search_fn returned ids {ids.shape} and scores {scores.shape}; expected "
                         f"({n * paths}, {k}) each")
    merged_ids, merged_scores = merge_by_max(ids.reshape(n, -1), scores.reshape(n, -1), k)
    return Retrieved(merged_ids, merged_scores, ids.reshape(n, paths, k), scores.reshape(n, paths, k))


def recall(ids, targets) -> np.ndarray:
    """Fraction of users whose target ``[n]`` is among ``ids [n, ..., k]``: a scalar for merged ids
    ``[n, k]``, one value per query for ``Retrieved.path_ids [n, P, k]``."""
    ids, targets = np.asarray(ids), np.asarray(targets)
    return (ids == targets.reshape((-1,) + (1,) * (ids.ndim - 1))).any(-1).mean(0)
