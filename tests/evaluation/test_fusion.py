import numpy as np
import pytest

from gr_jax.evaluation.fusion import reciprocal_rank_fusion


def plain_fusion(rankings, weights, list_size, constant):
    """One user at a time, with a dict: the reference the vectorised fusion must equal."""
    fused = []
    for user in range(rankings[0].shape[0]):
        score, order = {}, []
        for ranked, weight in zip(rankings, weights):
            if weight == 0:
                continue
            for place, item in enumerate(ranked[user]):
                if item < 0:
                    continue
                if item not in score:
                    score[item] = 0.0
                    order.append(item)
                score[item] += weight / (constant + place + 1)
        best = sorted(order, key=lambda item: -score[item])  # sorted() is stable: ties keep first mention
        fused.append((best + [-1] * list_size)[:list_size])
    return np.array(fused)


def random_lists(rng, users, length, num_items):
    lists = np.stack([rng.choice(num_items, length, replace=False) for _ in range(users)])
    lists[rng.random(lists.shape) < 0.1] = -1  # empty places (a beam that found fewer items)
    return lists


@pytest.mark.parametrize("weights", [(1.0, 1.0), (1.0, 0.25), (1.0, 0.0, 3.0)])
def test_fusion_equals_a_plain_per_user_reference(weights):
    rng = np.random.default_rng(0)
    rankings = [random_lists(rng, 32, 8 + 4 * m, 20) for m in range(len(weights))]
    fused = reciprocal_rank_fusion(rankings, weights, 10, constant=2.0)
    np.testing.assert_array_equal(fused, plain_fusion(rankings, weights, 10, 2.0))


def test_one_member_comes_back_unchanged_and_agreement_wins():
    ranked = np.array([[5, 3, 9, -1]])
    np.testing.assert_array_equal(reciprocal_rank_fusion([ranked], [1.0], 4), ranked)
    other = np.array([[9, 7, 1, 2]])  # 9 is third for the first member and first for the second: both vote
    assert reciprocal_rank_fusion([ranked, other], [1.0, 1.0], 3)[0, 0] == 9


def test_weights_must_be_usable():
    ranked = np.zeros((1, 2), int)
    with pytest.raises(ValueError, match="non-negative"):
        reciprocal_rank_fusion([ranked, ranked], [1.0, -1.0], 2)
    with pytest.raises(ValueError, match="every fusion weight is 0"):
        reciprocal_rank_fusion([ranked], [0.0], 2)
    with pytest.raises(ValueError, match="2 ranked lists but 1 weights"):
        reciprocal_rank_fusion([ranked, ranked], [1.0], 2)
