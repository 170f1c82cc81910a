"""Exact top-k against NumPy, ScaNN recall on clustered vectors, save/load round trip, input errors."""

import json
import logging
import shutil
import sys

import numpy as np
import pytest

from gr_jax.retrieval.exact import exact_topk, topk_recall
from gr_jax.retrieval.scann_config import ScannConfig
from gr_jax.retrieval.scann_index import build_index, load_index, recall_vs_exact


def _unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _clustered(num_items, num_queries, dim=32, clusters=200, sigma=0.15):
    """Items and queries alike: centres ~ N(0, I) normalised, point = centre + sigma * N(0, I), normalised."""
    rng = np.random.default_rng(0)
    centres = _unit(rng.standard_normal((clusters, dim)))
    points = centres[rng.integers(0, clusters, num_items + num_queries)]
    points = _unit(points + sigma * rng.standard_normal(points.shape))
    return points[:num_items], points[num_items:]


@pytest.fixture(scope="module")
def data():
    return _clustered(20_000, 256)


@pytest.fixture(scope="module")
def catalogue(data):
    return data[0]


@pytest.fixture(scope="module")
def queries(data):
    return data[1]


@pytest.fixture(scope="module")
def index(catalogue):
    pytest.importorskip("scann")
    return build_index(catalogue, ScannConfig(recall_sample=200))


def _numpy_topk(queries, vectors, k):
    scores = queries.astype(np.float64) @ vectors.T.astype(np.float64)
    ids = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return ids, np.take_along_axis(scores, ids, axis=1)


# ---------------------------------------------------------------- exact top-k


@pytest.mark.parametrize("chunk_size", [65_536, 300, 7])  # one chunk; last chunk overlapping; chunk < k
def test_exact_topk_equals_numpy_argsort(chunk_size):
    rng = np.random.default_rng(0)
    vectors, queries = rng.standard_normal((1_000, 16)), rng.standard_normal((5, 16))
    ids, scores = exact_topk(queries, vectors, 10, chunk_size=chunk_size)
    want_ids, want_scores = _numpy_topk(queries, vectors, 10)
    assert ids.dtype == np.int32 and ids.shape == (5, 10)
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-5)


def test_topk_recall_counts_overlap_per_query():
    assert topk_recall([[1, 2, 3, 4], [5, 6, 7, 8]], [[4, 3, 9, 9], [5, 6, 7, 8]]) == pytest.approx(0.75)


# ---------------------------------------------------------------- ScaNN


def test_auto_config_scales_with_the_catalogue():
    config = ScannConfig().resolve(1_000_000)
    assert (config.num_leaves, config.num_leaves_to_search, config.training_sample_size, config.reorder_k) == (
        1_000, 50, 250_000, 100)
    assert ScannConfig(k=50, num_leaves=10).resolve(120).reorder_k == 120  # capped at the catalogue


def test_recall_at_10_on_clustered_vectors(index, catalogue, queries):
    assert index.mode == "tree_ah" and index.config.num_leaves == 141 and index.config.num_leaves_to_search == 7
    assert recall_vs_exact(index, queries, catalogue, 10) >= 0.9  # 0.98 with sigma=0.15 (1.0 at 0.1, 0.88 at 0.2)
    ids, scores = index.search(queries[:3])
    assert ids.shape == scores.shape == (3, 10) and ids.dtype == np.int32 and scores.dtype == np.float32
    np.testing.assert_allclose(scores, np.einsum("bd,bkd->bk", queries[:3], catalogue[ids]), atol=1e-5)
    assert (np.diff(scores, axis=1) <= 0).all()
    wide_ids, _ = index.search(queries[:3], k=150)  # beyond reorder_k=100
    assert wide_ids.shape == (3, 150) and all(len(set(row)) == 150 for row in wide_ids)


def test_build_logs_recall(catalogue, caplog):
    pytest.importorskip("scann")
    with caplog.at_level(logging.INFO):
        build_index(catalogue[:2_000], ScannConfig(recall_sample=100))
    assert "brute_force_below=10000" in caplog.text
    assert "recall@10 vs exact on 100 catalogue rows as queries: 1.0000" in caplog.text


def test_small_catalogue_is_brute_force_and_exact(catalogue, queries):
    pytest.importorskip("scann")
    small = build_index(catalogue[:500], ScannConfig(k=5, recall_sample=0))
    ids, scores = small.search(queries)
    want_ids, want_scores = _numpy_topk(queries, catalogue[:500], 5)
    assert small.mode == "brute_force"
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_allclose(scores, want_scores, atol=1e-5)


def test_save_load_round_trip_in_a_moved_folder(index, queries, tmp_path):
    index.save(str(tmp_path / "built"))
    shutil.move(tmp_path / "built", tmp_path / "moved")  # asset paths are relative
    loaded = load_index(str(tmp_path / "moved"))
    header = json.loads((tmp_path / "moved" / "index.json").read_text())
    assert (header["num_items"], header["dim"], header["mode"]) == (20_000, 32, "tree_ah")
    assert loaded.config == index.config and (loaded.num_items, loaded.dim, loaded.mode) == (20_000, 32, "tree_ah")
    for got, want in zip(loaded.search(queries), index.search(queries)):
        np.testing.assert_array_equal(got, want)


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize("vectors, queries, k, message", [
    (np.ones((10, 4)), np.ones((2, 5)), 3, "queries have dim 5 but the item vectors have dim 4"),
    (np.ones((0, 4)), np.ones((2, 4)), 3, "the catalogue is empty"),
    (np.ones((10, 4)), np.ones((2, 4)), 11, r"k=11 must be in \[1, num_items=10\]"),
    (np.ones((10, 4)), np.ones(4), 3, r"queries must be \[batch, dim\]"),
    (np.ones(4), np.ones((2, 4)), 3, r"item vectors must be \[num_items, dim\]"),
])
def test_exact_topk_errors(vectors, queries, k, message):
    with pytest.raises(ValueError, match=message):
        exact_topk(queries, vectors, k)


def test_index_errors(index, catalogue):
    with pytest.raises(ValueError, match="queries have dim 16 but the item vectors have dim 32"):
        index.search(np.ones((2, 16)))
    with pytest.raises(ValueError, match="k=20001 must be in"):
        index.search(catalogue[:2], k=20_001)


def test_build_and_config_errors(catalogue, tmp_path):
    """Checks that run before ScaNN is imported (or without it)."""
    with pytest.raises(ValueError, match="the catalogue is empty"):
        build_index(np.zeros((0, 32)))
    with pytest.raises(ValueError, match="ScannConfig.k=11 exceeds the catalogue size 10"):
        build_index(catalogue[:10], ScannConfig(k=11))
    with pytest.raises(ValueError, match="NaN or inf"):
        build_index(np.full((10, 4), np.nan))
    with pytest.raises(ValueError, match="num_leaves_to_search=20 <= num_leaves=10"):
        ScannConfig(num_leaves=10, num_leaves_to_search=20).resolve(1_000)
    with pytest.raises(ValueError, match="ScannConfig.reorder_k=-1 must be a non-negative int"):
        ScannConfig(reorder_k=-1)
    with pytest.raises(ValueError, match="ScannConfig.reorder_k=5 must be at least k=10"):
        ScannConfig(reorder_k=5)
    with pytest.raises(FileNotFoundError, match="not an index written by Index.save"):
        load_index(str(tmp_path))


def test_missing_scann_names_the_extra(catalogue, monkeypatch):
    monkeypatch.setitem(sys.modules, "scann", None)  # import scann now raises ImportError
    with pytest.raises(ImportError, match=r'pip install -e "\.\[retrieval\]"'):
        build_index(catalogue[:100])
