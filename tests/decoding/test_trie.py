"""Dense trie tables built from SID tables."""

import numpy as np
import pytest

from gr_jax.decoding.trie import build_trie


def test_tables_on_a_hand_made_catalog():
    codes = np.array([[0, 1], [0, 2], [1, 0], [0, 1]])  # items 0 and 3 share a SID
    trie = build_trie(codes, codebook_size=3)
    assert trie.prefix_counts == (1, 2)
    np.testing.assert_array_equal(trie.children[0, 0], [0, 1, -1])  # root -> prefixes (0,) and (1,)
    np.testing.assert_array_equal(trie.children[1, 0], [-1, 0, 1])  # (0,) -> SIDs (0,1) and (0,2)
    np.testing.assert_array_equal(trie.children[1, 1], [2, -1, -1])  # (1,) -> SID (1,0)
    np.testing.assert_array_equal(trie.sid_items, [[0, 3], [1, -1], [2, -1]])
    np.testing.assert_array_equal(trie.item_sid, [0, 1, 2, 0])
    np.testing.assert_array_equal(trie.num_children()[1, :2], [2, 1])


def test_every_item_is_reachable_through_the_tables():
    codes = np.random.default_rng(0).integers(0, 8, (500, 3))
    trie = build_trie(codes, 8)
    for item, sid in enumerate(codes):
        prefix = 0
        for level, code in enumerate(sid):
            prefix = trie.children[level, prefix, code]
            assert prefix >= 0
        assert item in trie.sid_items[prefix]


def test_codes_outside_the_codebook_are_rejected():
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        build_trie(np.array([[0, 4]]), 4)
