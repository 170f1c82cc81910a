"""Constrained decoding: dense trie tables and jitted beam search."""
