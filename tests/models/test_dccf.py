"""DCCF and its LightGCN reduction: sparse propagation against dense NumPy references, the
LightGCN loss, training on the tiny synthetic data, a graph of training edges only and a
``configs/dccf.py:tiny`` run (the features stage's ``cf.source='dccf'`` table: ``test_semconv``)."""

import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from configs import dccf as dccf_config
from configs import lightgcn as lightgcn_config
from configs import rqvae
from gr_jax import config_schema, stages
from gr_jax.data.dataset import Interactions
from gr_jax.data.splits import example_index, split_points, train_event_mask
from gr_jax.data.synthetic import SyntheticConfig, generate
from gr_jax.models.dccf import DCCFRecommender, build_graph

# 4 users, 6 items; each user's last two events are valid/test, the rest the training graph:
# u0 {0, 1, 2}, u1 {1, 3}, u2 {2, 4} (item 2 twice: one edge), u3 {5}.
SEQUENCES = [[0, 1, 2, 3, 4], [1, 3, 5, 0], [2, 2, 4, 5, 1], [5, 0, 3]]
NUM_ITEMS = 6


def small():
    return Interactions.from_lists([f"u{i}" for i in range(len(SEQUENCES))], SEQUENCES)


def model_config(lightgcn: bool = False, **overrides) -> ml_collections.ConfigDict:
    c = dccf_config.model_config()
    c.update(embed_dim=8, num_intents=4, num_layers=2)
    if lightgcn:
        c.update(dccf_config.LIGHTGCN)
    c.update(overrides)
    return c


def random_params(model, seed=0):
    """Ego vectors and prototypes of a larger scale than the init, so every term matters."""
    params = model.init(jax.random.PRNGKey(seed), None)
    keys = jax.random.split(jax.random.PRNGKey(seed + 1), len(params))
    return {k: jax.random.normal(key, v.shape) for key, (k, v) in zip(keys, sorted(params.items()))}


def dense_adjacency(users: int, pairs) -> np.ndarray:
    a = np.zeros((users + NUM_ITEMS, users + NUM_ITEMS))
    for u, i in pairs:
        a[u, users + i] = a[users + i, u] = 1.0
    return a


def dense_reference(a, params, users, layers, intents, augmentation, residual, combination):
    """DCCF's forward pass with dense matrices (the model's definition, written independently)."""
    deg = a.sum(1)
    inv = np.where(deg > 0, 1 / np.sqrt(np.maximum(deg, 1e-12)), 0.0)
    a_hat = inv[:, None] * a * inv[None, :]
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    out = [np.concatenate([p["user_embed"], p["item_embed"]])]

    def softmax(z):
        z = np.exp(z - z.max(1, keepdims=True))
        return z / z.sum(1, keepdims=True)

    for _ in range(layers):
        x = out[-1]
        views = [a_hat @ x]
        if intents:
            views.append(np.concatenate([softmax(x[:users] @ p["user_intents"]) @ p["user_intents"].T,
                                         softmax(x[users:] @ p["item_intents"]) @ p["item_intents"].T]))
        if augmentation:
            for view in list(views):
                unit = view / np.linalg.norm(view, axis=1, keepdims=True)
                s = a * (unit @ unit.T + 1) / 2
                s = s / np.where(s.sum(1, keepdims=True) > 0, s.sum(1, keepdims=True), 1.0)
                views.append(s @ x)
        out.append(sum(views) + (x if residual else 0))
    return np.sum(out, 0) if combination == "sum" else np.mean(out, 0)


def test_graph_holds_exactly_the_distinct_training_pairs():
    graph = build_graph(small(), NUM_ITEMS)
    users, items = graph.edges()
    assert sorted(zip(users.tolist(), items.tolist())) == [(0, 0), (0, 1), (0, 2), (1, 1), (1, 3), (2, 2), (2, 4),
                                                           (3, 5)]
    assert graph.num_edges == 8 and len(graph.heads) == 16 and np.all(np.diff(graph.heads) >= 0)
    # (user, position) rows name the user's first training event with the item
    np.testing.assert_array_equal(graph.rows, [[0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [2, 0], [2, 2], [3, 0]])


def test_no_validation_or_test_event_is_an_edge_on_synthetic_data():
    users = generate(SyntheticConfig(num_users=150, num_items=100, branching=(3, 3, 2)))[0].users
    graph = build_graph(users, 100)
    valid, _, eligible = split_points(users)
    rows = graph.rows
    assert np.all(~eligible[rows[:, 0]] | (rows[:, 1] < valid[rows[:, 0]]))  # every edge event is a training event
    assert train_event_mask(users)[users.offsets[rows[:, 0]] + rows[:, 1]].all()
    train_pairs = {(u, users.items[users.offsets[u] + p]) for u, p in example_index(users, "train")}
    edge_pairs = set(zip(*(x.tolist() for x in graph.edges())))
    assert train_pairs <= edge_pairs  # every training target is a BPR positive
    for split in ("valid", "test"):  # a held-out pair is an edge only if the user also had it before
        for u, p in example_index(users, split):
            item = users.items[users.offsets[u] + p]
            earlier = users.items[users.offsets[u]:users.offsets[u] + valid[u]]
            assert ((u, item) in edge_pairs) == (item in earlier)


@pytest.mark.parametrize("lightgcn", [True, False])
def test_sparse_propagation_equals_the_dense_reference(lightgcn):
    interactions = small()
    model = DCCFRecommender(model_config(lightgcn), NUM_ITEMS, interactions)
    params = random_params(model)
    assert ("user_intents" in params) == (not lightgcn)
    final, views = model.propagate(params)
    a = dense_adjacency(4, zip(*model.graph.edges()))
    if lightgcn:  # plain LightGCN: mean of E, ÂE, Â²E with Â = D^-1/2 A D^-1/2
        a_hat = a / np.sqrt(np.outer(a.sum(1), a.sum(1)))
        e0 = np.concatenate([params["user_embed"], params["item_embed"]]).astype(np.float64)
        expected = (e0 + a_hat @ e0 + a_hat @ a_hat @ e0) / 3
        assert [sorted(v) for v in views] == [["graph"], ["graph"]]
    else:
        expected = dense_reference(a, params, 4, 2, True, True, True, "sum")
        assert [sorted(v) for v in views] == [["graph", "graph_aug", "intent", "intent_aug"]] * 2
    np.testing.assert_allclose(final, expected, rtol=2e-5, atol=2e-5)


def test_lightgcn_switches_give_plain_lightgcns_bpr_loss():
    interactions = small()
    c = model_config(lightgcn=True, embedding_reg=1e-3)
    model = DCCFRecommender(c, NUM_ITEMS, interactions)
    params = random_params(model)
    batch = {"user": jnp.array([0, 1, 2, 3, 0], jnp.int32), "target": jnp.array([0, 3, 4, 5, 2], jnp.int32)}
    rng = jax.random.PRNGKey(3)
    loss, metrics = model.loss(params, batch, rng)
    assert set(metrics) == {"bpr_loss", "reg_loss"}  # no intent or contrastive term
    # LightGCN written out: mean of the layers, BPR against one uniform negative, L2 on the ego rows
    a = dense_adjacency(4, zip(*model.graph.edges()))
    a_hat = a / np.sqrt(np.outer(a.sum(1), a.sum(1)))
    e0 = np.concatenate([params["user_embed"], params["item_embed"]]).astype(np.float64)
    final = (e0 + a_hat @ e0 + a_hat @ a_hat @ e0) / 3
    u, pos = np.asarray(batch["user"]), np.asarray(batch["target"])
    neg = np.asarray(jax.random.randint(rng, pos.shape, 0, NUM_ITEMS))
    margin = np.sum(final[u] * final[4 + neg], 1) - np.sum(final[u] * final[4 + pos], 1)
    reg = 1e-3 * (np.sum(e0[u] ** 2) + np.sum(e0[4 + pos] ** 2) + np.sum(e0[4 + neg] ** 2))
    np.testing.assert_allclose(float(loss), np.mean(np.logaddexp(0, margin)) + reg, rtol=1e-5)
    lightgcn = lightgcn_config.get_config("tiny").model  # the config carries the same switches
    assert {k: lightgcn[k] for k in dccf_config.LIGHTGCN} == dccf_config.LIGHTGCN


def test_training_reduces_the_loss_on_tiny_synthetic_data():
    users = generate(SyntheticConfig(num_users=150, num_items=100, branching=(3, 3, 2)))[0].users
    model = DCCFRecommender(model_config(num_layers=1), 100, users)
    rows = model.training_rows(None, users)
    batch = {"user": jnp.asarray(rows[:256, 0], jnp.int32),
             "target": jnp.asarray(users.items[users.offsets[rows[:256, 0]] + rows[:256, 1]])}
    params = model.init(jax.random.PRNGKey(0), batch)
    optimizer = optax.adam(1e-2)
    state = optimizer.init(params)

    @jax.jit
    def step(params, state, rng):
        (loss, metrics), grads = jax.value_and_grad(model.loss, has_aux=True)(params, batch, rng)
        updates, state = optimizer.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss, metrics

    losses = []
    for i in range(8):
        params, state, loss, metrics = step(params, state, jax.random.PRNGKey(i))
        losses.append(float(loss))
    assert set(metrics) == {"bpr_loss", "reg_loss", "contrastive_loss"}
    assert np.isfinite(losses).all() and losses[-1] < losses[0]
    # ranking leaves the history out and the item table is the final (propagated) one
    prepared = model.eval_params(params)
    history = {"user": jnp.array([0]), "history": jnp.array([[3, 7]]), "history_mask": jnp.array([[True, True]])}
    assert not set(np.asarray(model.topk(prepared, history, 98))[0]) & {3, 7}
    np.testing.assert_allclose(model.item_embeddings(params), prepared["items"], rtol=1e-5, atol=1e-6)


def test_configs_validate_and_the_cf_source_is_a_choice():
    for module in (dccf_config, lightgcn_config):
        for arg in (None, "tiny", "scientific"):
            config_schema.validate(module.get_config(arg))
    config = rqvae.get_config("tiny")
    assert config.features.cf.source == "sasrec"  # the default stays SASRec
    config.features.cf.source = "lightgcn"
    with pytest.raises(config_schema.ConfigError, match="features.cf.source='lightgcn'; expected one of sasrec, dccf"):
        config_schema.validate(config)


def test_dccf_trains_and_evaluates_on_its_own(tmp_path):
    """(The features stage with ``cf.source='dccf'`` runs in ``test_semconv``'s :tiny pipeline.)"""
    run = dccf_config.get_config("tiny")  # the model on its own: train (checkpoints) and leave-one-out eval
    run.train.batch_size = 64
    stages.run(run, str(tmp_path / "dccf"))
    metrics = json.load(open(tmp_path / "dccf" / "eval" / "metrics.json"))
    assert 0.0 <= metrics["test"]["recall@10"] <= 1.0 and metrics["valid"]["num_users"] == 150
    assert np.load(tmp_path / "dccf" / "train" / "item_embeddings.npy").shape == (100, 16)
