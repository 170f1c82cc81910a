"""SIDTable, static and personalized: save/load (and format version 1), index.json round trip, validation."""

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
    with pytest.raises(DataError, match=r"SID level 1: SID row 0 has code 3, outside \[0, 3\)"):
        table.validate(4)
    with pytest.raises(DataError, match="covers 4 items but the item table has 5"):
        SIDTable(CODES, (3, 4, 2)).validate(5)
    SIDTable(CODES, (3, 4, 2)).validate(4)
    with pytest.raises(DataError, match="2 codebook sizes for 3 SID levels"):
        SIDTable(CODES, (3, 4))


def personalized():
    """Item 0 has SIDs 0 and 1 (3 and 1 training events), item 1 SID 2; five events."""
    return SIDTable(np.array([[0, 0], [0, 1], [1, 0]]), (2, 2), sid_item=[0, 0, 1], event_sid=[0, 0, 1, 0, 2],
                    sid_counts=[3, 1, 1])


def test_derived_views_of_a_personalized_table():
    table = personalized()
    assert table.personalized and table.num_items == 2 and table.num_sids == 3 and table.num_unique == 3
    np.testing.assert_array_equal(table.sids_per_item(), [2, 1])
    np.testing.assert_array_equal(table.item_sids, [[0, 1], [2, -1]])
    np.testing.assert_array_equal(table.item_sid_counts, [[3, 1], [1, 0]])
    table.validate(2, 5)
    with pytest.raises(DataError, match="covers 5 events but the dataset has 6"):
        table.validate(2, 6)
    static = SIDTable(CODES, (3, 4, 2))
    assert not static.personalized and static.num_unique == 3
    np.testing.assert_array_equal(static.item_sids[:, 0], [0, 1, 2, 3])
    with pytest.raises(ValueError, match="personalized"):
        table.to_index_json("unused.json", ["a", "b"])


def test_personalized_round_trip_and_format_version_1(tmp_path):
    table = personalized()
    table.save(str(tmp_path / "v2"))
    loaded = SIDTable.load(str(tmp_path / "v2"))
    for name in ("codes", "sid_item", "event_sid", "sid_counts"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(table, name))
    # Format version 1 kept Pctx tables in pctx_sids.{npz,json} with per-item count lists.
    legacy = tmp_path / "v1"
    legacy.mkdir()
    np.savez_compressed(legacy / "pctx_sids.npz", codes=table.codes, sid_item=table.sid_item,
                        event_sid=table.event_sid, item_sids=table.item_sids, item_sid_counts=table.item_sid_counts)
    (legacy / "pctx_sids.json").write_text(json.dumps({"format_version": 1, "codebook_sizes": [2, 2],
                                                      "num_codebooks": 0, "meta": {}}))
    old = SIDTable.load(str(legacy))
    np.testing.assert_array_equal(old.sid_counts, table.sid_counts)
    np.testing.assert_array_equal(old.event_sid, table.event_sid)
