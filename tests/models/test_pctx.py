"""Pctx's recommender: augmentation, ensemble scoring, exact multi-SID decoding, and a tiny
end-to-end run."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import pctx as pctx_config
from gr_jax import stages
from gr_jax.models import pctx as pctx_model
from gr_jax.tokenizers.sid_table import SIDTable


def hand_table():
    """3 items; item 0 has SIDs 0 and 1 (counts 1 and 3), items 1 and 2 one SID each; 3 levels of 4 codes."""
    codes = np.array([[0, 0, 0], [0, 1, 0], [1, 0, 0], [2, 3, 1]])
    return SIDTable(codes, (4, 4, 4), sid_item=[0, 0, 1, 2], event_sid=[0] * 40 + [2] * 20 + [3] * 20,
                    sid_counts=[1, 3, 5, 5])


def small_config(**overrides):
    config = pctx_config.model_config()
    config.update(num_user_buckets=10, embed_dim=16, num_encoder_layers=1, num_decoder_layers=1, num_heads=2,
                  head_dim=8, mlp_dim=32, dropout=0.0, beam_size=8, num_copies=1)
    config.update(**overrides)
    return config


def test_augmentation_redraws_each_position_with_probability_gamma_weighted_by_counts():
    gamma = 0.3
    model = pctx_model.PctxRecommender(small_config(augment_prob=gamma), hand_table())
    b = 512
    batch = {"history": jnp.zeros((b, 10), jnp.int32), "history_event": jnp.zeros((b, 10), jnp.int32),
             "target": jnp.zeros(b, jnp.int32), "target_event": jnp.zeros(b, jnp.int32)}
    out = model.augmented(batch, jax.random.PRNGKey(0))
    sids = np.concatenate([np.asarray(out["history_sid"]).ravel(), np.asarray(out["target_sid"])])
    # Every event of item 0 is SID 0; a redraw gives SID 1 with probability 3/4.
    assert abs((sids == 1).mean() - gamma * 0.75) < 0.02
    assert set(np.unique(sids)) <= {0, 1}


def test_inference_copies_are_keyed_by_event_not_by_batch_position():
    model = pctx_model.PctxRecommender(small_config(augment_prob=0.5), hand_table())
    events = jnp.arange(8, dtype=jnp.int32).reshape(2, 4)
    batch = {"history": jnp.zeros((2, 4), jnp.int32), "history_event": events,
             "history_mask": jnp.ones((2, 4), bool), "user": jnp.arange(2)}
    swapped = {k: v[::-1] for k, v in batch.items()}
    a = np.asarray(model.copies(batch, 3)["history_sid"]).reshape(3, 2, 4)
    b = np.asarray(model.copies(swapped, 3)["history_sid"]).reshape(3, 2, 4)
    np.testing.assert_array_equal(a, b[:, ::-1])
    assert len({tuple(a[c].ravel()) for c in range(3)}) > 1  # copies differ


def test_beams_of_one_item_merge_by_logsumexp_and_copies_fuse_by_reciprocal_log_rank():
    items = jnp.array([[3, 5, 3, -1]])
    scores = jnp.log(jnp.array([[.4, .3, .2, 1.0]]))
    merged = np.asarray(pctx_model.merge_beams(items, scores))
    np.testing.assert_allclose(merged[0, :2], np.log([.6, .3]), rtol=1e-6)
    assert merged[0, 2] == -np.inf and merged[0, 3] == -np.inf
    # Copy lists [3, 5, 7] and [5, 9, 3]: 5 scores 1/log2(3) + 1 = 1.63, 3 scores 1 + 1/2, 9 .63, 7 .5.
    lists = jnp.array([[[3, 5, 7], [5, 9, 3]]])
    np.testing.assert_array_equal(pctx_model.fuse_rankings(lists, 3), [[5, 3, 9]])
    np.testing.assert_array_equal(pctx_model.fuse_rankings(jnp.array([[[4, -1, -1]]]), 2), [[4, -1]])


def test_one_copy_decoding_equals_exhaustive_scoring_with_multi_sid_items():
    table = hand_table()
    model = pctx_model.PctxRecommender(small_config(augment_prob=0.0), table)
    rng = np.random.default_rng(0)
    b = 3
    batch = {"history": jnp.asarray(rng.integers(0, 3, (b, 5)), jnp.int32),
             "history_event": jnp.asarray(rng.integers(0, 80, (b, 5)), jnp.int32),
             "history_mask": jnp.ones((b, 5), bool), "user": jnp.arange(b), "target": jnp.zeros(b, jnp.int32),
             "target_event": jnp.zeros(b, jnp.int32)}
    params = model.init(jax.random.PRNGKey(1), batch)
    ranked = np.asarray(model.topk(params, batch, 3))
    # Exhaustive: every SID's log-probability; an item scores the logsumexp of its SIDs'.
    tokenized = model.copies(batch, 1)
    per_sid = np.stack([np.asarray(model.sequence_log_probs(params, tokenized, jnp.tile(model.codes[s], (b, 1))))
                        for s in range(len(table.codes))], 1)
    item_scores = np.stack([np.logaddexp(per_sid[:, 0], per_sid[:, 1]), per_sid[:, 2], per_sid[:, 3]], 1)
    np.testing.assert_array_equal(ranked, np.argsort(-item_scores, 1))


def test_tiny_pipeline_trains_and_evaluates(tmp_path):
    config = pctx_config.get_config("tiny")
    artifacts = stages.run(config, str(tmp_path))
    summary = json.load(open(tmp_path / "tokenize" / "summary.json"))
    assert summary["num_sids"] >= artifacts.dataset.num_items and summary["mean_sids_per_item"]["final"] > 1.0
    metrics = json.load(open(tmp_path / "eval" / "metrics.json"))
    # Better than chance on the 100-item catalogue (chance recall@10 = .1).
    assert metrics["test"]["recall@10"] > 0.1 and metrics["valid"]["ndcg@10"] > 0.0
    reloaded = stages.Artifacts(config, str(tmp_path))
    assert reloaded.sid_table.personalized and isinstance(reloaded.model(), pctx_model.PctxRecommender)


def test_rankings_pctx_cannot_apply_are_refused():
    for knob, match in (("dense_weight", "one SID per item"), ("popularity_penalty", "copy ensemble")):
        with pytest.raises(ValueError, match=match):
            pctx_model.PctxRecommender(small_config(**{knob: 1.0}), hand_table())
