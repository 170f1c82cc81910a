"""Parameter-tree paths, and the ``train.frozen`` patterns that name parameters kept fixed."""

from __future__ import annotations

import fnmatch


def param_path(path) -> str:
    """``'qformer/blocks_0/mlp/wi/kernel'`` for a parameter's tree path (partitioning boxes skipped)."""
    names = [str(getattr(entry, "key", getattr(entry, "name", entry))) for entry in path]
    return "/".join(name for name in names if name != "value")


def is_frozen(path: str, patterns) -> bool:
    """Whether a parameter path matches a ``train.frozen`` pattern: a path prefix (``qformer``) or a
    glob (``*/learned_items/*``)."""
    return any(path == p or path.startswith(p.rstrip("/") + "/") or fnmatch.fnmatch(path, p) for p in patterns)
