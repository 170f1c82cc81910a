"""Tests for JAX k-means: balanced sizes, spherical centroids, empty clusters, seeding, N < k."""

import jax.numpy as jnp
import numpy as np
import pytest

from gr_jax.tokenizers.kmeans import _update, kmeans, nearest_centroid


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
