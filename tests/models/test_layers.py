"""The T5 layers' projection against flax's DenseGeneral, and under a model-split mesh."""

import flax.linen as nn
import jax
import numpy as np
import pytest

from configs import sasrec
from gr_jax.models.layers.t5 import dense_init, proj
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
