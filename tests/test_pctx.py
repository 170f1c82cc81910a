"""Pctx: centroid allocation, merging, the tokenizer's invariants, augmentation, ensemble scoring,
exact multi-SID decoding, and a tiny end-to-end run."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import pctx as pctx_config
from gr_jax import stages
from gr_jax.data.synthetic import SyntheticConfig, generate
from gr_jax.data.splits import train_event_mask
from gr_jax.models import pctx as pctx_model
from gr_jax.tokenizers import pctx
from gr_jax.tokenizers.pctx import PctxConfig, PersonalizedSIDs

# ---------------------------------------------------------------- allocation


def test_group_shares_are_the_normalised_gamma_pdf_of_the_paper_defaults():
    # The authors' Scientific shares (T=10, k=4.5), recomputed by hand from their rule.
    expected = [.03, .13, .215, .215, .16, .11, .07, .04, .02, .01]
    np.testing.assert_allclose(pctx.group_shares(10, 4.5), expected, atol=1e-9)


def test_centroid_counts_follow_quantiles_of_distinct_counts():
    # T=2, k=1: shares e^-1 : e^-2 = .73 : .27, so of the 10 distinct counts 1..10 the first 7 form
    # group 0 (2 centroids) and 8..10 group 1 (2 + 3 = 5); count 1 < 2 gets a single centroid.
    config = PctxConfig(num_groups=2, gamma_shape=1.0, first_centroids=2, centroid_step=3)
    counts = np.arange(1, 11)
    np.testing.assert_array_equal(pctx.centroid_counts(counts, config), [1, 2, 2, 2, 2, 2, 2, 5, 5, 5])
    # Quantiles are over distinct counts: many items sharing a count do not move the boundaries;
    # items without training events get one centroid; the static ablation gives one to everyone.
    crowded = np.concatenate([counts, np.full(50, 3), [0]])
    k = pctx.centroid_counts(crowded, config)
    np.testing.assert_array_equal(k[:10], [1, 2, 2, 2, 2, 2, 2, 5, 5, 5])
    assert (k[10:60] == 2).all() and k[60] == 1
    static = PctxConfig(personalized=False)
    assert (pctx.centroid_counts(counts, static) == 1).all()


def test_kmeans_pp_separates_planted_clusters_and_drops_empty_ones():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, .1, (20, 2)), rng.normal(5, .1, (20, 2))])
    centroids, labels = pctx.kmeans_pp(x, 2, rng, 20)
    assert len(centroids) == 2 and len(set(labels[:20])) == 1 and len(set(labels[20:])) == 1
    assert labels[0] != labels[20]
    same = np.zeros((5, 2))  # identical points: only one non-empty cluster survives
    centroids, labels = pctx.kmeans_pp(same, 3, rng, 20)
    assert len(centroids) == 1 and (labels == 0).all()


# ---------------------------------------------------------------- merging


def test_rare_sids_merge_into_their_nearest_survivor():
    # shares .5, .05, .05, .4 with tau .2: SID 1 sits next to 0, SID 2 next to 3.
    counts = np.array([10, 1, 1, 8])
    centroids = np.array([[0.0, 0], [0.1, 0], [5.0, 0], [5.2, 0]])
    np.testing.assert_array_equal(pctx.merge_rare(counts, centroids, 0.2), [0, 0, 3, 3])
    np.testing.assert_array_equal(pctx.merge_rare(counts, centroids, 0.0), [0, 1, 2, 3])


def test_merging_repeats_until_every_survivor_reaches_the_threshold():
    # shares .3 .3 .4, all below .5: least used first, SID 0 -> 1 (nearest), then 1 (now .6) stays
    # and 2 (.4) -> 1; one SID is always left.
    counts = np.array([3, 3, 4])
    centroids = np.array([[0.0], [1.0], [3.0]])
    pointer = pctx.merge_rare(counts, centroids, 0.5)
    np.testing.assert_array_equal(pointer, [1, 1, 1])


@pytest.fixture(scope="module")
def synthetic():
    data, _ = generate(SyntheticConfig(num_users=120, num_items=60, branching=(3, 2, 2), seed=1))
    users = data.users
    rng = np.random.default_rng(0)
    item_directions = rng.normal(size=(data.num_items, 8))
    # Contexts: the item's direction plus one of two planted "user perspectives".
    perspective = rng.integers(0, 2, len(users.items))
    contexts = item_directions[users.items] + 3.0 * np.eye(8)[perspective] + rng.normal(0, .1, (len(users.items), 8))
    text = rng.normal(size=(data.num_items, 12))
    return users, contexts, text


def fit(synthetic, **overrides):
    users, contexts, text = synthetic
    config = PctxConfig(codebook_size=8, context_pca_dim=4, text_pca_dim=6, **overrides)
    return pctx.fit_pctx(contexts, users.items, train_event_mask(users), text, config)


def test_tokenizer_gives_every_event_a_sid_of_its_own_item(synthetic, tmp_path):
    users, _, _ = synthetic
    table, summary = fit(synthetic)
    table.validate(60, len(users.items))
    np.testing.assert_array_equal(table.sid_item[table.event_sid], users.items)
    assert summary["mean_sids_per_item"]["final"] > 1.0  # two planted perspectives: several SIDs per item
    # After merging, each SID of a multi-SID item carries at least tau of its item's training events.
    train = train_event_mask(users)
    for item in np.flatnonzero(table.sids_per_item() > 1):
        rows = table.item_sids[item][table.item_sids[item] >= 0]
        counts = np.array([(table.event_sid[train] == r).sum() for r in rows])
        assert (counts / counts.sum() >= 0.2 - 1e-9).all()
        np.testing.assert_array_equal(counts, table.item_sid_counts[item][:len(rows)])
    table.save(str(tmp_path))
    loaded = PersonalizedSIDs.load(str(tmp_path))
    np.testing.assert_array_equal(loaded.codes, table.codes)
    np.testing.assert_array_equal(loaded.event_sid, table.event_sid)


def test_tau_controls_how_many_sids_survive_and_static_gives_one_per_item(synthetic):
    merged, _ = fit(synthetic)
    unmerged, summary = fit(synthetic, merge_threshold=0.0)
    assert unmerged.sids_per_item().sum() > merged.sids_per_item().sum()
    assert unmerged.sids_per_item().sum() == sum(int(k) * v for k, v in summary["sids_per_item"]["after_digit_merge"].items())
    static, _ = fit(synthetic, personalized=False)
    assert (static.sids_per_item() == 1).all()


def test_validate_names_a_stale_artifact(synthetic):
    table, _ = fit(synthetic)
    with pytest.raises(Exception, match="rerun the tokenize stage"):
        table.validate(61, len(table.event_sid))


# ---------------------------------------------------------------- model


def hand_table():
    """3 items; item 0 has SIDs 0 and 1 (counts 1 and 3), items 1 and 2 one SID each; 3 levels of 4 codes."""
    codes = np.array([[0, 0, 0], [0, 1, 0], [1, 0, 0], [2, 3, 1]])
    return PersonalizedSIDs(codes, sid_item=[0, 0, 1, 2], event_sid=[0] * 40 + [2] * 20 + [3] * 20,
                            item_sids=[[0, 1], [2, -1], [3, -1]], item_sid_counts=[[1, 3], [5, 0], [5, 0]],
                            codebook_sizes=(4, 4, 4))


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
    out = model._augmented(batch, jax.random.PRNGKey(0))
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


# ---------------------------------------------------------------- end to end


def test_tiny_pipeline_trains_and_evaluates(tmp_path):
    config = pctx_config.get_config("tiny")
    ctx = stages.run(config, str(tmp_path))
    summary = json.load(open(tmp_path / "tokenize" / "summary.json"))
    assert summary["num_sids"] >= ctx.dataset.num_items and summary["mean_sids_per_item"]["final"] > 1.0
    metrics = json.load(open(tmp_path / "eval" / "metrics.json"))
    # Better than chance on the 100-item catalogue (chance recall@10 = .1).
    assert metrics["test"]["recall@10"] > 0.1 and metrics["valid"]["ndcg@10"] > 0.0
    reloaded = stages.Context(config=config, workdir=str(tmp_path))
    assert isinstance(stages._sid_table(reloaded), PersonalizedSIDs)
