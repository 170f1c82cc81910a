"""Recall / NDCG / MRR on hand-computed cases, the accumulator, SID expansion and the evaluator."""

import math

import ml_collections
import numpy as np
import pytest

from gr_jax.data.dataset import Interactions
from gr_jax.evaluation import evaluator
from gr_jax.evaluation.metrics import MetricAccumulator, expand_sid_ranking, per_user_metrics, target_ranks

INV_LOG2_3 = 0.6309297535714575  # 1 / log2(3)
INV_LOG2_5 = 0.43067655807339306  # 1 / log2(5)
RANKED = np.array([[5, 3, 9, 1, 7]])


def _one(target: int, ks=(1, 3, 5), list_size=5) -> dict:
    ranks = target_ranks(RANKED, np.array([target]))
    return {k: float(v[0]) for k, v in per_user_metrics(ranks, ks, list_size).items()}


# ---------------------------------------------------------------- ranks and per-user metrics


def test_target_ranks_positions_and_misses():
    ranked = np.array([[5, 3, 9, 1, 7], [5, 3, 9, 1, 7], [2, 2, 4, 6, 8], [0, 1, 2, 3, 4]])
    np.testing.assert_array_equal(target_ranks(ranked, np.array([5, 1, 2, 9])), [0, 3, 0, 5])


def test_rank_0_is_a_perfect_hit():
    assert _one(5) == {"recall@1": 1.0, "ndcg@1": 1.0, "recall@3": 1.0, "ndcg@3": 1.0,
                       "recall@5": 1.0, "ndcg@5": 1.0, "mrr": 1.0}


def test_rank_2():
    m = _one(9)
    assert m["recall@1"] == 0.0 and m["ndcg@1"] == 0.0
    assert m["recall@3"] == 1.0 and m["ndcg@3"] == pytest.approx(0.5)  # 1 / log2(4)
    assert m["recall@5"] == 1.0 and m["ndcg@5"] == pytest.approx(0.5)
    assert m["mrr"] == pytest.approx(1 / 3)


def test_rank_3():
    m = _one(1)
    assert m["recall@3"] == 0.0 and m["ndcg@3"] == 0.0
    assert m["recall@5"] == 1.0 and m["ndcg@5"] == pytest.approx(INV_LOG2_5)
    assert m["mrr"] == pytest.approx(0.25)


def test_rank_1():
    m = _one(3)
    assert m["ndcg@3"] == pytest.approx(INV_LOG2_3) and m["mrr"] == pytest.approx(0.5)


def test_miss_scores_zero_everywhere():
    assert _one(4) == {"recall@1": 0.0, "ndcg@1": 0.0, "recall@3": 0.0, "ndcg@3": 0.0,
                       "recall@5": 0.0, "ndcg@5": 0.0, "mrr": 0.0}


def test_mrr_is_truncated_at_list_size():
    # Rank 4 is inside a list of 5 but outside a list_size of 4.
    ranks = np.array([4, 3])
    np.testing.assert_allclose(per_user_metrics(ranks, (5,), list_size=4)["mrr"], [0.0, 0.25])
    np.testing.assert_allclose(per_user_metrics(ranks, (5,), list_size=5)["mrr"], [0.2, 0.25])


def test_miss_is_not_a_hit_for_k_beyond_the_list():
    ranks = target_ranks(RANKED, np.array([4]))  # 4 is not in the 5-item list: rank 5
    values = per_user_metrics(ranks, (5, 10), list_size=5)
    assert values["recall@10"][0] == 0.0 and values["ndcg@10"][0] == 0.0


def test_accumulator_rejects_cutoffs_beyond_the_list():
    with pytest.raises(ValueError, match="list_size"):
        MetricAccumulator(ks=(5, 10), list_size=5)


# ---------------------------------------------------------------- accumulator


def test_accumulator_averages_across_batches_and_ignores_padding_rows():
    acc = MetricAccumulator(ks=(1, 3, 5), list_size=5)
    acc.add(np.repeat(RANKED, 2, axis=0), np.array([5, 1]))  # ranks 0, 3 (valid=None: all rows count)
    # Ranks 2 and miss, plus a padding row that would be a perfect hit.
    acc.add(np.repeat(RANKED, 3, axis=0), np.array([9, 4, 5]), np.array([True, True, False]))
    r = acc.result()
    assert r["num_users"] == 4
    assert r["recall@1"] == pytest.approx(1 / 4)
    assert r["ndcg@1"] == pytest.approx(1 / 4)
    assert r["recall@3"] == pytest.approx(2 / 4)
    assert r["ndcg@3"] == pytest.approx((1 + 0.5) / 4)
    assert r["recall@5"] == pytest.approx(3 / 4)
    assert r["ndcg@5"] == pytest.approx((1 + INV_LOG2_5 + 0.5) / 4)  # 0.4826691...
    assert r["mrr"] == pytest.approx((1 + 0.25 + 1 / 3) / 4)
    assert set(r) == {"recall@1", "ndcg@1", "recall@3", "ndcg@3", "recall@5", "ndcg@5", "mrr", "num_users"}


def test_accumulator_weights_users_not_batches():
    acc = MetricAccumulator(ks=(1,), list_size=5)
    acc.add(RANKED, np.array([5]))  # one hit in a batch of 1
    acc.add(np.repeat(RANKED, 3, axis=0), np.array([4, 4, 4]))  # three misses
    assert acc.result()["recall@1"] == pytest.approx(0.25)  # not the mean of batch means (0.5)


def test_accumulator_all_padding_batch_adds_nothing():
    acc = MetricAccumulator(ks=(1,), list_size=5)
    acc.add(RANKED, np.array([4]))
    acc.add(RANKED, np.array([5]), np.array([False]))
    assert acc.result() == {"recall@1": 0.0, "ndcg@1": 0.0, "mrr": 0.0, "num_users": 1}


def test_empty_accumulator_raises():
    acc = MetricAccumulator(ks=(5,), list_size=5)
    acc.add(RANKED, np.array([5]), np.array([False]))
    with pytest.raises(ValueError, match="no users"):
        acc.result()


# ---------------------------------------------------------------- SID expansion

SID_ITEMS = np.array([[0, -1, -1], [1, 2, 3], [4, -1, -1], [5, 6, -1]])  # SID row -> its items, -1 padded


def test_shared_sid_pushes_later_items_down():
    out = expand_sid_ranking(np.array([[1, 2]]), SID_ITEMS, list_size=6)
    np.testing.assert_array_equal(out, [[1, 2, 3, 4, -1, -1]])
    # The item of the 2nd-ranked SID sits at position 3 (after the 3 items sharing the 1st SID).
    assert target_ranks(out, np.array([4]))[0] == 3
    assert per_user_metrics(target_ranks(out, np.array([4])), (5,), 6)["ndcg@5"][0] == pytest.approx(INV_LOG2_5)


def test_expansion_keeps_sid_order_and_tie_break_order():
    out = expand_sid_ranking(np.array([[1, 0, 3, 2]]), SID_ITEMS, list_size=10)
    np.testing.assert_array_equal(out, [[1, 2, 3, 0, 5, 6, 4, -1, -1, -1]])


def test_expansion_truncates_at_list_size():
    out = expand_sid_ranking(np.array([[1, 3, 0]]), SID_ITEMS, list_size=4)
    np.testing.assert_array_equal(out, [[1, 2, 3, 5]])
    # The 3rd SID's item fell off the list: a miss.
    assert target_ranks(out, np.array([0]))[0] == 4


def test_expansion_skips_empty_sids_and_pads_rows():
    ranked = np.array([[2, -1, 0, -1], [-1, -1, -1, -1], [3, 1, -1, -1]])
    out = expand_sid_ranking(ranked, SID_ITEMS, list_size=5)
    np.testing.assert_array_equal(out, [[4, 0, -1, -1, -1], [-1, -1, -1, -1, -1], [5, 6, 1, 2, 3]])


# ---------------------------------------------------------------- evaluator


def _users() -> Interactions:
    # Five users; the valid target of user u is item 100 + u, the test target 200 + u.
    return Interactions.from_lists([f"u{u}" for u in range(5)], [[u, 50 + u, 100 + u, 200 + u] for u in range(5)])


def _topk_ranking_target_at_user_rank(batch: dict) -> np.ndarray:
    """User u's list has its target at rank u (user 4: absent), other slots hold unrelated items."""
    ranked = np.tile(np.arange(1000, 1004), (len(batch["user"]), 1))
    for row, (user, target) in enumerate(zip(batch["user"], batch["target"])):
        if user < 4:
            ranked[row, user] = target
    return ranked


def _config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.data = ml_collections.ConfigDict({"max_history": 3})
    c.eval = ml_collections.ConfigDict({"ks": (1, 3), "list_size": 4, "batch_size": 2, "splits": "valid, test",
                                       "tail_fraction": 0.0})
    return c


def test_evaluate_split_ignores_padding_rows():
    # Batches of 2 over 5 users: the last batch is user 4 (a miss) plus a padding copy of it, which
    # must not count (it would give num_users 6 and recall@1 1/6).
    config = _config()
    r = evaluator.evaluate_split(_topk_ranking_target_at_user_rank, _users(), "valid", config.data, config.eval)
    assert r["num_users"] == 5
    assert r["recall@1"] == pytest.approx(1 / 5)
    assert r["recall@3"] == pytest.approx(3 / 5)
    assert r["ndcg@3"] == pytest.approx((1 + INV_LOG2_3 + 0.5) / 5)
    assert r["mrr"] == pytest.approx((1 + 1 / 2 + 1 / 3 + 1 / 4) / 5)


def test_evaluate_runs_every_configured_split():
    seen = set()

    def topk(batch):
        seen.update(int(t) for t, v in zip(batch["target"], batch["valid"]) if v)
        return _topk_ranking_target_at_user_rank(batch)

    results = evaluator.evaluate(topk, _users(), _config())
    assert list(results) == ["valid", "test"]
    assert results["valid"] == results["test"]
    assert seen == {100, 101, 102, 103, 104, 200, 201, 202, 203, 204}


def test_tail_items_are_the_least_frequent_fraction():
    # Training counts: item 0 x3, item 1 x1, item 2 x2, items 3-4 never (the last two events of
    # each user are valid/test and do not count).
    users = Interactions.from_lists(["a", "b"], [[0, 0, 1, 3, 4], [0, 2, 2, 4, 3]])
    assert evaluator.tail_items(users, 5, 0.4).tolist() == [False, False, False, True, True]
    assert evaluator.tail_items(users, 5, 0.6).tolist() == [False, True, False, True, True]


def test_evaluate_splits_users_by_target_popularity():
    # Every target has training count 0; the 102 least frequent of 205 items (ties by id) are
    # items 5-49 and 55-111, so the valid targets (100-104) are tail and the test targets (200-204) head.
    config = _config()
    config.eval.tail_fraction = 0.5
    results = evaluator.evaluate(_topk_ranking_target_at_user_rank, _users(), config, num_items=205)
    assert list(results) == ["valid", "valid/head", "valid/tail", "test", "test/head", "test/tail"]
    assert results["valid/tail"] == results["valid"] and results["valid/head"]["num_users"] == 0
    assert results["test/head"] == results["test"] and results["test/tail"]["num_users"] == 0
    assert "valid/tail" in evaluator.format_table(results)


def test_format_table_lists_metric_names_and_values():
    results = {"valid": {"recall@5": 0.125, "ndcg@5": 0.0625, "mrr": 0.25, "num_users": 10},
               "test": {"recall@5": 0.5, "ndcg@5": 1 / 3, "mrr": 0.75, "num_users": 12}}
    table = evaluator.format_table(results, title="SASRec")
    lines = table.splitlines()
    assert lines[0] == "SASRec"
    header = lines[1]
    for name in ("split", "recall@5", "ndcg@5", "mrr", "users"):
        assert name in header
    assert "num_users" not in table
    assert header.index("recall@5") < header.index("ndcg@5") < header.index("mrr")
    assert set(lines[2]) == {"-"} and len(lines[2]) == len(header)
    valid_row = next(l for l in lines if l.startswith("valid"))
    test_row = next(l for l in lines if l.startswith("test"))
    assert valid_row.split() == ["valid", "0.1250", "0.0625", "0.2500", "10"]
    assert test_row.split() == ["test", "0.5000", "0.3333", "0.7500", "12"]
    assert len(lines) == 5
    assert evaluator.format_table(results).splitlines()[0] == header  # no title line


def test_reference_values():
    # Guard the hand-typed constants above.
    assert INV_LOG2_3 == pytest.approx(1 / math.log2(3)) and INV_LOG2_5 == pytest.approx(1 / math.log2(5))
