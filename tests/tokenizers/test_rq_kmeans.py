"""Tests for residual k-means: planted hierarchy recovery, tangent residuals, determinism, encoding."""

import dataclasses

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from gr_jax.tokenizers.collisions import reassign_last_level
from gr_jax.tokenizers.rq_kmeans import RQKMeansConfig, fit_rq_kmeans

PLANTED = RQKMeansConfig(num_levels=3, codebook_size=4, normalize_input=False, num_iters=30)


def _planted(seed: int = 0, n: int = 1024, dim: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Vectors ``A[a] + B[b] + C[c] + noise``: 4×4×4 planted centres, random directions of norm 16, 4, 1."""
    rng = np.random.default_rng(seed)
    directions = rng.normal(size=(3, 4, dim))
    books = [scale * d / np.linalg.norm(d, axis=1, keepdims=True) for scale, d in zip((16.0, 4.0, 1.0), directions)]
    labels = rng.integers(0, 4, size=(n, 3))
    x = sum(book[labels[:, l]] for l, book in enumerate(books)) + 0.05 * rng.normal(size=(n, dim))
    return x.astype(np.float32), labels


def _agreement(true: np.ndarray, found: np.ndarray, k: int) -> float:
    """Fraction of items whose code matches the planted label under the best code permutation."""
    confusion = np.zeros((k, k))
    np.add.at(confusion, (true, found), 1)
    rows, cols = linear_sum_assignment(-confusion)
    return confusion[rows, cols].sum() / len(true)


@pytest.fixture(scope="module")
def planted():
    x, labels = _planted()
    return x, labels, fit_rq_kmeans(x, PLANTED)


def test_recovers_planted_hierarchy(planted):
    x, labels, result = planted
    assert result.codes.shape == (1024, 3) and result.codes.dtype == np.int32
    assert result.codebooks.shape == (3, 4, 16)
    for level in range(3):
        assert _agreement(labels[:, level], result.codes[:, level], 4) >= 0.95
    assert np.all(np.diff(result.residual_energy) < 0)
    assert result.recon_error < 0.01
    np.testing.assert_allclose(result.recon_error, result.residual_energy[-1] / result.residual_energy[0], rtol=1e-4)


def test_encode_matches_fitted_codes(planted):
    x, _, result = planted
    np.testing.assert_array_equal(result.encode(x), result.codes)
    np.testing.assert_array_equal(result.encode(x[:5] * 1.0001), result.codes[:5])


def test_fixed_seed_is_deterministic_and_streamed_levels_give_the_same_codes(planted):
    x, _, result = planted
    again = fit_rq_kmeans(x, PLANTED)
    np.testing.assert_array_equal(again.codes, result.codes)
    np.testing.assert_array_equal(again.codebooks, result.codebooks)
    streamed = fit_rq_kmeans(x, dataclasses.replace(PLANTED, chunk_size=256))  # 4 chunks over the 8 devices
    np.testing.assert_array_equal(streamed.codes, result.codes)
    np.testing.assert_allclose(streamed.codebooks, result.codebooks, atol=1e-4)
    with pytest.raises(ValueError, match="chunk_size=0"):
        dataclasses.replace(PLANTED, chunk_size=256, balanced=True)


def test_tangent_residuals_are_orthogonal_to_their_centroid():
    x, _ = _planted(seed=1, n=512)
    result = fit_rq_kmeans(x, RQKMeansConfig(num_levels=3, codebook_size=8, residual="tangent", num_iters=20))
    np.testing.assert_allclose(np.linalg.norm(result.codebooks, axis=2), 1.0, atol=1e-5)
    residuals = result.residuals(x, result.codes)
    for level in range(3):
        centroid = result.codebooks[level][result.codes[:, level]]
        assert np.abs(np.sum(residuals[level + 1] * centroid, axis=1)).max() < 1e-5
    assert np.all(np.diff(result.residual_energy) < 0)
    np.testing.assert_allclose(residuals[0], x / np.linalg.norm(x, axis=1, keepdims=True), atol=1e-6)
    exact = result.reconstruct(result.codes, result.scales) + residuals[-1]
    np.testing.assert_allclose(exact, residuals[0], atol=1e-5)


def test_last_level_reassignment_on_fitted_codes():
    x, _ = _planted(seed=2, n=256)
    config = RQKMeansConfig(num_levels=2, codebook_size=16, balanced=True, num_iters=10)
    result = fit_rq_kmeans(x, config)
    codes = reassign_last_level(result.codes, result.last_level_costs(x))
    assert len(np.unique(codes, axis=0)) == 256
    np.testing.assert_array_equal(codes[:, 0], result.codes[:, 0])


def test_bad_config_is_rejected():
    with pytest.raises(ValueError, match="residual=.cosine.; expected one of euclidean, tangent"):
        RQKMeansConfig(residual="cosine")
