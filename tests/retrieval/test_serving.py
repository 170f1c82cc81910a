"""Serving the Q-Former models' query sets from a ScaNN index gives the exact in-jit top-k."""

import flax.linen as nn
import jax
import numpy as np
import pytest

from configs import crbr as crbr_config
from configs import qformer as qformer_config
from configs import two_tower as two_tower_config
from gr_jax.models import crbr_recommender, qformer_pretrain, two_tower
from gr_jax.retrieval.scann_config import ScannConfig
from gr_jax.retrieval.serving import scann_topk
from gr_jax.stages.features import Features

NUM_ITEMS, BATCH, LENGTH, K = 400, 6, 7, 10


def _model_and_batch(module, model_class):
    config = module.get_config("tiny").model
    rng = np.random.default_rng(0)
    features = Features(text=rng.normal(size=(NUM_ITEMS, 24)).astype(np.float32),
                        cf=rng.normal(size=(NUM_ITEMS, 8)).astype(np.float32))
    model = model_class(config, features)
    mask = np.arange(LENGTH)[None] >= rng.integers(0, LENGTH - 1, BATCH)[:, None]  # left-padded
    batch = {"history": np.where(mask, rng.integers(0, NUM_ITEMS, (BATCH, LENGTH)), 0).astype(np.int32),
             "history_mask": mask, "target": rng.integers(0, NUM_ITEMS, BATCH).astype(np.int32),
             "valid": np.ones(BATCH, bool)}
    params = jax.jit(lambda r, b: nn.meta.unbox(model.init(r, b)))(jax.random.PRNGKey(1), batch)
    return model, params, batch


# Brute force (the default below 10,000 items), and the tree + AH path made exhaustive: every leaf
# searched and every item re-scored exactly.
CONFIGS = [ScannConfig(recall_sample=0),
           ScannConfig(recall_sample=0, brute_force_below=0, num_leaves=8, num_leaves_to_search=8,
                       reorder_k=NUM_ITEMS)]


@pytest.mark.parametrize("config", CONFIGS, ids=["brute_force", "exhaustive_tree"])
@pytest.mark.parametrize("module, model_class", [(two_tower_config, two_tower.TwoTowerRecommender),
                                                 (crbr_config, crbr_recommender.CRBRRecommender),
                                                 (qformer_config, qformer_pretrain.QFormerPretrainRecommender)])
def test_scann_served_topk_equals_the_exact_topk(module, model_class, config, tmp_path):
    pytest.importorskip("scann")
    model, params, batch = _model_and_batch(module, model_class)
    exact = np.asarray(jax.jit(lambda p, b: model.topk(p, b, K))(params, batch))
    served = scann_topk(model, params, config, K, save_dir=str(tmp_path / "index"))(batch)
    np.testing.assert_array_equal(served, exact)
    assert (tmp_path / "index" / "index.json").exists()


def test_models_without_a_query_set_are_refused():
    with pytest.raises(ValueError, match="eval.index='exact'"):
        scann_topk(object(), {}, ScannConfig(), K)
