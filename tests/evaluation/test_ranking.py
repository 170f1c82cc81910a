"""AUC and ECE against their definitions, and which exposures are held out."""

import itertools

import numpy as np
import pytest

from gr_jax.data.dataset import Interactions
from gr_jax.evaluation.ranking import auc, expected_calibration_error, held_out_exposures


def pairwise_auc(scores, labels):
    """The definition: P(score of a positive > score of a negative), ties counting half."""
    pairs = [(p, n) for p, n in itertools.product(scores[labels], scores[~labels])]
    return np.mean([1.0 if p > n else 0.5 if p == n else 0.0 for p, n in pairs])


def test_auc_equals_pairwise_counting_with_ties():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 6, 200).astype(float)  # many ties
    labels = rng.random(200) < 0.3
    assert auc(scores, labels) == pytest.approx(pairwise_auc(scores, labels), abs=1e-12)
    assert np.isnan(auc(scores, np.ones(200, bool)))  # undefined with one class


def test_ece_by_hand():
    predictions = np.array([0.05, 0.05, 0.95, 0.95, 0.55])
    labels = np.array([0, 1, 1, 1, 0])
    # bins (10): [0, .1) holds two predictions .05 vs labels mean .5; [.9, 1] holds two .95 vs 1;
    # [.5, .6) holds .55 vs 0: (2 * .45 + 2 * .05 + .55) / 5
    assert expected_calibration_error(predictions, labels, bins=10) == pytest.approx((0.9 + 0.1 + 0.55) / 5)
    assert expected_calibration_error(labels.astype(float), labels, bins=10) == 0.0


def test_held_out_exposures_are_the_events_after_the_validation_target():
    targets = np.array([1, 0, 1, 0, 1, 0,  1, 1, 0, 1], bool)  # user 0: 6 events, user 1: 4
    interactions = Interactions(["a", "b"], [0, 6, 10], np.arange(10), targets=targets)
    rows = held_out_exposures(interactions)
    # user 0: positives at 0, 2, 4 -> valid 2, test 4: held out 3, 4, 5; user 1: valid 1, test 3: 2, 3
    np.testing.assert_array_equal(rows, [[0, 3], [0, 4], [0, 5], [1, 2], [1, 3]])
