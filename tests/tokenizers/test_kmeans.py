"""The one k-means: Lloyd iterations against a plain NumPy reference, grouped (padded, vmapped)
problems against single ones, balanced sizes, spherical centroids, empty clusters, N < k."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gr_jax.tokenizers import kmeans as kmeans_module
from gr_jax.tokenizers.kmeans import _fit_one, _update, kmeans, kmeans_groups, kmeans_streamed, nearest_centroid


def lloyd_reference(x: np.ndarray, centroids: np.ndarray, max_iters: int) -> tuple[np.ndarray, np.ndarray]:
    """Plain NumPy Lloyd from given centroids: nearest centroid, means, an empty cluster re-seeded to
    the point farthest from its centroid; stops when the assignment stops changing."""
    x, centroids = x.astype(np.float64), centroids.astype(np.float64)
    previous = None
    for _ in range(max_iters):
        cost = ((x[:, None] - centroids[None]) ** 2).sum(-1)
        assignment = cost.argmin(1)
        if previous is not None and (assignment == previous).all():
            break
        counts = np.bincount(assignment, minlength=len(centroids))
        farthest = np.argsort(-cost[np.arange(len(x)), assignment], kind="stable")
        means = np.stack([x[assignment == c].mean(0) if counts[c] else x[farthest[(counts[:c] == 0).sum()]]
                          for c in range(len(centroids))])
        centroids, previous = means, assignment
    return centroids, ((x[:, None] - centroids[None]) ** 2).sum(-1).argmin(1)


def _blobs(num_centres: int, n_per: int, seed: int = 0) -> np.ndarray:
    """Gaussian blobs in 16-d (shapes match the RQ tests so jit compilations are shared)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(num_centres, 16)) * 5
    return (np.repeat(centres, n_per, axis=0) + rng.normal(size=(num_centres * n_per, 16))).astype(np.float32)


def test_recovers_separated_blobs_and_is_deterministic():
    x = _blobs(4, 256)
    centroids, assignment = kmeans(x, 4, seed=3, num_iters=30)
    assert centroids.shape == (4, 16) and assignment.dtype == jnp.int32
    assert np.all(np.bincount(np.asarray(assignment), minlength=4) == 256)
    np.testing.assert_array_equal(assignment, nearest_centroid(x, centroids))
    again = kmeans(x, 4, seed=3, num_iters=30)
    np.testing.assert_array_equal(centroids, again[0])
    np.testing.assert_array_equal(assignment, again[1])


def test_lloyd_iterations_equal_the_numpy_reference_from_the_same_seeds():
    rng = np.random.default_rng(4)
    x = (rng.normal(size=(300, 16)) + np.repeat(rng.normal(size=(6, 16)), 50, axis=0)).astype(np.float32)  # overlapping
    seeds, _ = kmeans(x, 6, seed=5, num_iters=0)  # the k-means++ seeding alone
    centroids, assignment = kmeans(x, 6, seed=5, num_iters=100)
    reference, reference_assignment = lloyd_reference(x, np.asarray(seeds), 100)
    np.testing.assert_array_equal(assignment, reference_assignment)
    np.testing.assert_allclose(centroids, reference, atol=1e-4)
    assert not np.allclose(np.asarray(seeds), reference, atol=1e-2)  # the iterations moved the centroids


def test_grouped_problems_equal_each_problem_solved_alone():
    rng = np.random.default_rng(2)
    groups = [rng.normal(size=(n, 16)).astype(np.float32) + 3 * rng.normal(size=16) for n in (5, 9, 12, 3, 16, 14, 7)]
    ks = [2, 3, 3, 3, 4, 1, 5]
    compiled = kmeans_module._fit_many._cache_size()
    grouped = kmeans_groups(groups, ks, num_iters=20, seed=7)
    assert kmeans_module._fit_many._cache_size() - compiled <= 3  # one shape per padded size (4, 8, 16), whatever the k
    root = jax.random.key(7)
    for i, (x, k) in enumerate(zip(groups, ks)):
        alone = _fit_one(x, jnp.ones(len(x)), jax.random.fold_in(root, i), jnp.int32(20), k=k, balanced=False,
                         spherical=False)
        np.testing.assert_allclose(grouped[i][0], alone[0], atol=1e-5)
        np.testing.assert_array_equal(grouped[i][1], alone[1])
        assert grouped[i][0].shape == (k, 16) and grouped[i][1].shape == (len(x),)
    with pytest.raises(ValueError, match="k=4 clusters for 3 points"):
        kmeans_groups([groups[3]], [4])


def test_balanced_assignment_gives_near_equal_sizes():
    rng = np.random.default_rng(1)
    # Skewed data: most points in one dense blob, so plain k-means would be unbalanced.
    x = np.concatenate([rng.normal(size=(200, 16)) * 0.1, rng.normal(size=(56, 16)) * 5]).astype(np.float32)
    plain = np.bincount(np.asarray(kmeans(x, 16, num_iters=10)[1]), minlength=16)
    balanced = np.bincount(np.asarray(kmeans(x, 16, balanced=True, num_iters=10)[1]), minlength=16)
    assert plain.max() > 20
    np.testing.assert_array_equal(balanced, 16)


def test_spherical_centroids_are_unit_vectors():
    centroids, _ = kmeans(_blobs(8, 64), 8, spherical=True, num_iters=20)
    np.testing.assert_allclose(np.linalg.norm(centroids, axis=1), 1.0, atol=1e-5)


def test_empty_cluster_is_reseeded_to_farthest_point():
    x = jnp.asarray([[0.0], [1.0], [10.0]])
    assignment = jnp.zeros(3, jnp.int32)  # cluster 1 empty
    centroids = _update(x, assignment, jnp.asarray([0.0, 1.0, 100.0]), 2, False)
    np.testing.assert_allclose(centroids, [[11 / 3], [10.0]], rtol=1e-6)


def test_fewer_points_than_clusters_is_an_error():
    with pytest.raises(ValueError, match="at least k=8 points, got 5"):
        kmeans(np.zeros((5, 3)), 8)


def test_streamed_kmeans_over_8_devices_equals_in_memory_kmeans():
    rng = np.random.default_rng(3)
    x = np.concatenate([rng.normal(c, 0.3, (250, 6)) for c in rng.normal(0, 3, (12, 6))]).astype(np.float32)
    centroids, assignment = map(np.asarray, kmeans(x, 16, num_iters=30, seed=1))
    for devices in (jax.local_devices()[:1], jax.local_devices()):  # 1 device, then the 8 simulated ones
        got_centroids, got, sizes = kmeans_streamed(x, 16, num_iters=30, seed=1, chunk_size=512, devices=devices)
        np.testing.assert_array_equal(got, assignment)
        np.testing.assert_allclose(got_centroids, centroids, atol=1e-5)
        np.testing.assert_array_equal(sizes, np.bincount(assignment, minlength=16))
    assert len(jax.local_devices()) == 8

