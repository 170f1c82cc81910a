"""K-means in JAX, the one implementation of every tokenizer: RQ-KMeans levels, the RQ-VAE's
codebook initialisation and Pctx's per-item context clusters.

* Seeding is greedy k-means++ (see ``_kmeans_pp``), deterministic for a given seed.
* Lloyd iterations run in one jitted ``lax.while_loop`` that stops early once assignments stop
  changing; a final assignment step makes the returned assignment match the returned centroids.
* Empty clusters are re-seeded, after each update, to the points farthest from their assigned
  centroids (the i-th empty cluster takes the i-th farthest point).
* ``weights`` (0 or 1 per point) leave zero-weight points out of seeding, means and re-seeding:
  ``kmeans_groups`` pads many small problems to a few shapes that way and solves each shape's
  problems in one vmapped call (Pctx: thousands of items, each its own k-means).
* ``balanced=True`` uses a capacity-constrained greedy assignment: every cluster holds at most
  ``ceil(N / K)`` points; points are visited in decreasing order of regret (cost gap between their
  nearest and second-nearest centroid) and each takes its nearest centroid that still has room.
  Sizes are then at most ``ceil(N / K)`` and, in practice, near-equal. The visit is a sequential
  ``lax.scan`` over points, O(N·K) per iteration.
* ``spherical=True`` normalizes rows and centroids to unit length, so points go to the centroid of
  highest cosine similarity (on the sphere, squared distance is ``2 - 2 cos``).
* ``N < k`` raises ``ValueError`` rather than capping ``k``, which would silently change codebook
  shapes downstream.

The distance matrix is materialized (``N × K`` floats). ``tests/tokenizers/test_kmeans.py`` checks
the Lloyd iterations against a plain NumPy reference.

``kmeans_streamed`` is the same Lloyd iteration for millions of points: seeded by k-means++ on a
sample, each pass scans fixed-size chunks whose points are split over the local devices (a
``data`` mesh axis: assignments in parallel, the per-cluster sums all-reduced by XLA), so only a
chunk's distances exist at a time. With the sample covering every point it returns ``kmeans``'s
result (the test compares them).
"""

from __future__ import annotations

import functools
import logging
import math
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from gr_jax.ops import l2_normalize, squared_distances


def _num_candidates(k: int) -> int:
    """Candidates per k-means++ step for ``k`` centroids (as scikit-learn's greedy k-means++)."""
    return 2 + int(math.log(k))


def _pp_uniforms(key: jax.Array, k: int) -> jax.Array:
    """The uniforms of ``_kmeans_pp`` for ``k`` centroids: ``[k, _num_candidates(k)]``."""
    return jax.random.uniform(key, (k, _num_candidates(k)))


def _kmeans_pp(x: jax.Array, weights: jax.Array, uniforms: jax.Array) -> jax.Array:
    """Greedy k-means++ seeding of ``k = len(uniforms)`` centroids over the points of weight 1.

    Each step draws ``uniforms.shape[1]`` candidate points with probability ∝ squared distance to the
    chosen centroids (inverse-CDF sampling from its row of ``uniforms``) and keeps the candidate that
    lowers the total squared distance most (the first one among equals).
    """
    n, k = x.shape[0], uniforms.shape[0]
    count = jnp.cumsum(weights)
    first = x[jnp.minimum(jnp.searchsorted(count, uniforms[0, 0] * count[-1], side="right"), n - 1)]
    centroids = jnp.zeros((k, x.shape[1]), x.dtype).at[0].set(first)
    dist = jnp.sum((x - first) ** 2, axis=1) * weights

    def body(i, state):
        centroids, dist = state
        cdf = jnp.cumsum(dist)
        candidates = jnp.minimum(jnp.searchsorted(cdf, uniforms[i] * cdf[-1], side="right"), n - 1)
        new_dist = jnp.minimum(dist, squared_distances(x, x[candidates]).T * weights)
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


def _assign(x: jax.Array, centroids: jax.Array, balanced: bool,
            active: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """Assignment ``[N]`` and each point's cost to its assigned centroid ``[N]``; centroids whose
    ``active [K]`` flag is off take no points."""
    cost = squared_distances(x, centroids)
    if active is not None:
        cost = jnp.where(active[None, :], cost, jnp.inf)
    assignment = _balanced_assign(cost) if balanced else jnp.argmin(cost, axis=1).astype(jnp.int32)
    return assignment, jnp.take_along_axis(cost, assignment[:, None], axis=1)[:, 0]


def _update(x: jax.Array, assignment: jax.Array, point_cost: jax.Array, k: int, spherical: bool,
            weights: jax.Array | None = None, active: jax.Array | None = None) -> jax.Array:
    """Weighted cluster means; empty (active) clusters re-seeded to the points farthest from their
    centroids."""
    weights = jnp.ones(x.shape[0], x.dtype) if weights is None else weights
    counts = jax.ops.segment_sum(weights, assignment, k)
    sums = jax.ops.segment_sum(x * weights[:, None], assignment, k)
    return _centroids(sums, counts, x[lax.top_k(point_cost * weights, k)[1]], spherical, active)


def _centroids(sums: jax.Array, counts: jax.Array, farthest: jax.Array, spherical: bool,
               active: jax.Array | None = None) -> jax.Array:
    """Cluster means from per-cluster ``sums`` and ``counts``; the i-th empty cluster (among the
    ``active`` ones) takes the i-th of the ``farthest [k, D]`` points (costliest first)."""
    means = sums / jnp.maximum(counts, 1)[:, None]
    if spherical:
        means = l2_normalize(means)
    empty = counts == 0
    if active is not None:
        empty &= active
    return jnp.where(empty[:, None], farthest[jnp.clip(jnp.cumsum(empty) - 1, 0, len(counts) - 1)], means)


def _fit(x: jax.Array, weights: jax.Array, uniforms: jax.Array, num_iters: jax.Array, active: jax.Array,
         balanced: bool, spherical: bool) -> tuple[jax.Array, jax.Array]:
    """Seeding from ``uniforms [K, C]`` then Lloyd iterations; only the ``active [K]`` centroids
    (a prefix) take points, so one compiled shape serves every k up to K."""
    k = uniforms.shape[0]

    def cond(state):
        it, _, _, changed = state
        return (it < num_iters) & changed

    def body(state):
        it, centroids, previous, _ = state
        assignment, point_cost = _assign(x, centroids, balanced, active)
        centroids = _update(x, assignment, point_cost, k, spherical, weights, active)
        return it + 1, centroids, assignment, jnp.any((assignment != previous) & (weights > 0))

    init = (jnp.int32(0), _kmeans_pp(x, weights, uniforms), jnp.full(x.shape[0], -1, jnp.int32), jnp.bool_(True))
    _, centroids, _, _ = lax.while_loop(cond, body, init)
    return centroids, _assign(x, centroids, balanced, active)[0]


@functools.partial(jax.jit, static_argnames=("k", "balanced", "spherical"))
def _fit_one(x: jax.Array, weights: jax.Array, key: jax.Array, num_iters: jax.Array, k: int, balanced: bool,
             spherical: bool) -> tuple[jax.Array, jax.Array]:
    return _fit(x, weights, _pp_uniforms(key, k), num_iters, jnp.ones(k, bool), balanced, spherical)


_fit_many = jax.jit(jax.vmap(_fit, in_axes=(0, 0, 0, None, 0, None, None)), static_argnums=(5, 6))


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
    return _fit_one(x, jnp.ones(x.shape[0], jnp.float32), jax.random.key(seed), jnp.int32(num_iters), k=k,
                    balanced=balanced, spherical=spherical)


def kmeans_groups(groups: list[np.ndarray], ks: list[int], *, num_iters: int = 50,
                  seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Independent k-means of many small point sets (``groups[i]`` ``[n_i, D]`` with ``ks[i] <= n_i``
    clusters): (centroids ``[k_i, D]``, assignment ``[n_i]``) each.

    Problems are padded to the next power of two of points (zero-weight rows) and to the largest k
    of that size (inactive centroids) and solved in one vmapped call per padded size, so the number
    of compilations grows with the log of the largest group only. Problem ``i`` is seeded by
    ``fold_in(seed, i)`` and gets ``kmeans``'s result for its own k, whatever it is grouped with.
    """
    results: list = [None] * len(groups)
    buckets: dict[int, list[int]] = {}
    for i, (points, k) in enumerate(zip(groups, ks)):
        if not 1 <= k <= len(points):
            raise ValueError(f"group {i}: k={k} clusters for {len(points)} points")
        buckets.setdefault(1 << max(len(points) - 1, 0).bit_length(), []).append(i)
    uniforms = _group_uniforms(jax.random.key(seed), ks)
    for size, members in sorted(buckets.items()):
        top_k = max(ks[i] for i in members)
        x = np.zeros((len(members), size, groups[members[0]].shape[1]), np.float32)
        weights = np.zeros((len(members), size), np.float32)
        draws = np.zeros((len(members), top_k, _num_candidates(top_k)), np.float32)
        for row, i in enumerate(members):
            x[row, :len(groups[i])], weights[row, :len(groups[i])] = groups[i], 1.0
            # candidate columns beyond problem i's own repeat its first (the same point: no effect)
            draws[row, :ks[i]] = np.pad(uniforms[i], ((0, 0), (0, draws.shape[2] - uniforms[i].shape[1])), "edge")
        active = np.arange(top_k)[None, :] < np.asarray([ks[i] for i in members])[:, None]
        centroids, assignment = jax.device_get(_fit_many(x, weights, draws, jnp.int32(num_iters), active, False,
                                                         False))
        for row, i in enumerate(members):
            results[i] = (centroids[row, :ks[i]], assignment[row, :len(groups[i])])
    return results


def _group_uniforms(root: jax.Array, ks: list[int]) -> list[np.ndarray]:
    """Problem ``i``'s k-means++ uniforms, ``_pp_uniforms(fold_in(root, i), ks[i])``, one compiled
    draw per distinct k."""
    uniforms: list = [None] * len(ks)
    for k in sorted(set(ks)):
        members = [i for i, ki in enumerate(ks) if ki == k]
        for i, draw in zip(members, np.asarray(_draw_uniforms(root, jnp.asarray(members), k))):
            uniforms[i] = draw
    return uniforms


@functools.partial(jax.jit, static_argnums=2)
def _draw_uniforms(root: jax.Array, problems: jax.Array, k: int) -> jax.Array:
    return jax.vmap(lambda i: _pp_uniforms(jax.random.fold_in(root, i), k))(problems)


@functools.partial(jax.jit, static_argnames=("k",))
def _streamed_pass(chunks: jax.Array, weights: jax.Array, centroids: jax.Array, previous: jax.Array, k: int):
    """One Lloyd pass over ``chunks [C, S, D]``: assignment ``[C, S]``, per-cluster sums and
    weights, the ``k`` costliest points (empty-cluster seeds, as ``_update`` picks them), the total
    cost and how many assignments differ from ``previous``."""

    def body(carry, chunk):
        sums, counts, far_cost, far_points = carry
        x, w, before = chunk
        assignment, cost = _assign(x, centroids, balanced=False)
        sums = sums + jax.ops.segment_sum(x * w[:, None], assignment, k)
        counts = counts + jax.ops.segment_sum(w, assignment, k)
        # Running top-k by cost; earlier points first among ties, as one top_k over all points.
        top_cost, top = lax.top_k(jnp.concatenate([far_cost, cost * w]), k)
        far_points = jnp.concatenate([far_points, x])[top]
        changed = jnp.sum((assignment != before) & (w > 0))
        return (sums, counts, top_cost, far_points), (assignment, changed, jnp.sum(cost * w))

    dim = chunks.shape[-1]
    init = (jnp.zeros((k, dim)), jnp.zeros(k), jnp.full(k, -jnp.inf), jnp.zeros((k, dim)))
    (sums, counts, _, far_points), (assignment, changed, cost) = lax.scan(body, init, (chunks, weights, previous))
    return assignment, sums, counts, far_points, cost.sum(), changed.sum()


def kmeans_streamed(x, k: int, *, num_iters: int = 50, seed: int = 0, spherical: bool = False,
                    chunk_size: int = 65_536, sample_size: int = 65_536,
                    devices=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """K-means of many points ``x [N, D]`` in chunks over ``devices`` (default: the local ones);
    returns centroids ``[k, D]``, assignment ``[N]`` and cluster sizes ``[k]`` (NumPy).

    Seeding: k-means++ on ``sample_size`` points drawn with ``seed`` (all when N is smaller);
    Lloyd passes as ``kmeans`` (early stop when no assignment changes, empty clusters re-seeded
    to the costliest points), one progress line per pass.
    """
    x = np.asarray(x, np.float32)
    if x.ndim != 2 or k < 1 or num_iters < 0 or len(x) < k:
        raise ValueError(f"kmeans_streamed needs x [N >= k, D], k >= 1 and num_iters >= 0; got x {x.shape}, "
                         f"k={k}, num_iters={num_iters}")
    if spherical:
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    n, dim = x.shape
    devices = list(devices or jax.local_devices())
    size = -(-chunk_size // len(devices)) * len(devices)
    num_chunks = -(-n // size)
    mesh = Mesh(np.asarray(devices), ("data",))
    split = NamedSharding(mesh, PartitionSpec(None, "data"))  # every chunk's points over the devices
    padded = np.zeros((num_chunks * size, dim), np.float32)
    padded[:n] = x
    chunks = jax.device_put(padded.reshape(num_chunks, size, dim), split)
    weights = jax.device_put((np.arange(num_chunks * size) < n).astype(np.float32).reshape(num_chunks, size), split)
    sample = np.arange(n) if n <= sample_size else np.sort(np.random.default_rng(seed).choice(n, sample_size, False))
    centroids = _kmeans_pp(jnp.asarray(x[sample]), jnp.ones(len(sample)), _pp_uniforms(jax.random.key(seed), k))
    assignment = jax.device_put(jnp.full((num_chunks, size), -1, jnp.int32), split)
    for it in range(num_iters):
        tic = time.perf_counter()
        assignment, sums, counts, far_points, cost, changed = _streamed_pass(chunks, weights, centroids, assignment, k)
        centroids = _centroids(sums, counts, far_points, spherical)
        logging.info("k-means pass %d/%d: %d points, cost %.6g, %d assignments changed, %d empty clusters (%.1fs)",
                     it + 1, num_iters, n, float(cost), int(changed), int((counts == 0).sum()),
                     time.perf_counter() - tic)
        if int(changed) == 0:
            break
    assignment, _, counts, _, _, _ = _streamed_pass(chunks, weights, centroids, assignment, k)
    return np.asarray(centroids), np.asarray(assignment).reshape(-1)[:n], np.asarray(counts).astype(np.int64)


@functools.partial(jax.jit, static_argnames=("spherical",))
def nearest_centroid(x, centroids, *, spherical: bool = False) -> jax.Array:
    """Index ``[N]`` of each point's nearest centroid (highest cosine when ``spherical``)."""
    x = jnp.asarray(x, jnp.float32)
    if spherical:
        x = l2_normalize(x)
    return jnp.argmin(squared_distances(x, centroids), axis=1).astype(jnp.int32)
