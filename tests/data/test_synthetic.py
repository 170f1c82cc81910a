"""Tests of the synthetic default dataset: sizes, determinism and recoverable structure."""

import dataclasses
import time

import numpy as np
import pytest

from gr_jax.data import synthetic
from gr_jax.data.dataset import ACTIONS, validate
from gr_jax.data.errors import DataError
from gr_jax.data.synthetic import (
    EVENT_NOISE,
    EVENT_PREFERENCE,
    EVENT_SEQUENTIAL,
    EXPOSURE_POPULAR,
    SyntheticConfig,
    describe,
    generate,
)


@pytest.fixture(scope="module")
def default():
    start = time.perf_counter()
    dataset, truth = generate(SyntheticConfig())
    return dataset, truth, time.perf_counter() - start


@pytest.fixture(scope="module")
def event_users(default):
    dataset, _, _ = default
    return np.repeat(np.arange(dataset.num_users), dataset.users.lengths)


def test_sizes_and_bounds(default):
    dataset, truth, seconds = default
    config = SyntheticConfig()
    assert seconds < 2.0
    assert dataset.num_users == config.num_users and dataset.num_items == config.num_items
    assert dataset.items.keys == [str(i) for i in range(config.num_items)]
    assert dataset.users.user_keys[:2] == ["u0", "u1"]
    lengths = dataset.users.lengths
    assert lengths.min() >= 5 and lengths.max() <= config.max_length
    assert 10 <= lengths.mean() <= 15
    items = dataset.users.items
    assert items.dtype == np.int32 and 0 <= items.min() and items.max() < config.num_items
    assert dataset.users.actions.dtype == np.int8 and dataset.users.ratings is None
    num_events = len(items)
    for name in ("event_kind", "event_interest", "event_affinity"):
        assert len(getattr(truth, name)) == num_events
    assert truth.item_latents.shape == (config.num_items, config.latent_dim)
    assert truth.successors.shape == (config.num_items, config.num_successors)
    assert np.isclose(truth.popularity.sum(), 1.0, atol=1e-5)
    assert validate(dataset, min_user_events=5).num_users == config.num_users


def test_timestamps_increase_per_user(default, event_users):
    dataset, _, _ = default
    same_user = event_users[1:] == event_users[:-1]
    assert np.all(np.diff(dataset.users.timestamps)[same_user] > 0)


def test_category_tree_consistent(default):
    dataset, truth, _ = default
    assert truth.depth >= 3
    nodes = truth.item_node_ids
    for path, row in zip(dataset.items.categories, nodes):
        assert path == tuple(truth.node_names[n] for n in row)
    assert np.all(truth.node_parent[nodes[:, 1:]] == nodes[:, :-1])
    assert np.all(truth.node_level[nodes] == np.arange(truth.depth))
    assert len(set(truth.node_names)) == len(truth.node_names)
    leaf_sizes = np.bincount(truth.item_category_ids[:, -1])
    assert leaf_sizes.min() >= SyntheticConfig().min_leaf_items and leaf_sizes.max() >= 3 * leaf_sizes.min()


def test_deeper_tree_is_configurable():
    config = SyntheticConfig(num_users=50, num_items=300, branching=(2, 2, 3, 2), level_scales=(1.0, 0.6, 0.4, 0.3),
                             interest_level_probs=(0.1, 0.3, 0.3, 0.3))
    dataset, truth = generate(config)
    assert truth.depth == 4 and {len(c) for c in dataset.items.categories} == {4}
    assert truth.item_category_ids[:, -1].max() == 23


def test_invalid_config_raises():
    with pytest.raises(DataError):
        generate(SyntheticConfig(level_scales=(1.0, 0.5)))
    with pytest.raises(DataError):
        generate(SyntheticConfig(num_items=100))


def test_deterministic_for_a_seed():
    small = SyntheticConfig(num_users=200, num_items=300)
    (a, ta), (b, tb) = generate(small), generate(small)
    c, _ = generate(dataclasses.replace(small, seed=1))
    for x, y in ((a.items, b.items), (a.users, b.users), (ta, tb)):
        _assert_fields_equal(x, y)
    assert a.items.title != c.items.title
    assert not np.array_equal(a.users.items[:100], c.users.items[:100])


def _assert_fields_equal(x, y):
    for field in dataclasses.fields(x):
        u, v = getattr(x, field.name), getattr(y, field.name)
        if isinstance(u, np.ndarray):
            np.testing.assert_array_equal(u, v)
        else:
            assert u == v, field.name


def test_action_mix(default):
    dataset, truth, _ = default
    actions = dataset.users.actions
    assert set(np.unique(actions)) == set(range(len(ACTIONS)))
    buy, skip = ACTIONS.index("buy"), ACTIONS.index("skip")
    high = truth.event_affinity >= np.quantile(truth.event_affinity, 0.75)
    noise = truth.event_kind == EVENT_NOISE
    assert (actions[high] == buy).mean() > 2 * (actions[noise] == buy).mean()
    assert (actions[noise] == skip).mean() > 2 * (actions[high] == skip).mean()


def test_popularity_long_tail(default):
    stats = describe(*default[:2])
    assert stats["top10pct_item_share"] > 0.35
    assert stats["bottom50pct_item_share"] < 0.25
    assert abs(stats["event_kinds"]["noise"] - SyntheticConfig().p_noise) < 0.02


def test_user_interests_concentrate(default, event_users):
    dataset, truth, _ = default
    num_interests = (truth.user_interests >= 0).sum(axis=1)
    assert num_interests.min() == 1 and num_interests.max() == 4
    assert np.allclose(truth.user_interest_weights.sum(axis=1), 1.0, atol=1e-5)
    for row in truth.user_interests:
        chosen = row[row >= 0]
        assert len(set(chosen)) == len(chosen)
    items = dataset.users.items[:, None]
    inside = truth.in_subtree(truth.user_interests[event_users], items).any(axis=1)
    shuffled = np.random.default_rng(0).permutation(dataset.num_users)
    chance = truth.in_subtree(truth.user_interests[shuffled][event_users], items).any(axis=1)
    assert inside.mean() > 3 * chance.mean()
    preference = truth.event_kind == EVENT_PREFERENCE
    assert truth.in_subtree(truth.event_interest[preference], dataset.users.items[preference]).mean() > 0.7
    assert np.all(truth.event_interest[~preference] == -1)


def test_sequential_structure(default, event_users):
    dataset, truth, _ = default
    items = dataset.users.items
    same_user = event_users[1:] == event_users[:-1]
    follows = (truth.successors[items[:-1]] == items[1:, None]).any(axis=1)[same_user]
    chance = truth.successors.shape[1] / dataset.num_items
    assert follows.mean() > 50 * chance
    sequential = truth.event_kind[1:][same_user] == EVENT_SEQUENTIAL
    assert follows[sequential].all()
    assert np.all(truth.successors != np.arange(dataset.num_items)[:, None])
    leaf_parent = truth.item_category_ids[:, -2]
    assert np.all(leaf_parent[truth.successors] == leaf_parent[:, None])


def test_blocked_generation_equals_one_block_and_large_groups_sample_successors_alike(monkeypatch):
    """A 10M-item catalogue is generated a block of nodes / chunk of events at a time: the same data
    as one block. Its ~500k-item groups draw successors by successive draws, not Gumbel top-k over
    an [m, m] matrix: the same distribution (same-leaf share, popularity bias), distinct, never
    the item itself, within the group."""
    config = SyntheticConfig(num_users=300, num_items=2000, branching=(2, 2, 2))
    whole, whole_truth = generate(config)
    monkeypatch.setattr(synthetic, "_BLOCK_ENTRIES", 3000)
    monkeypatch.setattr(synthetic, "_EVENT_CHUNK", 1000)
    blocked, blocked_truth = generate(config)
    np.testing.assert_array_equal(blocked.users.items, whole.users.items)
    np.testing.assert_array_equal(blocked.users.actions, whole.users.actions)
    np.testing.assert_array_equal(blocked_truth.event_affinity, whole_truth.event_affinity)
    np.testing.assert_array_equal(blocked_truth.user_interests, whole_truth.user_interests)

    monkeypatch.setattr(synthetic, "_GUMBEL_GROUP", 8)  # every 500-item group takes successive draws
    _, drawn = generate(config)
    successors, group = drawn.successors, drawn.item_category_ids[:, -2]
    assert not np.array_equal(successors, whole_truth.successors)
    assert np.all(successors != np.arange(config.num_items)[:, None])
    assert np.all(np.diff(np.sort(successors, axis=1), axis=1) > 0)  # distinct
    assert np.all(group[successors] == group[:, None])
    same_leaf_share = lambda t: (t.item_category_ids[t.successors, -1] == t.item_category_ids[:, -1:]).mean()
    assert same_leaf_share(drawn) == pytest.approx(same_leaf_share(whole_truth), abs=0.03)  # ~.78 each
    for truth in (whole_truth, drawn):
        indegree = np.bincount(truth.successors.ravel(), minlength=config.num_items)
        assert np.corrcoef(indegree, truth.popularity ** config.successor_popularity_weight)[0, 1] > 0.8


def test_latents_cluster_by_top_category(default):
    _, truth, _ = default
    z, top = truth.item_latents, truth.item_category_ids[:, 0]
    distances = np.sqrt(((z[:, None] - z[None]) ** 2).sum(-1))
    same = top[:, None] == top[None]
    off_diagonal = ~np.eye(len(z), dtype=bool)
    assert distances[same & off_diagonal].mean() < 0.7 * distances[~same].mean()


def test_text(default):
    dataset, truth, _ = default
    items = dataset.items
    assert all(t.strip() for t in items.title)
    assert all(t.startswith(b) for t, b in zip(items.title, items.brand))
    empty = np.mean([not d for d in items.description])
    assert abs(empty - SyntheticConfig().empty_description_frac) < 0.005
    top = truth.item_category_ids[:, 0]
    brand_top = {}
    for brand, t in zip(items.brand, top):
        brand_top.setdefault(brand, []).append(t)
    majority = np.mean([np.mean(np.array(v) == np.bincount(v).argmax()) for v in brand_top.values()])
    assert 0.6 < majority < 1.0
    leaf_words = [set(truth.node_topic_words[n]) for n in truth.item_node_ids[:, -1]]
    for texts in (items.title, items.description):  # text hints at the leaf, but only partly
        mentions = np.mean([bool(w & set(t.lower().rstrip(".").split())) for w, t in zip(leaf_words, texts) if t])
        assert 0.4 < mentions < 0.95


def test_long_tail_collaborative_signal_is_noisier(default):
    # PRISM's premise (ACD): interaction-based embeddings of rare items are less reliable. Noise
    # events pick items uniformly, so they make up a larger share of a tail item's few interactions.
    dataset, truth, _ = default
    items = dataset.users.items
    counts = np.bincount(items, minlength=dataset.num_items)
    tail = counts <= np.median(counts)
    noise = truth.event_kind == EVENT_NOISE
    tail_events = tail[items]
    assert noise[tail_events].mean() > 3 * noise[~tail_events].mean()


def test_exposure_log_has_the_configured_ctr_and_clicks_follow_the_true_click_model():
    config = SyntheticConfig(num_users=400, num_items=300, branching=(3, 3, 2), exposure_log=True, target_ctr=0.05,
                             exposures_per_event=20)
    dataset, truth = generate(config)
    actions = dataset.users.actions
    clicked = np.isin(actions, [ACTIONS.index(a) for a in ("click", "cart", "buy")])
    assert set(np.unique(actions)) <= {ACTIONS.index(a) for a in ("click", "cart", "buy", "skip")}
    np.testing.assert_allclose(truth.click_prob.mean(), 0.05, rtol=1e-3)  # the solved bias
    assert abs(clicked.mean() - 0.05) < 0.005  # the logged CTR, a binomial draw around it
    # Labels follow the click model: per decile of the true probability, the click rate matches it.
    deciles = np.quantile(truth.click_prob, np.linspace(0, 1, 11))
    which = np.clip(np.searchsorted(deciles, truth.click_prob, side="right") - 1, 0, 9)
    for d in range(10):
        inside = which == d
        assert abs(clicked[inside].mean() - truth.click_prob[inside].mean()) < 0.02
    # The logging policy's shares and sources: personalised exposures are clicked far more often.
    shares = np.bincount(truth.event_kind - EXPOSURE_POPULAR, minlength=3) / len(actions)
    np.testing.assert_allclose(shares, config.exposure_policy, atol=0.01)
    personalised = truth.event_kind == EXPOSURE_POPULAR + 1
    assert clicked[personalised].mean() > 2 * clicked[~personalised].mean()
    # per_event aligns the generation-order values with a subset of users.
    keys = dataset.users.user_keys[5:8]
    np.testing.assert_array_equal(truth.per_event(np.arange(len(actions)), keys),
                                  np.arange(dataset.users.offsets[5], dataset.users.offsets[8]))
