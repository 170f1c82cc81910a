"""The features stage: MiniLM text embeddings and SASRec/DuoRec collaborative embeddings."""

import json

import numpy as np

from configs import rqvae
from gr_jax import stages
from gr_jax.data.dataset import Interactions
from gr_jax.stages.features import event_windows, load_features


def test_features_stage_writes_text_and_cf_embeddings_and_reuses_them(tmp_path):
    config = rqvae.get_config("tiny")
    config.stages = "data,features"
    config.features.text.cache_dir = str(tmp_path / "cache")
    config.features.cf.enabled = True
    config.features.cf.model.embed_dim = 16
    config.features.cf.model.mlp_dim = 32
    config.features.cf.model.contrastive = "supervised"  # DuoRec
    config.features.cf.contexts = True  # Pctx's per-event context vectors
    config.features.cf.train.num_epochs = 1
    config.features.cf.train.batch_size = 32
    artifacts = stages.run(config, str(tmp_path / "run"))
    text, cf = artifacts.features.text, artifacts.features.cf
    assert text.shape == (100, 384) and np.allclose(np.linalg.norm(text, axis=1), 1.0, atol=1e-5)
    assert cf.shape == (100, 16) and np.isfinite(cf).all()
    summary = json.load(open(tmp_path / "run" / "features" / "summary.json"))
    assert summary["cf"]["train"]["final_step"] > 0
    contexts = artifacts.features.contexts
    assert contexts.shape == (len(artifacts.dataset.users.items), 16) and np.isfinite(contexts).all()
    assert len(np.unique(contexts.round(5), axis=0)) > len(contexts) // 2  # events differ by context
    reloaded = load_features(str(tmp_path / "run"))
    np.testing.assert_array_equal(reloaded.cf, cf)
    np.testing.assert_array_equal(reloaded.text, text)
    np.testing.assert_array_equal(reloaded.contexts, contexts)
    again = stages.run(config, str(tmp_path / "run"))  # same config: reused, not retrained
    assert "train" not in json.load(open(tmp_path / "run" / "features" / "summary.json"))["cf"]
    np.testing.assert_array_equal(again.features.contexts, contexts)


def test_event_windows_end_with_each_event_left_padded():
    users = Interactions.from_lists(["a", "b"], [[5, 6, 7], [8, 9]])
    items, mask = event_windows(users, window=2)
    np.testing.assert_array_equal(items, [[0, 5], [5, 6], [6, 7], [0, 8], [8, 9]])
    np.testing.assert_array_equal(mask, [[False, True], [True, True], [True, True], [False, True], [True, True]])
