"""Pctx's personalized tokenizer: centroid allocation, merging and the artifact's invariants."""

import numpy as np
import pytest

from gr_jax.data.splits import train_event_mask
from gr_jax.data.synthetic import SyntheticConfig, generate
from gr_jax.tokenizers import pctx_tokenizer as pctx
from gr_jax.tokenizers.pctx_tokenizer import PctxConfig
from gr_jax.tokenizers.sid_table import SIDTable

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


def test_per_item_clusters_separate_planted_groups_and_drop_empty_ones():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, .1, (20, 2)), rng.normal(5, .1, (20, 2))])
    same = np.zeros((5, 2))  # identical points: only one non-empty cluster survives
    (centroids, labels), (one, one_labels), (alone, _) = pctx.cluster_items([x, same, x[:1]], [2, 3, 1], 20, seed=0)
    assert len(centroids) == 2 and len(set(labels[:20])) == 1 and len(set(labels[20:])) == 1
    assert labels[0] != labels[20]
    assert len(one) == 1 and (one_labels == 0).all()
    np.testing.assert_array_equal(alone, x[:1])


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
    loaded = SIDTable.load(str(tmp_path))
    np.testing.assert_array_equal(loaded.codes, table.codes)
    np.testing.assert_array_equal(loaded.event_sid, table.event_sid)


def test_tau_controls_how_many_sids_survive_and_static_gives_one_per_item(synthetic):
    merged, _ = fit(synthetic)
    unmerged, summary = fit(synthetic, merge_threshold=0.0)
    assert unmerged.sids_per_item().sum() > merged.sids_per_item().sum()
    after_digit_merge = summary["sids_per_item"]["after_digit_merge"]
    assert unmerged.sids_per_item().sum() == sum(int(k) * v for k, v in after_digit_merge.items())
    static, _ = fit(synthetic, personalized=False)
    assert (static.sids_per_item() == 1).all()


def test_validate_names_a_stale_artifact(synthetic):
    table, _ = fit(synthetic)
    with pytest.raises(Exception, match="rerun the tokenize stage"):
        table.validate(61, len(table.event_sid))
