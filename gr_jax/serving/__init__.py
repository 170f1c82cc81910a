"""Serving: pre-computed per-user top-K lists behind a key lookup (``topk_cache``)."""

from gr_jax.serving.topk_cache import (
    SQLiteStore,
    TopKCache,
    TopKCacheError,
    TopKStore,
    history_digest,
    history_digests,
)

__all__ = ["SQLiteStore", "TopKCache", "TopKCacheError", "TopKStore", "history_digest", "history_digests"]
