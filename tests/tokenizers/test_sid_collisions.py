"""Tests for SID de-duplication and collision-free last-level reassignment."""

import itertools

import numpy as np
import pytest

from gr_jax.tokenizers.collisions import add_dedup_digit, reassign_last_level


def test_dedup_digit_numbers_shared_sids_in_item_order():
    codes = np.array([[1, 2], [0, 0], [1, 2], [1, 2], [0, 1]])
    out = add_dedup_digit(codes)
    np.testing.assert_array_equal(out[:, :2], codes)
    np.testing.assert_array_equal(out[:, 2], [0, 0, 1, 2, 0])
    assert len(np.unique(out, axis=0)) == len(codes)


def test_reassign_last_level_is_min_cost_and_collision_free():
    codes = np.array([[0, 0, 1], [0, 0, 1], [0, 1, 2], [1, 0, 0]])
    costs = np.array([[5.0, 1.0, 2.0], [5.0, 1.0, 9.0], [0.0, 3.0, 3.0], [9.0, 9.0, 0.0]])
    out = reassign_last_level(codes, costs)
    # Items 0 and 1 share (0, 0, 1): options (0->2, 1->1) cost 3 beats every other distinct pair.
    np.testing.assert_array_equal(out[:, 2], [2, 1, 2, 0])  # items 2 and 3 collide with nobody: kept
    best = min(costs[0, a] + costs[1, b] for a, b in itertools.permutations(range(3), 2))
    assert costs[0, out[0, 2]] + costs[1, out[1, 2]] == best == 3.0
    assert len(np.unique(out, axis=0)) == 4


def test_reassign_last_level_rejects_oversized_group():
    codes = np.array([[3, 0]] * 4)
    with pytest.raises(ValueError, match=r"4 items share the SID prefix \(3,\).*add_dedup_digit"):
        reassign_last_level(codes, np.zeros((4, 3)))
