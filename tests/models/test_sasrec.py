"""SASRec: causality, padding invariance, losses, and that training reduces the loss."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from gr_jax.models.sasrec import SASRec, SASRecRecommender, loss_fn

NUM_ITEMS, LENGTH = 30, 6


def model_config(loss="ce"):
    return ml_collections.ConfigDict(dict(name="sasrec", embed_dim=16, num_blocks=2, num_heads=2, mlp_dim=32,
                                          dropout=0.0, loss=loss, num_negatives=8, contrastive="none",
                                          contrastive_weight=0.1, contrastive_temperature=1.0))


def batch(seed=0, size=4):
    rng = np.random.default_rng(seed)
    history = rng.integers(0, NUM_ITEMS, (size, LENGTH)).astype(np.int32)
    mask = np.ones((size, LENGTH), bool)
    mask[0, :3] = False
    history[~mask] = 0
    return {"history": jnp.asarray(history), "history_mask": jnp.asarray(mask),
            "target": jnp.asarray(rng.integers(0, NUM_ITEMS, size).astype(np.int32))}


def test_states_are_causal():
    module = SASRec(num_items=NUM_ITEMS, max_len=LENGTH, embed_dim=16, mlp_dim=32, dropout=0.0)
    b = batch()
    params = module.init(jax.random.PRNGKey(0), b["history"], b["history_mask"])
    out = module.apply(params, b["history"], b["history_mask"])
    changed = b["history"].at[:, -1].set((b["history"][:, -1] + 1) % NUM_ITEMS)
    out2 = module.apply(params, changed, b["history_mask"])
    np.testing.assert_allclose(out[:, :-1], out2[:, :-1], atol=1e-6)
    assert not np.allclose(out[:, -1], out2[:, -1])


def test_padded_positions_do_not_influence_the_user_vector():
    model = SASRecRecommender(model_config(), NUM_ITEMS, LENGTH)
    b = batch()
    params = model.init(jax.random.PRNGKey(0), b)
    scores = model.scores(params, b)
    garbage = dict(b, history=b["history"].at[0, :3].set(7))  # row 0's first 3 positions are padding
    np.testing.assert_allclose(scores, model.scores(params, garbage), atol=1e-5)


@pytest.mark.parametrize("kind", ["ce", "sampled_softmax", "bce"])
def test_training_reduces_each_loss(kind):
    model = SASRecRecommender(model_config(kind), NUM_ITEMS, LENGTH)
    b = batch(size=16)
    params = model.init(jax.random.PRNGKey(0), b)
    optimizer = optax.adam(1e-2)
    opt_state = optimizer.init(params)
    grad = jax.jit(jax.value_and_grad(lambda p, r: model.loss(p, b, r)[0]))
    rng = jax.random.PRNGKey(1)
    first, _ = grad(params, rng)
    for _ in range(60):
        loss, g = grad(params, rng)
        updates, opt_state = optimizer.update(g, opt_state)
        params = optax.apply_updates(params, updates)
    assert np.isfinite(first) and loss < 0.5 * first


def test_full_softmax_loss_matches_hand_computation():
    user = jnp.array([[1.0, 0.0]])
    items = jnp.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    expected = -np.log(np.exp(1) / (np.exp(1) + np.exp(0) + np.exp(-1)))
    got = loss_fn(user, items, jnp.array([0]), jax.random.PRNGKey(0), "ce", 0)
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_topk_is_sorted_by_score():
    model = SASRecRecommender(model_config(), NUM_ITEMS, LENGTH)
    b = batch()
    params = model.init(jax.random.PRNGKey(0), b)
    top = np.asarray(model.topk(params, b, 5))
    scores = np.asarray(model.scores(params, b))
    np.testing.assert_array_equal(top, np.argsort(-scores, axis=1, kind="stable")[:, :5])


def test_contrastive_loss_prefers_aligned_views_and_masks_false_negatives():
    from gr_jax.models.sasrec import contrastive_loss

    rng = np.random.default_rng(0)
    a = jnp.asarray(rng.standard_normal((6, 8)).astype(np.float32))
    targets = jnp.arange(6)
    aligned = contrastive_loss(a, a, targets, 1.0)
    shuffled = contrastive_loss(a, a[::-1], targets, 1.0)
    assert aligned < shuffled
    # Two examples with one target: the other one is not a negative, so duplicating it changes nothing.
    dup = jnp.concatenate([a[:5], a[:1]])
    masked = contrastive_loss(dup, dup, jnp.array([0, 1, 2, 3, 4, 0]), 1.0)
    unmasked = contrastive_loss(dup, dup, jnp.arange(6), 1.0)
    assert masked < unmasked


def test_duorec_supervised_loss_uses_partner_history():
    config = model_config()
    config.contrastive, config.contrastive_weight, config.contrastive_temperature = "supervised", 0.1, 1.0
    model = SASRecRecommender(config, NUM_ITEMS, LENGTH)
    assert model.needs_partner
    b = batch()
    b = dict(b, partner_history=b["history"][::-1], partner_history_mask=b["history_mask"][::-1])
    params = model.init(jax.random.PRNGKey(0), b)
    loss, aux = model.loss(params, b, jax.random.PRNGKey(1))
    assert np.isfinite(loss)
    np.testing.assert_allclose(loss, aux["rec_loss"] + 0.1 * aux["contrastive_loss"], rtol=1e-5)
    other = dict(b, partner_history=(b["partner_history"] + 1) % NUM_ITEMS)  # dropout is 0: deterministic
    _, other_aux = model.loss(params, other, jax.random.PRNGKey(1))
    assert abs(float(other_aux["contrastive_loss"]) - float(aux["contrastive_loss"])) > 1e-4
    np.testing.assert_allclose(other_aux["rec_loss"], aux["rec_loss"], rtol=1e-6)
