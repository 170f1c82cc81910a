"""Parameter-tree paths, the ``train.frozen`` patterns that name parameters kept fixed, and a
finished run's parameters laid over a fresh initialisation (``model.init_from``)."""

from __future__ import annotations

import fnmatch

import jax
import jax.numpy as jnp


def param_path(path) -> str:
    """``'qformer/blocks_0/mlp/wi/kernel'`` for a parameter's tree path (partitioning boxes skipped)."""
    names = [str(getattr(entry, "key", getattr(entry, "name", entry))) for entry in path]
    return "/".join(name for name in names if name != "value")


def is_frozen(path: str, patterns) -> bool:
    """Whether a parameter path matches a ``train.frozen`` pattern: a path prefix (``qformer``) or a
    glob (``*/learned_items/*``)."""
    return any(path == p or path.startswith(p.rstrip("/") + "/") or fnmatch.fnmatch(path, p) for p in patterns)


def overlay(params, values):
    """``params`` with every leaf that ``values`` has at the same path replaced by it (cast to the
    leaf's dtype): a finished run's parameters over a fresh initialisation, whose extra parameters
    (a head added on top) keep their initial values. Raises naming the paths ``values`` has that
    ``params`` lacks, or whose shapes differ."""
    given = {param_path(path): value for path, value in jax.tree_util.tree_leaves_with_path(values)}
    shapes = {param_path(path): leaf.shape for path, leaf in jax.tree_util.tree_leaves_with_path(params)}
    wrong = [f"{p} (run {tuple(v.shape)}, here {shapes[p] if p in shapes else 'absent'})"
             for p, v in given.items() if shapes.get(p) != tuple(v.shape)]
    if wrong:
        raise ValueError("the run's parameters do not fit this model: " + ", ".join(wrong[:8])
                         + (f" and {len(wrong) - 8} more" if len(wrong) > 8 else ""))
    return jax.tree_util.tree_map_with_path(
        lambda path, leaf: jnp.asarray(given[param_path(path)], leaf.dtype) if param_path(path) in given else leaf,
        params)
