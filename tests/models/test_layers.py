"""The T5 layers' projection against flax's DenseGeneral, and under a model-split mesh."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from configs import sasrec
from gr_jax.models.layers.t5 import dense_init, proj
from gr_jax.ops import add_batch_shared
from gr_jax.training import trainer


@pytest.mark.parametrize("features,axes,names", [((3, 4, 2), -1, ("embed", None, "heads", "kv")),
                                                 (6, (-2, -1), ("heads", "kv", "embed"))])
def test_projection_matches_dense_general(features, axes, names):
    x = np.random.default_rng(0).normal(size=(2, 5, 4, 2) if axes != -1 else (2, 5, 8)).astype(np.float32)
    ours = proj(features, axes, names, "p")
    reference = nn.DenseGeneral(features, axis=axes, use_bias=False, kernel_init=dense_init)
    params = nn.unbox(ours.init(jax.random.PRNGKey(3), x))
    reference_params = reference.init(jax.random.PRNGKey(3), x)
    np.testing.assert_array_equal(params["params"]["kernel"], reference_params["params"]["kernel"])
    np.testing.assert_allclose(ours.apply(params, x), reference.apply(reference_params, x), rtol=1e-6)


def test_projection_initialises_inside_jit_on_a_model_split_mesh():
    config = sasrec.get_config("tiny")
    config.mesh.data, config.mesh.model = 4, 2
    layer = proj((3, 4, 2), -1, ("embed", None, "heads", "kv"), "qkv")
    with trainer.mesh_context(config) as mesh:
        boxed = jax.eval_shape(layer.init, jax.random.PRNGKey(0), np.zeros((8, 5, 6), np.float32))
        specs = nn.get_partition_spec(boxed)["params"]["kernel"]
        out = jax.jit(lambda x: layer.apply(nn.unbox(layer.init(jax.random.PRNGKey(0), x)), x))(
            np.ones((8, 5, 6), np.float32))
    assert tuple(nn.logical_to_mesh_axes(specs, config.sharding.rules)) == (None, None, "model", None)
    assert out.shape == (8, 5, 3, 4, 2) and mesh.shape["model"] == 2


def test_batch_shared_bias_gradient_equals_the_broadcast_adds_on_a_split_mesh():
    """``add_batch_shared`` (the bias gradient as a dot with ones) against ``x + bias``, batch over the
    data axis and heads over the model axis."""
    x = jax.random.normal(jax.random.PRNGKey(0), (16, 4, 9, 9))
    bias = jax.random.normal(jax.random.PRNGKey(1), (1, 4, 9, 9))
    weights = jax.random.normal(jax.random.PRNGKey(2), x.shape)

    def grads(add):
        return jax.jit(jax.grad(lambda x, b: (jnp.tanh(add(x, b)) * weights).sum(), (0, 1)))(x, bias)

    config = sasrec.get_config("tiny")
    config.mesh.data, config.mesh.model = 4, 2
    with trainer.mesh_context(config) as mesh:
        x = jax.device_put(x, NamedSharding(mesh, PartitionSpec("data", "model")))
        fast, reference = grads(add_batch_shared), grads(lambda x, b: x + b)
    np.testing.assert_array_equal(fast[0], reference[0])
    np.testing.assert_allclose(fast[1], reference[1], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="expected float32"):
        add_batch_shared(x, bias[:, :2])
