"""Hash dropout: the keep rate, independence across calls, row keys and sharding invariance."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from gr_jax.models.layers.dropout import (
    Dropout,
    fmix32,
    hash_bits,
    hash_keep_mask,
    masked_relu,
    masked_relu_reference,
)
from gr_jax.training import sharding


def test_fmix32_is_a_bijection_on_a_sample():
    x = jnp.arange(1 << 16, dtype=jnp.uint32)
    assert len(np.unique(np.asarray(fmix32(x)))) == 1 << 16


def test_keep_rate_and_inverted_scaling():
    module = Dropout(0.1, "hash")
    x = jnp.ones((64, 81, 128))
    y = module.apply({}, x, False, rngs={"dropout": jax.random.PRNGKey(0)})
    kept = np.asarray(y != 0)
    assert abs(kept.mean() - 0.9) < 0.005
    np.testing.assert_allclose(np.asarray(y)[kept], 1 / 0.9, rtol=1e-6)
    assert np.array_equal(np.asarray(module.apply({}, x, True)), np.asarray(x))


def test_fused_relu_dropout_equals_relu_then_dropout_in_values_and_gradients():
    x = jax.random.normal(jax.random.PRNGKey(0), (32, 48)).at[0, :8].set(0.0)  # relu'(0) = 0 in both
    keep = hash_keep_mask(jnp.uint32(3), x.shape, 0.2)
    weights = jax.random.normal(jax.random.PRNGKey(1), x.shape)
    for fn in (masked_relu, masked_relu_reference):
        np.testing.assert_array_equal(fn(x, keep, 0.2), masked_relu_reference(x, keep, 0.2))
        np.testing.assert_array_equal(jax.grad(lambda v, fn=fn: (fn(v, keep, 0.2) * weights).sum())(x),
                                      jax.grad(lambda v: (masked_relu_reference(v, keep, 0.2) * weights).sum())(x))
    rngs = {"dropout": jax.random.PRNGKey(2)}
    for impl in ("hash", "threefry"):
        module = Dropout(0.2, impl)
        np.testing.assert_array_equal(module.apply({}, x, False, relu=True, rngs=rngs),
                                      module.apply({}, jax.nn.relu(x), False, rngs=rngs))
        np.testing.assert_array_equal(module.apply({}, x, True, relu=True), jax.nn.relu(x))


def test_masks_differ_across_keys_and_have_no_row_structure():
    a = np.asarray(hash_keep_mask(jnp.uint32(1), (256, 512), 0.5))
    b = np.asarray(hash_keep_mask(jnp.uint32(2), (256, 512), 0.5))
    assert 0.45 < (a != b).mean() < 0.55  # independent masks disagree half the time
    rows = a.mean(1)
    assert rows.std() < 0.05  # no row is systematically dropped


def test_keyed_rows_draw_the_same_bits_wherever_they_sit():
    keyed = np.asarray(hash_bits(jnp.uint32(3), (3, 4, 5), keys=jnp.array([7, 2, 7])))
    np.testing.assert_array_equal(keyed[0], keyed[2])
    assert (keyed[0] != keyed[1]).mean() > 0.9
    # A row keyed k draws what row k of an unkeyed array draws (one key axis or two).
    np.testing.assert_array_equal(keyed[0], np.asarray(hash_bits(jnp.uint32(3), (8, 4, 5)))[7])
    grid = np.asarray(hash_bits(jnp.uint32(3), (2, 2, 5), keys=jnp.array([[14, 15], [7, 8]])))
    rows = np.asarray(hash_bits(jnp.uint32(3), (30, 5)))
    np.testing.assert_array_equal(grid.reshape(-1, 5), rows[[14, 15, 7, 8]])


def test_mask_does_not_depend_on_sharding():
    mesh = sharding.make_mesh(ml_collections.ConfigDict({"data": 4, "model": 2}))
    make = jax.jit(lambda s: hash_keep_mask(s, (8, 16), 0.3),
                   out_shardings=NamedSharding(mesh, PartitionSpec("data", "model")))
    expected = hash_keep_mask(jnp.uint32(7), (8, 16), 0.3)
    np.testing.assert_array_equal(np.asarray(make(jnp.uint32(7))), np.asarray(expected))
