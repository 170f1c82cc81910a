"""End-to-end latent tokenization: §5.4.1's residual targets, the margin loss, the straight-through
one-hot forward, codebooks shared by the user and item towers, trie-constrained beam search over
item codes = exhaustive scoring on a tiny codebook, and a :tiny pipeline through eval."""

import functools
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import latent as latent_config
from gr_jax import stages
from gr_jax.decoding.trie import leaf_members, prefix_keys
from gr_jax.models import latent
from gr_jax.models.latent import LatentRouter
from gr_jax.ops import l2_normalize

EMBED, ITEM, K, LEVELS = 8, 6, 3, 3


@functools.lru_cache
def setup():
    """A tiny router, user states [4, 5, EMBED], its params and 15 unit item vectors."""
    router = LatentRouter(num_levels=LEVELS, codebook_size=K, embed_dim=EMBED, item_dim=ITEM, mlp_dim=16,
                          num_heads=2, block_mlp_dim=16)
    states = jax.random.normal(jax.random.PRNGKey(1), (4, 5, EMBED))
    params = nn.meta.unbox(jax.jit(router.init)(jax.random.PRNGKey(0), states, jax.random.PRNGKey(2), 1.0)["params"])
    items = l2_normalize(jax.random.normal(jax.random.PRNGKey(3), (15, ITEM)))
    return router, params, states, items


@functools.lru_cache
def jitted(method):
    return jax.jit(functools.partial(setup()[0].apply, method=method))


def apply(method, *args):
    return jitted(method)({"params": setup()[1]}, *args)


def test_residual_targets_are_the_design_docs():
    y = jax.random.normal(jax.random.PRNGKey(0), (2, 4))
    q = jax.random.normal(jax.random.PRNGKey(1), (2, 3, 4))
    targets = latent.residual_targets(y, q)
    expected = np.stack([y, y - q[:, 0], y - q[:, 0] - q[:, 1]], 1)  # y, r_1 = y - ŷ_1, r_2 = r_1 - ŷ_2
    np.testing.assert_allclose(targets, expected, rtol=1e-6, atol=1e-6)
    # The earlier predictions enter as stop-gradients: each q_l is trained by its own level's term only.
    grad = jax.grad(lambda q: jnp.sum((q - latent.residual_targets(y, q)) ** 2))(q)
    np.testing.assert_allclose(grad, 2 * (q - expected), rtol=1e-5, atol=1e-6)
    # The error after k levels, k = 0..L.
    errors = latent.depth_errors(y, q)
    np.testing.assert_allclose(errors[:, 1:], np.sum((expected - q) ** 2, -1), rtol=1e-5)
    np.testing.assert_allclose(errors[:, 0], np.sum(np.asarray(y) ** 2, -1), rtol=1e-6)


def test_margin_loss_is_zero_when_each_level_improves_by_delta():
    delta = 0.25  # values exact in binary: no rounding at the margin
    improving = jnp.array([[1.0, 0.75, 0.5], [1.0, 0.5, 0.0]])  # every level lowers the error by >= δ
    assert float(latent.margin_loss(improving, delta)) == 0.0
    # Row 0: level 2 gains only 0.125 (0.125 short), level 3 is worse by 0.125 (0.375 short).
    lagging = jnp.array([[1.0, 0.875, 1.0], [1.0, 0.5, 0.0]])
    assert float(latent.margin_loss(lagging, delta)) == pytest.approx((0.125 + 0.375) / 2)
    grad = jax.grad(lambda e: latent.margin_loss(e, delta))(lagging)
    np.testing.assert_allclose(grad, [[-0.5, 0.0, 0.5], [0.0, 0.0, 0.0]])  # only unmet margins push


def test_straight_through_forward_is_one_hot_and_the_gradient_soft():
    router, params, states, _ = setup()

    def chosen(params, rng, hard):
        return router.apply({"params": params}, states, rng, 0.5, hard)

    out = jax.jit(chosen, static_argnums=2)(params, jax.random.PRNGKey(4), True)
    codebooks = params["codebooks"]
    for level in range(LEVELS):  # exactly the chosen codebook rows: a one-hot selection
        np.testing.assert_array_equal(out["q"][:, level], codebooks[level][out["codes"][:, level]])
    np.testing.assert_allclose(np.linalg.norm(out["user"], axis=-1), 1.0, rtol=1e-5)
    soft = jax.jit(chosen, static_argnums=2)(params, jax.random.PRNGKey(4), False)["q"]
    assert not np.allclose(soft, out["q"])  # a soft mixture otherwise
    # The routing projectors get a gradient through the one-hot codes.
    grad = jax.jit(jax.grad(lambda p: jnp.sum(chosen(p, jax.random.PRNGKey(4), True)["q"][:, 1:])))(params)
    assert float(jnp.abs(grad["out_kernel"]).max()) > 0


def test_item_and_user_towers_share_the_codebooks():
    router, params, states, items = setup()
    names = [jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    assert [name for name in names if "codebook" in name] == ["['codebooks']"]  # one set, read by both towers
    quantized = apply(LatentRouter.quantize, items)
    r = np.asarray(items)
    for level in range(LEVELS):  # greedy nearest-code residual assignment by the user's codebooks
        distances = ((r[:, None] - np.asarray(params["codebooks"][level])[None]) ** 2).sum(-1)
        np.testing.assert_array_equal(quantized["codes"][:, level], distances.argmin(-1))
        r = r - np.asarray(params["codebooks"][level])[distances.argmin(-1)]
    # Moving the codebooks changes both towers' codes.
    moved = params | {"codebooks": params["codebooks"].at[0].multiply(-1.0)}
    user_codes = jax.jit(lambda p: router.apply({"params": p}, states, jax.random.PRNGKey(5), 0.1)["codes"])
    item_codes = jax.jit(lambda p: router.apply({"params": p}, items, method=LatentRouter.quantize)["codes"])
    assert not np.array_equal(user_codes(params), user_codes(moved))
    assert not np.array_equal(item_codes(params), item_codes(moved))

    def gradients(router):
        def user_loss(p):
            return jnp.sum(router.apply({"params": p}, states, jax.random.PRNGKey(5), 1.0)["q"] ** 2)

        def item_loss(p):
            return router.apply({"params": p}, items, method=LatentRouter.quantize)["level_losses"].sum()

        grads = jax.jit(lambda p: (jax.grad(user_loss)(p), jax.grad(item_loss)(p)))(params)
        return [float(jnp.abs(g["codebooks"]).sum()) for g in grads]

    # The item tower fits them; the user side only when user_trains_codebooks.
    user, item = gradients(router)
    assert user == 0 and item > 0
    user, item = gradients(router.clone(user_trains_codebooks=True))
    assert user > 0 and item > 0


def test_leaf_members_keeps_collision_groups_and_skips_dead_keys():
    codes = jnp.array([[1, 2], [0, 1], [1, 2], [2, 0], [1, 2]])
    keys = prefix_keys(codes, 3)
    np.testing.assert_array_equal(keys, [[1, 5], [0, 1], [1, 5], [2, 6], [1, 5]])
    index = latent.item_index(codes, 3)
    members = leaf_members(index["prefix_keys"][-1], index["leaf_order"], jnp.array([5, 6, 4, -1]), 2)
    np.testing.assert_array_equal(members, [[0, 2], [3, -1], [-1, -1], [-1, -1]])  # lowest ids of a group
    with pytest.raises(ValueError, match="overflow"):
        prefix_keys(jnp.zeros((2, 4), jnp.int32), 256)


def exhaustive(router, params, states, paths):
    """Teacher-forced log-probability ``[B, P]`` of every code path ``[P, L]``."""
    b, p = states.shape[0], len(paths)
    h = jnp.broadcast_to(states[:, None], (b, p) + states.shape[1:])
    total = jnp.zeros((b, p))
    for level in range(paths.shape[1]):
        if level:
            code = jnp.broadcast_to(params["codebooks"][level - 1][paths[:, level - 1]], (b, p, ITEM))
            h = apply(LatentRouter.refine, h, code, level - 1)
        total = total + apply(LatentRouter.log_probs, h, level)[:, np.arange(p), paths[:, level]]
    return np.asarray(total)


def test_beam_search_over_item_codes_equals_exhaustive_scoring():
    router, params, states, items = setup()
    codes = np.asarray(apply(LatentRouter.quantize, items)["codes"])
    index = latent.item_index(jnp.asarray(codes), K)
    paths = np.unique(codes, axis=0)  # the valid code paths
    assert 3 < len(paths) < len(codes)  # some items share codes, some paths are not items'
    scores = exhaustive(router, params, states, paths)
    np.testing.assert_array_less(np.exp(scores).sum(1), 1.0 + 1e-5)  # a part of all K^L paths' mass
    run = jax.jit(lambda s, w: latent.search(router, params, s, index, w), static_argnums=1)
    row = {tuple(p): i for i, p in enumerate(paths)}
    state = run(states, len(paths))
    for user in range(states.shape[0]):  # full width: every valid path once, by its exhaustive score
        found = [row[tuple(p)] for p in np.asarray(state.tokens[user])]
        assert sorted(found) == list(range(len(paths)))
        np.testing.assert_allclose(state.scores[user], scores[user, found], atol=1e-5)
        np.testing.assert_allclose(state.scores[user], np.sort(scores[user])[::-1], atol=1e-5)
    narrow = run(states, 4)
    for user in range(states.shape[0]):  # narrow: distinct valid paths, best first, scored exactly
        found = [row[tuple(p)] for p in np.asarray(narrow.tokens[user])]
        assert len(set(found)) == 4 and np.all(np.diff(narrow.scores[user]) <= 0)
        np.testing.assert_allclose(narrow.scores[user], scores[user, found], atol=1e-5)
    # At full width with whole collision groups, the ranking is the exact top-k of the user vector.
    users = apply(LatentRouter.user_vector, states)
    ids, item_scores = latent.rank_beam_items(users, state, index, items, leaf_size=len(codes), k=10)
    expected = np.asarray(users) @ np.asarray(items).T  # [B, N]
    for user in range(states.shape[0]):
        np.testing.assert_array_equal(ids[user], np.argsort(-expected[user], kind="stable")[:10])
        np.testing.assert_allclose(item_scores[user], np.sort(expected[user])[::-1][:10], rtol=1e-5)
    # Narrow beams with small leaves return fewer items, padded with -1.
    ids, _ = latent.rank_beam_items(users, run(states, 1), index, items, leaf_size=1, k=3)
    assert (np.asarray(ids)[:, 1:] == -1).all() and (np.asarray(ids)[:, 0] >= 0).all()


def test_diagnostics_of_a_known_batch():
    q = jnp.array([[[0.6, 0.0], [0.0, 0.3], [0.1, 0.0]]])  # y = (1, 0.5) below
    errors = latent.depth_errors(jnp.array([[1.0, 0.5]]), q)  # 1.25, 0.41, 0.20, 0.13
    user = jnp.array([[0, 1, 2]])
    metrics = latent.diagnostics(user, user, jnp.array([[0, 1, 2], [1, 1, 2]]), jnp.array([[0, 1, 0]]), errors,
                                 0.1, 4)
    np.testing.assert_allclose([metrics[f"explained_l{l}"] for l in range(3)], [0.84 / 1.25, 0.21 / 1.25, 0.07 / 1.25],
                               rtol=1e-5)
    assert [float(metrics[f"margin_satisfied_l{l}"]) for l in range(2)] == [1.0, 0.0]  # gains 0.21, 0.07 vs δ 0.1
    assert [float(metrics[f"agreement_l{l}"]) for l in range(3)] == [1.0, 1.0, 0.0]
    assert float(metrics["agreement_path"]) == 0.0
    assert float(metrics["user_usage_l0"]) == 0.25 and float(metrics["user_perplexity_l0"]) == pytest.approx(1.0)
    assert float(metrics["item_perplexity_l0"]) == pytest.approx(2.0)  # codes 0 and 1, once each


def test_tiny_pipeline_trains_indexes_and_evaluates(tmp_path):
    config = latent_config.get_config("tiny")
    assert config.stages == "data,features,train,eval"
    config.mesh.data = 1  # one device: the run is compile-bound
    stages.run(config, str(tmp_path))
    metrics = json.load(open(tmp_path / "eval" / "metrics.json"))
    for split in ("valid", "test"):
        assert 0.0 < metrics[split]["ndcg@10"] <= metrics[split]["recall@10"] <= 1.0
    assert metrics["test"]["recall@10"] > 0.1  # chance on the 100-item catalogue
    logged = [json.loads(line) for line in open(tmp_path / "train" / "metrics.jsonl")]
    names = set().union(*logged)
    levels = config.model.num_levels
    for name in ("user_perplexity", "item_perplexity", "explained", "agreement"):
        assert {f"train/{name}_l{l}" for l in range(levels)} <= names
    assert {f"train/margin_satisfied_l{l}" for l in range(levels - 1)} | {"train/agreement_path"} <= names
    summary = json.load(open(tmp_path / "train" / "summary.json"))["item_sids"]
    health = json.load(open(summary["health"]))
    assert health["num_items"] == 100 and len(health["levels"]) == levels and len(health["residual_energy"]) == 4
    codes = json.load(open(tmp_path / "train" / "index.json"))
    assert len(codes) == 100 and all(len(tokens) == levels for tokens in codes.values())
