"""Count-based baselines fitted on the training part of each sequence: popularity and co-occurrence.

Their "params" are the arrays ``fit`` returns (the train stage saves them); ``topk`` ranks on the
host (NumPy / SciPy).
"""

from __future__ import annotations

import ml_collections
import numpy as np
import scipy.sparse as sp

from gr_jax.data.dataset import Interactions
from gr_jax.data.splits import train_event_mask, train_item_counts
from gr_jax.models.recommender import FittedRecommender


def _top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Top-k item ids per row, ties broken by the lower item id (as ``lax.top_k``)."""
    order = np.argsort(-scores, axis=-1, kind="stable")
    return order[..., :k]


class Popularity(FittedRecommender):
    """Ranks every user's list by training interaction counts."""

    def __init__(self, num_items: int):
        self.num_items = num_items

    def fit(self, interactions: Interactions) -> dict:
        return {"counts": train_item_counts(interactions, self.num_items).astype(np.float64)}

    def topk(self, params: dict, batch: dict, k: int) -> np.ndarray:
        return np.broadcast_to(_top_k(params["counts"], k), (len(batch["target"]), k))


class CoOccurrence(FittedRecommender):
    """Item-to-item transitions: score(j) = sum over the last ``window`` history items i of
    decay^age * count(i -> j within ``horizon`` steps), ties broken by popularity."""

    def __init__(self, num_items: int, window: int = 3, horizon: int = 1, decay: float = 0.5):
        self.num_items, self.window, self.horizon, self.decay = num_items, window, horizon, decay

    def fit(self, interactions: Interactions) -> dict:
        in_train = train_event_mask(interactions)
        user_of = np.repeat(np.arange(len(interactions)), interactions.lengths)
        rows, cols, weights = [], [], []
        for gap in range(1, self.horizon + 1):
            first = np.arange(len(interactions.items) - gap)
            ok = in_train[first] & in_train[first + gap] & (user_of[first] == user_of[first + gap])
            rows.append(interactions.items[first[ok]])
            cols.append(interactions.items[first[ok] + gap])
            weights.append(np.full(ok.sum(), 1.0 / gap))
        rows, cols, weights = (np.concatenate(x) for x in (rows, cols, weights))
        transitions = sp.csr_matrix((weights, (rows.astype(np.int64), cols.astype(np.int64))),
                                    shape=(self.num_items, self.num_items))
        counts = train_item_counts(interactions, self.num_items).astype(np.float64)
        return {"transition_weights": transitions.data, "transition_items": transitions.indices,
                "transition_offsets": transitions.indptr, "popularity": counts / max(counts.max(), 1.0)}

    def topk(self, params: dict, batch: dict, k: int) -> np.ndarray:
        history, mask = batch["history"], batch["history_mask"]
        recent = history[:, -self.window:]
        age_weight = self.decay ** np.arange(self.window)[::-1]  # newest (rightmost) weight 1
        weights = mask[:, -self.window:] * age_weight[None, -recent.shape[1]:]
        selector = sp.csr_matrix((weights.ravel(), (np.repeat(np.arange(len(history)), recent.shape[1]),
                                                     recent.ravel())), shape=(len(history), self.num_items))
        transitions = sp.csr_matrix((params["transition_weights"], params["transition_items"],
                                     params["transition_offsets"]), shape=(self.num_items, self.num_items))
        scores = np.asarray((selector @ transitions).todense()) + 1e-6 * params["popularity"][None]
        return _top_k(scores, k)


def build(model: ml_collections.ConfigDict, num_items: int):
    if model.name == "popularity":
        return Popularity(num_items)
    return CoOccurrence(num_items, window=model.window, horizon=model.horizon, decay=model.decay)
