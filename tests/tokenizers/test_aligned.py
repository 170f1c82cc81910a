"""Alignment Tokenization (Semantic Convergence): the alignment loss falls and the cosine of
``P c_{<=l}`` to the targets rises over training, ``align_weight=0`` is a plain RQ-VAE fit, the
code-token embeddings are ``P`` of every codeword (linear in the levels), and the tokenize stage
with ``tokenizer.name='aligned'`` writes and reloads them.

One small catalogue and one config, so the aligned model compiles once (module-scoped fixtures):
Gaussian "CF" vectors, targets a fixed random linear map of them plus noise."""

import dataclasses
import json

import ml_collections
import numpy as np
import pytest

from configs import tokenizers
from gr_jax import config_schema
from gr_jax.data.synthetic import SyntheticConfig, generate
from gr_jax.stages.features import Features
from gr_jax.stages.tokenize import tokenize
from gr_jax.tokenizers.aligned import AlignedConfig, fit_aligned, load_code_token_embeddings
from gr_jax.tokenizers.configs import RQVAEConfig
from gr_jax.tokenizers.rq_vae_training import fit_rq_vae
from gr_jax.tokenizers.sid_table import SIDTable

N, D_IN, D_LLM = 200, 16, 24
SMALL = AlignedConfig(hidden_dims=(32,), code_dim=8, codebook_size=8, batch_size=64, num_epochs=40, reset_every=20,
                      learning_rate=1e-2, kmeans_init_samples=N, kmeans_iters=10)


@pytest.fixture(scope="module")
def catalogue():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, D_IN))
    targets = x @ rng.normal(size=(D_IN, D_LLM)) + 0.3 * rng.normal(size=(N, D_LLM))
    return x.astype(np.float32), targets.astype(np.float32)


@pytest.fixture(scope="module")
def fitted(catalogue):
    return fit_aligned(*catalogue, SMALL, log_every=20)


def _cosines(fit, embeddings, targets):
    """Mean cosine per level of an item's code-token rows summed over levels 0..l to its target."""
    levels = np.arange(fit.codes.shape[1])
    summed = np.cumsum(embeddings[levels, fit.codes], axis=1)  # [N, L, D]
    unit = lambda v: v / np.linalg.norm(v, axis=-1, keepdims=True)
    return (unit(summed) * unit(targets)[:, None]).sum(-1).mean(0)


def test_alignment_loss_falls_and_cosines_rise(fitted):
    fit, _ = fitted
    history = fit.loss_history
    assert history[-1]["align_loss"] < 0.7 * history[0]["align_loss"]
    for level in range(SMALL.num_levels):
        before, after = fit.info[f"align_cosine_init_l{level}"], fit.info[f"align_cosine_l{level}"]
        assert after > before + 0.3, (level, before, after)
    assert fit.info["align_cosine_l3"] > 0.5  # the full code (4 levels of 8 codes) describes the target best


def test_code_token_embeddings_are_the_projected_codewords(catalogue, fitted):
    fit, embeddings = fitted
    assert embeddings.shape == (SMALL.num_levels, SMALL.codebook_size, D_LLM) and embeddings.dtype == np.float32
    levels = np.arange(SMALL.num_levels)
    projected = np.cumsum(fit.codebooks[levels, fit.codes], axis=1) @ fit.align_proj  # P c_{<=l}, [N, L, D]
    np.testing.assert_allclose(np.cumsum(embeddings[levels, fit.codes], axis=1), projected, rtol=1e-4, atol=1e-4)
    reported = [fit.info[f"align_cosine_l{level}"] for level in levels]
    np.testing.assert_allclose(_cosines(fit, embeddings, catalogue[1]), reported, atol=1e-4)


def test_without_alignment_is_a_plain_rq_vae_fit(catalogue):
    x, _ = catalogue
    config = dataclasses.replace(SMALL, align_weight=0.0, num_epochs=10)
    fit, embeddings = fit_aligned(x, None, config)
    assert embeddings is None and fit.align_proj is None
    assert not any(k.startswith("align_cosine") for k in fit.info)
    plain = fit_rq_vae(x, RQVAEConfig(**{f.name: getattr(config, f.name) for f in dataclasses.fields(RQVAEConfig)}))
    np.testing.assert_array_equal(fit.codes, plain.codes)
    np.testing.assert_array_equal(fit.codebooks, plain.codebooks)


def test_last_level_costs_are_minimal_at_the_chosen_code(fitted):
    fit, _ = fitted
    costs = fit.last_level_costs()
    assert costs.shape == (N, SMALL.codebook_size)
    chosen = costs[np.arange(N), fit.codes[:, -1]]
    np.testing.assert_allclose(chosen, costs.min(1), rtol=1e-4, atol=1e-5)


def test_stage_writes_code_token_embeddings(tmp_path, catalogue):
    """``tokenizer.name='aligned'`` end to end on CF inputs with ``reassign`` collisions (the
    last-level costs): 4-level SIDs, the embeddings file, the cosines in the summary. Same settings
    as the fit above, so its compiled steps are reused."""
    x, targets = catalogue
    dataset, _ = generate(SyntheticConfig(num_users=50, num_items=N, seed=1))
    tok = tokenizers.tokenizer_config("aligned", "cf")
    assert (tok.aligned.num_levels, tok.aligned.codebook_size, tok.aligned.align_weight) == (4, 256, 1.0)
    tokenizers.shrink_for_tiny(tok)
    tok.aligned.update(dataclasses.asdict(SMALL))
    tok.collisions = "reassign"
    config = ml_collections.ConfigDict({"tokenizer": tok})
    config_schema.validate(config)
    table, summary = tokenize(config, str(tmp_path), dataset, Features(cf=x, llm_text=targets))
    out = str(tmp_path / "tokenize")
    loaded = SIDTable.load(out)
    assert loaded.codes.shape == (N, 4) and loaded.num_unique == N
    assert loaded.codebook_sizes == (SMALL.codebook_size,) * 4 and loaded.meta["input"] == "cf"
    embeddings = load_code_token_embeddings(out)
    assert embeddings.shape == (4, SMALL.codebook_size, D_LLM)
    assert summary["align_cosine_l3"] > summary["align_cosine_init_l3"]
    json.dumps(summary)  # the stage writes it as JSON

    tok.aligned.align_weight = 0.0  # the ablation reads no targets and leaves no stale embeddings behind
    tokenize(config, str(tmp_path), dataset, Features(cf=x))
    assert load_code_token_embeddings(out) is None
