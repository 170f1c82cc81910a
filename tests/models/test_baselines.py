"""Popularity and co-occurrence baselines on a hand-made sequence set."""

import ml_collections
import numpy as np
import pytest
import scipy.sparse as sp

import configs.cooccurrence
import configs.popularity
from gr_jax.data.dataset import Interactions
from gr_jax.data.splits import assemble_batch, example_index
from gr_jax.models import baselines

# Each user's last two events are valid/test targets and must never be counted.
SEQS = [
    [0, 1, 2, 7, 7],  # train part 0 1 2
    [0, 1, 3, 7, 7],  # train part 0 1 3
    [1, 2, 6, 6],  # train part 1 2
    [5, 4, 6, 6],  # train part 5 4
    [3, 6, 0, 0],  # train part 3 6
]
NUM_ITEMS = 8
# Training transitions: 0->1 x2, 1->2 x2, 1->3, 5->4, 3->6. Held out: 2->7, 7->7, 3->7, 2->6, 6->6, 4->6, 6->0, 0->0.
# Training counts: 0:2 1:3 2:2 3:2 4:1 5:1 6:1 7:0 (all events would give 7:4, 6:5, 0:4).
POPULARITY_ORDER = [1, 0, 2, 3, 4, 5, 6, 7]


@pytest.fixture(scope="module")
def users() -> Interactions:
    return Interactions.from_lists([f"u{i}" for i in range(len(SEQS))], SEQS)


def _batch(histories, max_history: int = 4) -> dict:
    """Left-padded histories (newest last), as assemble_batch builds them; padding holds item 0."""
    history = np.zeros((len(histories), max_history), np.int32)
    mask = np.zeros((len(histories), max_history), bool)
    for row, h in enumerate(histories):
        if h:
            history[row, -len(h):] = h
            mask[row, -len(h):] = True
    return {"history": history, "history_mask": mask, "target": np.zeros(len(histories), np.int32)}


class Fitted:
    """A baseline with the params its ``fit`` returned on ``users``."""

    def __init__(self, model, users):
        self.model, self.params = model, model.fit(users)

    def topk(self, batch, k):
        return self.model.topk(self.params, batch, k)

    def transitions(self) -> np.ndarray:
        p = self.params
        return sp.csr_matrix((p["transition_weights"], p["transition_items"], p["transition_offsets"]),
                             shape=(NUM_ITEMS, NUM_ITEMS)).toarray()


def _cooc(users, **kwargs) -> Fitted:
    return Fitted(baselines.CoOccurrence(NUM_ITEMS, **kwargs), users)


# ---------------------------------------------------------------- popularity


def test_popularity_counts_only_training_events(users):
    model = Fitted(baselines.Popularity(NUM_ITEMS), users)
    np.testing.assert_array_equal(model.params["counts"], [2, 3, 2, 2, 1, 1, 1, 0])


def test_popularity_ranks_by_count_ties_to_lower_id(users):
    model = Fitted(baselines.Popularity(NUM_ITEMS), users)
    ranked = model.topk(_batch([[0], [5, 4], []]), NUM_ITEMS)
    assert ranked.shape == (3, NUM_ITEMS)
    for row in ranked:  # the same list for everyone
        np.testing.assert_array_equal(row, POPULARITY_ORDER)
    np.testing.assert_array_equal(model.topk(_batch([[1]]), 3), [[1, 0, 2]])


def test_popularity_tie_break_is_by_id_not_first_appearance():
    # 5 and 2 appear twice, 4 and 3 once, each pair higher id first; 9 only as held-out targets.
    users = Interactions.from_lists(["a", "b"], [[5, 5, 2, 2, 9, 9], [4, 3, 9, 9]])
    model = Fitted(baselines.Popularity(10), users)
    np.testing.assert_array_equal(model.topk(_batch([[1]]), 6), [[2, 5, 3, 4, 0, 1]])


# ---------------------------------------------------------------- co-occurrence


def test_cooccurrence_counts_training_transitions_only(users):
    t = _cooc(users).transitions()
    expected = np.zeros((NUM_ITEMS, NUM_ITEMS))
    expected[0, 1] = expected[1, 2] = 2
    expected[1, 3] = expected[5, 4] = expected[3, 6] = 1
    np.testing.assert_array_equal(t, expected)


def test_known_successor_first(users):
    model = _cooc(users)
    ranked = model.topk(_batch([[5], [1], [0]]), NUM_ITEMS)
    np.testing.assert_array_equal(ranked[0], [4, 1, 0, 2, 3, 5, 6, 7])  # 5 -> 4, then popularity
    np.testing.assert_array_equal(ranked[1], [2, 3, 1, 0, 4, 5, 6, 7])  # 1 -> 2 (x2) before 1 -> 3 (x1)
    assert ranked[2][0] == 1


def test_items_without_transitions_fall_back_to_popularity(users):
    model = _cooc(users)
    # 7 never precedes anything; 2 and 4 only precede held-out events (2 -> 7, 2 -> 6, 4 -> 6).
    ranked = model.topk(_batch([[7], [2], [4], []]), NUM_ITEMS)
    for row in ranked:
        np.testing.assert_array_equal(row, POPULARITY_ORDER)


def test_newer_history_items_weigh_more(users):
    model = _cooc(users)
    # 5 -> 4 and 3 -> 6 are both seen once; the newer history item's successor wins.
    ranked = model.topk(_batch([[5, 3], [3, 5]]), 2)
    np.testing.assert_array_equal(ranked, [[6, 4], [4, 6]])


def test_decay_weights_are_powers_of_decay(users):
    model = _cooc(users)
    # [1, 7, 5]: 1 is two steps old (0.25 x 2 = 0.5 for item 2, 0.25 for item 3) vs 5 -> 4 at weight 1.
    np.testing.assert_array_equal(model.topk(_batch([[1, 7, 5]]), 4), [[4, 2, 3, 1]])
    # [1, 5]: 2 gets 0.5 x 2 = 1.0, tying 4's 1.0; popularity (2: 2 events, 4: 1) breaks the tie.
    np.testing.assert_array_equal(model.topk(_batch([[1, 5]]), 3), [[2, 4, 3]])
    # decay=1: no age preference, 1 -> 2 (x2) beats 5 -> 4 (x1) even from two steps back.
    np.testing.assert_array_equal(_cooc(users, decay=1.0).topk(_batch([[1, 7, 5]]), 3), [[2, 3, 4]])


def test_only_the_last_window_items_vote(users):
    model = _cooc(users, window=3)
    # 1 is the 4th newest: outside the window, so only 5 -> 4 counts.
    np.testing.assert_array_equal(model.topk(_batch([[1, 7, 7, 5]]), NUM_ITEMS), [[4, 1, 0, 2, 3, 5, 6, 7]])
    wide = _cooc(users, window=4)
    assert wide.topk(_batch([[1, 7, 7, 5]]), 2)[0].tolist() == [4, 2]


def test_padding_does_not_vote(users):
    # Left-padding holds item 0 (whose successor is 1): if the two masked 0s in the window voted,
    # item 1 would score 2 * 0.25 + 2 * 0.5 = 1.5 and beat 5 -> 4 (1.0).
    model = _cooc(users)
    batch = _batch([[5]])
    assert batch["history"][0].tolist() == [0, 0, 0, 5]
    np.testing.assert_array_equal(model.topk(batch, 2), [[4, 1]])


def test_window_longer_than_history(users):
    model = _cooc(users, window=6)
    np.testing.assert_array_equal(model.topk(_batch([[1, 5]], max_history=2), 3), [[2, 4, 3]])


def test_horizon_two_adds_skip_transitions_at_half_weight(users):
    model = _cooc(users, horizon=2)
    t = model.transitions()
    assert t[0, 2] == t[0, 3] == 0.5  # 0 _ 2 and 0 _ 3
    assert t[5, 6] == 0 and t[3, 0] == 0  # skips into held-out events are not counted
    np.testing.assert_array_equal(model.topk(_batch([[0]]), 4), [[1, 2, 3, 0]])


def test_transitions_never_cross_users(users):
    # Horizon 3 reaches from u3's training item 4 to u4's first item 3 in the flat array.
    model = _cooc(users, horizon=3)
    assert model.transitions()[4].sum() == 0
    np.testing.assert_array_equal(model.topk(_batch([[4]]), NUM_ITEMS), [POPULARITY_ORDER])


def test_cooccurrence_on_assembled_eval_batch(users):
    # End to end with the real batch layout: the valid target of u2 (history [1, 2]) -> ranked by 2's
    # transitions (none) and 1's (2, 3) at weight 0.5.
    rows = example_index(users, "valid")
    batch = assemble_batch(users, rows, max_history=4)
    ranked = _cooc(users).topk(batch, 3)
    assert ranked.shape == (len(SEQS), 3)
    np.testing.assert_array_equal(ranked[2], [2, 3, 1])


def test_build_from_configs():
    pop = baselines.build(configs.popularity.get_config().model, 11)
    assert isinstance(pop, baselines.Popularity) and pop.num_items == 11
    cooc = baselines.build(configs.cooccurrence.get_config().model, 11)
    assert isinstance(cooc, baselines.CoOccurrence)
    assert (cooc.num_items, cooc.window, cooc.horizon, cooc.decay) == (11, 3, 1, 0.5)
    custom = ml_collections.ConfigDict({"name": "cooccurrence", "window": 5, "horizon": 2, "decay": 0.9})
    assert (baselines.build(custom, 4).window, baselines.build(custom, 4).horizon) == (5, 2)
