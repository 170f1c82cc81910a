"""Q-Former pre-training, two-tower and CRBR recommenders: tiny end-to-end pipeline runs and CRBR's beam-1 retrieval."""

import json
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import crbr as crbr_config
from configs import qformer as qformer_config
from configs import two_tower as two_tower_config
from gr_jax import stages
from gr_jax.models import crbr_recommender, qformer_pretrain, two_tower
from gr_jax.models.crbr import CRBR
from gr_jax.ops import l2_normalize
from gr_jax.retrieval.exact import exact_topk
from gr_jax.stages.features import Features

# On this data (100 items, k = 10) chance is 0.1 and popularity reaches recall@10 0.29 (valid) / 0.35
# (test). After 10 epochs (seed 0) two_tower reaches 0.59 / 0.61 and crbr 0.55 / 0.51; training
# steps are cheap here (the run is compile-bound), the floor sits above popularity on both splits.
EPOCHS = 10
RECALL_FLOOR = 0.4


@pytest.fixture(scope="module")
def features_dir(tmp_path_factory):
    """The data and features stages of the tiny configs, run once (MiniLM text + a 1-epoch SASRec)."""
    workdir = tmp_path_factory.mktemp("features")
    config = two_tower_config.get_config("tiny")
    config.stages = "data,features"
    config.mesh.data = 1
    stages.run(config, str(workdir))
    return workdir / "features"


@pytest.mark.parametrize("module, model_class", [(two_tower_config, two_tower.TwoTowerRecommender),
                                                 (crbr_config, crbr_recommender.CRBRRecommender),
                                                 (qformer_config, qformer_pretrain.QFormerPretrainRecommender)])
def test_tiny_pipeline_trains_and_beats_chance(module, model_class, features_dir, tmp_path):
    config = module.get_config("tiny")
    assert config.stages == "data,features,train,eval"
    config.stages = "data,train,eval"  # the features stage's outputs are shared (fixture)
    config.train.num_epochs = EPOCHS
    config.train.eval_every_epochs = EPOCHS  # one validation round
    config.mesh.data = 1  # one device: the run is compile-bound
    shutil.copytree(features_dir, tmp_path / "features")
    artifacts = stages.run(config, str(tmp_path))
    assert isinstance(artifacts.model(), model_class)
    metrics = json.load(open(tmp_path / "eval" / "metrics.json"))
    for split in ("valid", "test"):
        assert {"recall@5", "recall@10", "ndcg@5", "ndcg@10", "mrr"} <= set(metrics[split])
        assert 0.0 <= metrics[split]["ndcg@10"] <= metrics[split]["recall@10"] <= 1.0
        assert metrics[split]["recall@10"] >= RECALL_FLOOR, metrics[split]
    embeddings = np.load(tmp_path / "train" / "item_embeddings.npy")
    # The retrieval index: the item tower's vectors, or the pre-trained Q-Former's ITC item embeddings.
    assert embeddings.shape == (100, config.model.get("item_dim", config.model.embed_dim))
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=-1), 1.0, rtol=1e-5)


def test_crbr_topk_with_one_beam_is_exact_topk_of_the_greedy_query():
    config = crbr_config.get_config("tiny").model
    config.beam_size = 1
    rng = np.random.default_rng(0)
    num_items, batch_size, length = 60, 5, 7
    features = Features(text=rng.normal(size=(num_items, 24)).astype(np.float32),
                        cf=rng.normal(size=(num_items, 8)).astype(np.float32))
    model = crbr_recommender.CRBRRecommender(config, features)
    mask = np.arange(length)[None] >= rng.integers(0, length - 1, batch_size)[:, None]  # left-padded
    batch = {"history": np.where(mask, rng.integers(0, num_items, (batch_size, length)), 0).astype(np.int32),
             "history_mask": mask, "target": rng.integers(0, num_items, batch_size).astype(np.int32)}
    params = jax.jit(lambda r, b: nn.meta.unbox(model.init(r, b)))(jax.random.PRNGKey(1), batch)
    k = 10
    ids = np.asarray(jax.jit(lambda p, b: model.topk(p, b, k))(params, batch))

    @jax.jit
    def greedy_topk(params, batch):  # greedy routing by hand: the argmax code of every layer
        states = model.query_states(params, batch)
        crbr = {"params": params["crbr"]}
        v = model.crbr.apply(crbr, states, method=CRBR.base)
        for layer, _ in enumerate(config.codebook_sizes):
            code = jnp.argmax(model.crbr.apply(crbr, states, v[:, None], layer, method=CRBR.log_probs)[:, 0], -1)
            v = v + params["crbr"][f"codebook_{layer}"][code]
        return exact_topk(l2_normalize(v), model.item_embeddings(params), k)[0]

    expected = greedy_topk(params, batch)
    np.testing.assert_array_equal(ids, np.asarray(expected))
    assert ids.shape == (batch_size, k) and all(len(set(row)) == k for row in ids)


def test_fine_tuning_starts_from_the_pretrained_qformer(features_dir, tmp_path):
    from gr_jax.data.pipeline import train_dataset

    pretraining = qformer_config.get_config("tiny")
    pretraining.update(stages="data,train")
    pretraining.train.num_steps = 3
    pretraining.mesh.data = 1
    shutil.copytree(features_dir, tmp_path / "pre" / "features")
    pretrained = stages.run(pretraining, str(tmp_path / "pre")).params["qformer"]

    def fine_tuning(**model_overrides):
        config = two_tower_config.get_config("tiny")
        config.model.update(init_qformer_from=str(tmp_path / "pre"), **model_overrides)
        return stages.Artifacts(config, str(tmp_path / "tune"))

    shutil.copytree(features_dir, tmp_path / "tune" / "features")
    shutil.copytree(tmp_path / "pre" / "data", tmp_path / "tune" / "data")
    artifacts = fine_tuning()
    model = artifacts.model(pretrained_qformer=stages.load_pretrained_qformer(artifacts))
    batch = train_dataset(artifacts.dataset.users, max_history=artifacts.config.data.max_history,
                          global_batch_size=8, seed=0)[0]
    params = nn.meta.unbox(model.init(jax.random.PRNGKey(3), batch))
    jax.tree.map(np.testing.assert_array_equal, params["qformer"], pretrained)
    fresh = nn.meta.unbox(two_tower.TwoTowerRecommender(artifacts.config.model, artifacts.features).init(
        jax.random.PRNGKey(3), batch))  # same seed, no pre-training: different weights
    assert not np.allclose(fresh["qformer"]["queries"], params["qformer"]["queries"])
    with pytest.raises(ValueError, match=r"model.num_queries \(pre-trained 8, here 4\)"):
        stages.load_pretrained_qformer(fine_tuning(num_queries=4))
