"""Hybrid generative + dense retrieval on TIGER's model (ID+SID inputs, the dense head, the fused ranking),
and the popularity-corrected ranking of every retrieval."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from toy_data import catalog, history_batch

from configs import tiger as tiger_config
from gr_jax.models.tiger import Tiger, TigerRecommender
from gr_jax.tokenizers.sid_table import SIDTable

K = 4


def tiger(codes, item_text=None, item_counts=None, **knobs):
    config = tiger_config.model_config()
    config.update(num_user_buckets=10, embed_dim=16, num_encoder_layers=1, num_decoder_layers=2, num_heads=2,
                  head_dim=8, mlp_dim=32, dropout=0.0, **knobs)
    return TigerRecommender(config, SIDTable(codes, (K,) * codes.shape[1]), item_text=item_text,
                            item_counts=item_counts)


def item_text(num_items, dim=6):
    return np.random.default_rng(5).normal(size=(num_items, dim)).astype(np.float32)


@pytest.mark.parametrize("dense_item,dense_loss", [("codes_id", "softmax"), ("codes_id_text", "infonce")])
def test_hybrid_ranking_with_a_full_beam_equals_the_fused_score_of_every_item(dense_item, dense_loss):
    gen_weight = 0.7
    codes = catalog()
    num_items, num_sids = len(codes), len(np.unique(codes, axis=0))
    model = tiger(codes, item_text(num_items), beam_size=num_sids, item_id_input=True, dense_weight=1.0,
                  retrieval="hybrid", hybrid_gen_weight=gen_weight, dense_item=dense_item, dense_loss=dense_loss)
    b = history_batch(num_items)
    params = model.init(jax.random.PRNGKey(0), b)
    params = jax.tree_util.tree_map(lambda x: x + 0.3 * jax.random.normal(jax.random.PRNGKey(1), x.shape), params)
    ranked = np.asarray(jax.jit(lambda p, x: model.topk(p, x, num_items))(params, b))
    encoded, mask = model.encode(params, model.inputs(b))
    dense = np.asarray(model.module.apply({"params": params}, encoded, mask, model.dense_items(),
                                            method=Tiger.dense_scores))
    for row in range(len(b["user"])):
        single = {k: jnp.repeat(v[row:row + 1], num_items, axis=0) for k, v in b.items()}
        generative = np.asarray(model.sequence_log_probs(params, single, model.codes))
        fused = dense[row] + gen_weight * generative
        np.testing.assert_array_equal(ranked[row], np.argsort(-fused, kind="stable"))


def test_candidate_scores_through_the_decoding_step_equal_teacher_forced_scores():
    codes = catalog()
    model = tiger(codes, beam_size=5)
    b = history_batch(len(codes))
    params = model.init(jax.random.PRNGKey(0), b)
    candidates = jnp.asarray(np.random.default_rng(2).integers(0, len(codes), (4, 6)))
    encoded, mask = model.encode(params, model.inputs(b))
    got = model.candidate_log_probs(params, encoded, mask, model.codes[candidates])
    for c in range(candidates.shape[1]):
        want = model.sequence_log_probs(params, b, model.codes[candidates[:, c]])
        np.testing.assert_allclose(got[:, c], want, atol=1e-5)


def test_item_ids_tell_apart_items_that_share_a_sid_and_the_dense_loss_trains_them():
    codes = catalog()
    b = history_batch(len(codes))
    shift = len(codes) - 3  # item i + shift shares item i's SID for i < 3
    twin = dict(b, history=jnp.where(b["history"] < 3, b["history"] + shift, b["history"]))
    assert not np.array_equal(twin["history"], b["history"])
    for item_ids in (False, True):
        model = tiger(codes, beam_size=5, item_id_input=item_ids, dense_weight=0.5)
        params = nn.unbox(model.init(jax.random.PRNGKey(0), b))
        same = np.allclose(model.encode(params, model.inputs(b))[0], model.encode(params, model.inputs(twin))[0])
        assert same != item_ids
        (loss, metrics), grads = jax.value_and_grad(model.loss, has_aux=True)(params, b, jax.random.PRNGKey(3), 0)
        plain, _ = TigerRecommender.objective(model, *model.module.apply(
            {"params": params}, **model.inputs(b), target_codes=model.codes[b["target"]],
            dense_items=model.dense_items(),
            method=Tiger.training_outputs)[:2], {}, model.codes[b["target"]], b)
        np.testing.assert_allclose(loss, plain + 0.5 * metrics["dense_ce"], rtol=1e-6)
        assert np.abs(grads["item_embed"]["embedding"][b["target"]]).sum() > 0


def test_reserved_dense_slots_end_the_fused_ranking_with_the_dense_heads_best_unranked_items():
    codes = catalog()
    num_items, num_sids = len(codes), len(np.unique(codes, axis=0))
    knobs = dict(beam_size=num_sids, item_id_input=True, dense_weight=1.0, retrieval="hybrid")
    fused_model, slots_model = tiger(codes, **knobs), tiger(codes, hybrid_dense_slots=3, **knobs)
    b = history_batch(num_items)
    params = fused_model.init(jax.random.PRNGKey(0), b)
    params = jax.tree_util.tree_map(lambda x: x + 0.3 * jax.random.normal(jax.random.PRNGKey(1), x.shape), params)
    fused = np.asarray(fused_model.topk(params, b, 6))
    ranked = np.asarray(slots_model.topk(params, b, 6))
    encoded, mask = fused_model.encode(params, fused_model.inputs(b))
    dense = np.asarray(fused_model.module.apply({"params": params}, encoded, mask, fused_model.dense_items(),
                                                  method=Tiger.dense_scores))
    for row in range(len(b["user"])):
        unranked = [i for i in np.argsort(-dense[row], kind="stable") if i not in fused[row, :3]]
        np.testing.assert_array_equal(ranked[row], list(fused[row, :3]) + unranked[:3])
    with pytest.raises(ValueError, match="exceeds the 2 items"):
        slots_model.topk(params, b, 2)
    with pytest.raises(ValueError, match="model.retrieval=hybrid only"):
        tiger(codes, beam_size=5, dense_weight=1.0, retrieval="dense", hybrid_dense_slots=2)


@pytest.mark.parametrize("retrieval", ["beam", "dense", "hybrid"])
def test_the_popularity_penalty_ranks_by_score_minus_penalty_times_log_count(retrieval):
    codes = catalog()
    num_items = len(codes)
    counts = np.random.default_rng(3).permutation(num_items) * 7  # distinct: no ties between items
    knobs = dict(beam_size=num_items, dense_weight=1.0, retrieval=retrieval)  # every item is a candidate
    plain = tiger(codes, **knobs)
    b = history_batch(num_items)
    params = plain.init(jax.random.PRNGKey(0), b)
    params = jax.tree_util.tree_map(lambda x: x + 0.3 * jax.random.normal(jax.random.PRNGKey(1), x.shape), params)
    if retrieval == "beam":  # the beam's own scores of every item
        items, scores = (np.asarray(x) for x in jax.jit(plain.beam_candidates, static_argnums=2)(params, b, num_items))
    else:  # the plain ranking's scores: dense log-probs, or the fused score (full beam: every item a candidate)
        encoded, mask = plain.encode(params, plain.inputs(b))
        dense = np.asarray(plain.module.apply({"params": params}, encoded, mask, plain.dense_items(),
                                              method=Tiger.dense_scores))
        items = np.tile(np.arange(num_items), (len(dense), 1))
        scores = dense if retrieval == "dense" else dense + np.asarray(plain.candidate_log_probs(
            params, encoded, mask, plain.codes[items]))
    model = tiger(codes, item_counts=counts, popularity_penalty=0.5, **knobs)
    ranked = np.asarray(jax.jit(model.topk, static_argnums=2)(params, b, 5))
    adjusted = scores - 0.5 * np.log1p(counts[items])
    want = np.take_along_axis(items, np.argsort(-adjusted, axis=1, kind="stable")[:, :5], 1)
    np.testing.assert_array_equal(ranked, want)
    assert not np.array_equal(ranked, np.take_along_axis(items, np.argsort(-scores, axis=1, kind="stable")[:, :5], 1))
    with pytest.raises(ValueError, match="needs the training count"):
        tiger(codes, popularity_penalty=0.5, **knobs)


def test_dense_retrieval_needs_the_dense_head():
    with pytest.raises(ValueError, match="model.dense_weight > 0"):
        tiger(catalog(), beam_size=5, retrieval="hybrid")


def test_a_dense_head_over_item_text_scores_items_by_their_text_alone():
    codes = catalog()
    b = history_batch(len(codes))
    text = item_text(len(codes))
    text[7] = text[2]  # items 2 and 7: same text, different SIDs
    assert not np.array_equal(codes[2], codes[7])
    model = tiger(codes, text, beam_size=5, dense_weight=1.0, dense_item="text")
    params = nn.unbox(model.init(jax.random.PRNGKey(0), b))
    assert "item_embed" not in params  # no ID table: neither item_id_input nor an ID part in the item vectors
    encoded, mask = model.encode(params, model.inputs(b))
    dense = np.asarray(model.module.apply({"params": params}, encoded, mask, model.dense_items(),
                                          method=Tiger.dense_scores))
    np.testing.assert_array_equal(dense[:, 2], dense[:, 7])
    assert np.ptp(dense, axis=1).min() > 0
    grads = jax.grad(lambda p: model.loss(p, b, jax.random.PRNGKey(3), 0)[0])(params)
    assert np.abs(grads["dense_text"]["kernel"]).sum() > 0


def test_the_infonce_dense_loss_is_in_batch_cross_entropy_over_cosines_without_false_negatives():
    codes = catalog()
    b = history_batch(len(codes))
    b["target"] = b["target"].at[1].set(b["target"][0])  # row 1's target is row 0's too: not a negative of either
    temperature = 0.1
    model = tiger(codes, beam_size=5, dense_weight=1.0, dense_loss="infonce", dense_temperature=temperature)
    params = nn.unbox(model.init(jax.random.PRNGKey(0), b))
    _, metrics = model.loss(params, b, jax.random.PRNGKey(3), 0)
    states = model.module.apply({"params": params}, *model.encode(params, model.inputs(b)),
                                model.codes[b["target"]], method=Tiger.decode_states)
    query = np.asarray(params["dense_query"]["kernel"]).T @ np.asarray(states[:, 0]).T
    query = (query.T + np.asarray(params["dense_query"]["bias"]))
    items = np.asarray(model.module.apply({"params": params}, model.dense_items(), method=Tiger.item_vectors))
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
    logits = unit(query) @ unit(items[np.asarray(b["target"])]).T / temperature
    logits[0, 1] = logits[1, 0] = -np.inf
    want = np.mean([np.log(np.exp(row).sum()) - row[i] for i, row in enumerate(logits)])
    np.testing.assert_allclose(metrics["dense_ce"], want, rtol=1e-5)


def test_a_dense_head_over_item_text_needs_the_text():
    with pytest.raises(ValueError, match="needs the items' text embeddings"):
        tiger(catalog(), beam_size=5, dense_weight=1.0, dense_item="text")
    with pytest.raises(ValueError, match="model.dense_item"):
        tiger(catalog(), item_text(len(catalog())), beam_size=5, dense_weight=1.0, dense_item="txt")
