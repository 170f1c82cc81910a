"""Tests for SIDTable: save/load, index.json round trip, validation, lookups."""

import json

import numpy as np
import pytest

from gr_jax.data.errors import DataError
from gr_jax.tokenizers.sid_table import SIDTable

CODES = np.array([[0, 3, 1], [2, 0, 1], [0, 3, 1], [1, 1, 0]])


def test_save_load_round_trip(tmp_path):
    books = [np.random.default_rng(0).normal(size=(k, 5)) for k in (3, 4)]
    table = SIDTable(CODES, (3, 4, 2), codebooks=books, meta={"tokenizer": "rq_kmeans", "seed": 0})
    table.save(str(tmp_path))
    loaded = SIDTable.load(str(tmp_path))
    np.testing.assert_array_equal(loaded.codes, CODES)
    assert loaded.codes.dtype == np.int32 and loaded.codebook_sizes == (3, 4, 2)
    assert len(loaded.codebooks) == 2
    np.testing.assert_allclose(loaded.codebooks[1], books[1], rtol=1e-6)
    assert loaded.meta == {"tokenizer": "rq_kmeans", "seed": 0}
    header = json.loads((tmp_path / "sid_table.json").read_text())
    header["format_version"] = 99
    (tmp_path / "sid_table.json").write_text(json.dumps(header))
    with pytest.raises(DataError, match="format_version 99"):
        SIDTable.load(str(tmp_path))


def test_index_json_round_trip(tmp_path):
    keys = ["10", "2", "7", "x"]
    path = str(tmp_path / "Toy.index.json")
    SIDTable(CODES, (3, 4, 2)).to_index_json(path, keys)
    assert json.loads(open(path).read())["2"] == ["<a_2>", "<b_0>", "<c_1>"]
    loaded = SIDTable.from_index_json(path, keys)
    np.testing.assert_array_equal(loaded.codes, CODES)
    assert loaded.codebook_sizes == (3, 4, 2)
    assert SIDTable.from_index_json(path, keys, codebook_sizes=(256,) * 3).codebook_sizes == (256,) * 3


def test_validate_catches_bad_codes_and_item_count():
    table = SIDTable(CODES, (3, 3, 2))
    with pytest.raises(DataError, match=r"SID level 1: item 0 has code 3, outside \[0, 3\)"):
        table.validate(4)
    with pytest.raises(DataError, match="4 items but the item table has 5"):
        SIDTable(CODES, (3, 4, 2)).validate(5)
    SIDTable(CODES, (3, 4, 2)).validate(4)
    with pytest.raises(DataError, match="2 codebook sizes for 3 SID levels"):
        SIDTable(CODES, (3, 4))


def test_lookups():
    table = SIDTable(CODES, (3, 4, 2))
    assert table.num_unique == 3
    assert table.sid_to_items() == {(0, 3, 1): [0, 2], (2, 0, 1): [1], (1, 1, 0): [3]}
    np.testing.assert_array_equal(table.prefix_ids(1), [0, 2, 0, 1])
    np.testing.assert_array_equal(table.prefix_ids(0), [0, 0, 0, 0])
