"""Trie tables built from SID tables: dense and compact forms of the same trie."""

import jax.numpy as jnp
import numpy as np
import pytest

from gr_jax import config_schema
from gr_jax.decoding.trie import TRIE_KINDS, TrieTables, build_trie


def test_tables_on_a_hand_made_catalog():
    codes = np.array([[0, 1], [0, 2], [1, 0], [0, 1]])  # items 0 and 3 share a SID
    trie = build_trie(codes, codebook_size=3)
    assert trie.prefix_counts == (1, 2) and trie.kind == "dense"
    np.testing.assert_array_equal(trie.children[0, 0], [0, 1, -1])  # root -> prefixes (0,) and (1,)
    np.testing.assert_array_equal(trie.children[1, 0], [-1, 0, 1])  # (0,) -> SIDs (0,1) and (0,2)
    np.testing.assert_array_equal(trie.children[1, 1], [2, -1, -1])  # (1,) -> SID (1,0)
    np.testing.assert_array_equal(trie.offsets[1, :3], [0, 2, 3])  # compact: (0,) has SIDs 0-1, (1,) SID 2
    np.testing.assert_array_equal(trie.codes[1], [1, 2, 0])
    np.testing.assert_array_equal(trie.sid_items, [[0, 3], [1, -1], [2, -1]])
    np.testing.assert_array_equal(trie.item_sid, [0, 1, 2, 0])
    np.testing.assert_array_equal(trie.num_children()[1, :2], [2, 1])


def test_every_item_is_reachable_through_the_tables():
    codes = np.random.default_rng(0).integers(0, 8, (500, 3))
    trie = build_trie(codes, 8, "compact")
    assert trie.children is None
    for item, sid in enumerate(codes):
        prefix = 0
        for level, code in enumerate(sid):
            prefix = trie.child(level, prefix, code)
            assert prefix >= 0
        assert item in trie.sid_items[prefix]


def test_compact_rows_and_lookups_equal_the_dense_table():
    codes = np.random.default_rng(1).integers(0, 12, (400, 3))
    codes = np.concatenate([codes, codes[:30]])  # collisions
    dense, compact = build_trie(codes, 12, "dense"), build_trie(codes, 12, "compact")
    assert compact.nbytes() < dense.nbytes() and compact.fan_out == dense.fan_out == 12
    tables = TrieTables.of(compact)
    prefixes = np.arange(dense.children.shape[1])
    for level in range(3):
        np.testing.assert_array_equal(np.asarray(tables.children_of(level, jnp.asarray(prefixes))),
                                      dense.children[level])
        every = np.repeat(prefixes, 12), np.tile(np.arange(12), len(prefixes))
        np.testing.assert_array_equal(compact.child(level, *every), dense.children[level][every])
        np.testing.assert_array_equal(np.asarray(tables.child(level, *map(jnp.asarray, every))),
                                      dense.children[level][every])
    np.testing.assert_array_equal(compact.num_children(), dense.num_children())


def test_auto_keeps_the_dense_table_only_while_it_is_small(monkeypatch):
    codes = np.random.default_rng(2).integers(0, 8, (100, 2))
    assert build_trie(codes, 8).kind == "dense"
    monkeypatch.setattr("gr_jax.decoding.trie.DENSE_LIMIT_BYTES", 100)
    assert build_trie(codes, 8).kind == "compact"
    assert config_schema.CHOICES["model.trie"] == TRIE_KINDS


def test_codes_outside_the_codebook_are_rejected():
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        build_trie(np.array([[0, 4]]), 4)
