"""PRISM's purified semantic quantizer: the ACD gate follows popularity supervision, HSA makes
first-level codes purer in category than the same model without it, helpers (popularity,
category tags, purity) and the tokenize stage with ``tokenizer.name='prism'`` end to end.

Fits share one synthetic catalogue and small settings so that the three models compile once
each (module-scoped fixtures); no MiniLM: the "text" vectors are a noisy random projection of
the generator's latent vectors and the "CF" vectors encode popularity."""

import dataclasses
import json

import jax
import ml_collections
import numpy as np
import pytest

from configs import tokenizers
from gr_jax.data.splits import train_item_counts
from gr_jax.data.synthetic import SyntheticConfig, generate
from gr_jax.stages.features import Features
from gr_jax.stages.tokenize import tokenize
from gr_jax.tokenizers import prism_quantizer as pq
from gr_jax.tokenizers.sid_table import SIDTable

SMALL = pq.PrismConfig(hidden_dims=(32,), code_dim=8, num_levels=2, codebook_size=8, batch_size=128,
                       num_epochs=60, reset_every=20, kmeans_init_samples=512, dropout=0.0, gate_dropout=0.0,
                       class_dropout=0.0, hsa=False)


def _spearman(a, b):
    rank = lambda v: np.argsort(np.argsort(v))
    return float(np.corrcoef(rank(a), rank(b))[0, 1])


@pytest.fixture(scope="module")
def catalogue():
    """256 items in a 4 x 2 x 2 category tree. Text: the item latents randomly projected to 48-d
    plus noise large enough that plain quantization mixes top categories (first-level purity ~0.65).
    CF: a random rotation of radial-basis features of the item's popularity (so popularity is
    recoverable, but a random function of the CF vector does not track it) plus noise."""
    dataset, truth = generate(SyntheticConfig(num_users=400, num_items=256, branching=(4, 2, 2), seed=3))
    rng = np.random.default_rng(0)
    n = dataset.num_items
    text = truth.item_latents @ rng.normal(size=(32, 48)) / np.sqrt(32) + 0.4 * rng.normal(size=(n, 48))
    popularity = pq.popularity_scores(train_item_counts(dataset.users, n))
    rbf = np.exp(-(popularity[:, None] - np.linspace(0, 1, 16)[None]) ** 2 / (2 * 0.08 ** 2))
    rotation = np.linalg.qr(rng.normal(size=(16, 16)))[0]
    cf = rbf @ rotation + 0.05 * rng.normal(size=(n, 16))
    tags = pq.category_tags(dataset.items.categories, 2)
    return {"dataset": dataset, "text": text.astype(np.float32), "cf": cf.astype(np.float32),
            "popularity": popularity, "tags": tags}


def _fit(catalogue, config):
    return pq.fit_prism_quantizer(catalogue["text"], catalogue["cf"], catalogue["popularity"],
                                  catalogue["tags"].ids, config, num_tags=catalogue["tags"].sizes, log_every=30)


@pytest.fixture(scope="module")
def acd_fit(catalogue):
    return _fit(catalogue, SMALL)


def test_acd_gate_tracks_popularity_only_when_supervised(catalogue, acd_fit):
    popularity = catalogue["popularity"]
    assert popularity.min() == 0.0 and popularity.max() == 1.0 and popularity.std() > 0.1
    first, last = acd_fit.loss_history[0], acd_fit.loss_history[-1]
    assert last["gate_mse"] < 0.3 * first["gate_mse"]
    supervised_mse = float(np.mean((acd_fit.gate_mean - popularity) ** 2))
    assert _spearman(acd_fit.gate_mean, popularity) > 0.85
    assert supervised_mse < 0.02

    free = _fit(catalogue, dataclasses.replace(SMALL, acd_weight=0.0))
    free_mse = float(np.mean((free.gate_mean - popularity) ** 2))
    assert free_mse > 3 * supervised_mse
    assert _spearman(free.gate_mean, popularity) < _spearman(acd_fit.gate_mean, popularity) - 0.2


def test_hsa_raises_first_level_category_purity(catalogue, acd_fit):
    """Purity (``category_purity``): the fraction of items whose level-1 code's majority top
    category is their own top category. Same data, seed and budget, with and without HSA."""
    tags = catalogue["tags"]
    assert tags.level_offset == 0 and tags.sizes[0] == 4  # the synthetic tree has no constant root
    hsa = _fit(catalogue, dataclasses.replace(SMALL, hsa=True))
    plain_purity = pq.category_purity(acd_fit.codes[:, 0], tags.ids[:, 0])
    hsa_purity = pq.category_purity(hsa.codes[:, 0], tags.ids[:, 0])
    assert hsa_purity > plain_purity + 0.15, (plain_purity, hsa_purity)
    last = hsa.loss_history[-1]
    assert last["class_acc_l0"] > 0.7
    assert last["anchor_loss"] < hsa.loss_history[0]["anchor_loss"]
    ema = hsa.collections["hsa_ema"]["anchors"]
    assert bool(ema["started_l0"]) and np.allclose(ema["assign_l0"].sum(-1), 1.0, atol=1e-3)


def test_helpers():
    np.testing.assert_allclose(pq.popularity_scores([0, 1, 3, 0]), np.log1p([0, 1, 3, 0]) / np.log(4), rtol=1e-6)
    assert np.all(pq.popularity_scores([5, 5]) == 0.5)
    categories = [("Root", "A", "x"), ("Root", "A", "y", "deep"), ("Root", "B", "x"), ("Root",), ()]
    tags = pq.category_tags(categories, 2)
    assert tags.level_offset == 1  # the constant root is skipped: layer l <-> path level l + 1
    np.testing.assert_array_equal(tags.ids, [[0, 0], [0, 1], [1, 2], [-1, -1], [-1, -1]])
    assert tags.vocab[1] == [("Root", "A", "x"), ("Root", "A", "y"), ("Root", "B", "x")]  # 'x' under A and B differ
    assert pq.category_tags(categories, 2, level_offset=0).ids[:, 0].tolist() == [0, 0, 0, 0, -1]
    assert pq.category_purity(np.array([0, 0, 0, 1, 1]), np.array([2, 2, 3, 3, -1])) == pytest.approx(3 / 4)
    text = np.eye(3, dtype=np.float32) * 2
    tables = pq.tag_text_embeddings(text, np.array([[0], [0], [1]]), [2])
    np.testing.assert_allclose(tables[0], [[0.5, 0.5, 0], [0, 0, 1]])


def test_module_variables_follow_the_switches():
    """Shapes only (``eval_shape``, nothing compiled): fixed tag tables live in ``constants`` and the
    assignment EMA in ``hsa_ema``; learned tables are params; ACD off drops the gate."""
    x = np.zeros((2, 40), np.float32)
    aux = {"popularity": np.zeros(2, np.float32), "tags": np.zeros((2, 2), np.int32)}
    key = jax.random.PRNGKey(0)
    shapes = lambda config: jax.eval_shape(pq.build_prism_quantizer(config, 32, 8, (3, 0)).init, key, x, aux)
    fixed = shapes(dataclasses.replace(SMALL, hsa=True))
    assert fixed["constants"]["anchors"]["tags_l0"].shape == (3, 32) and "tags_l1" not in fixed["constants"]["anchors"]
    assert fixed["hsa_ema"]["anchors"]["assign_l0"].shape == (3, 8) and "gate_mlp" in fixed["params"]
    learned = shapes(dataclasses.replace(SMALL, hsa=True, tag_embedding="learned", acd=False))
    assert learned["params"]["anchors"]["tags_l0"].shape == (3, SMALL.learned_tag_dim) and "constants" not in learned
    assert "gate_mlp" not in learned["params"] and "fusion_norm" not in learned["params"]
    assert set(shapes(SMALL)) == {"params"}  # HSA off: no extra collections, plain training step


def test_stage_tokenizes_with_prism(tmp_path, catalogue):
    """``tokenizer.name='prism'`` end to end: popularity from the training split, tags from the
    item table, SID table + health report written. Same shapes and settings as the HSA fit above,
    so the compiled steps are reused."""
    features = Features(text=catalogue["text"], cf=catalogue["cf"])
    tok = tokenizers.tokenizer_config("prism")
    assert tok.prism.acd and tok.prism.hsa and tok.prism.acd_weight == 0.8 and tok.prism.hsa_weight == 0.2
    assert (tok.prism.num_levels, tok.prism.codebook_size, tok.prism.code_dim, tok.prism.beta) == (3, 256, 32, 0.25)
    tokenizers.shrink_for_tiny(tok)
    tok.prism.update(dataclasses.asdict(dataclasses.replace(SMALL, hsa=True)))
    config = ml_collections.ConfigDict({"tokenizer": tok})
    table, summary = tokenize(config, str(tmp_path), catalogue["dataset"], features)
    out = tmp_path / "tokenize"
    for name in ("sid_table.npz", "index.json", "health.json", "health.png"):
        assert (out / name).exists(), name
    loaded = SIDTable.load(str(out))
    assert loaded.codes.shape == (256, 3) and loaded.num_unique == 256  # 2 levels + de-dup digit
    assert loaded.meta["tokenizer"] == "prism" and loaded.meta["input"] == "text+cf"
    assert summary["num_tags"] == list(catalogue["tags"].sizes) and summary["tag_level_offset"] == 0
    assert summary["category_purity"][0] > 0.7
    assert summary["gate"]["spearman_popularity"] > 0.8
    json.dumps(summary)  # the stage writes it as JSON
