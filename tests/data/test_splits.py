"""Leave-one-out splits, batch assembly, training counts and dataset validation on hand-made users."""

import numpy as np
import pytest

from gr_jax.data.dataset import Dataset, Interactions, ItemTable, validate
from gr_jax.data.errors import DataError
from gr_jax.data.splits import assemble_batch, example_index, train_event_mask, train_item_counts

# Users of lengths 3, 4 and 6 with distinct item ids (none is 0, so left-padding is unambiguous).
SEQS = [[1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11, 12, 13]]
ACTIONS = [[0, 1, 2], [3, 4, 0, 1], [2, 3, 4, 0, 1, 2]]
NUM_ITEMS = 14


def _users(actions: bool = False) -> Interactions:
    return Interactions.from_lists(["a", "b", "c"], SEQS, actions=ACTIONS if actions else None)


def _items(n: int) -> ItemTable:
    return ItemTable(keys=[str(i) for i in range(n)], title=[f"t{i}" for i in range(n)], description=[""] * n,
                     brand=[""] * n, categories=[()] * n)


def _rows(pairs) -> np.ndarray:
    return np.array(pairs, np.int64).reshape(-1, 2)


def _of_lengths(lengths) -> Interactions:
    """Users with the given sequence lengths (items do not matter to the splits)."""
    return Interactions.from_lists([str(u) for u in range(len(lengths))], [[0] * int(n) for n in lengths])


# ---------------------------------------------------------------- example_index


def test_train_rows_are_positions_1_to_n_minus_3():
    rows = example_index(_of_lengths([3, 4, 6]), "train")
    np.testing.assert_array_equal(rows, [[1, 1], [2, 1], [2, 2], [2, 3]])
    assert rows.dtype == np.int64 and rows.shape == (4, 2)


def test_valid_and_test_targets_are_second_to_last_and_last():
    lengths = np.array([3, 4, 6])
    np.testing.assert_array_equal(example_index(_of_lengths(lengths), "valid"), [[0, 1], [1, 2], [2, 4]])
    np.testing.assert_array_equal(example_index(_of_lengths(lengths), "test"), [[0, 2], [1, 3], [2, 5]])


def test_targets_of_the_three_splits_do_not_overlap_and_cover_positions_1_to_n_minus_1():
    lengths = np.array([3, 4, 6, 5, 9])
    split_sets = {s: {tuple(r) for r in example_index(_of_lengths(lengths), s)} for s in ("train", "valid", "test")}
    assert not split_sets["train"] & split_sets["valid"]
    assert not split_sets["train"] & split_sets["test"]
    assert not split_sets["valid"] & split_sets["test"]
    union = split_sets["train"] | split_sets["valid"] | split_sets["test"]
    expected = {(u, p) for u, n in enumerate(lengths) for p in range(1, n)}
    assert union == expected
    assert sum(len(s) for s in split_sets.values()) == int((lengths - 1).sum())


def test_users_shorter_than_three_get_no_examples():
    lengths = np.array([0, 1, 2, 3])
    assert example_index(_of_lengths(lengths), "train").shape == (0, 2)
    np.testing.assert_array_equal(example_index(_of_lengths(lengths), "valid"), [[3, 1]])
    np.testing.assert_array_equal(example_index(_of_lengths(lengths), "test"), [[3, 2]])


def test_positive_targets_make_the_last_two_clicks_valid_and_test_and_train_on_everything_before():
    # Actions (view 0, click 1, skip 4): user 0 clicks at positions 1, 3, 4 (then skips); user 1 at 0 and 2
    # only (its validation target has no history before it: no examples); user 2 at 2, 3, 5.
    users = Interactions.from_lists(["a", "b", "c"], [[5, 6, 7, 8, 9, 1], [1, 2, 3], [4, 4, 4, 4, 4, 4, 4]],
                                    actions=[[4, 1, 4, 1, 1, 4], [1, 4, 1], [4, 4, 1, 1, 4, 1, 4]])
    marked = users.with_targets("positive")
    np.testing.assert_array_equal(example_index(marked, "valid"), [[0, 3], [2, 3]])
    np.testing.assert_array_equal(example_index(marked, "test"), [[0, 4], [2, 5]])
    np.testing.assert_array_equal(example_index(marked, "train"), [[0, 1], [0, 2], [2, 1], [2, 2]])
    np.testing.assert_array_equal(train_event_mask(marked), [1, 1, 1, 0, 0, 0] + [1, 1, 1] + [1, 1, 1, 0, 0, 0, 0])
    # Without actions every event is positive: the positional split.
    plain = _of_lengths([3, 5]).with_targets("positive")
    for split in ("train", "valid", "test"):
        np.testing.assert_array_equal(example_index(plain, split), example_index(_of_lengths([3, 5]), split))


def test_unknown_split_raises():
    with pytest.raises(ValueError, match="unknown split"):
        example_index(_of_lengths([4]), "validation")


# ---------------------------------------------------------------- assemble_batch


def test_assemble_left_pads_with_newest_event_last():
    batch = assemble_batch(_users(), _rows([[1, 1], [0, 2], [2, 3]]), max_history=4)
    np.testing.assert_array_equal(batch["user"], [1, 0, 2])
    np.testing.assert_array_equal(batch["history"], [[0, 0, 0, 4], [0, 0, 1, 2], [0, 8, 9, 10]])
    np.testing.assert_array_equal(batch["history_mask"], [[False, False, False, True],
                                                          [False, False, True, True],
                                                          [False, True, True, True]])
    np.testing.assert_array_equal(batch["target"], [5, 3, 11])
    assert batch["history"].dtype == np.int32 and batch["target"].dtype == np.int32
    assert batch["history_mask"].dtype == bool
    assert "history_actions" not in batch and "target_action" not in batch


def test_assemble_truncates_to_most_recent_max_history_events():
    # Test target of the 6-event user: 5 history events, only the last 3 are kept.
    batch = assemble_batch(_users(), _rows([[2, 5], [2, 4]]), max_history=3)
    np.testing.assert_array_equal(batch["history"], [[10, 11, 12], [9, 10, 11]])
    assert batch["history_mask"].all()
    np.testing.assert_array_equal(batch["target"], [13, 12])


def test_assemble_history_exactly_max_history_long():
    batch = assemble_batch(_users(), _rows([[1, 3]]), max_history=3)
    np.testing.assert_array_equal(batch["history"], [[4, 5, 6]])
    assert batch["history_mask"].all()
    np.testing.assert_array_equal(batch["target"], [7])


def test_assemble_never_reads_other_users_events():
    # User 1's first target: only its own event 4 may appear, not user 0's events just before it.
    batch = assemble_batch(_users(), _rows([[1, 1]]), max_history=6)
    np.testing.assert_array_equal(batch["history"], [[0, 0, 0, 0, 0, 4]])
    assert batch["history_mask"].sum() == 1


def test_assemble_gathers_actions_when_present():
    batch = assemble_batch(_users(actions=True), _rows([[2, 5], [1, 2]]), max_history=3)
    np.testing.assert_array_equal(batch["history_actions"], [[4, 0, 1], [0, 3, 4]])
    np.testing.assert_array_equal(batch["target_action"], [2, 0])
    np.testing.assert_array_equal(batch["history"], [[10, 11, 12], [0, 4, 5]])
    assert batch["history_actions"].dtype == np.int32


# ---------------------------------------------------------------- training part


def test_train_event_mask_drops_last_two_events_per_user():
    mask = train_event_mask(_users())
    np.testing.assert_array_equal(mask, [True, False, False,
                                         True, True, False, False,
                                         True, True, True, True, False, False])


def test_train_item_counts_exclude_valid_and_test_events():
    users = Interactions.from_lists(["a", "b", "c"], [[1, 2, 3], [1, 1, 2, 3], [4, 1, 2, 2, 3, 0]])
    # Training parts: [1], [1, 1], [4, 1, 2, 2]; items 3 and 0 occur only as valid/test targets.
    np.testing.assert_array_equal(train_item_counts(users, 6), [0, 4, 2, 0, 1, 0])


def test_train_item_counts_has_num_items_entries():
    counts = train_item_counts(_users(), 20)
    assert counts.shape == (20,)
    assert counts.sum() == 1 + 2 + 4
    assert counts[8] == counts[9] == counts[10] == counts[11] == 1 and counts[12] == counts[13] == 0


# ---------------------------------------------------------------- validate


def test_validate_drops_short_users_and_reports_count():
    users = Interactions.from_lists(["a", "b", "c", "d", "e"], [[1, 2], [1, 2, 3], [4], [5, 6, 7, 8], []],
                                    actions=[[0, 1], [1, 2, 3], [4], [0, 1, 2, 3], []],
                                    timestamps=[[1, 2], [10, 20, 30], [5], [1, 2, 3, 4], []])
    dataset = Dataset("toy", _items(9), users, report={"reader_count": 7})
    out = validate(dataset)
    assert out.users.user_keys == ["b", "d"]
    np.testing.assert_array_equal(out.users.offsets, [0, 3, 7])
    np.testing.assert_array_equal(out.users.items, [1, 2, 3, 5, 6, 7, 8])
    np.testing.assert_array_equal(out.users.actions, [1, 2, 3, 0, 1, 2, 3])
    np.testing.assert_array_equal(out.users.timestamps, [10, 20, 30, 1, 2, 3, 4])
    assert out.report["users_dropped_too_short"] == 3
    assert out.report["reader_count"] == 7  # earlier counts kept
    assert out.num_items == 9
    assert len(dataset.users) == 5  # input not mutated


def test_validate_keeps_everyone_when_long_enough():
    out = validate(Dataset("toy", _items(NUM_ITEMS), _users()))
    assert out.users.user_keys == ["a", "b", "c"]
    assert out.report["users_dropped_too_short"] == 0


def test_validate_respects_min_user_events():
    out = validate(Dataset("toy", _items(NUM_ITEMS), _users()), min_user_events=4)
    assert out.users.user_keys == ["b", "c"]
    assert out.report["users_dropped_too_short"] == 1


@pytest.mark.parametrize("bad_item", [14, 100, -1])
def test_validate_rejects_item_ids_outside_table(bad_item):
    seqs = [[1, 2, 3], [4, bad_item, 6, bad_item]]
    dataset = Dataset("toy", _items(NUM_ITEMS), Interactions.from_lists(["a", "b"], seqs))
    with pytest.raises(DataError) as err:
        validate(dataset, source="toy.json")
    message = str(err.value)
    assert "2 events" in message and "toy.json" in message and "0..13" in message


def test_validate_raises_when_every_user_is_too_short():
    dataset = Dataset("toy", _items(5), Interactions.from_lists(["a", "b"], [[1, 2], [3]]))
    with pytest.raises(DataError, match="fewer than 3 events"):
        validate(dataset)


def test_validate_counts_empty_text():
    items = ItemTable(keys=["0", "1", "2"], title=["x", " ", ""], description=["", "desc", " "],
                      brand=[""] * 3, categories=[()] * 3)
    out = validate(Dataset("toy", items, Interactions.from_lists(["a"], [[0, 1, 2]])))
    assert out.report["items_empty_title"] == 2
    assert out.report["items_empty_text"] == 1


def test_same_target_partners_share_the_target_and_differ_when_possible():
    from gr_jax.data.splits import same_target_partners

    users = Interactions.from_lists(["a", "b", "c"], [[1, 2, 3, 4, 5, 9, 9], [7, 2, 3, 4, 0, 9, 9], [5, 6, 8, 0, 0]])
    rows = example_index(users, "train")
    partners = same_target_partners(users, rows, seed=0)
    target = lambda r: users.items[users.offsets[r[0]] + r[1]]
    for row, partner in zip(rows, rows[partners]):
        assert target(row) == target(partner)
    counts = np.bincount([target(r) for r in rows])
    unique_target = np.array([counts[target(r)] == 1 for r in rows])
    assert np.all((partners == np.arange(len(rows))) == unique_target)


def test_engaged_window_holds_the_last_positive_events_before_the_target_across_skips():
    users = Interactions.from_lists(["a", "b"], [[1, 2, 3, 4, 5, 6], [7, 8, 9, 10]],
                                    actions=[[4, 1, 4, 1, 4, 1], [1, 1, 4, 1]]).with_targets("positive")
    batch = assemble_batch(users, np.array([[0, 5], [1, 3], [0, 1]]), max_history=3)
    np.testing.assert_array_equal(batch["engaged"], [[0, 2, 4], [0, 7, 8], [0, 0, 0]])
    np.testing.assert_array_equal(batch["engaged_mask"], [[0, 1, 1], [0, 1, 1], [0, 0, 0]])
    assert "engaged" not in assemble_batch(_of_lengths([4]), np.array([[0, 2]]), max_history=3)
