"""CRBR: Gumbel straight-through and temperature schedule, beam search = exhaustive enumeration at
full width (greedy at width 1), merged retrieval by max score per item, load balance, code usage,
and training reducing the losses."""

import functools
import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gr_jax.models.crbr import (
    CRBR,
    alignment_loss,
    crbr_loss,
    gumbel_softmax,
    gumbel_temperature,
    load_balance_loss,
    route_beams,
)
from gr_jax.retrieval.exact import exact_topk
from gr_jax.retrieval.multi_query import recall, retrieve
from gr_jax.tokenizers.health import compute_health

EMBED, ITEM = 8, 6


@functools.lru_cache
def setup(sizes=(3, 3, 3)):
    """A tiny CRBR, query states [4, 5, EMBED] and its parameters (random pooling weights, so the
    path-dependent pooling is exercised)."""
    module = CRBR(codebook_sizes=sizes, embed_dim=EMBED, item_dim=ITEM, mlp_dim=16)
    q = jax.random.normal(jax.random.PRNGKey(1), (4, 5, EMBED))
    params = nn.meta.unbox(jax.jit(module.init)(jax.random.PRNGKey(0), q, jax.random.PRNGKey(2), 1.0)["params"])
    rng = np.random.default_rng(0)
    for name in ("base_query", "pool_query", "pool_proj"):
        params[name] = jnp.asarray(rng.normal(size=params[name].shape), jnp.float32)
    return module, params, q


@functools.lru_cache
def jitted(module, method):
    return jax.jit(functools.partial(module.apply, method=method))


def base(module, params, q):
    return jitted(module, CRBR.base)({"params": params}, q)


def log_probs(module, params, q, v, layer):
    return jitted(module, CRBR.log_probs)({"params": params}, q, v, layer)  # layer traced: one compile


def test_gumbel_straight_through_is_one_hot_with_the_soft_gradient():
    logits = jax.random.normal(jax.random.PRNGKey(0), (6, 5))
    cotangent = jax.random.normal(jax.random.PRNGKey(2), logits.shape)

    @functools.partial(jax.jit, static_argnums=0)
    def sample_and_pull_back(hard: bool):
        sample, vjp = jax.vjp(lambda z: gumbel_softmax(jax.random.PRNGKey(1), z, 0.5, hard), logits)
        return sample, vjp(cotangent)[0]

    (hard, hard_grad), (soft, soft_grad) = sample_and_pull_back(True), sample_and_pull_back(False)
    np.testing.assert_array_equal(hard, np.eye(5)[np.argmax(soft, -1)])
    np.testing.assert_allclose(soft.sum(-1), 1.0, rtol=1e-6)
    assert float(soft.max(-1).min()) < 1.0  # really soft
    np.testing.assert_allclose(hard_grad, soft_grad, rtol=1e-6, atol=1e-7)


def test_temperature_schedule_is_monotone_and_clipped():
    steps = jnp.arange(0, 50_000, 500)
    tau = np.asarray(gumbel_temperature(steps, initial=2.0, minimum=0.3, rate=1e-4))
    assert tau[0] == pytest.approx(2.0) and np.all(np.diff(tau) <= 0)
    assert tau.min() == pytest.approx(0.3) and (tau == np.float32(0.3)).sum() > 10
    assert float(gumbel_temperature(1000, 1.0, 0.1, 1e-3)) == pytest.approx(np.exp(-1.0), rel=1e-6)
    with pytest.raises(ValueError, match="minimum"):
        gumbel_temperature(0, initial=0.1, minimum=0.5)


@functools.lru_cache
def exhaustive(sizes=(3, 3, 3)):
    """Every path of ``setup(sizes)`` by direct enumeration: paths ``[P, L]``, each layer's
    log-probability of the path's code ``[B, P, L]`` and the unit queries ``[B, P, E]``."""
    module, params, q = setup(sizes)
    paths = np.array(list(itertools.product(*map(range, sizes))))
    v = jnp.broadcast_to(base(module, params, q)[:, None], (q.shape[0], len(paths), ITEM))
    layer_scores = []
    for layer in range(len(sizes)):
        layer_scores.append(log_probs(module, params, q, v, layer)[:, np.arange(len(paths)), paths[:, layer]])
        v = v + params[f"codebook_{layer}"][paths[:, layer]]
    return paths, np.stack(layer_scores, -1), np.asarray(v / jnp.linalg.norm(v, axis=-1, keepdims=True))


def path_index(paths, codes):
    """Rows of ``paths`` of each code tuple in ``codes [W, L]``."""
    index = {tuple(p): i for i, p in enumerate(paths)}
    return [index[tuple(c)] for c in codes]


@pytest.mark.parametrize("sizes", [(3, 3, 3), (2, 4, 3)])
def test_full_width_beam_equals_exhaustive_enumeration(sizes):
    module, params, q = setup(sizes)
    paths, layer_scores, queries = exhaustive(sizes)
    scores, width = layer_scores.sum(-1), len(paths)
    beam_queries, beam_scores, beam_codes = map(np.asarray, route_beams(module, params, q, width))
    assert beam_codes.shape == (q.shape[0], width, len(sizes)) and beam_queries.shape == (q.shape[0], width, ITEM)
    assert np.all(np.diff(beam_scores, axis=1) <= 0)  # best first
    np.testing.assert_allclose(np.exp(scores).sum(1), 1.0, rtol=1e-5)  # the paths' distribution
    for user in range(q.shape[0]):
        found = path_index(paths, beam_codes[user])
        assert sorted(found) == list(range(width))  # every path once
        np.testing.assert_allclose(beam_scores[user], scores[user, found], atol=1e-5)
        np.testing.assert_allclose(beam_queries[user], queries[user, found], atol=1e-5)
        np.testing.assert_allclose(beam_scores[user], np.sort(scores[user])[::-1], atol=1e-5)
    with pytest.raises(ValueError, match="beam_size"):
        route_beams(module, params, q, width + 1)


def test_narrow_beams_are_sorted_and_width_one_is_greedy():
    module, params, q = setup()
    paths, layer_scores, queries = exhaustive()
    beam_queries, beam_scores, beam_codes = map(np.asarray, route_beams(module, params, q, 4))
    assert np.all(np.diff(beam_scores, axis=1) <= 0)
    for user in range(q.shape[0]):
        found = path_index(paths, beam_codes[user])
        assert len(set(found)) == 4  # distinct paths, each with its own score and query
        np.testing.assert_allclose(beam_scores[user], layer_scores[user, found].sum(-1), atol=1e-5)
        np.testing.assert_allclose(beam_queries[user], queries[user, found], atol=1e-5)
    _, greedy_scores, greedy_codes = map(np.asarray, route_beams(module, params, q, 1))
    for user in range(q.shape[0]):
        candidates = np.arange(len(paths))
        for layer in range(3):  # keep the paths through the best code given the prefix kept so far
            best = candidates[np.argmax(layer_scores[user, candidates, layer])]
            candidates = candidates[paths[candidates, layer] == paths[best, layer]]
        np.testing.assert_array_equal(greedy_codes[user, 0], paths[candidates[0]])
        np.testing.assert_allclose(greedy_scores[user, 0], layer_scores[user, candidates[0]].sum(), atol=1e-5)


def test_retrieve_merges_paths_by_max_score_per_item():
    # Row r of the queries is answered by table[r]: 2 users x 2 paths, k = 3.
    ids = np.array([[3, 1, 2], [1, 5, 3],  # user 0: items 1 and 3 found by both paths
                    [7, 8, 9], [9, 8, 7]])  # user 1: both paths find the same items
    scores = np.array([[0.9, 0.5, 0.4], [0.8, 0.7, 0.3],
                       [0.6, 0.5, 0.1], [0.65, 0.2, 0.15]], np.float32)

    def search(queries, k):
        rows = queries[:, 0].astype(int)
        return ids[rows, :k], scores[rows, :k]

    result = retrieve(np.arange(4, dtype=np.float32).reshape(2, 2, 1), search, k=3)
    np.testing.assert_array_equal(result.ids, [[3, 1, 5], [9, 7, 8]])
    np.testing.assert_allclose(result.scores, [[0.9, 0.8, 0.7], [0.65, 0.6, 0.5]])
    np.testing.assert_array_equal(result.path_ids, ids.reshape(2, 2, 3))
    targets = np.array([5, 7])
    assert recall(result.ids, targets) == 1.0
    np.testing.assert_allclose(recall(result.path_ids, targets), [0.5, 1.0])  # path 0 misses item 5


def test_retrieve_with_exact_topk_on_beam_queries():
    module, params, q = setup()
    items = jax.random.normal(jax.random.PRNGKey(3), (40, ITEM))
    queries, _, _ = route_beams(module, params, q, 5)
    result = retrieve(queries, functools.partial(exact_topk, vectors=items), k=10)
    assert result.ids.shape == (4, 10) and result.path_ids.shape == (4, 5, 10)
    for user in range(4):
        assert len(set(np.asarray(result.ids[user]).tolist())) == 10
        best = (np.asarray(queries[user]) @ np.asarray(items).T).max(0)  # max over paths per item
        np.testing.assert_array_equal(result.ids[user], np.argsort(-best, kind="stable")[:10])
        np.testing.assert_allclose(result.scores[user], np.sort(best)[::-1][:10], rtol=1e-5)


def test_load_balance_is_minimal_for_uniform_use():
    uniform = jnp.full((6, 1, 4), 0.25)
    assert float(load_balance_loss(uniform)) == pytest.approx(-np.log(4), rel=1e-6)
    skewed = jnp.tile(jnp.array([0.7, 0.1, 0.1, 0.1]), (6, 1, 1))
    assert float(load_balance_loss(skewed)) > -np.log(4) + 0.1
    # Per-user one-hot routing that is uniform over the batch is balanced too; padded codes (0) count 0.
    one_hot = jnp.concatenate([jax.nn.one_hot(jnp.arange(8) % 4, 6)[:, None]] * 2, 1)
    assert float(load_balance_loss(one_hot)) == pytest.approx(-2 * np.log(4), rel=1e-6)
    grad = jax.grad(load_balance_loss)(jnp.pad(skewed, ((0, 0), (0, 0), (0, 2))))
    assert np.all(np.isfinite(grad))


def code_usage(codes, sizes):
    """Per-layer usage and perplexity of routing codes ``[..., L]`` through the tokenizers' health report."""
    levels = compute_health(np.asarray(codes).reshape(-1, len(sizes)), sizes).levels
    return {"usage": np.array([lv.usage for lv in levels]), "perplexity": np.array([lv.perplexity for lv in levels])}


def test_code_usage():
    codes = np.array([[0, 1], [1, 1], [2, 1], [0, 1]])
    report = code_usage(codes, (4, 2))
    np.testing.assert_allclose(report["usage"], [0.75, 0.5])
    p = np.array([0.5, 0.25, 0.25])
    np.testing.assert_allclose(report["perplexity"], [np.exp(-(p * np.log(p)).sum()), 1.0])
    assert code_usage(codes[None], (4, 2))["usage"].shape == (2,)  # any leading axes
    with pytest.raises(ValueError, match=r"codes must lie in \[0, codebook_size\)"):
        code_usage(codes, (2, 2))
    module, params, q = setup()
    _, _, beam_codes = route_beams(module, params, q, 5)  # [B, W, L] CRBR codes
    report = code_usage(beam_codes, module.codebook_sizes)
    assert report["usage"].shape == (3,) and np.all((report["usage"] > 0) & (report["usage"] <= 1))
    assert np.all((report["perplexity"] >= 1) & (report["perplexity"] <= np.asarray(module.codebook_sizes)))


def test_training_reduces_the_losses():
    module, params, q = setup()
    q = jax.random.normal(jax.random.PRNGKey(4), (16, 5, EMBED))
    positives = jnp.einsum("bmd,de->be", q[:, :2], jax.random.normal(jax.random.PRNGKey(5), (EMBED, ITEM)))
    optimizer = optax.adam(1e-2)

    def loss_fn(params, rng):
        return crbr_loss(module.apply({"params": params}, q, rng, 1.0, True), positives, jnp.arange(len(positives)))

    @jax.jit
    def train_step(params, opt_state, rng):
        (loss, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, rng)
        updates, opt_state = optimizer.update(grads, opt_state)
        return optax.apply_updates(params, updates), opt_state, loss, terms

    opt_state = optimizer.init(params)
    rngs = [jax.random.PRNGKey(9)] + [jax.random.PRNGKey(100 + step) for step in range(40)] + [jax.random.PRNGKey(9)]
    losses = []
    for rng in rngs:  # the first and last losses see the same Gumbel noise
        params, opt_state, loss, terms = train_step(params, opt_state, rng)
        losses.append((loss, terms))
    (before, before_terms), (after, after_terms) = losses[0], losses[-1]
    assert all(np.isfinite(float(x)) for x in (before, after, *after_terms.values()))
    assert float(after) < 0.5 * float(before), (before, after)
    assert float(after_terms["info_nce_loss"]) < float(before_terms["info_nce_loss"])
    assert float(after_terms["alignment_loss"]) < float(before_terms["alignment_loss"])


def test_recommender_anneals_the_gumbel_temperature_with_the_step():
    from configs import crbr as crbr_config
    from gr_jax.models.crbr_recommender import CRBRRecommender
    from gr_jax.stages.features import Features

    config = crbr_config.get_config("tiny").model
    config.update(gumbel_temperature=1.0, gumbel_temperature_min=0.5, gumbel_decay_rate=1e-3, item_features="text")
    rng = np.random.default_rng(0)
    model = CRBRRecommender(config, Features(text=rng.normal(size=(20, 8)).astype(np.float32)))
    taus = [float(model.temperature(step)) for step in (0, 100, 693, 5000)]
    np.testing.assert_allclose(taus, [1.0, np.exp(-0.1), 0.5, 0.5], rtol=1e-3)  # exp(-0.693) = 0.5: the floor
    batch = {"history": rng.integers(0, 20, (4, 5)).astype(np.int32), "history_mask": np.ones((4, 5), bool),
             "target": np.arange(4, dtype=np.int32)}
    params = jax.jit(lambda r, b: nn.meta.unbox(model.init(r, b)))(jax.random.PRNGKey(0), batch)
    _, metrics = jax.jit(model.loss)(params, batch, jax.random.PRNGKey(1), 100)
    assert float(metrics["gumbel_temperature"]) == pytest.approx(np.exp(-0.1), rel=1e-5)


def test_alignment_of_every_partial_state_or_only_the_last():
    positive = np.array([[3.0, 4.0]])  # unit: (0.6, 0.8)
    states = jnp.asarray([[[0.0, 0.0], [0.6, 0.8]]])  # v_1 at the origin, v_2 on the positive
    assert float(alignment_loss(states, positive, "last")) == pytest.approx(0.0, abs=1e-7)
    assert float(alignment_loss(states, positive, "every")) == pytest.approx(1.0, rel=1e-6)  # |0 - unit|^2
    with pytest.raises(ValueError, match="model.alignment_layers"):
        alignment_loss(states, positive, "first")
