"""Shared trainer: same losses on 1 and 8 devices, resume after a kill, non-finite stop, early stop."""

import json
import os

import flax.linen as nn
import jax
import numpy as np
import pytest

from configs import sasrec
from configs import tiger as tiger_config
from gr_jax.data.pipeline import train_dataset
from gr_jax.data.synthetic import SyntheticConfig, generate
from gr_jax.models.recommender import TrainableRecommender
from gr_jax.models.tiger import TigerRecommender
from gr_jax.tokenizers.sid_table import SIDTable
from gr_jax.training import sharding, trainer
from gr_jax.training.optim import make_optimizer

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def tiger_losses(mesh_shape, steps=20):
    dataset, _ = generate(SyntheticConfig(num_users=150, num_items=100, branching=(3, 3, 2)))
    codes = np.random.default_rng(0).integers(0, 16, (dataset.num_items, 4))
    model_cfg = tiger_config.model_config()
    model_cfg.update(num_user_buckets=50, embed_dim=32, num_encoder_layers=2, num_decoder_layers=2, num_heads=4,
                     head_dim=8, mlp_dim=64, dropout=0.1, beam_size=4)
    model = TigerRecommender(model_cfg, SIDTable(codes, (16,) * 4))
    config = sasrec.get_config("tiny")
    config.mesh.data, config.mesh.model = mesh_shape
    optimizer = make_optimizer(config.train, steps)
    data = train_dataset(dataset.users, max_history=8, global_batch_size=32, seed=0)
    losses = []
    with trainer.mesh_context(config) as mesh:
        state, shardings = trainer.create_state(model, optimizer, config, mesh,
                                                sharding.shard_batch(data[0], mesh), seed=0)
        step = trainer.jit_train_step(model, optimizer, mesh, shardings)
        for i in range(steps):
            state, metrics = step(state, sharding.shard_batch(data[i], mesh))
            losses.append(float(metrics["loss"]))
        kernel = state.params["decoder_layers_0"]["mlp"]["wi"]["kernel"]
    return np.array(losses), kernel.sharding


def test_one_device_and_eight_device_mesh_give_the_same_losses():
    single, _ = tiger_losses((1, 1))
    sharded, kernel_sharding = tiger_losses((4, 2))
    assert kernel_sharding.spec == jax.sharding.PartitionSpec(None, "model")  # mlp axis split over `model`
    assert single[-1] < single[0]
    np.testing.assert_allclose(sharded, single, rtol=1e-4)


class _AlwaysNaN(TrainableRecommender):
    """Wraps a model so that its loss is NaN."""

    def __init__(self, model):
        self.model = model

    def init(self, rng, batch):
        return self.model.init(rng, batch)

    def loss(self, params, batch, rng, step):
        loss, aux = self.model.loss(params, batch, rng, step)
        poison = jax.numpy.where(jax.random.uniform(rng) < 2.0, jax.numpy.nan, 0.0)  # always NaN
        return loss + poison, aux

    def topk(self, params, batch, k):
        return self.model.topk(params, batch, k)


def test_non_finite_loss_stops_training_with_a_clear_message(tmp_path):
    from gr_jax import stages

    config = sasrec.get_config("tiny")
    artifacts = stages.Artifacts(config, str(tmp_path))
    stages.run_data(artifacts)
    model = _AlwaysNaN(artifacts.model())
    with pytest.raises(trainer.NonFiniteError, match="learning_rate"):
        trainer.train(config, str(tmp_path / "train"), model, artifacts.dataset.users)


def test_early_stopping_ends_training_when_validation_stalls(tmp_path):
    from gr_jax import stages

    config = sasrec.get_config("tiny")
    config.train.num_epochs = 50
    config.train.learning_rate = 0.0  # nothing improves after the first evaluation
    config.train.early_stop_patience = 2
    stages.run(config, str(tmp_path))
    summary = json.load(open(tmp_path / "train" / "summary.json"))
    assert summary["stopped_early"] and summary["final_step"] == 3 * summary["steps_per_epoch"]


class _StepEcho(TrainableRecommender):
    """A one-parameter model whose loss reports the ``step`` the trainer passes it."""

    def topk(self, params, batch, k):
        raise NotImplementedError

    def init(self, rng, batch):
        return {"w": jax.numpy.zeros(())}

    def loss(self, params, batch, rng, step):
        return (params["w"] - 1.0) ** 2, {"seen_step": step}


def test_step_aware_losses_receive_the_optimizer_step():
    config = sasrec.get_config("tiny")
    config.mesh.data = 1
    model, optimizer = _StepEcho(), make_optimizer(config.train, 10)
    batch = {"history": np.zeros((4, 3), np.int32)}
    with trainer.mesh_context(config) as mesh:
        state, shardings = trainer.create_state(model, optimizer, config, mesh, batch, seed=0)
        step = trainer.jit_train_step(model, optimizer, mesh, shardings)
        seen = []
        for _ in range(3):
            state, metrics = step(state, batch)
            seen.append(int(metrics["seen_step"]))
    assert seen == [0, 1, 2]


@pytest.mark.parametrize("vocab_multiple", [1, 8])
def test_model_vocab_multiple_pads_a_token_table_that_does_not_split_over_the_model_axis(vocab_multiple):
    dataset, _ = generate(SyntheticConfig(num_users=150, num_items=100, branching=(3, 3, 2)))
    model_cfg = tiger_config.model_config()
    model_cfg.update(num_user_buckets=51, embed_dim=16, num_encoder_layers=1, num_decoder_layers=1, num_heads=4,
                     head_dim=4, mlp_dim=32, beam_size=4, vocab_multiple=vocab_multiple)
    model = TigerRecommender(model_cfg, SIDTable(np.random.default_rng(0).integers(0, 16, (100, 4)), (16,) * 4))
    config = sasrec.get_config("tiny")
    config.mesh.data, config.mesh.model = 2, 4  # 2 + 51 user buckets + 4 x 16 codes = 117 token rows
    optimizer = make_optimizer(config.train, 1)
    batch = train_dataset(dataset.users, max_history=8, global_batch_size=16, seed=0)[0]
    with trainer.mesh_context(config) as mesh:
        batch = sharding.shard_batch(batch, mesh)
        if vocab_multiple == 1:
            with pytest.raises(ValueError, match="117"):
                trainer.create_state(model, optimizer, config, mesh, batch, seed=0)
            return
        state, shardings = trainer.create_state(model, optimizer, config, mesh, batch, seed=0)
        state, metrics = trainer.jit_train_step(model, optimizer, mesh, shardings)(state, batch)
    table = state.params["token_embed"]["embedding"]
    assert table.shape[0] == 120 and table.sharding.spec[0] == "model"
    assert bool(metrics["finite"])


def test_abstract_state_matches_the_created_state_on_a_device_mesh():
    """Shapes, dtypes and shardings without allocating (FLOP counts, ahead-of-time compilation)."""
    dataset, _ = generate(SyntheticConfig(num_users=150, num_items=100, branching=(3, 3, 2)))
    model_cfg = tiger_config.model_config()
    model_cfg.update(num_user_buckets=50, embed_dim=16, num_encoder_layers=1, num_decoder_layers=1, num_heads=4,
                     head_dim=4, mlp_dim=32, beam_size=4, vocab_multiple=8)
    model = TigerRecommender(model_cfg, SIDTable(np.random.default_rng(0).integers(0, 16, (100, 4)), (16,) * 4))
    config = sasrec.get_config("tiny")
    config.mesh.data, config.mesh.model = 2, 4
    optimizer = make_optimizer(config.train, 1)
    batch = train_dataset(dataset.users, max_history=8, global_batch_size=16, seed=0)[0]
    with trainer.mesh_context(config) as mesh:
        batch = sharding.shard_batch(batch, mesh)
        abstract, _ = trainer.abstract_state(model, optimizer, config, mesh, batch)
        state, _ = trainer.create_state(model, optimizer, config, mesh, batch, seed=0)
    described = lambda tree: jax.tree.map(lambda x: (x.shape, x.dtype, x.sharding.spec), tree)
    assert described(abstract) == described(state)
    assert abstract.params["token_embed"]["embedding"].sharding.spec[0] == "model"


def test_mesh_context_applies_the_models_activation_sharding_constraints():
    """Flax reads the mesh from ``jax.sharding.get_abstract_mesh()``; under the legacy ``with mesh:``
    that is empty and every ``nn.with_logical_constraint`` is silently skipped."""
    config = sasrec.get_config("tiny")
    config.mesh.data, config.mesh.model = 4, 2
    with trainer.mesh_context(config):
        hlo = jax.jit(lambda x: nn.with_logical_constraint(x * 2, ("batch", "mlp"))).lower(
            np.zeros((8, 4), np.float32)).as_text()
    assert 'sharding_constraint %1 <@mesh, [{"data"}, {"model"}]>' in hlo
