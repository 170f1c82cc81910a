"""Mixed precision: bfloat16 compute trains with float32 parameters and optimizer state, losses
track float32 ones, every family's matmuls run in bfloat16, and the dtype choices are checked."""

import importlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import gat as gat_config
from configs import prism as prism_config
from configs import sasrec
from configs import tiger as tiger_config
from gr_jax.config_schema import ConfigError
from gr_jax.data.pipeline import train_dataset, train_rows
from gr_jax.data.synthetic import SyntheticConfig, generate
from gr_jax.models.crbr_recommender import CRBRRecommender
from gr_jax.models.gat import GATRecommender
from gr_jax.models.prism import PrismRecommender
from gr_jax.models.recommender import IndexRetriever
from gr_jax.models.sasrec import SASRecRecommender
from gr_jax.models.tiger import TigerRecommender
from gr_jax.models.two_tower import TwoTowerRecommender
from gr_jax.ops import softmax
from gr_jax.precision import Precision, resolve
from gr_jax.stages.features import Features
from gr_jax.tokenizers.sid_table import SIDTable
from gr_jax.training import sharding, trainer
from gr_jax.training.optim import make_optimizer

BF16, F32 = jnp.bfloat16, jnp.float32


@pytest.fixture(scope="module")
def dataset():
    return generate(SyntheticConfig(num_users=150, num_items=100, branching=(3, 3, 2)))[0]


def tiger(dataset):
    codes = np.random.default_rng(0).integers(0, 16, (dataset.num_items, 4))
    model_cfg = tiger_config.model_config()
    model_cfg.update(num_user_buckets=50, embed_dim=32, num_encoder_layers=1, num_decoder_layers=1, num_heads=4,
                     head_dim=8, mlp_dim=64, dropout=0.0, beam_size=4)
    return TigerRecommender(model_cfg, SIDTable(codes, (16,) * 4))


def sasrec_model(dataset):
    model_cfg = sasrec.model_config()
    model_cfg.update(embed_dim=16, num_blocks=1, mlp_dim=32, dropout=0.0)
    return SASRecRecommender(model_cfg, dataset.num_items, 8)


def gat(dataset):
    model_cfg = gat_config.get_config("tiny").model
    model_cfg.update(dropout=0.0, beam_size=4)
    codes = np.random.default_rng(0).integers(0, 8, (dataset.num_items, 3))
    codes[:, -1] = np.arange(dataset.num_items) % 8
    features = Features(text=np.random.default_rng(1).normal(size=(dataset.num_items, 24)).astype(np.float32))
    return GATRecommender(model_cfg, SIDTable(codes, (8, 8, 13)), features, dataset.users)


def run(model, dataset, precision: Precision, steps: int = 6, ranking: bool = False):
    """Losses of ``steps`` training steps, the final state, and (``ranking``) the top-10 of the first batch."""
    model.set_precision(precision)
    config = sasrec.get_config("tiny")
    config.mesh.data, config.mesh.model = 2, 1
    optimizer = make_optimizer(config.train, steps)
    rows = model.training_rows(train_rows(dataset.users), dataset.users)
    data = train_dataset(dataset.users, max_history=8, global_batch_size=16, seed=0, rows=rows)
    losses = []
    with trainer.mesh_context(config) as mesh:
        state, shardings = trainer.create_state(model, optimizer, config, mesh, sharding.shard_batch(data[0], mesh), 0)
        step = trainer.jit_train_step(model, optimizer, mesh, shardings)
        for i in range(steps):
            state, metrics = step(state, sharding.shard_batch(data[i], mesh))
            losses.append(float(metrics["loss"]))
        top = trainer.jit_topk(model, mesh, shardings.params, 10)(state.params)(data[0]) if ranking else None
    return np.array(losses), state, top


def float_dtypes(tree):
    return {x.dtype for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)}


def test_bfloat16_compute_keeps_float32_state_and_tracks_float32_losses(dataset):
    full, _, _ = run(tiger(dataset), dataset, Precision())
    mixed, state, top = run(tiger(dataset), dataset, Precision(compute=BF16, params=F32), ranking=True)
    assert float_dtypes(state.params) == {np.dtype("float32")}
    assert float_dtypes(state.opt_state) == {np.dtype("float32")}
    assert mixed[-1] < mixed[0]
    np.testing.assert_allclose(mixed, full, rtol=0.02)  # bfloat16 rounding, not a different model
    assert top.shape == (16, 10) and ((top >= 0) & (top < dataset.num_items)).all()


def test_bfloat16_parameters_are_stored_in_bfloat16(dataset):
    losses, state, _ = run(sasrec_model(dataset), dataset, Precision(compute=BF16, params=BF16), steps=4)
    assert float_dtypes(state.params) == {np.dtype("bfloat16")}
    assert np.isfinite(losses).all()


def matmul_dtypes(jaxpr, found=None) -> set:
    """Operand dtypes of every ``dot_general`` in ``jaxpr`` and its sub-programs (scan, jit, remat)."""
    found = set() if found is None else found
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            found.add(tuple(str(v.aval.dtype) for v in eqn.invars))
        for value in eqn.params.values():
            for sub in value if isinstance(value, (list, tuple)) else [value]:
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    matmul_dtypes(inner, found)
    return found


def two_tower(dataset, name="two_tower"):
    config = importlib.import_module(f"configs.{name}").get_config("tiny")
    rng = np.random.default_rng(0)
    features = Features(text=rng.normal(size=(dataset.num_items, 24)).astype(np.float32),
                        cf=rng.normal(size=(dataset.num_items, 16)).astype(np.float32))
    cls = TwoTowerRecommender if name == "two_tower" else CRBRRecommender
    return cls(config.model, features)


def prism(dataset):
    config = prism_config.get_config("tiny")
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 8, (dataset.num_items, 3))
    codes[:, -1] = np.arange(dataset.num_items) % 8
    table = SIDTable(codes, (8, 8, 13), codebooks=[rng.normal(size=(8, 4)).astype(np.float32) for _ in range(2)])
    return PrismRecommender(config.model, table, rng.normal(size=(dataset.num_items, 24)).astype(np.float32),
                            rng.normal(size=(dataset.num_items, 16)).astype(np.float32))


@pytest.mark.parametrize("build", [tiger, sasrec_model, gat, prism, two_tower,
                                   lambda d: two_tower(d, "crbr")], ids=["tiger", "sasrec", "gat", "prism",
                                                                         "two_tower", "crbr"])
def test_every_matmul_of_training_and_retrieval_runs_in_bfloat16(dataset, build):
    model = build(dataset)
    precision = Precision(compute=BF16, params=F32)
    model.set_precision(precision)
    rows = model.training_rows(train_rows(dataset.users), dataset.users)
    batch = {k: jnp.asarray(v) for k, v in train_dataset(dataset.users, max_history=8, global_batch_size=8, seed=0,
                                                         rows=rows)[0].items()}
    params = nn.meta.unbox(jax.eval_shape(model.init, jax.random.PRNGKey(0), batch))  # shapes only
    loss = jax.make_jaxpr(lambda p, b: model.loss(precision.for_compute(p), precision.for_compute(b),
                                                  jax.random.PRNGKey(1), 0))(params, batch)
    ranking = jax.make_jaxpr(lambda p, b: model.topk(model.eval_params(precision.for_compute(p)),
                                                     precision.for_compute(b), 10))(params, batch)
    assert matmul_dtypes(loss.jaxpr) == {("bfloat16", "bfloat16")}
    # Models that score the whole catalogue by dot products do it in float32 (bfloat16 scores tie).
    scoring = {("float32", "float32")} if isinstance(model, (IndexRetriever, SASRecRecommender)) else set()
    assert matmul_dtypes(ranking.jaxpr) == {("bfloat16", "bfloat16")} | scoring


def test_softmax_runs_in_float32_and_returns_the_input_dtype():
    logits = jnp.asarray(np.random.default_rng(0).normal(size=(4, 300)) * 8, BF16)
    weights = softmax(logits)
    assert weights.dtype == BF16
    np.testing.assert_allclose(np.asarray(weights, np.float32), jax.nn.softmax(logits.astype(F32)), atol=4e-3)


def test_auto_is_bfloat16_on_accelerators_and_float32_on_cpu():
    assert resolve("auto", "gpu") == BF16 and resolve("auto", "tpu") == BF16 and resolve("auto", "cpu") == F32
    with pytest.raises(ConfigError, match="model.param_dtype='fp16'; expected one of auto, float32, bfloat16"):
        resolve("fp16", field="model.param_dtype")
