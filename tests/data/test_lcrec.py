"""Tests for the LC-Rec / LETTER JSON reader and the index.json round trip."""

import json

import numpy as np
import pytest

from gr_jax.data.errors import DataError
from gr_jax.data.lcrec import lcrec_names, read_index_json, read_lcrec, write_index_json


def _item(title: str = "", **fields) -> dict:
    return {"title": title, "description": "d", "brand": "b", "categories": "A,B", **fields}


def _write(tmp_path, name: str = "Toy", inter: dict | None = None, items: dict | None = None) -> str:
    items = items if items is not None else {str(i): _item(f"t{i}") for i in range(11)}
    inter = inter if inter is not None else {"u2": [10, "9", 1], "u1": ["0", 2, 3, 10]}
    (tmp_path / f"{name}.item.json").write_text(json.dumps(items))
    (tmp_path / f"{name}.inter.json").write_text(json.dumps(inter))
    return str(tmp_path)


def test_reads_valid_dataset(tmp_path):
    items = {str(i): _item(f"t{i}") for i in range(11)}
    items["3"] = {"title": " Q&amp;R &quot;Pro&quot; ", "description": ["first", "second"],
                  "categories": "Industrial &amp; Scientific,Fasteners,Collated Fasteners,Staples"}
    dataset = read_lcrec(_write(tmp_path, items=items), "Toy")
    assert dataset.name == "Toy"
    assert dataset.items.keys == [str(i) for i in range(11)]  # "10" after "9"
    assert dataset.users.user_keys == ["u2", "u1"]  # file order
    np.testing.assert_array_equal(dataset.users.sequence(0), [10, 9, 1])
    np.testing.assert_array_equal(dataset.users.sequence(1), [0, 2, 3, 10])
    assert dataset.items.title[3] == 'Q&R "Pro"'
    assert dataset.items.description[3] == "first second"
    assert dataset.items.brand[3] == ""
    assert dataset.items.categories[3] == ("Industrial & Scientific", "Fasteners", "Collated Fasteners", "Staples")
    assert dataset.report == {"items_missing_title": 0, "items_missing_description": 0, "items_missing_brand": 1,
                              "items_missing_categories": 0, "events_dropped_unknown_item": 0}


def test_non_numeric_keys_sort_lexicographically(tmp_path):
    items = {k: _item(k) for k in ("b", "10", "a", "9")}
    dataset = read_lcrec(_write(tmp_path, items=items, inter={"u": ["a", "b", "9"]}), "Toy")
    assert dataset.items.keys == ["10", "9", "a", "b"]
    np.testing.assert_array_equal(dataset.users.sequence(0), [2, 3, 1])


def test_missing_file_names_path_and_lists_directory(tmp_path):
    (tmp_path / "Other.item.json").write_text("{}")
    with pytest.raises(DataError) as err:
        read_lcrec(str(tmp_path), "Toy")
    message = str(err.value)
    assert str(tmp_path / "Toy.item.json") in message
    assert "Other.item.json" in message and "--config.data.dir" in message


def test_malformed_json_reports_line(tmp_path):
    _write(tmp_path)
    (tmp_path / "Toy.inter.json").write_text('{\n  "u1": [1, 2],\n  "u2": [1 2]\n}\n')
    with pytest.raises(DataError, match=r"Toy\.inter\.json line 3 column"):
        read_lcrec(str(tmp_path), "Toy")


@pytest.mark.parametrize("inter, needle", [([1, 2], "top level"), ({"u1": [1], "u7": 3}, "'u7'"),
                                           ({"u1": [1.5]}, "'u1'")])
def test_wrong_types_name_the_key(tmp_path, inter, needle):
    with pytest.raises(DataError, match=needle):
        read_lcrec(_write(tmp_path, inter=inter), "Toy")


def test_duplicate_user_key_is_an_error(tmp_path):
    _write(tmp_path)
    (tmp_path / "Toy.inter.json").write_text('{"u1": [1, 2, 3], "u1": [4, 5, 6]}')
    with pytest.raises(DataError, match="'u1' appears twice"):
        read_lcrec(str(tmp_path), "Toy")


def test_unknown_items_raise_or_are_dropped(tmp_path):
    data_dir = _write(tmp_path, inter={"u1": [1, 99, 2, 98, 99], "u2": [3, 4, 5]})
    with pytest.raises(DataError) as err:
        read_lcrec(data_dir, "Toy")
    assert "3 events" in str(err.value) and "'99'" in str(err.value) and "drop_unknown_items" in str(err.value)
    dataset = read_lcrec(data_dir, "Toy", drop_unknown_items=True)
    np.testing.assert_array_equal(dataset.users.sequence(0), [1, 2])
    assert dataset.report["events_dropped_unknown_item"] == 3


def test_index_json_round_trip(tmp_path):
    keys = ["0", "1", "2"]
    codes = np.array([[12, 7, 3], [0, 255, 1], [5, 5, 0]], np.int32)
    path = str(tmp_path / "Toy.index.json")
    write_index_json(path, keys, codes)
    assert json.loads(open(path).read())["1"] == ["<a_0>", "<b_255>", "<c_1>"]
    np.testing.assert_array_equal(read_index_json(path, keys), codes)
    np.testing.assert_array_equal(read_index_json(path, ["2", "0"]), codes[[2, 0]])


@pytest.mark.parametrize("index, needle", [
    ({"0": ["<a_1>", "<b_2>"]}, "1 items have no semantic ID"),
    ({"0": ["<a_1>", "<b_2>"], "1": ["<a_1>"]}, "item '1' has 1 tokens"),
    ({"0": ["<a_1>", "<b_2>"], "1": ["<a_1>", "b_2"]}, "item '1' has malformed token 'b_2'"),
    ({"0": ["<a_1>", "<b_2>"], "1": ["<b_1>", "<a_2>"]}, "item '1' token '<b_1>' is at position 0"),
])
def test_index_json_errors(tmp_path, index, needle):
    path = tmp_path / "Toy.index.json"
    path.write_text(json.dumps(index))
    with pytest.raises(DataError, match=needle) as err:
        read_index_json(str(path), ["0", "1"])
    assert str(path) in str(err.value)


def test_lcrec_names_are_the_complete_pairs(tmp_path):
    assert lcrec_names(str(tmp_path)) == []
    _write(tmp_path, "Toy")
    (tmp_path / "Lonely.inter.json").write_text("{}")
    assert lcrec_names(str(tmp_path)) == ["Toy"]
    _write(tmp_path, "Other")
    assert lcrec_names(str(tmp_path)) == ["Other", "Toy"]
