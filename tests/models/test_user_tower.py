"""Q-Former user tower: padding invariance, incremental append = full recompute (both history
reads; the single read's state does not grow with N), the pre-training losses (orthogonality,
training reduces them) and long histories."""

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gr_jax.models.user_tower import (
    CachedReadState,
    QFormer,
    QFormerConfig,
    QFormerUserTower,
    mask_history,
    orthogonality_loss,
)

FEATURES = 12


def tower(**kwargs):
    module = QFormer(QFormerConfig(**dict(dict(num_queries=4, embed_dim=16, num_layers=2, num_heads=2, head_dim=8,
                                               mlp_dim=32), **kwargs)))
    return QFormerUserTower(module)


def batch(size=4, length=10, seed=0):
    rng = np.random.default_rng(seed)
    mask = np.ones((size, length), bool)
    mask[0, :4] = False  # left padding
    mask[1, [2, 5, 6]] = False  # holes
    mask[2, -3:] = False  # right padding
    return {"history_features": jnp.asarray(rng.normal(size=(size, length, FEATURES)), jnp.float32),
            "history_mask": jnp.asarray(mask),
            "target_features": jnp.asarray(rng.normal(size=(size, FEATURES)), jnp.float32)}


def init(model, b):
    """Parameters with random recency slopes, so the recency bias is exercised too."""
    params = nn.meta.unbox(jax.jit(model.init)(jax.random.PRNGKey(0), b))
    rng = np.random.default_rng(1)
    for name in params:
        if isinstance(params[name], dict) and "recency" in params[name]:
            params[name]["recency"] = jnp.asarray(rng.normal(size=params[name]["recency"].shape), jnp.float32)
    return params


@functools.lru_cache
def default_setup(history_read="first"):
    """The tiny tower, batch and parameters (shared by the tests that only read them)."""
    model, b = tower(history_read=history_read), batch()
    return model, b, init(model, b)


def test_history_read_selects_the_reading_blocks():
    for history_read, reading in (("first", ["blocks_0"]), ("every", ["blocks_0", "blocks_1"])):
        params = default_setup(history_read)[2]
        assert sorted(n for n in params if n.startswith("blocks_") and "cross_attention" in params[n]) == reading
    with pytest.raises(ValueError, match="history_read"):
        tower(history_read="last")


def test_orthogonality_loss_is_zero_only_for_orthonormal_queries():
    q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(16, 4)))
    orthonormal = jnp.asarray(q.T[None] * np.array([1.0, 2.0, 0.5, 3.0])[:, None], jnp.float32)  # any norms
    assert float(orthogonality_loss(orthonormal)) < 1e-5
    skewed = orthonormal.at[0, 1].add(orthonormal[0, 0])
    assert float(orthogonality_loss(skewed)) > 0.1
    assert float(orthogonality_loss(jnp.ones((2, 4, 16)))) == pytest.approx(np.sqrt(12), rel=1e-5)


@pytest.mark.parametrize("history_read", ["first", "every"])
def test_padded_positions_never_influence_the_output(history_read):
    model, b, params = default_setup(history_read)
    encode = jax.jit(model.encode)
    out = encode(params, b["history_features"], b["history_mask"])
    garbage = jnp.where(b["history_mask"][..., None], b["history_features"], 1e3)
    np.testing.assert_array_equal(out, encode(params, garbage, b["history_mask"]))
    # Where the padding sits does not matter either: positions count valid items.
    row = 1
    features = b["history_features"][row][b["history_mask"][row]][None]
    packed = encode(params, features, jnp.ones(features.shape[:2], bool))
    np.testing.assert_allclose(out[row:row + 1], packed, atol=1e-5)
    empty = jnp.zeros_like(b["history_mask"])
    np.testing.assert_array_equal(encode(params, b["history_features"], empty), encode(params, garbage, empty))


@pytest.mark.parametrize("history_read", ["first", "every"])
def test_append_equals_full_recompute(history_read):
    model, b, params = default_setup(history_read)
    new = jnp.asarray(np.random.default_rng(2).normal(size=(5, 4, FEATURES)), jnp.float32)
    init_state = jax.jit(model.init_state, static_argnames="capacity")
    state = init_state(params, b["history_features"], b["history_mask"], capacity=16)
    encode = jax.jit(model.encode)
    np.testing.assert_allclose(state.output, encode(params, b["history_features"], b["history_mask"]),
                               atol=1e-5)
    append = jax.jit(model.append)
    for i in range(len(new)):
        state = append(params, state, new[i])
    features = jnp.concatenate([b["history_features"], jnp.swapaxes(new, 0, 1)], axis=1)
    mask = jnp.concatenate([b["history_mask"], jnp.ones((4, len(new)), bool)], axis=1)
    np.testing.assert_allclose(state.output, encode(params, features, mask), atol=1e-5)
    assert state.length.tolist() == mask.sum(1).tolist()
    if history_read == "every":
        assert int(state.size) == 15


def test_append_onto_an_empty_history_equals_full_recompute():
    model, b, params = default_setup()
    empty = jnp.zeros_like(b["history_mask"])
    state = jax.jit(model.init_state)(params, b["history_features"], empty)
    np.testing.assert_allclose(state.output, jax.jit(model.encode)(params, b["history_features"], empty),
                               atol=1e-6)
    state = jax.jit(model.append)(params, state, b["target_features"])
    np.testing.assert_allclose(state.output, model.encode(params, b["target_features"][:, None],
                                                                 jnp.ones((4, 1), bool)), atol=1e-5)


def test_single_read_state_does_not_grow_with_the_history():
    """O(M) appends, structurally: the state has the same shapes for N = 10 and N = 40 items and no
    axis of the history's length (nor a capacity)."""
    model, _, params = default_setup()
    shapes = {}
    for length in (10, 40):
        b = batch(length=length)
        state = model.init_state(params, b["history_features"], b["history_mask"], capacity=3 * length)
        state = model.append(params, state, b["target_features"])
        shapes[length] = jax.tree.map(jnp.shape, state)
        for leaf in jax.tree.leaves(state):
            assert not {length, length + 1, 3 * length} & set(leaf.shape), (length, leaf.shape)
    assert shapes[10] == shapes[40]
    assert {f.name for f in dataclasses.fields(shapes[10])} == {"max", "denominator", "numerator", "length", "output"}


def test_capacity_errors():
    model = tower(history_read="every")
    b = batch()
    state = CachedReadState(memories=(), mask=b["history_mask"], positions=b["history_mask"], size=jnp.int32(10),
                            length=jnp.zeros(4, jnp.int32), output=None)
    with pytest.raises(ValueError, match="full"):
        model.append({}, state, b["target_features"])
    with pytest.raises(ValueError, match="capacity"):
        model.init_state({}, b["history_features"], b["history_mask"], capacity=5)


def test_mask_history_hides_a_fraction_of_valid_items():
    mask = batch(length=20)["history_mask"]
    hidden, slots, valid = mask_history(jax.random.PRNGKey(0), mask, 0.25)
    assert slots.shape == valid.shape == (4, 5)
    assert not bool(jnp.any(hidden & ~mask))
    np.testing.assert_array_equal(hidden.sum(1), np.clip(np.round(0.25 * mask.sum(1)), 1, None))
    np.testing.assert_array_equal(jnp.take_along_axis(hidden, slots, 1), valid)


def test_training_reduces_the_pretraining_losses():
    model = tower()
    b = batch(size=8)
    params = nn.meta.unbox(jax.jit(model.init)(jax.random.PRNGKey(0), b))
    optimizer = optax.adam(1e-2)
    rng = jax.random.PRNGKey(3)

    def step(carry, _):
        params, opt_state = carry
        (loss, terms), grads = jax.value_and_grad(model.loss, has_aux=True)(params, b, rng)
        updates, opt_state = optimizer.update(grads, opt_state)
        return (optax.apply_updates(params, updates), opt_state), (loss, terms)

    train = jax.jit(lambda params: jax.lax.scan(step, (params, optimizer.init(params)), length=30)[1])
    losses, terms = train(params)
    assert bool(jnp.all(jnp.isfinite(losses))) and all(bool(jnp.all(jnp.isfinite(v))) for v in terms.values())
    assert float(losses[-1]) < 0.7 * float(losses[0])
    for name, values in terms.items():
        assert float(values[-1]) < float(values[0]), name


def test_long_history_at_tiny_width():
    model = tower(num_queries=4, embed_dim=8, num_layers=1, num_heads=1, head_dim=8, mlp_dim=16)
    b = batch(size=3, length=1024)
    params = init(model, b)
    out = jax.jit(model.encode)(params, b["history_features"], b["history_mask"])
    assert out.shape == (3, 4, 8) and bool(jnp.all(jnp.isfinite(out)))
