"""Trie-constrained beam search: exactness against exhaustive scoring, validity, sharding."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec
from toy_data import catalog, history_batch

from configs import tiger as tiger_config
from gr_jax.decoding.beam_search import beam_search, trie_children
from gr_jax.decoding.trie import TrieTables, build_trie
from gr_jax.evaluation.metrics import expand_sid_ranking
from gr_jax.models.tiger import TigerRecommender
from gr_jax.tokenizers.sid_table import SIDTable
from gr_jax.training import sharding

K = 4


def tiger(codes, beam_size, trie="auto"):
    config = tiger_config.model_config()
    config.update(num_user_buckets=10, embed_dim=16, num_encoder_layers=1, num_decoder_layers=2, num_heads=2,
                  head_dim=8, mlp_dim=32, dropout=0.0, beam_size=beam_size, trie=trie)
    return TigerRecommender(config, SIDTable(codes, (K,) * codes.shape[1]))


def exhaustive(model, params, b, row):
    sid_codes = model.codes[model.trie.sid_items[:, 0]]
    single = {k: jnp.repeat(v[row:row + 1], len(sid_codes), axis=0) for k, v in b.items()}
    return np.asarray(model.sequence_log_probs(params, single, sid_codes))


@pytest.mark.parametrize("trie", ["dense", "compact"])
def test_beam_search_equals_exhaustive_scoring_of_every_valid_sid(trie):
    codes = catalog()
    model = tiger(codes, beam_size=len(codes), trie=trie)
    assert model.trie.kind == trie
    b = history_batch(len(codes))
    params = model.init(jax.random.PRNGKey(0), b)
    sids, scores = jax.jit(lambda p, x: model.search(p, model.inputs(x), len(codes)).results())(params, b)
    num_sids = len(model.trie.sid_items)
    for row in range(len(b["user"])):
        reference = exhaustive(model, params, b, row)
        np.testing.assert_array_equal(np.asarray(sids[row, :num_sids]), np.argsort(-reference, kind="stable"))
        np.testing.assert_allclose(np.asarray(scores[row, :num_sids]), np.sort(reference)[::-1], atol=1e-5)
        assert np.all(np.asarray(sids[row, num_sids:]) == -1)  # nothing left to fill the extra beams


def test_narrow_beams_return_only_valid_distinct_sids_even_when_invalid_codes_score_best():
    codes = catalog(seed=1)
    codes[:, 0] %= 2  # first level uses codes {0, 1} only: codes 2 and 3 are invalid there
    codes = np.unique(codes, axis=0)
    trie = build_trie(codes, K)
    assert trie.children[0, 0, 2] < 0 and trie.children[0, 0, 3] < 0

    def step(cache, previous, level):  # loves codes 2 and 3 at every level
        logits = jnp.zeros((2, 5, K)).at[..., 2:].set(10.0)
        return jax.nn.log_softmax(logits + jax.random.normal(jax.random.PRNGKey(level), (2, 5, K))), cache

    children = trie_children(TrieTables.of(trie))
    sids, scores = jax.jit(lambda: beam_search(step, jnp.zeros((2, 5)), children, trie.num_levels, 2, 5).results())()
    sids = np.asarray(sids)
    assert np.all(sids >= 0) and np.all(np.isfinite(scores))
    valid_sids = {tuple(c) for c in codes}
    for row in sids:
        assert len(set(row.tolist())) == len(row)
        for sid in row:  # every returned row decodes to a SID that exists in the catalogue
            assert tuple(codes[trie.sid_items[sid, 0]]) in valid_sids
    assert np.all(np.diff(np.asarray(scores), axis=1) <= 1e-6)


def test_items_sharing_a_sid_are_all_returned_in_rank_order():
    sid_items = jnp.array([[0, 3], [1, -1], [2, -1]])
    items, scores = expand_sid_ranking(jnp.array([[1, 0, -1]]), sid_items, 4, jnp.array([[-0.5, -1.0, -jnp.inf]]))
    np.testing.assert_array_equal(items, [[1, 0, 3, -1]])
    np.testing.assert_allclose(scores[0, :3], [-0.5, -1.0, -1.0])


def test_beam_search_on_a_sharded_mesh_matches_one_device():
    codes = catalog(seed=2)
    model = tiger(codes, beam_size=8)
    b = history_batch(len(codes), size=8, seed=3)
    params = model.init(jax.random.PRNGKey(1), b)
    single = np.asarray(jax.jit(lambda p, x: model.topk(p, x, 10))(params, b))
    mesh = sharding.make_mesh(ml_collections.ConfigDict({"data": 4, "model": 2}))
    assert mesh.devices.size == 8
    with jax.set_mesh(mesh):
        data = NamedSharding(mesh, PartitionSpec("data"))
        sharded = jax.jit(lambda p, x: model.topk(p, x, 10), in_shardings=(None, data))(params, b)
        assert len(sharded.sharding.device_set) > 1 or sharded.is_fully_replicated
    np.testing.assert_array_equal(np.asarray(sharded), single)


def test_decoding_temperatures_rescale_each_level_by_the_prefix_child_count():
    # A full-width beam is exhaustive, so every valid SID's score must equal the sum over levels of
    # log_softmax(logits / tau[level, children of its prefix]) at its code (PRISM's ATS at decoding,
    # passed to the beam search as one temperature per prefix).
    codes = np.unique(catalog(seed=2), axis=0)
    trie = build_trie(codes, K)
    num_levels = codes.shape[1]
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(num_levels, K + 1, K)).astype(np.float32)  # [level, previous code + 1, code]
    tau = rng.uniform(0.2, 2.0, size=(num_levels, K + 1)).astype(np.float32)
    per_prefix = np.take_along_axis(tau, trie.num_children(), axis=1)  # [L, max_prefixes]

    def step(cache, previous, level):
        return jax.nn.log_softmax(jnp.asarray(logits)[level][previous + 1], -1), cache

    width, constraint = len(codes), trie_children(TrieTables.of(trie))
    sids, scores = jax.jit(lambda: beam_search(step, jnp.zeros((1, width)), constraint, num_levels, 1, width,
                                               temperatures=jnp.asarray(per_prefix)).results())()
    reference = {}
    for sid_row, items in enumerate(trie.sid_items):
        path, prefix, previous, total = codes[items[0]], 0, -1, 0.0
        for level, code in enumerate(path):
            children = int((trie.children[level, prefix] >= 0).sum())
            scaled = logits[level, previous + 1] / tau[level, children]
            total += scaled[code] - np.log(np.exp(scaled - scaled.max()).sum()) - scaled.max()
            prefix, previous = trie.children[level, prefix, code], code
        reference[sid_row] = total
    got = dict(zip(np.asarray(sids[0]).tolist(), np.asarray(scores[0]).tolist()))
    assert set(got) == set(reference)
    for sid_row, value in reference.items():
        assert abs(got[sid_row] - value) < 1e-4
    plain = jax.jit(lambda: beam_search(step, jnp.zeros((1, width)), constraint, num_levels, 1, width).results())()[1]
    assert not np.allclose(np.sort(np.asarray(plain[0])), np.sort(np.asarray(scores[0])))  # tau mattered


def test_compact_and_dense_tries_give_the_same_beams():
    rng = np.random.default_rng(4)
    codes = rng.integers(0, 16, (300, 3))
    codes = np.concatenate([codes, codes[:20]])  # collisions (and, to the trie, multi-SID items alike)
    tries = [build_trie(codes, 16, kind) for kind in ("dense", "compact")]
    logits = jnp.asarray(rng.normal(size=(3, 17, 16)), jnp.float32)  # [level, previous code + 1, code]

    def step(cache, previous, level):
        return jax.nn.log_softmax(logits[level][previous + 1] + cache[..., None], -1), cache

    def search(tables):  # the tables as a jit argument, as a large catalogue's would be
        return beam_search(step, jnp.zeros((2, 7)), trie_children(tables), 3, 2, 7).results()

    dense, compact = (jax.jit(search)(TrieTables.of(t)) for t in tries)
    np.testing.assert_array_equal(np.asarray(compact[0]), np.asarray(dense[0]))
    np.testing.assert_allclose(np.asarray(compact[1]), np.asarray(dense[1]), atol=1e-5)
