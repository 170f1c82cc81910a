"""Ranking quality of predicted action probabilities on held-out exposures: AUC and calibration.

``held_out_exposures`` are every event after a user's validation target (the test target and the
exposures around it); an ``ActionRanker`` scores each with ``P(positive | history, item)``.
Expected calibration error (ECE) bins predictions into ``bins`` equal-width bins and averages
``|mean prediction - mean reference|`` weighted by bin size; the reference is the observed label
or, on synthetic data, the true click probability.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.stats import rankdata

from gr_jax.data.dataset import Interactions, positive_events
from gr_jax.data.splits import assemble_batch, split_points


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (the probability that a random positive outscores a random
    negative, ties counting half); NaN without both classes."""
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels, bool)
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if not positives or not negatives:
        return float("nan")
    ranks = rankdata(scores)  # average ranks over ties
    return float((ranks[labels].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def expected_calibration_error(predictions: np.ndarray, reference: np.ndarray, bins: int = 15) -> float:
    """``Σ_b (n_b / n) |mean(predictions in b) - mean(reference in b)|`` over equal-width bins of the
    predictions; ``reference`` holds 0/1 labels or true probabilities."""
    predictions, reference = np.asarray(predictions, np.float64), np.asarray(reference, np.float64)
    which = np.minimum((predictions * bins).astype(np.int64), bins - 1)
    count = np.bincount(which, minlength=bins)
    gap = np.abs(np.bincount(which, predictions, bins) - np.bincount(which, reference, bins))
    return float(gap.sum() / max(count.sum(), 1))


def held_out_exposures(interactions: Interactions) -> np.ndarray:
    """Rows of (user, position) of every event after each user's validation target."""
    valid, _, eligible = split_points(interactions)
    user = np.repeat(np.arange(len(interactions)), interactions.lengths)
    position = np.arange(len(interactions.items)) - interactions.offsets[user]
    keep = eligible[user] & (position > valid[user])
    return np.stack([user[keep], position[keep]], 1)


def evaluate_ranking(probabilities: Callable[[dict], tuple[np.ndarray, np.ndarray]], interactions: Interactions,
                     max_history: int, batch_size: int, true_probabilities: np.ndarray | None = None) -> dict:
    """AUC and ECE (raw and calibrated) of ``probabilities(batch) -> (raw [B], calibrated [B])`` over
    the held-out exposures; with ``true_probabilities`` (per event) also the ECE against them."""
    rows = held_out_exposures(interactions)
    raw, calibrated = [], []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        padded = np.concatenate([chunk, np.repeat(chunk[:1], batch_size - len(chunk), 0)])
        r, c = probabilities(assemble_batch(interactions, padded, max_history))
        raw.append(np.asarray(r)[:len(chunk)])
        calibrated.append(np.asarray(c)[:len(chunk)])
    raw, calibrated = np.concatenate(raw), np.concatenate(calibrated)
    events = interactions.offsets[rows[:, 0]] + rows[:, 1]
    labels = positive_events(interactions.actions, len(interactions.items))[events]
    out = {"num_exposures": len(rows), "positive_rate": float(labels.mean()), "auc": auc(calibrated, labels),
           "ece_raw": expected_calibration_error(raw, labels),
           "ece_calibrated": expected_calibration_error(calibrated, labels),
           "mean_raw": float(raw.mean()), "mean_calibrated": float(calibrated.mean())}
    if true_probabilities is not None:
        truth = true_probabilities[events]
        out |= {"true_ece_raw": expected_calibration_error(raw, truth),
                "true_ece_calibrated": expected_calibration_error(calibrated, truth),
                "auc_of_truth": auc(truth, labels)}
    return out
