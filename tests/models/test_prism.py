"""PRISM's recommender: MoE load balance, ATS temperatures, SSA targets, exact beam search, a tiny run."""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from toy_data import history_batch

from configs import prism as prism_config
from gr_jax import stages
from gr_jax.decoding.trie import build_trie
from gr_jax.models import prism
from gr_jax.models.layers.dropout import hash_keep_mask, mix_keys
from gr_jax.stages.features import CF_FILE, TEXT_FILE
from gr_jax.tokenizers.sid_table import SIDTable

K = 4


def small_model_config(**overrides):
    config = prism_config.model_config()
    config.update(num_user_buckets=10, embed_dim=16, num_encoder_layers=1, num_decoder_layers=2, num_heads=2,
                  head_dim=8, mlp_dim=32, expert_dim=16, dropout=0.0, beam_size=8)
    config.update(**overrides)
    return config


def sid_table(seed=0, n=30, with_dedup_digit=True):
    rng = np.random.default_rng(seed)
    codes = np.unique(rng.integers(0, K, (n, 3)), axis=0)
    if with_dedup_digit:  # 3 quantised levels + a de-dup digit without a codebook
        codes = np.concatenate([codes, codes[:3]])
        digit = np.zeros(len(codes), int)
        digit[-3:] = 1
        codes = np.concatenate([codes, digit[:, None]], 1)
    return SIDTable(codes, (K,) * codes.shape[1], codebooks=[rng.normal(size=(K, 6)) for _ in range(3)])


def recommender(table, seed=0, **overrides):
    rng = np.random.default_rng(seed)
    n = table.num_items
    return prism.PrismRecommender(small_model_config(**overrides), table, rng.normal(size=(n, 12)),
                                  rng.normal(size=(n, 5)))


def test_moe_balance_loss_spreads_tokens_over_all_experts_from_a_collapsed_router():
    tokens = jax.random.normal(jax.random.PRNGKey(0), (256, 3, 8))
    targets = jax.random.normal(jax.random.PRNGKey(1), (256, 8))
    valid = jnp.ones((256,), bool)
    module = prism.MoEFusion(num_experts=4, expert_dim=16, top_k=2, dropout=0.0)
    params = module.init({"params": jax.random.PRNGKey(2), "dropout": jax.random.PRNGKey(3)}, tokens, valid)["params"]
    # Start collapsed: the router prefers experts 0 and 1 by a wide margin.
    params["router_logits"]["bias"] = jnp.array([4.0, 4.0, -4.0, -4.0])

    def shares(params):
        _, stats = module.apply({"params": params}, tokens, valid)
        return np.asarray(stats["usage"])

    optimizer = optax.adam(1e-2)

    def loss(params, rng, balance_weight):
        out, stats = module.apply({"params": params}, tokens, valid, True, rngs={"dropout": rng})
        return jnp.mean((out - targets) ** 2) + balance_weight * stats["balance"]

    @jax.jit
    def train(params, balance_weight):
        def step(carry, rng):
            params, opt_state = carry
            updates, opt_state = optimizer.update(jax.grad(loss)(params, rng, balance_weight), opt_state)
            return (optax.apply_updates(params, updates), opt_state), None

        (trained, _), _ = jax.lax.scan(step, (params, optimizer.init(params)),
                                       jax.random.split(jax.random.PRNGKey(4), 100))
        return trained

    before = shares(params)
    assert before[2:].sum() < 0.01  # experts 2 and 3 get (almost) no tokens
    balanced = shares(train(params, 1.0))
    assert balanced.min() > 0.15, balanced  # uniform is 0.25 each
    unbalanced = shares(train(params, 0.0))
    assert unbalanced.min() < 0.05, unbalanced  # the task loss alone leaves the router collapsed
    np.testing.assert_allclose(balanced.sum(), 1.0, atol=1e-6)


def test_moe_experts_equal_a_plain_token_major_reference_with_dropout():
    """The expert-major stack against per-token, per-expert Dense + LayerNorm, its dropout masks drawn
    as a token-major ``[tokens, E, h]`` array would draw them (router noise off, so the gates come from
    the captured router logits)."""
    sources = jax.random.normal(jax.random.PRNGKey(0), (5, 3, 3, 8))
    weight, keys, seed = jnp.ones((5, 3)), jnp.arange(15, dtype=jnp.uint32).reshape(5, 3) + 40, jnp.uint32(7)
    module = prism.MoEFusion(num_experts=4, expert_dim=16, top_k=2, router_noise=False, input_noise=0.0, dropout=0.5)
    params = nn.unbox(module.init(jax.random.PRNGKey(1), sources, weight)["params"])
    (fused, _), captured = module.apply({"params": params}, sources, weight, True, keys, seed,
                                        capture_intermediates=True)
    probs = jax.nn.softmax(captured["intermediates"]["router_logits"]["__call__"][0])
    top_probs, top = jax.lax.top_k(probs, 2)
    gates = (jax.nn.one_hot(top, 4) * (top_probs / top_probs.sum(-1, keepdims=True))[..., None]).sum(-2)

    def layer(h, name, spec):  # per expert: Dense
        return jnp.einsum(spec, h, params[f"{name}_kernel"]) + params[f"{name}_bias"]

    def norm(h, name):  # per expert: its own LayerNorm over its hidden units
        mean, var = h.mean(-1, keepdims=True), h.var(-1, keepdims=True)
        return (h - mean) / jnp.sqrt(var + 1e-6) * params[name]["scale"] + params[name]["bias"]

    def drop(h, draw):  # draws 0: the router's dropout, then the experts' two
        keep = hash_keep_mask(mix_keys(jnp.uint32(draw), seed), h.shape, 0.5, keys)
        return jnp.where(keep, h * 2.0, 0.0)

    h = drop(jax.nn.relu(norm(layer(sources.reshape(5, 3, 24), "expert_in", "...i,eih->...eh"), "expert_norm")), 1)
    h = drop(jax.nn.relu(layer(h, "expert_mid", "...ei,eih->...eh")), 2)
    h = norm(layer(h, "expert_out", "...ei,eih->...eh"), "expert_out_norm")  # [5, 3, E, 4]
    mixed = jnp.einsum("...e,...eh->...h", gates, h)
    out = mixed @ params["output"]["kernel"] + params["output"]["bias"]
    mean, var = out.mean(-1, keepdims=True), out.var(-1, keepdims=True)
    out = (out - mean) / jnp.sqrt(var + 1e-6) * params["output_norm"]["scale"] + params["output_norm"]["bias"]
    alpha = jax.nn.sigmoid(params["fusion_alpha"])
    want = sources[..., 0, :] + alpha * (out - sources[..., 0, :])
    np.testing.assert_allclose(np.asarray(fused), np.asarray(want), rtol=1e-5, atol=1e-5)
    assert 0.3 < float((np.asarray(drop(jnp.ones((5, 3, 4, 16)), 1)) == 0).mean()) < 0.7  # dropout was on


def test_ats_temperature_follows_the_closed_form_of_each_prefix_child_count():
    codes = np.array([[0, 0, 0], [0, 0, 1], [0, 1, 0], [0, 2, 0], [1, 0, 0]])
    trie = build_trie(codes, 3)
    counts = prism.prefix_child_counts(trie, codes)
    np.testing.assert_array_equal(counts, [[2, 3, 2], [2, 3, 2], [2, 3, 1], [2, 3, 1], [2, 1, 1]])
    config = small_model_config(ats_alpha=0.7, ats_tau_min=0.2, ats_tau_max=1.5, ats_k_ref=2.0)
    tau = prism.ats_temperatures(trie, codes, config)
    np.testing.assert_allclose(tau, 0.2 + 1.3 * np.exp(-0.7 * counts / 2.0), rtol=1e-6)
    # Paper defaults: tau(K) = 0.1 + 1.9 exp(-K / 100); clipped; a childless prefix gets tau_max.
    np.testing.assert_allclose(prism.ats_temperature([0, 1, 50, 10_000]),
                               [2.0, 0.1 + 1.9 * np.exp(-0.01), 0.1 + 1.9 * np.exp(-0.5), 0.1], rtol=1e-6)
    config.update(ats_start_level=1, ats_mean_center=True)
    centred = prism.ats_temperatures(trie, codes, config)
    np.testing.assert_allclose(centred.mean(), 1.0, rtol=1e-6)
    # Level 0 was left at tau = 1 before centring: the other levels are tau / that constant.
    np.testing.assert_allclose(centred[:, 1:] / centred[:, :1], tau[:, 1:], rtol=1e-6)


def test_ats_divides_each_target_level_logits_by_its_temperature_in_the_training_loss():
    table = sid_table(with_dedup_digit=False)
    model = recommender(table, dsi=False, ssa=False, ats=True)
    b = history_batch(table.num_items)
    params = model.init(jax.random.PRNGKey(0), b)
    target = model.codes[b["target"]]
    logits = jax.jit(lambda p: model.module.apply({"params": p}, **model.inputs(b), target_codes=target))(params)
    tau = prism.ats_temperatures(model.trie, table.codes, model.config)[np.asarray(b["target"])]
    scaled = np.asarray(logits) / tau[..., None]
    expected = np.mean([sum(-jax.nn.log_softmax(scaled[i, l])[target[i, l]] for l in range(3))
                        for i in range(len(target))])
    _, metrics = jax.jit(model.loss)(params, b, jax.random.PRNGKey(1))
    np.testing.assert_allclose(metrics["nll"], expected, rtol=1e-5)
    assert not np.allclose(tau, 1.0)


def test_ssa_loss_compares_predictions_with_the_codebook_rows_of_the_target_codes():
    codebooks = jnp.stack([jnp.eye(K) * (level + 1) for level in range(3)])  # row c of level l: (l+1) e_c
    target = jnp.array([[0, 1, 2, 3], [3, 3, 0, 1]])  # 4 levels; the 4th has no codebook
    right = jax.nn.one_hot(target[:, :3], K) * 2.5
    wrong = jax.nn.one_hot((target[:, :3] + 1) % K, K)
    np.testing.assert_allclose(prism.ssa_loss(right, codebooks, target), 0.0, atol=1e-6)
    np.testing.assert_allclose(prism.ssa_loss(wrong, codebooks, target), 1.0, atol=1e-6)
    np.testing.assert_allclose(prism.ssa_loss(-right, codebooks, target), 2.0, atol=1e-6)
    table = prism.ssa_codebook_table([np.ones((2, 3)), np.ones((4, 3))], num_levels=4)
    assert table.shape == (2, 4, 3) and not table[0, 2:].any()
    model = recommender(sid_table())  # 4-level SIDs, 3 codebooks: SSA predicts levels 0..2 only
    assert model.module.ssa_levels == 3 and model.ssa_codebooks.shape == (3, K, 6)


def test_ssa_predictor_conditions_each_level_on_the_previous_levels_prediction():
    predictor = prism.CodebookPredictor(num_levels=3, out_dim=6, dropout=0.0)
    states = jax.random.normal(jax.random.PRNGKey(0), (2, 4, 16))
    params = predictor.init(jax.random.PRNGKey(1), states)["params"]
    base = predictor.apply({"params": params}, states)
    assert base.shape == (2, 3, 6)
    bumped = jax.tree_util.tree_map(lambda x: x, params)
    bumped["level1_out"] = {**params["level1_out"], "bias": params["level1_out"]["bias"] + 1.0}
    changed = np.abs(np.asarray(predictor.apply({"params": bumped}, states) - base)).max(-1)
    assert np.all(changed[:, 0] == 0) and np.all(changed[:, 1] > 0) and np.all(changed[:, 2] > 0)


def test_fusing_each_distinct_item_once_equals_fusing_every_slot_in_training():
    """The per-item DSI path (distinct history items fused once, at one of two static row counts)
    gives the per-slot reference's embeddings, balance statistics and gradients, noise and dropout
    included."""
    rng = np.random.default_rng(0)
    codes = rng.permutation(np.stack(np.unravel_index(np.arange(512), (8, 8, 8)), 1))[:400]
    table = SIDTable(codes, (8, 8, 8), codebooks=[rng.normal(size=(8, 6)) for _ in range(3)])
    assert prism.distinct_buckets(96 * 5, table.num_items, growth=2.0) == (256, 401)
    # distinct items: <= 101, > 256
    few, many = history_batch(100, size=96, seed=1), history_batch(400, size=96, seed=2)
    assert len(np.unique(few["history"])) < 256 < len(np.unique(many["history"]))
    probe = jax.random.normal(jax.random.PRNGKey(9), (96, 5, 3, 16))

    def fused(model):
        def loss(params, b, key):
            inputs = model.inputs(b)
            embeddings, state = model.module.apply(
                {"params": params}, inputs["history_codes"], inputs["history_mask"], inputs["history_features"],
                True, rngs={"dropout": key}, mutable=["intermediates"], method=prism.Prism.history_token_embeddings)
            stats = {k: v[0] for k, v in state["intermediates"].items()}
            return (embeddings * probe).sum() + stats.get("dsi_balance", 0.0), (embeddings, stats)
        return jax.jit(jax.value_and_grad(loss, has_aux=True))

    for fusion, batches in (("moe", (few, many)), ("gate", (few,))):
        slot, item = (recommender(table, dsi_fusion=fusion, dropout=0.3, dsi_per_item=per_item, dsi_bucket_growth=2.0)
                      for per_item in (False, True))  # the two row counts asserted above
        params = item.init(jax.random.PRNGKey(0), few)
        slot_fused, item_fused = fused(slot), fused(item)
        for b in batches:
            (_, (embeddings_s, stats_s)), grads_s = slot_fused(params, b, jax.random.PRNGKey(5))
            (_, (embeddings_i, stats_i)), grads_i = item_fused(params, b, jax.random.PRNGKey(5))
            np.testing.assert_allclose(embeddings_i, embeddings_s, rtol=1e-5, atol=1e-5)
            assert stats_s.keys() == stats_i.keys()
            for name, value in stats_s.items():
                np.testing.assert_allclose(stats_i[name], value, rtol=1e-5, atol=1e-6, err_msg=name)
            for got, want in zip(jax.tree_util.tree_leaves(grads_i), jax.tree_util.tree_leaves(grads_s)):
                np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3 * np.abs(want).max())  # summation order
            (_, (other, _)), _ = item_fused(params, b, jax.random.PRNGKey(6))  # live noise: another key, other values
            assert np.abs(np.asarray(other - embeddings_i)).max() > 1e-3


def test_prism_beam_search_equals_exhaustive_scoring_and_returns_only_valid_sids():
    table = sid_table(seed=1)
    model = recommender(table)  # DSI (MoE), SSA and ATS on
    num_sids = len(model.trie.sid_items)
    b = history_batch(table.num_items)
    params = model.init(jax.random.PRNGKey(0), b)
    sids, scores = jax.jit(lambda p, x: model.search(p, model.inputs(x), num_sids).results())(params, b)
    sid_codes = model.codes[model.trie.sid_items[:, 0]]
    score_all = jax.jit(model.sequence_log_probs)
    for row in range(len(b["user"])):
        single = {k: jnp.repeat(v[row:row + 1], num_sids, axis=0) for k, v in b.items()}
        reference = np.asarray(score_all(params, single, sid_codes))
        np.testing.assert_array_equal(np.asarray(sids[row]), np.argsort(-reference, kind="stable"))
        np.testing.assert_allclose(np.asarray(scores[row]), np.sort(reference)[::-1], atol=1e-5)
    assert (np.asarray(sids) >= 0).all()  # a full-width beam holds only real SIDs


def test_tiny_prism_train_and_eval_stages_write_metrics(tmp_path):
    """data -> train -> eval through ``stages.run``; the features and tokenize stages' outputs are
    stand-ins written to the workdir (those stages have their own tests; MiniLM + RQ-VAE would
    dominate the run time)."""
    config = prism_config.get_config("tiny")
    config.stages = "data,train,eval"
    config.train.num_steps = 12
    config.mesh.data = 1  # one device: the run is compile-bound
    num_items = config.data.synthetic.num_items
    rng = np.random.default_rng(0)
    (tmp_path / "features").mkdir()
    np.save(tmp_path / "features" / TEXT_FILE, rng.normal(size=(num_items, 384)).astype(np.float32))
    np.save(tmp_path / "features" / CF_FILE, rng.normal(size=(num_items, 16)).astype(np.float32))
    codes = np.stack(np.unravel_index(np.arange(num_items), (5, 5, 4)), 1)
    SIDTable(codes, (16, 16, 16), codebooks=[rng.normal(size=(16, 8)) for _ in range(3)]).save(
        str(tmp_path / "tokenize"))
    artifacts = stages.run(config, str(tmp_path))
    assert isinstance(artifacts.model(), prism.PrismRecommender)
    metrics = json.load(open(tmp_path / "eval" / "metrics.json"))
    for split in ("valid", "test"):
        assert 0.0 <= metrics[split]["ndcg@10"] <= metrics[split]["recall@10"] <= 1.0
    train = json.load(open(tmp_path / "train" / "summary.json"))
    assert train["final_step"] == 12
    logged = [json.loads(line) for line in (tmp_path / "train" / "metrics.jsonl").read_text().splitlines()]
    keys = set().union(*logged)
    assert {"train/nll", "train/ssa", "train/moe_balance", "valid/ndcg@10"} <= keys
