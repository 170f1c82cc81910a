"""Ranking users from a ScaNN index of a trained model's item vectors (``eval.index='scann'``).

For the models on the Q-Former user tower (``qformer``, ``two_tower``, ``crbr``, ``latent``): the item
vectors the model searches (``model.item_embeddings``) go into one ScaNN index; each user's query
set (``model.query_set``: CRBR's routing paths, the two-tower and latent user vector, the Q-Former's
query states) is computed in jit, searched in the index and merged per item by max score
(``multi_query.retrieve``), exactly as the exact in-jit ``model.topk`` does over the whole
catalogue (``latent``'s own ``topk`` searches its code index instead). The shared evaluator then
scores the lists.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import jax
import numpy as np

from gr_jax.models.recommender import IndexRetriever, Recommender
from gr_jax.retrieval.multi_query import retrieve
from gr_jax.retrieval.scann_config import ScannConfig
from gr_jax.retrieval.scann_index import build_index


def scann_topk(model: Recommender, params, config: ScannConfig, k: int,
               save_dir: str | None = None) -> Callable[[dict], np.ndarray]:
    """``batch -> [B, k]`` item ids served from a ScaNN index of ``model.item_embeddings(params)``,
    saved to ``save_dir`` when given."""
    if not isinstance(model, IndexRetriever):
        raise ValueError(f"eval.index='scann' serves models with a query set (qformer, two_tower, crbr, latent); "
                         f"{type(model).__name__} has none: use eval.index='exact'")
    tic = time.time()
    index = build_index(np.asarray(model.item_embeddings(params)), config)
    logging.info("ScaNN index of %d item vectors (%s) built in %.1fs.", index.num_items, index.mode, time.time() - tic)
    if save_dir:
        index.save(save_dir)
    query_sets = jax.jit(model.query_set)

    def topk(batch: dict) -> np.ndarray:
        return np.asarray(retrieve(np.asarray(query_sets(params, batch)), index.search, k).ids)

    return topk
