"""RQ-VAE tokenizer: training, determinism, k-means init, dead-code reset, straight-through,
nearest-code quantization, planted clusters and the extra-loss/aux seam."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gr_jax.tokenizers.configs import RQVAEConfig
from gr_jax.tokenizers.rq_vae import ResidualQuantizer, build_rq_vae
from gr_jax.tokenizers.rq_vae_training import encode, fit_rq_vae, init_params, quantize_all, with_codebooks

SMALL = RQVAEConfig(hidden_dims=(64, 32), code_dim=8, num_levels=3, codebook_size=16, batch_size=128,
                    num_epochs=75, reset_every=50, kmeans_init_samples=512)


def clustered(n=512, d=32, k=8, noise=0.15, seed=0):
    """Unit-norm points around ``k`` random unit centres; returns ``(x, labels)``."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    labels = rng.integers(k, size=n)
    x = centres[labels] + noise * rng.normal(size=(n, d)) / np.sqrt(d) * 3
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), labels


def usage(codes, k):
    return np.array([len(np.unique(codes[:, level])) / k for level in range(codes.shape[1])])


@pytest.fixture(scope="module")
def data():
    return clustered()


@pytest.fixture(scope="module")
def fitted(data):
    return fit_rq_vae(data[0], SMALL, log_every=50)


def test_loss_decreases(fitted):
    first, last = fitted.loss_history[0], fitted.loss_history[-1]
    assert last["step"] == 4 * SMALL.num_epochs
    assert last["loss"] < 0.3 * first["loss"]
    assert last["recon_loss"] < 0.3 * first["recon_loss"]


def test_result_shapes_and_encode(data, fitted):
    x = data[0]
    assert fitted.codes.shape == (len(x), 3) and fitted.codes.dtype == np.int32
    assert fitted.codebooks.shape == (3, 16, 8)
    assert fitted.latents.shape == (len(x), 8)
    assert fitted.residual_norms.shape == (4,)
    assert fitted.residual_norms[-1] < fitted.residual_norms[0]
    np.testing.assert_array_equal(encode(fitted.params, SMALL, x), fitted.codes)


def test_codes_deterministic_for_seed(data, fitted):
    again = fit_rq_vae(data[0], SMALL)
    other = fit_rq_vae(data[0], dataclasses.replace(SMALL, seed=1))
    np.testing.assert_array_equal(again.codes, fitted.codes)
    assert not np.array_equal(other.codes, fitted.codes)


def test_kmeans_init_uses_most_codes(data):
    x = data[0]
    module = build_rq_vae(SMALL, x.shape[1])
    key, rng = jax.random.PRNGKey(0), np.random.default_rng(0)
    kmeans = quantize_all(module, init_params(module, SMALL, x, {}, key, rng), x)["codes"]
    assert usage(kmeans, 16).min() > 0.5


def test_dead_code_reset_revives_codes(data):
    x = data[0]
    config = dataclasses.replace(SMALL, kmeans_init=False, num_epochs=50, reset_every=25)
    module = build_rq_vae(config, x.shape[1])
    params = init_params(module, config, x, {}, jax.random.PRNGKey(0), np.random.default_rng(0))
    far = params["quantizer"]["codebooks"].at[:, 2:].add(100.0)  # only codes 0 and 1 reachable
    params = with_codebooks(params, far)
    frozen = fit_rq_vae(x, dataclasses.replace(config, reset_every=0), init=params)
    revived = fit_rq_vae(x, config, init=params)
    assert usage(frozen.codes, 16).max() <= 2 / 16
    assert usage(revived.codes, 16).min() > 0.5


def test_straight_through_gradient_reaches_encoder(data):
    x = data[0][:64]
    module = build_rq_vae(SMALL, x.shape[1])
    params = init_params(module, SMALL, x, {}, jax.random.PRNGKey(0), np.random.default_rng(0))
    grads = jax.jit(jax.grad(lambda p: module.apply({"params": p}, x)["recon_loss"]))(params)
    encoder_norm = sum(float(jnp.abs(g).sum()) for g in jax.tree.leaves(grads["encoder"]))
    assert encoder_norm > 0
    assert float(jnp.abs(grads["quantizer"]["codebooks"]).sum()) == 0.0


def test_quantizer_picks_nearest_code():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(64, 8)).astype(np.float32)
    quantizer = ResidualQuantizer(num_levels=3, codebook_size=16, code_dim=8, beta=0.25)
    params = jax.jit(quantizer.init)(jax.random.PRNGKey(1), z)
    out = jax.device_get(jax.jit(quantizer.apply)(params, z))
    codebooks = np.asarray(params["params"]["codebooks"], np.float64)
    residual = z.astype(np.float64)
    for level in range(3):
        dist = ((residual[:, None] - codebooks[level][None]) ** 2).sum(-1)
        np.testing.assert_array_equal(out["codes"][:, level], dist.argmin(-1))
        np.testing.assert_allclose(out["distances"][:, level], dist, rtol=1e-4, atol=1e-4)
        chosen = codebooks[level][dist.argmin(-1)]
        expected_loss = 1.25 * ((residual - chosen) ** 2).sum(-1).mean()
        np.testing.assert_allclose(out["level_losses"][level], expected_loss, rtol=1e-4)
        residual = residual - chosen
    np.testing.assert_allclose(out["z_q"], z - residual, rtol=1e-4, atol=1e-4)


def test_planted_clusters_share_first_code(data, fitted):
    labels = data[1]
    same_cluster = labels[:, None] == labels[None]
    same_code = fitted.codes[:, :1] == fitted.codes[None, :, 0]
    within, across = same_code[same_cluster].mean(), same_code[~same_cluster].mean()
    assert within > 0.3
    assert within > 5 * max(across, 1 / 16)


def test_extra_loss_hook_sees_aligned_aux_and_outputs(data):
    x = data[0]
    config = dataclasses.replace(SMALL, num_epochs=5)
    module = build_rq_vae(config, x.shape[1])

    def anchor(params, batch_aux, outputs):
        z = module.apply({"params": params}, batch_aux["x"], method="latent")
        misaligned = jnp.abs(z - outputs["z"]).max()
        codebook_norm = (params["quantizer"]["codebooks"] ** 2).mean()
        return 0.1 * codebook_norm, {"misaligned": misaligned, "soft_max": jax.nn.softmax(
            -outputs["distances"], -1).max(-1).mean()}

    result = fit_rq_vae(x, config, module=module, aux={"x": x}, extra_loss_fn=anchor, log_every=5)
    last = result.loss_history[-1]
    assert last["misaligned"] < 1e-5
    assert last["total_loss"] == pytest.approx(last["loss"] + last["extra_loss"], rel=1e-5)
    assert 0 < last["soft_max"] <= 1
