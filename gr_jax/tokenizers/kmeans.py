"""K-means in JAX: seeded k-means++ init, jitted Lloyd iterations, balanced and spherical modes.

* Seeding is greedy k-means++ (see ``_kmeans_pp``), deterministic for a given ``seed``.
* Lloyd iterations run in one jitted ``lax.while_loop`` that stops early once assignments stop
  changing; a final assignment step makes the returned assignment match the returned centroids.
* Empty clusters are re-seeded, after each update, to the points farthest from their assigned
  centroids (the i-th empty cluster takes the i-th farthest point).
* ``balanced=True`` uses a capacity-constrained greedy assignment: every cluster holds at most
  ``ceil(N / K)`` points; points are visited in decreasing order of regret (cost gap between their
  nearest and second-nearest centroid) and each takes its nearest centroid that still has room.
  Sizes are then at most ``ceil(N / K)`` and, in practice, near-equal. The visit is a sequential
  ``lax.scan`` over points, O(N·K) per iteration.
* ``spherical=True`` normalizes rows and centroids to unit length, so points go to the centroid of
  highest cosine similarity (on the sphere, squared distance is ``2 - 2 cos``).
* ``N < k`` raises ``ValueError`` rather than capping ``k``, which would silently change codebook
  shapes downstream.

The distance matrix is materialized (``N × K`` floats).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax

from gr_jax.ops import l2_normalize

_EPS = 1e-12
_HIGHEST = lax.Precision.HIGHEST


def squared_distances(x: jax.Array, centroids: jax.Array) -> jax.Array:
    """Squared euclidean distances ``[N, K]`` between rows of ``x`` and ``centroids``."""
    xx = jnp.sum(x * x, axis=1, keepdims=True)
    cc = jnp.sum(centroids * centroids, axis=1)
    return jnp.maximum(xx - 2.0 * jnp.dot(x, centroids.T, precision=_HIGHEST) + cc, 0.0)


def _kmeans_pp(key: jax.Array, x: jax.Array, k: int) -> jax.Array:
    """Greedy k-means++ seeding.

    Each step draws ``2 + floor(ln k)`` candidate points with probability ∝ squared distance to the
    chosen centroids (inverse-CDF sampling from one block of uniforms) and keeps the candidate that
    lowers the total squared distance most.
    """
    n = x.shape[0]
    uniforms = jax.random.uniform(key, (k, 2 + int(math.log(k))))
    first = x[jnp.minimum((uniforms[0, 0] * n).astype(jnp.int32), n - 1)]
    centroids = jnp.zeros((k, x.shape[1]), x.dtype).at[0].set(first)
    dist = jnp.sum((x - first) ** 2, axis=1)

    def body(i, state):
        centroids, dist = state
        cdf = jnp.cumsum(dist)
        candidates = jnp.minimum(jnp.searchsorted(cdf, uniforms[i] * cdf[-1], side="right"), n - 1)
        new_dist = jnp.minimum(dist, squared_distances(x, x[candidates]).T)
        best = jnp.argmin(jnp.sum(new_dist, axis=1))
        return centroids.at[i].set(x[candidates[best]]), new_dist[best]

    return lax.fori_loop(1, k, body, (centroids, dist))[0]


def _balanced_assign(cost: jax.Array) -> jax.Array:
    """Capacity-constrained greedy assignment (see module docstring) from costs ``[N, K]``."""
    n, k = cost.shape
    capacity = -(-n // k)
    if k > 1:
        nearest_two = -lax.top_k(-cost, 2)[0]
        regret = nearest_two[:, 1] - nearest_two[:, 0]
    else:
        regret = jnp.zeros(n, cost.dtype)
    order = jnp.argsort(-regret, stable=True)

    def step(counts, i):
        choice = jnp.argmin(jnp.where(counts < capacity, cost[i], jnp.inf)).astype(jnp.int32)
        return counts.at[choice].add(1), choice

    _, chosen = lax.scan(step, jnp.zeros(k, jnp.int32), order)
    return jnp.zeros(n, jnp.int32).at[order].set(chosen)


def _assign(x: jax.Array, centroids: jax.Array, balanced: bool) -> tuple[jax.Array, jax.Array]:
    """Assignment ``[N]`` and each point's cost to its assigned centroid ``[N]``."""
    cost = squared_distances(x, centroids)
    assignment = _balanced_assign(cost) if balanced else jnp.argmin(cost, axis=1).astype(jnp.int32)
    return assignment, jnp.take_along_axis(cost, assignment[:, None], axis=1)[:, 0]


def _update(x: jax.Array, assignment: jax.Array, point_cost: jax.Array, k: int, spherical: bool) -> jax.Array:
    """Cluster means; empty clusters re-seeded to the points farthest from their centroids."""
    counts = jnp.zeros(k, jnp.int32).at[assignment].add(1)
    means = jax.ops.segment_sum(x, assignment, k) / jnp.maximum(counts, 1)[:, None].astype(x.dtype)
    if spherical:
        means = l2_normalize(means)
    empty = counts == 0
    farthest = lax.top_k(point_cost, k)[1]
    reseed = x[farthest[jnp.clip(jnp.cumsum(empty) - 1, 0, k - 1)]]
    return jnp.where(empty[:, None], reseed, means)


@functools.partial(jax.jit, static_argnames=("k", "balanced", "spherical"))
def _fit(x: jax.Array, key: jax.Array, num_iters: jax.Array, *, k: int, balanced: bool,
         spherical: bool) -> tuple[jax.Array, jax.Array]:
    def cond(state):
        it, _, _, changed = state
        return (it < num_iters) & changed

    def body(state):
        it, centroids, previous, _ = state
        assignment, point_cost = _assign(x, centroids, balanced)
        centroids = _update(x, assignment, point_cost, k, spherical)
        return it + 1, centroids, assignment, jnp.any(assignment != previous)

    init = (jnp.int32(0), _kmeans_pp(key, x, k), jnp.full(x.shape[0], -1, jnp.int32), jnp.bool_(True))
    _, centroids, _, _ = lax.while_loop(cond, body, init)
    return centroids, _assign(x, centroids, balanced)[0]


def kmeans(x, k: int, *, num_iters: int = 50, seed: int = 0, balanced: bool = False,
           spherical: bool = False) -> tuple[jax.Array, jax.Array]:
    """Fits k-means to ``x [N, D]``; returns float32 centroids ``[k, D]`` and int32 assignment ``[N]``.

    Raises ``ValueError`` when ``N < k``. With ``spherical=True`` the centroids are unit vectors.
    """
    x = jnp.asarray(x, jnp.float32)
    if x.ndim != 2:
        raise ValueError(f"kmeans expects points of shape [N, D], got {x.shape}")
    if k < 1 or num_iters < 0:
        raise ValueError(f"kmeans needs k >= 1 and num_iters >= 0, got k={k}, num_iters={num_iters}")
    if x.shape[0] < k:
        raise ValueError(f"kmeans needs at least k={k} points, got {x.shape[0]}; use a smaller "
                         f"codebook size or more items")
    if spherical:
        x = l2_normalize(x)
    return _fit(x, jax.random.key(seed), jnp.int32(num_iters), k=k, balanced=balanced, spherical=spherical)


@functools.partial(jax.jit, static_argnames=("spherical",))
def nearest_centroid(x, centroids, *, spherical: bool = False) -> jax.Array:
    """Index ``[N]`` of each point's nearest centroid (highest cosine when ``spherical``)."""
    x = jnp.asarray(x, jnp.float32)
    if spherical:
        x = l2_normalize(x)
    return jnp.argmin(squared_distances(x, centroids), axis=1).astype(jnp.int32)
