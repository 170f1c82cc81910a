"""TFDS ArrayRecord builder: build once, load back exactly what the source reader produces."""

import json
import os

import numpy as np
import pytest

import configs.common
from gr_jax.data import sources, tfds_builder
from gr_jax.data.errors import DataError

LCREC_ITEMS = {str(i): {"title": f"title {i}", "description": f"about {i}", "brand": "acme" if i % 2 else "",
                        "categories": "Tools,Hand Tools" if i < 3 else ""} for i in range(8)}
LCREC_INTER = {"u9": [7, 1, 2, 3], "u1": [0, 1, 2, 5, 6], "u5": [4, 4, 6], "short": [1, 2]}

AMAZON_REVIEWS = [("u1", "a", 1, 5.0), ("u1", "b", 2, 4.0), ("u1", "c", 3, 3.0), ("u2", "c", 5, 2.0),
                  ("u2", "a", 6, 1.0), ("u2", "d", 7, 5.0), ("u2", "b", 9, 4.5), ("u3", "d", 1, 3.0),
                  ("u3", "b", 2, 2.0), ("u3", "a", 4, 1.0)]
AMAZON_PRICES = {"a": "$1.50", "b": "", "c": "call us", "d": "$10.00 - $12.00"}  # b, c: NaN


def _tiny_synthetic():
    c = configs.common.data_config()
    c.synthetic.num_users = 150
    c.synthetic.num_items = 100
    c.synthetic.branching = (3, 3, 2)
    return c


def _lcrec(raw_dir):
    raw_dir.mkdir(parents=True, exist_ok=True)
    (raw_dir / "Toy.item.json").write_text(json.dumps(LCREC_ITEMS))
    (raw_dir / "Toy.inter.json").write_text(json.dumps(LCREC_INTER))
    c = configs.common.data_config()
    c.format, c.dir, c.name = "lcrec", str(raw_dir), "Toy"
    return c


def _amazon(raw_dir):
    raw_dir.mkdir(parents=True, exist_ok=True)
    reviews = [{"reviewerID": u, "asin": a, "unixReviewTime": t, "overall": r} for u, a, t, r in AMAZON_REVIEWS]
    metas = [{"asin": a, "title": f"title {a}", "description": [f"about {a}"], "brand": "acme",
              "category": ["Industrial &amp; Scientific", "Tools"], "price": p} for a, p in AMAZON_PRICES.items()]
    (raw_dir / "Toy.json").write_text("".join(json.dumps(r) + "\n" for r in reviews))
    (raw_dir / "meta_Toy.json").write_text("".join(json.dumps(m) + "\n" for m in metas))
    c = configs.common.data_config()
    c.format, c.dir, c.name, c.min_core = "amazon", str(raw_dir), "Toy", 1
    return c


@pytest.fixture(scope="module")
def all_built(tmp_path_factory):
    """Per format: (config, builder, loaded dataset, dataset from read_source)."""
    out = {}
    for kind, make in (("synthetic", lambda root: _tiny_synthetic()), ("lcrec", lambda root: _lcrec(root / "raw")),
                       ("amazon", lambda root: _amazon(root / "raw"))):
        root = tmp_path_factory.mktemp(kind)
        config = make(root)
        builder = tfds_builder.build(config, str(root / "tfds"))
        out[kind] = (config, builder, tfds_builder.load(builder), sources.read_source(config))
    return out


@pytest.fixture(params=["synthetic", "lcrec", "amazon"])
def built(request, all_built):
    return all_built[request.param]


def _price(dataset):
    p = dataset.items.price
    return np.full(dataset.num_items, np.nan, np.float32) if p is None else p


def _assert_optional_equal(a, b, name):
    if a is None or b is None:
        assert a is None and b is None, name
    else:
        np.testing.assert_array_equal(a, b, err_msg=name)


def test_fixture_sources_have_the_expected_fields(built):
    config, _, _, source = built
    if config.format == "synthetic":
        assert source.users.actions is not None and source.users.timestamps is not None
    if config.format == "lcrec":
        assert source.users.user_keys == ["u9", "u1", "u5"]  # "short" dropped by validate
        assert source.items.price is None
    if config.format == "amazon":
        assert source.users.ratings is not None and source.users.timestamps is not None
        assert np.isnan(source.items.price).sum() == 2
        assert source.report["items_price_unparsed"] == 1


def test_load_equals_read_source(built):
    _, _, loaded, source = built
    assert loaded.items.keys == source.items.keys
    assert loaded.items.title == source.items.title
    assert loaded.items.description == source.items.description
    assert loaded.items.brand == source.items.brand
    assert loaded.items.categories == source.items.categories
    np.testing.assert_array_equal(loaded.items.price, _price(source))  # NaN == NaN here
    assert loaded.users.user_keys == source.users.user_keys
    np.testing.assert_array_equal(loaded.users.offsets, source.users.offsets)
    np.testing.assert_array_equal(loaded.users.items, source.users.items)
    for name in ("actions", "ratings", "timestamps"):
        _assert_optional_equal(getattr(loaded.users, name), getattr(source.users, name), name)


def test_load_in_small_chunks_equals_tfds_decoding(built, monkeypatch):
    """``load`` parses the stored protos itself, a chunk at a time: the same values as the builder's
    own feature decoding (``tfds.data_source``), whatever the chunk boundaries."""
    _, builder, loaded, _ = built
    monkeypatch.setattr(tfds_builder, "LOAD_CHUNK", 2)
    chunked = tfds_builder.load(builder)
    items = builder.as_data_source(split="items")
    decoded = items.__getitems__(range(len(items)))
    text = lambda field: [r[field].decode() for r in decoded]
    for name in ("key", "title", "description", "brand"):
        assert getattr(chunked.items, name if name != "key" else "keys") == text(name)
    assert chunked.items.categories == [tuple(c.decode() for c in r["categories"]) for r in decoded]
    np.testing.assert_array_equal(chunked.items.price, [r["price"] for r in decoded])
    users = builder.as_data_source(split="users")
    decoded = users.__getitems__(range(len(users)))
    assert chunked.users.user_keys == [r["key"].decode() for r in decoded]
    np.testing.assert_array_equal(chunked.users.items, np.concatenate([r["items"] for r in decoded]))
    for name in ("actions", "ratings", "timestamps"):
        stored = np.concatenate([r[name] for r in decoded])
        _assert_optional_equal(getattr(chunked.users, name), stored if len(stored) else None, name)
        _assert_optional_equal(getattr(chunked.users, name), getattr(loaded.users, name), name)


def test_a_split_over_the_shuffle_buffer_builds_without_tensorflow(tmp_path, monkeypatch):
    """TFDS spills a split over its in-memory buffer (1 GB) through tf.io.gfile, i.e. only with
    TensorFlow; a 10M-item table crossed it. Here a 1 kB buffer stands in for it."""
    from tensorflow_datasets.core import shuffle

    monkeypatch.setattr(shuffle, "MAX_MEM_BUFFER_SIZE", 1024)
    config = _tiny_synthetic()
    loaded = tfds_builder.load(tfds_builder.build(config, str(tmp_path / "tfds")))
    source = sources.read_source(config)
    assert loaded.items.title == source.items.title
    np.testing.assert_array_equal(loaded.users.items, source.users.items)
    assert shuffle.MAX_MEM_BUFFER_SIZE == 1024  # restored after the build


def test_loaded_sequences_reference_the_same_items(built):
    # Order-independent: user key -> the item keys of its events, must survive the round trip.
    _, _, loaded, source = built
    as_keys = lambda d: {key: [d.items.keys[i] for i in d.users.sequence(u)]
                         for u, key in enumerate(d.users.user_keys)}
    assert as_keys(loaded) == as_keys(source)


def test_round_trip_keeps_item_table_and_per_event_fields_by_key(built):
    _, _, loaded, source = built
    assert loaded.num_items == source.num_items and loaded.num_users == source.num_users
    assert sorted(loaded.items.keys) == sorted(source.items.keys)
    by_key = lambda d: {k: (d.items.title[i], d.items.description[i], d.items.brand[i], d.items.categories[i])
                        for i, k in enumerate(d.items.keys)}
    assert by_key(loaded) == by_key(source)
    price = lambda d: {k: p for k, p in zip(d.items.keys, _price(d).tolist())}
    lp, sp = price(loaded), price(source)
    assert {k for k, p in lp.items() if np.isnan(p)} == {k for k, p in sp.items() if np.isnan(p)}
    assert {k: p for k, p in lp.items() if not np.isnan(p)} == {k: p for k, p in sp.items() if not np.isnan(p)}
    assert loaded.items.price.dtype == np.float32
    assert sorted(loaded.users.user_keys) == sorted(source.users.user_keys)
    for name in ("actions", "ratings", "timestamps"):
        s_values, l_values = getattr(source.users, name), getattr(loaded.users, name)
        assert (s_values is None) == (l_values is None), name
        if s_values is None:
            continue
        assert l_values.dtype == s_values.dtype, name
        per_user = lambda d, v: {k: v[d.users.offsets[u]:d.users.offsets[u + 1]].tolist()
                                 for u, k in enumerate(d.users.user_keys)}
        assert per_user(loaded, l_values) == per_user(source, s_values), name


def test_load_keeps_the_reader_report(built):
    _, builder, loaded, source = built
    assert loaded.report == source.report
    assert loaded.report["users_dropped_too_short"] == (1 if builder.builder_config.name.startswith("lcrec") else 0)


def test_amazon_nan_prices_survive(all_built):
    _, _, loaded, _ = all_built["amazon"]
    price = dict(zip(loaded.items.keys, loaded.items.price.tolist()))
    assert price["a"] == pytest.approx(1.5) and price["d"] == pytest.approx(10.0)
    assert np.isnan(price["b"]) and np.isnan(price["c"])


def test_second_build_reuses_files(built, caplog):
    config, builder, loaded, _ = built
    files = {}
    for root, _, names in os.walk(builder.data_dir):
        for name in names:
            files[os.path.join(root, name)] = os.stat(os.path.join(root, name)).st_mtime_ns
    records = [p for p in files if ".array_record" in p]
    assert any("items.array_record" in p for p in records) and any("users.array_record" in p for p in records)
    report_before = open(os.path.join(builder.data_dir, "report.json")).read()

    again = tfds_builder.build(config, os.path.dirname(os.path.dirname(os.path.dirname(builder.data_dir))))
    assert again.data_dir == builder.data_dir
    for path, mtime in files.items():
        assert os.stat(path).st_mtime_ns == mtime, f"{path} was rewritten"
    assert open(os.path.join(builder.data_dir, "report.json")).read() == report_before
    reloaded = tfds_builder.load(again)
    assert reloaded.items.keys == loaded.items.keys
    np.testing.assert_array_equal(reloaded.users.items, loaded.users.items)
    assert reloaded.report == loaded.report


def test_different_sources_get_different_builder_configs(tmp_path):
    a, b = _tiny_synthetic(), _tiny_synthetic()
    b.synthetic.seed = 1
    name = lambda c: tfds_builder.builder_for(c, str(tmp_path)).builder_config.name
    assert name(a) != name(b)
    assert name(a) == name(_tiny_synthetic())
    assert name(a).startswith("synthetic_")
    c = _tiny_synthetic()
    c.max_history = 7  # not a source field: same dataset
    assert name(c) == name(a)


def test_raw_files_key_the_dataset_by_content_not_modification_time(tmp_path):
    config = _lcrec(tmp_path / "raw")
    name = lambda: tfds_builder.builder_for(config, str(tmp_path)).builder_config.name  # noqa: E731
    before = name()
    inter = tmp_path / "raw" / "Toy.inter.json"
    os.utime(inter, (0, 0))  # a copy or a touch: same content
    assert name() == before
    edited = dict(LCREC_INTER)
    edited[next(iter(edited))] = edited[next(iter(edited))][::-1]  # same size, new content
    inter.write_text(json.dumps(edited))
    assert name() != before


def test_unrecognisable_dir_lists_files_present(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "notes.txt").write_text("hello")
    (raw / "ratings.csv").write_text("u,i\n")
    c = configs.common.data_config()
    c.format, c.dir = "lcrec", str(raw)
    with pytest.raises(DataError) as err:
        tfds_builder.build(c, str(tmp_path / "tfds"))
    message = str(err.value)
    assert "notes.txt" in message and "ratings.csv" in message
    assert "data.name" in message or "data.dir" in message
