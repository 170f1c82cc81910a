"""Grain train/eval pipelines: determinism, resumable iterator state, process sharding, epochs, padding."""

import json

import numpy as np
import pytest

from gr_jax.data.dataset import Interactions
from gr_jax.data.pipeline import batch_iterator, eval_dataset, train_dataset, train_rows

# 28 users of lengths 4..10; item id u * 100 + p encodes (user, position), so a target names its example.
LENGTHS = [4, 5, 6, 7, 8, 9, 10] * 4
NUM_TRAIN = sum(n - 3 for n in LENGTHS)  # 112
ALL_TRAIN_TARGETS = sorted(u * 100 + p for u, n in enumerate(LENGTHS) for p in range(1, n - 2))
MAX_HISTORY = 3


@pytest.fixture(scope="module")
def users() -> Interactions:
    seqs = [[u * 100 + p for p in range(n)] for u, n in enumerate(LENGTHS)]
    return Interactions.from_lists([f"u{u}" for u in range(len(seqs))], seqs)


def _train(users, *, seed=0, batch=8, shard=(0, 1), num_epochs=None):
    return train_dataset(users, max_history=MAX_HISTORY, global_batch_size=batch, seed=seed,
                         num_epochs=num_epochs, shard=shard)


def _index(dataset, n: int | None = None) -> list[dict]:
    """The first n batches by random access (the order iteration yields; cheaper than an iterator)."""
    return [dataset[i] for i in range(len(dataset) if n is None else n)]


def _take(iterator, n: int) -> list[dict]:
    return [next(iterator) for _ in range(n)]


def _assert_same_batches(a: list[dict], b: list[dict]):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            np.testing.assert_array_equal(x[key], y[key], err_msg=key)


def _targets(batches: list[dict]) -> np.ndarray:
    return np.concatenate([b["target"] for b in batches]) if batches else np.zeros(0, np.int32)


def test_fixture_sizes(users):
    assert len(train_rows(users)) == NUM_TRAIN == len(ALL_TRAIN_TARGETS) == 112


def test_batches_are_well_formed_examples(users):
    for batch in _index(_train(users), 30):
        assert batch["target"].shape == (8,) and batch["history"].shape == (8, MAX_HISTORY)
        user, pos = batch["target"] // 100, batch["target"] % 100
        np.testing.assert_array_equal(batch["user"], user)
        assert np.all(pos >= 1) and np.all(pos <= np.array(LENGTHS)[user] - 3)  # training targets only
        # History = the (up to) MAX_HISTORY events right before the target, left-padded.
        expected = batch["target"][:, None] - MAX_HISTORY + np.arange(MAX_HISTORY)[None, :]
        mask = expected % 100 < pos[:, None]
        mask &= (expected // 100 == user[:, None]) & (expected >= user[:, None] * 100)
        np.testing.assert_array_equal(batch["history_mask"], mask)
        np.testing.assert_array_equal(batch["history"], np.where(mask, expected, 0))


def test_same_seed_gives_identical_batch_sequence(users):
    # 40 batches span almost three epochs of 14 batches.
    # Two independently built pipelines; one iterated as the trainer does, one by random access.
    _assert_same_batches(_take(iter(_train(users, seed=3).to_iter_dataset()), 40), _index(_train(users, seed=3), 40))


def test_different_seed_gives_different_order(users):
    a = _targets(_index(_train(users, seed=0), 14))
    b = _targets(_index(_train(users, seed=1), 14))
    assert sorted(a) == sorted(b) == ALL_TRAIN_TARGETS  # same examples ...
    assert not np.array_equal(a, b)  # ... in another order


def test_shuffled_rather_than_file_order(users):
    first_epoch = _targets(_index(_train(users), 14))
    assert not np.array_equal(first_epoch, ALL_TRAIN_TARGETS)


@pytest.mark.parametrize("k, workers", [(5, 0), (14, 0), (5, 2)])  # 14 = an epoch boundary (14 batches/epoch)
def test_restored_iterator_continues_exactly(users, k, workers):
    # As the trainer does: batch_iterator(dataset, data.workers), state saved with the checkpoint.
    uninterrupted = batch_iterator(_train(users, seed=7), workers)
    _take(uninterrupted, k)
    state = json.loads(json.dumps(uninterrupted.get_state()))  # must survive serialisation
    expected = _take(uninterrupted, 16)
    in_process = batch_iterator(_train(users, seed=7), 0)
    _take(in_process, k)
    _assert_same_batches(expected[:4], _take(in_process, 4))  # workers assemble the same batches
    restored = batch_iterator(_train(users, seed=7), workers)  # a fresh pipeline, as after a restart
    _take(restored, 2)  # wherever it happened to be
    restored.set_state(state)
    _assert_same_batches(_take(restored, 16), expected)
    for iterator in (uninterrupted, in_process, restored):
        iterator.close()


def test_every_epoch_visits_each_training_example_once(users):
    ds = _train(users, batch=8, num_epochs=3)
    assert len(ds) == 3 * NUM_TRAIN // 8
    targets = _targets(_index(ds))
    assert len(targets) == 3 * NUM_TRAIN
    epochs = targets.reshape(3, NUM_TRAIN)
    for epoch in epochs:
        np.testing.assert_array_equal(np.sort(epoch), ALL_TRAIN_TARGETS)
    # Infinite repetition continues with the same epochs.
    infinite = _targets(_index(_train(users, batch=8), 3 * NUM_TRAIN // 8))
    np.testing.assert_array_equal(infinite, targets)


def test_each_epoch_is_reshuffled(users):
    epochs = _targets(_index(_train(users, batch=8, num_epochs=3))).reshape(3, NUM_TRAIN)
    assert not np.array_equal(epochs[0], epochs[1]) and not np.array_equal(epochs[1], epochs[2])


def test_process_slices_make_up_the_one_process_global_batches(users):
    """P processes train on exactly the batches of a one-process run (so their models agree)."""
    num_batches = 3 * NUM_TRAIN // 8  # three epochs: the slices stay aligned across epoch boundaries
    whole = _index(_train(users, batch=8), num_batches)
    parts = [_index(_train(users, batch=8, shard=(i, 2)), num_batches) for i in range(2)]
    _assert_same_batches(whole, [{k: np.concatenate([a[k], b[k]]) for k in a} for a, b in zip(*parts)])


def test_process_batch_is_global_batch_divided_by_process_count(users):
    batch = _train(users, batch=8, shard=(1, 4))[0]
    assert batch["target"].shape == (2,)


def test_default_shard_is_this_process(users):
    _assert_same_batches(_index(train_dataset(users, max_history=MAX_HISTORY, global_batch_size=8, seed=2), 3),
                         _index(_train(users, seed=2), 3))


def test_batch_size_not_divisible_by_process_count_raises(users):
    with pytest.raises(ValueError, match="divisible"):
        _train(users, batch=7, shard=(0, 2))


def test_no_training_examples_raises():
    users = Interactions.from_lists(["a", "b"], [[1, 2, 3], [4, 5, 6]])
    with pytest.raises(ValueError, match="no training examples"):
        train_dataset(users, max_history=2, global_batch_size=2, seed=0, shard=(0, 1))


# ---------------------------------------------------------------- eval


@pytest.mark.parametrize("split,offset", [("valid", 2), ("test", 1)])
def test_eval_pads_last_batch_and_covers_every_user_once(users, split, offset):
    batches = list(eval_dataset(users, split, max_history=MAX_HISTORY, batch_size=8, shard=(0, 1)))
    assert len(batches) == 4  # 28 users
    for batch in batches:
        assert batch["target"].shape == (8,) and batch["valid"].shape == (8,) and batch["valid"].dtype == bool
    np.testing.assert_array_equal(batches[-1]["valid"], [True] * 4 + [False] * 4)
    assert all(b["valid"].all() for b in batches[:-1])
    valid = np.concatenate([b["valid"] for b in batches])
    user = np.concatenate([b["user"] for b in batches])[valid]
    target = np.concatenate([b["target"] for b in batches])[valid]
    np.testing.assert_array_equal(np.sort(user), np.arange(len(LENGTHS)))
    np.testing.assert_array_equal(target, user * 100 + np.array(LENGTHS)[user] - offset)
    # History of the held-out target: the MAX_HISTORY events right before it.
    history = np.concatenate([b["history"] for b in batches])[valid]
    mask = np.concatenate([b["history_mask"] for b in batches])[valid]
    before = target[:, None] - MAX_HISTORY + np.arange(MAX_HISTORY)
    expected_mask = before % 100 < target[:, None] % 100  # only this user's earlier events
    expected_mask &= before >= (user * 100)[:, None]
    np.testing.assert_array_equal(mask, expected_mask)
    np.testing.assert_array_equal(history, np.where(expected_mask, before, 0))
    assert expected_mask.sum(axis=1).min() == 4 - offset  # the shortest user has 4 events


def test_eval_exact_multiple_needs_no_padding(users):
    batches = list(eval_dataset(users, "test", max_history=MAX_HISTORY, batch_size=7, shard=(0, 1)))
    assert len(batches) == 4 and all(b["valid"].all() for b in batches)


def test_eval_shards_are_disjoint_and_cover_all_users(users):
    seen = []
    for i in range(3):  # 28 users over 3 processes: 10, 9, 9
        for batch in eval_dataset(users, "test", max_history=MAX_HISTORY, batch_size=4, shard=(i, 3)):
            seen.extend(batch["user"][batch["valid"]].tolist())
    assert sorted(seen) == list(range(len(LENGTHS)))


def test_eval_skips_users_too_short_for_the_split():
    users = Interactions.from_lists(["a", "b", "c"], [[1, 2], [3, 4, 5], [6, 7, 8, 9]])
    batches = list(eval_dataset(users, "valid", max_history=4, batch_size=4, shard=(0, 1)))
    assert len(batches) == 1
    np.testing.assert_array_equal(batches[0]["valid"], [True, True, False, False])
    np.testing.assert_array_equal(batches[0]["user"][:2], [1, 2])
    np.testing.assert_array_equal(batches[0]["target"][:2], [4, 8])
    np.testing.assert_array_equal(batches[0]["history"][:2], [[0, 0, 0, 3], [0, 0, 6, 7]])
