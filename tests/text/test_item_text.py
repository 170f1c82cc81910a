"""Item text rendering (templates, empty fields, HTML) and the embedding cache of embed_items."""

import os

import numpy as np
import pytest

from gr_jax.data.dataset import ItemTable
from gr_jax.text import item_text as it
from gr_jax.text import minilm


def _items() -> ItemTable:
    return ItemTable(
        keys=["a", "b", "c", "d"],
        title=["Tom &amp; Jerry&#39;s Grater", "Pipette tips", "", "Caf&eacute; &amp;amp; Lab <b>Mug</b>"],
        description=["Four\n sides,  stainless.", "", "", "<p>Holds 300&nbsp;ml</p>"],
        brand=["Acme", "", "", "LabCo"],
        categories=[("Home &amp; Kitchen", "Graters"), ("Lab", "", "Consumables"), (), ("Lab",)],
    )


def test_default_template_collapses_empty_fields():
    texts = it.item_text(_items())
    assert texts == [
        "Title: Tom & Jerry's Grater; Brand: Acme; Categories: Home & Kitchen > Graters; "
        "Description: Four sides, stainless.",
        "Title: Pipette tips; Categories: Lab > Consumables",
        "",
        "Title: Café & Lab Mug; Brand: LabCo; Categories: Lab; Description: Holds 300 ml",
    ]
    for text in texts:
        assert ": ;" not in text and not text.endswith(":") and "; ;" not in text


def test_tuple_template_and_multi_field_parts():
    template = ("{brand} {title}", "in {categories}")
    assert it.item_text(_items(), template)[:3] == [
        "Acme Tom & Jerry's Grater; in Home & Kitchen > Graters",
        "Pipette tips; in Lab > Consumables",
        "",
    ]
    assert it.item_text(_items(), "{title}")[1] == "Pipette tips"


def test_bad_templates():
    with pytest.raises(ValueError, match="unknown field"):
        it.item_text(_items(), "Name: {name}")
    with pytest.raises(ValueError, match="no parts"):
        it.item_text(_items(), "")
    with pytest.raises(ValueError, match="format"):
        it.item_text(_items(), "Title: {title")


class CountingEncoder:
    """Stub encoder: deterministic vectors, counts encode() calls."""

    def __init__(self, model_id="stub:1", max_length=128):
        self.model_id = model_id
        self.max_length = max_length
        self.calls = 0

    def encode(self, texts):
        self.calls += 1
        rng = np.random.default_rng(len(texts) + self.calls)
        return rng.standard_normal((len(texts), 8)).astype(np.float32)


def test_cache_hit_returns_identical_array_without_encoding(tmp_path, caplog):
    caplog.set_level("INFO")
    encoder = CountingEncoder()
    first = it.embed_items(_items(), encoder, str(tmp_path))
    assert encoder.calls == 1 and first.shape == (4, 8) and first.dtype == np.float32
    assert "cache miss" in caplog.text
    assert len([f for f in os.listdir(tmp_path) if f.endswith(".npy")]) == 1
    caplog.clear()
    again = it.embed_items(_items(), encoder, str(tmp_path))
    assert encoder.calls == 1
    assert "cache hit" in caplog.text
    np.testing.assert_array_equal(again, first)
    # Another template, model or max_length is another key.
    it.embed_items(_items(), encoder, str(tmp_path), template="{title}")
    it.embed_items(_items(), CountingEncoder(model_id="stub:2"), str(tmp_path))
    it.embed_items(_items(), CountingEncoder(max_length=64), str(tmp_path), max_length=64)
    assert len([f for f in os.listdir(tmp_path) if f.endswith(".npy")]) == 4
    with pytest.raises(ValueError, match="max_length"):
        it.embed_items(_items(), CountingEncoder(max_length=64), str(tmp_path))


def test_no_cache_dir_always_encodes(tmp_path):
    encoder = CountingEncoder()
    it.embed_items(_items(), encoder, None)
    it.embed_items(_items(), encoder, None)
    assert encoder.calls == 2


def test_cache_hit_without_encoder_does_not_load_the_model(tmp_path, monkeypatch):
    # The key of encoder=None is the packaged weights' identity (needs the package installed).
    stub = CountingEncoder(model_id=minilm.model_id(minilm.find_model_dir()))
    first = it.embed_items(_items(), stub, str(tmp_path))

    def fail(*args, **kwargs):
        raise AssertionError("the model must not be loaded on a cache hit")

    monkeypatch.setattr(minilm.TextEncoder, "from_pretrained", fail)
    np.testing.assert_array_equal(it.embed_items(_items(), None, str(tmp_path)), first)
