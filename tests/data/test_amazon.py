"""Tests for the raw Amazon Review Data (2018) reader."""

import gzip
import json
import math

import numpy as np
import pytest

from gr_jax.data.amazon import find_amazon_files, parse_price, read_amazon2018
from gr_jax.data.errors import DataError


def _review(user: str, asin: str, time: int, rating: float = 5.0) -> dict:
    return {"reviewerID": user, "asin": asin, "overall": rating, "unixReviewTime": time}


def _meta(asin: str, **fields) -> dict:
    return {"asin": asin, "title": f"title {asin}", "description": [f"about {asin}"], "brand": "acme",
            "category": ["Industrial &amp; Scientific", "Tools"], "price": "$1.00", **fields}


def _write_lines(path, records, gz: bool = False) -> str:
    text = "".join(json.dumps(r) + "\n" for r in records)
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text)
    return str(path)


def _read(tmp_path, reviews, metas, min_core: int = 1, gz: bool = False):
    suffix = ".json.gz" if gz else ".json"
    return read_amazon2018(_write_lines(tmp_path / f"Toy{suffix}", reviews, gz),
                           _write_lines(tmp_path / f"meta_Toy{suffix}", metas, gz), "Toy", min_core=min_core)


REVIEWS = [_review("u1", "b", 30, 4.0), _review("u1", "a", 10, 3.0), _review("u1", "c", 10, 2.0),
           _review("u2", "a", 5), _review("u2", "b", 20, 1.0), _review("u2", "a", 1, 2.0),
           _review("u3", "nometa", 7), _review("u3", "c", 8)]
METAS = [_meta("a", title="A &amp; B", price=""), _meta("b", price="$1,299.00"), _meta("c", price="$5.00 - $9.00"),
         _meta("unused"), _meta("a", title="repeated line")]


@pytest.mark.parametrize("gz", [False, True])
def test_reads_plain_and_gzip(tmp_path, gz):
    dataset = _read(tmp_path, REVIEWS, METAS, gz=gz)
    assert dataset.name == "Toy"
    assert dataset.items.keys == ["a", "b", "c"]  # sorted by asin
    assert dataset.users.user_keys == ["u1", "u2", "u3"]  # order of first review in the file
    # u1: ties at t=10 keep file order (a before c); u2: duplicate "a" keeps the earliest (t=1, rating 2).
    np.testing.assert_array_equal(dataset.users.sequence(0), [0, 2, 1])
    np.testing.assert_array_equal(dataset.users.sequence(1), [0, 1])
    np.testing.assert_array_equal(dataset.users.sequence(2), [2])
    np.testing.assert_array_equal(dataset.users.timestamps, [10, 10, 30, 1, 20, 8])
    np.testing.assert_array_equal(dataset.users.ratings, np.float32([3, 2, 4, 2, 1, 5]))
    assert dataset.users.actions is None
    assert dataset.items.title[0] == "A & B"
    assert dataset.items.description[1] == "about b"
    assert dataset.items.categories[0] == ("Industrial & Scientific", "Tools")
    np.testing.assert_array_equal(dataset.items.price, np.float32([np.nan, 1299.0, 5.0]))
    report = dataset.report
    assert report["events_read"] == 8
    assert report["events_dropped_duplicate"] == 1
    assert (report["events_dropped_no_metadata"], report["items_dropped_no_metadata"]) == (1, 1)
    assert report["events_dropped_kcore"] == 0
    assert report["metadata_duplicate_lines"] == 1  # the first line of "a" wins


def test_iterative_kcore(tmp_path):
    # u3 has one event, so it goes first; only then does z fall below 2, and with it u4.
    reviews = [_review("u1", "x", 1), _review("u1", "y", 2), _review("u2", "x", 1), _review("u2", "y", 2),
               _review("u3", "z", 1), _review("u4", "z", 1), _review("u4", "x", 2)]
    dataset = _read(tmp_path, reviews, [_meta(a) for a in "xyz"], min_core=2)
    assert dataset.users.user_keys == ["u1", "u2"]
    assert dataset.items.keys == ["x", "y"]
    assert (dataset.report["users_dropped_kcore"], dataset.report["items_dropped_kcore"],
            dataset.report["events_dropped_kcore"]) == (2, 1, 3)


def test_empty_after_filtering(tmp_path):
    with pytest.raises(DataError, match="min_core"):
        _read(tmp_path, REVIEWS, METAS, min_core=5)


def test_malformed_line_reports_line_number(tmp_path):
    path = tmp_path / "Toy.json"
    path.write_text(json.dumps(_review("u1", "a", 1)) + "\n\n" + '{"reviewerID": "u2", "asin": }\n')
    meta = _write_lines(tmp_path / "meta_Toy.json", METAS)
    with pytest.raises(DataError, match=r"Toy\.json line 3: Expecting value"):
        read_amazon2018(str(path), meta, "Toy")


def test_missing_review_field(tmp_path):
    reviews = [_review("u1", "a", 1), {"reviewerID": "u1", "asin": "b", "unixReviewTime": 2}]
    with pytest.raises(DataError, match=r"Toy\.json line 2: missing field 'overall'"):
        _read(tmp_path, reviews, METAS)


def test_metadata_line_without_asin(tmp_path):
    with pytest.raises(DataError, match=r"meta_Toy\.json line 2: missing field 'asin'"):
        _read(tmp_path, REVIEWS, [_meta("a"), {"title": "no asin"}])


def test_truncated_gzip(tmp_path):
    path = tmp_path / "Toy.json.gz"
    _write_lines(path, [_review("u", str(i), i) for i in range(200)], gz=True)
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(DataError, match="truncated or corrupt"):
        read_amazon2018(str(path), _write_lines(tmp_path / "meta_Toy.json", METAS), "Toy")


def test_price_parsing():
    assert parse_price("$12.99") == pytest.approx(12.99)
    assert parse_price("$1,299.00") == 1299.0
    assert parse_price("$5.00 - $9.00") == 5.0
    assert parse_price(7) == 7.0
    assert math.isnan(parse_price("")) and math.isnan(parse_price(None))
    assert parse_price(".a-box-inner{background-color:#fff}") is None


def test_unparseable_price_is_counted(tmp_path):
    dataset = _read(tmp_path, [_review("u", "a", 1)], [_meta("a", price="<div>call</div>")])
    assert np.isnan(dataset.items.price[0])
    assert dataset.report["items_price_unparsed"] == 1


def test_find_amazon_files(tmp_path):
    (tmp_path / "Toy_5.json.gz").write_bytes(b"")
    (tmp_path / "meta_Toy.json").write_text("")
    assert find_amazon_files(str(tmp_path), "Toy") == (str(tmp_path / "Toy_5.json.gz"), str(tmp_path / "meta_Toy.json"))
    (tmp_path / "Toy.json").write_text("")
    assert find_amazon_files(str(tmp_path), "Toy")[0] == str(tmp_path / "Toy.json")
    with pytest.raises(DataError) as err:
        find_amazon_files(str(tmp_path), "Books")
    message = str(err.value)
    assert "Books.json.gz" in message and "Toy_5.json.gz" in message and "Amazon Review Data (2018)" in message
