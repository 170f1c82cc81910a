"""Generative Action Transformer: gate initialisation, stop-gradient of the profile, packed views
against separate sequences, KV-cache decoding against full recomputation, beam search with an
action prompt against exhaustive scoring, calibration's closed form, and a :tiny pipeline."""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import gat as gat_config
from gr_jax import stages
from gr_jax.data.dataset import ACTIONS, Interactions
from gr_jax.models import gat
from gr_jax.stages.features import Features
from gr_jax.tokenizers.sid_table import SIDTable

K, NUM_ITEMS = 3, 20


def small_config(**overrides):
    config = gat_config.get_config("tiny").model
    config.update(num_queries=4, embed_dim=16, num_heads=2, head_dim=8, mlp_dim=32, beam_size=8, **overrides)
    config.decoder.update(embed_dim=16, num_heads=2, head_dim=8, mlp_dim=32, dropout=0.0)
    return config


def catalogue():
    codes = np.stack(np.unravel_index(np.arange(NUM_ITEMS), (K, K, K)), 1)[:NUM_ITEMS]  # distinct 3-level SIDs
    return SIDTable(codes, (K, K, K))


def interactions():
    rng = np.random.default_rng(0)
    lengths = [12, 9, 15]
    actions = [np.where(rng.random(n) < 0.3, ACTIONS.index("click"), ACTIONS.index("skip")) for n in lengths]
    return Interactions.from_lists(["a", "b", "c"], [rng.integers(0, NUM_ITEMS, n) for n in lengths], actions=actions)


def model(**overrides):
    rng = np.random.default_rng(1)
    features = Features(text=rng.normal(size=(NUM_ITEMS, 6)).astype(np.float32))
    return gat.GATRecommender(small_config(**overrides), catalogue(), features, interactions())


def batch(size=3, seed=0):
    rng = np.random.default_rng(seed)
    mask = np.ones((size, 5), bool)
    mask[0, :2] = False
    return {"history": jnp.asarray(rng.integers(0, NUM_ITEMS, (size, 5)), jnp.int32), "history_mask": jnp.asarray(mask),
            "history_actions": jnp.asarray(rng.choice([1, 4], (size, 5)), jnp.int32),
            "user": jnp.arange(size, dtype=jnp.int32),
            "target": jnp.asarray(rng.integers(0, NUM_ITEMS, size), jnp.int32),
            "target_action": jnp.asarray([1, 4, 2][:size], jnp.int32)}


@pytest.fixture(scope="module")
def setup():
    m, b = model(), batch()
    params = nn.meta.unbox(jax.jit(m.init)(jax.random.PRNGKey(0), b))
    return m, b, params


def test_residual_gate_starts_near_zero_and_the_profile_gets_no_gradient_from_it(setup):
    m, b, params = setup
    _, _, profile = m.prefix(params, b)
    items = b["history"]

    def gate(p, profile):
        _, g = m.module.apply({"params": p["gat"]}, items, m.features[items], profile, method=gat.GAT.contextual)
        return g

    np.testing.assert_allclose(gate(params, profile), jax.nn.sigmoid(-5.0), rtol=1e-6)  # 0.0067

    def through_profile(p):  # the gate reads the profile that the prompt gives: no gradient may reach it
        prompt, prof = m.module.apply({"params": p["gat"]}, m.query_states(p, b), method=gat.GAT.prompt)
        return gate(p, prof).sum()

    grads = jax.grad(through_profile)(params)
    assert not np.any(np.asarray(grads["gat"]["prompt_proj"]["kernel"]))
    assert np.any(np.asarray(grads["gat"]["gate_out"]["kernel"]))


def test_packed_views_equal_the_two_sequences_run_apart(setup):
    m, b, params = setup
    prefix, valid, profile = m.prefix(params, b)
    view_a = m._target_view(params, b, profile, jnp.full(3, ACTIONS.index("click")), with_residual=False)
    view_b = m._target_view(params, b, profile, jnp.full(3, gat.ANY), with_residual=True)
    tokens, positions, mask = gat.packed_views(prefix, valid, view_a, view_b)
    packed, _ = m.module.apply({"params": params["gat"]}, tokens, positions, mask)
    p, v = prefix.shape[1], view_a.shape[1]
    for view, got in ((view_a, packed[:, p:p + v]), (view_b, packed[:, p + v:])):
        alone = jnp.concatenate([prefix, view], 1)
        full_mask = gat.causal_mask(jnp.concatenate([valid, jnp.ones(view.shape[:2], bool)], 1))
        positions = jnp.broadcast_to(jnp.arange(p + v), alone.shape[:2])
        hidden, _ = m.module.apply({"params": params["gat"]}, alone, positions, full_mask)
        np.testing.assert_allclose(got, hidden[:, p:], atol=1e-5)


def test_beam_search_with_the_click_prompt_equals_exhaustive_scoring_and_the_cache_equals_recomputation(setup):
    m, b, params = setup
    width = NUM_ITEMS
    state = jax.jit(lambda p, x: m.search(p, x, width))(params, b)
    sids, scores = state.results()
    sid_codes = m.codes[m.trie.sid_items[:, 0]]
    prefix, valid, profile = m.prefix(params, b)
    levels = sid_codes.shape[1]
    for row in range(3):
        # Full recomputation of log P(codes | history, click) for every catalogue SID, no cache.
        intent = m.module.apply({"params": params["gat"]}, jnp.full(width, ACTIONS.index("click")),
                                method=gat.GAT.intent_token)
        codes = m.module.apply({"params": params["gat"]}, sid_codes, method=gat.GAT.code_tokens)
        tokens = jnp.concatenate([jnp.repeat(prefix[row:row + 1], width, 0), intent, codes[:, :-1]], 1)
        keys = jnp.concatenate([jnp.repeat(valid[row:row + 1], width, 0), jnp.ones((width, levels), bool)], 1)
        hidden, _ = m.module.apply({"params": params["gat"]}, tokens,
                                   jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape[:2]),
                                   gat.causal_mask(keys))
        p = prefix.shape[1]
        total = 0.0
        for level in range(levels):
            logits = m.module.apply({"params": params["gat"]}, hidden[:, p + level], level, method=gat.GAT.code_logits)
            log_probs = jax.nn.log_softmax(logits, -1)
            total = total + jnp.take_along_axis(log_probs, sid_codes[:, level:level + 1], -1)[:, 0]
        reference = np.asarray(total)
        np.testing.assert_array_equal(np.asarray(sids[row]), np.argsort(-reference, kind="stable"))
        np.testing.assert_allclose(np.asarray(scores[row]), np.sort(reference)[::-1], atol=1e-4)


def test_calibration_shifts_the_log_odds_by_the_sampling_ratio(setup):
    m, b, params = setup
    users = interactions()
    from gr_jax.data.dataset import positive_events
    from gr_jax.data.splits import train_event_mask

    positives = positive_events(users.actions, len(users.items))[train_event_mask(users)]
    logged = positives.sum() / (~positives).sum()
    np.testing.assert_allclose(m.log_odds_shift, np.log(1.0 / logged))  # negatives_per_positive = 1
    raw, calibrated = m.positive_probability(params, b)
    logit = lambda p: np.log(p) - np.log1p(-p)
    np.testing.assert_allclose(logit(np.asarray(calibrated)), logit(np.asarray(raw)) - m.log_odds_shift, atol=1e-4)
    assert model(negatives_per_positive=0).log_odds_shift == 0.0


def test_training_rows_keep_every_positive_and_k_negatives_per_positive():
    m = model(negatives_per_positive=2)
    users = interactions()
    from gr_jax.data.pipeline import train_rows

    rows = train_rows(users)
    kept = m.training_rows(rows, users)
    action = users.actions[users.offsets[kept[:, 0]] + kept[:, 1]]
    all_actions = users.actions[users.offsets[rows[:, 0]] + rows[:, 1]]
    assert (action == ACTIONS.index("click")).sum() == (all_actions == ACTIONS.index("click")).sum()
    assert (action == ACTIONS.index("skip")).sum() == min(2 * (action == 1).sum(), (all_actions == 4).sum())


def test_tiny_pipeline_retrieves_and_ranks(tmp_path):
    config = gat_config.get_config("tiny")
    config.mesh.data = 1
    artifacts = stages.run(config, str(tmp_path))
    metrics = json.load(open(tmp_path / "eval" / "metrics.json"))
    assert isinstance(artifacts.model(), gat.GATRecommender)
    for split in ("valid", "test"):
        assert 0.0 <= metrics[split]["ndcg@10"] <= metrics[split]["recall@10"] <= 1.0
    ranking = metrics["ranking"]
    assert ranking["num_exposures"] > 0 and 0.0 <= ranking["auc"] <= 1.0
    assert {"ece_raw", "ece_calibrated", "true_ece_raw", "true_ece_calibrated"} <= set(ranking)


def test_excluding_history_drops_engaged_items_and_keeps_the_rank_order(setup):
    _, b, params = setup
    plain, excluding = model(), model(exclude_history=True)
    ranked = np.asarray(plain.topk(params, b, NUM_ITEMS))
    kept = np.asarray(excluding.topk(params, b, 5))
    engaged = np.asarray(b["history_mask"]) & np.isin(np.asarray(b["history_actions"]), gat.POSITIVE)
    for row in range(3):
        seen = set(np.asarray(b["history"])[row][engaged[row]].tolist())
        expected = [i for i in ranked[row] if i not in seen][:5]
        assert kept[row].tolist() == expected and not seen & set(kept[row].tolist())
