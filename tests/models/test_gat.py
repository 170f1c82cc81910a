"""Generative Action Transformer: gate initialisation, stop-gradient of the profile, packed views
against separate sequences, KV-cache decoding against full recomputation, beam search with an
action prompt (and steering prompts) against exhaustive scoring, calibration's closed form,
steering prompts that change rankings only when given, the two-stage curriculum (ratio phases, a
frozen backbone) and :tiny runs of both stages."""

import json
import os
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import gat as gat_config
from gr_jax import stages
from gr_jax.data.dataset import ACTIONS, Interactions, positive_events
from gr_jax.data.pipeline import train_dataset, train_rows
from gr_jax.models import gat
from gr_jax.params import is_frozen, param_path
from gr_jax.stages.features import Features
from gr_jax.tokenizers.sid_table import SIDTable
from gr_jax.training.checkpoint import Checkpoints

K, NUM_ITEMS = 3, 20
CATEGORIES = [(f"top{i % 3}", f"leaf{i % 6}") for i in range(NUM_ITEMS)]


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


def model(categories=None, **overrides):
    rng = np.random.default_rng(1)
    features = Features(text=rng.normal(size=(NUM_ITEMS, 6)).astype(np.float32))
    return gat.GATRecommender(small_config(**overrides), catalogue(), features, interactions(), categories=categories)


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
    # Absent steering prompts before view A are masked and take no position: nothing changes.
    absent = jnp.ones((3, 2) + view_a.shape[2:])
    tokens, positions, mask = gat.packed_views(prefix, valid, jnp.concatenate([absent, view_a], 1), view_b,
                                               jnp.zeros((3, 2), bool))
    steered, _ = jax.jit(m.module.apply)({"params": params["gat"]}, tokens, positions, mask)
    np.testing.assert_allclose(np.delete(steered, [p, p + 1], axis=1), packed, atol=1e-5)


@pytest.fixture(scope="module")
def steering():
    m = model(CATEGORIES, seed_prompt_prob=1.0, seed_neighbours=4, explore_prob=1.0, category_prompt_prob=1.0)
    return m, nn.meta.unbox(jax.jit(m.init)(jax.random.PRNGKey(0), batch()))


@pytest.mark.parametrize("steered", [False, True])
def test_beam_search_with_the_click_prompt_equals_exhaustive_scoring_and_the_cache_equals_recomputation(
        setup, steering, steered):
    (m, params), b = (steering if steered else (setup[0], setup[2])), setup[1]
    width = NUM_ITEMS
    # Steered: a seed on rows 0 and 1, [EXPLORE] on every row, a category prompt on rows 0 and 2.
    prompt = {"seed": jnp.array([3, 5, -1]), "explore": jnp.ones(3, bool), "category": jnp.array([0, -1, 2])} \
        if steered else None
    state = jax.jit(lambda p, x: m.search(p, x, width, prompt=prompt))(params, b)
    sids, scores = state.results()
    sid_codes = m.codes[m.trie.sid_items[:, 0]]
    prefix, valid, profile = m.prefix(params, b)
    extra = m.prompt_tokens(params, b, profile, **prompt) if steered else None
    levels = sid_codes.shape[1]
    for row in range(3):
        # Full recomputation of log P(codes | history, prompt, click) for every catalogue SID, no cache.
        intent = m.module.apply({"params": params["gat"]}, jnp.full(width, ACTIONS.index("click")),
                                method=gat.GAT.intent_token)
        codes = m.module.apply({"params": params["gat"]}, sid_codes, method=gat.GAT.code_tokens)
        context = prefix[row:row + 1]
        if steered:  # only the prompt tokens present
            context = jnp.concatenate([context, extra[0][row:row + 1, np.asarray(extra[1][row])]], 1)
        tokens = jnp.concatenate([jnp.repeat(context, width, 0), intent, codes[:, :-1]], 1)
        p = context.shape[1]
        keys = jnp.concatenate([jnp.repeat(valid[row:row + 1], width, 0),
                                jnp.ones((width, tokens.shape[1] - prefix.shape[1]), bool)], 1)
        hidden, _ = m.module.apply({"params": params["gat"]}, tokens,
                                   jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape[:2]),
                                   gat.causal_mask(keys))
        total = 0.0
        for level in range(levels):
            logits = m.module.apply({"params": params["gat"]}, hidden[:, p + level], level, method=gat.GAT.code_logits)
            log_probs = jax.nn.log_softmax(logits, -1)
            total = total + jnp.take_along_axis(log_probs, sid_codes[:, level:level + 1], -1)[:, 0]
        reference = np.asarray(total)
        np.testing.assert_array_equal(np.asarray(sids[row]), np.argsort(-reference, kind="stable"))
        np.testing.assert_allclose(np.asarray(scores[row]), np.sort(reference)[::-1], atol=1e-4)


def test_steering_prompts_are_learned_in_training_and_change_rankings_only_when_given(setup, steering):
    m, params = steering
    b = setup[1]
    assert {"explore", "seed"} <= set(gat.ACTION_TOKENS) and params["gat"]["category_prompts"].shape == (3, 16)
    # Seeds are drawn from each target's nearest other items in the item feature table.
    similarity = np.asarray(m.features) @ np.asarray(m.features).T
    np.fill_diagonal(similarity, -np.inf)
    np.testing.assert_array_equal(m.seed_candidates, np.argsort(-similarity, 1, kind="stable")[:, :4])
    # Training: row 0 is a click outside its (empty) engaged history's categories, so [EXPLORE] precedes it.
    assert np.asarray(m.novel(b, b["target"][:, None]))[0, 0]
    grads = jax.jit(jax.grad(lambda p: m.loss(p, b, jax.random.PRNGKey(1))[0]))(params)["gat"]
    assert np.any(np.asarray(grads["category_prompts"]))
    assert all(np.any(np.asarray(grads["action_embed"]["embedding"][t])) for t in (gat.EXPLORE, gat.SEED))
    moved = jax.tree.map(lambda x: x, params)  # the prompts' parameters changed, nothing else
    moved["gat"]["category_prompts"] = params["gat"]["category_prompts"] + 1.0
    moved["gat"]["action_embed"]["embedding"] = params["gat"]["action_embed"]["embedding"].at[
        jnp.array([gat.EXPLORE, gat.SEED])].add(1.0)
    search = jax.jit(lambda p, seed, explore, category: m.search(
        p, b, 8, prompt={"seed": seed, "explore": explore, "category": category}).results()[1])
    for seed, explore, category in ((-1, False, -1), (4, False, -1), (-1, True, -1), (-1, False, 1)):
        prompt = (jnp.full(3, seed), jnp.full(3, explore), jnp.full(3, category))  # absent prompts are masked out
        same = np.array_equal(np.asarray(search(params, *prompt)), np.asarray(search(moved, *prompt)))
        assert same == (seed < 0 and not explore and category < 0), (seed, explore, category)
    with pytest.raises(ValueError, match="model.seed_prompt_prob"):
        model().steer(setup[2], b, 5, seed=jnp.zeros(3, int))


def test_the_distilled_sampler_learns_the_teachers_beam_and_returns_valid_items_in_one_shot(setup):
    _, b, params = setup
    m = model(sampler_dim=16)
    params = params | {"sampler": m.sampler.init(jax.random.PRNGKey(0), jnp.zeros((1, 16)))["params"]}
    optimizer = optax.adam(0.05)

    @jax.jit
    def step(params, opt_state):
        grads, _ = jax.grad(m.loss, has_aux=True)(params, b, jax.random.PRNGKey(0))
        updates, opt_state = optimizer.update(grads, opt_state)
        return optax.apply_updates(params, updates), opt_state, grads

    state = optimizer.init(params)
    for _ in range(60):
        params, state, grads = step(params, state)
    assert not any(np.any(np.asarray(g)) for g in jax.tree.leaves((grads["gat"], grads["qformer"])))
    lists = jax.jit(lambda p: (m.topk(p, b, 5), m.leaf_items[m.search(p, b, 8).results()[0][:, 0], 0]))
    items, best = map(np.asarray, lists(params))
    assert items.min() >= 0 and items.max() < NUM_ITEMS and all(len(set(row)) == 5 for row in items)
    np.testing.assert_array_equal(items[:, 0], best)  # the teacher's best item tops the sampler's list


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


def test_curriculum_phases_hold_their_ratios_and_train_in_order():
    users = interactions()
    m = model(curriculum=(1, 2))
    phases = m.training_phases(train_rows(users), users)
    positive = positive_events(users.actions, len(users.items))
    events = [users.offsets[rows[:, 0]] + rows[:, 1] for rows in phases]
    num_positive = positive[events[0]].sum()
    for k, phase in zip((1, 2), events):  # every positive, k negatives per positive
        assert positive[phase].sum() == num_positive and (~positive[phase]).sum() == k * num_positive
    batch, first = 2, len(phases[0]) // 2
    data = train_dataset(users, max_history=5, global_batch_size=batch, seed=0, phases=phases, phase_batches=first)
    for b in range(first + len(phases[1]) // batch):  # each phase's batches cover its rows once
        assert set(data[b]["target_event"]) <= set(events[b >= first])
    seen = [np.concatenate([data[b]["target_event"] for b in range(first)]),
            np.concatenate([data[b]["target_event"] for b in range(first, first + len(phases[1]) // batch)])]
    for phase, got in zip(events, seen):
        assert len(set(got)) == len(got) == len(phase) // batch * batch
    assert m.log_odds_shift == pytest.approx(model(negatives_per_positive=2).log_odds_shift)  # the last ratio's α


@pytest.fixture(scope="module")
def stage1(tmp_path_factory):
    """A finished :tiny run (stage 1 of the curriculum): its workdir and model."""
    workdir = tmp_path_factory.mktemp("stage1")
    config = gat_config.get_config("tiny")
    config.mesh.data = 1
    return workdir, stages.run(config, str(workdir)).model()


def best_params(workdir) -> dict:
    checkpoints = Checkpoints(os.path.join(workdir, "train", "checkpoints"), "ndcg@10")
    params = checkpoints.restore_best(None)
    checkpoints.close()
    return params


def test_tiny_pipeline_retrieves_and_ranks(stage1):
    tmp_path, model = stage1
    metrics = json.load(open(tmp_path / "eval" / "metrics.json"))
    assert isinstance(model, gat.GATRecommender)
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


def train_losses(workdir) -> list[tuple[int, float]]:
    """Every logged (step, loss) in order, a rerun's after the first run's."""
    records = [json.loads(line) for line in open(workdir / "train" / "metrics.jsonl")]
    return [(r["step"], r["train/loss"]) for r in records if "train/loss" in r]


def test_tiny_stage2_starts_from_stage1_changes_only_the_residuals_and_the_action_head_and_resumes(
        stage1, tmp_path):
    workdir, _ = stage1
    config = gat_config.get_config("tiny")
    gat_config.use_stage2(config)
    config.mesh.data = 1
    config.model.init_from = str(workdir)
    config.train.update(num_steps=6, log_every_steps=1, checkpoint_every_steps=3)  # 2 steps at each of 1:2, 1:5, 1:10
    stages.run(config, str(tmp_path))
    uninterrupted = train_losses(tmp_path)
    # A run killed after step 3 (its step-6 checkpoint gone) resumes there, in phase 1:5, with the
    # batches and losses of the uninterrupted run (not from stage 1's params again).
    shutil.rmtree(tmp_path / "train" / "checkpoints" / "latest" / "6")
    config.stages = "train"
    stages.run(config, str(tmp_path))
    rerun = train_losses(tmp_path)[len(uninterrupted):]
    assert [step for step, _ in rerun] == [4, 5, 6]
    np.testing.assert_allclose([loss for _, loss in rerun], [loss for _, loss in uninterrupted[3:]], rtol=1e-5)
    summary = json.load(open(tmp_path / "train" / "summary.json"))
    assert summary["best_step"] == summary["final_step"] == 6  # validated once, at the end
    assert 0.0 <= json.load(open(tmp_path / "eval" / "metrics.json"))["ranking"]["auc"] <= 1.0
    before, after = best_params(workdir), best_params(tmp_path)
    for (path, old), new in zip(jax.tree_util.tree_leaves_with_path(before), jax.tree.leaves(after)):
        name = param_path(path)
        assert np.array_equal(np.asarray(old), np.asarray(new)) != is_frozen(name, gat.STAGE2_TRAINED), name
