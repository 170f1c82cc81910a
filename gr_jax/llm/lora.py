"""LoRA fine-tuning of ``LlamaModel``: which parameters train, adapters for an imported base, merging.

With ``lora_rank > 0`` every projection named in ``lora_targets`` holds ``lora_a [in..., r]`` and
``lora_b [r, out...]`` beside its frozen kernel (``model.Projection``). Freezing the base reuses the
trainer's ``train.frozen`` mechanism (``gr_jax.params.is_frozen`` patterns): ``lora_frozen_patterns``
names every base parameter, so only the adapters get optimizer updates.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

from gr_jax.llm.model import LlamaConfig, LlamaModel, lora_a_init
from gr_jax.params import is_frozen, param_path

ADAPTER_NAMES = ("lora_a", "lora_b")
BASE_LEAF_NAMES = ("kernel", "bias", "weight", "embedding")  # every base parameter of LlamaModel


def is_adapter(path: str) -> bool:
    """Whether a parameter path (``layers_0/self_attn/q_proj/lora_a``) is a LoRA adapter."""
    return path.rsplit("/", 1)[-1] in ADAPTER_NAMES


def lora_frozen_patterns(scope: str = "") -> tuple[str, ...]:
    """``train.frozen`` patterns freezing every base parameter of the LLM at path prefix ``scope``
    (``""`` when the LLM is the root of the tree), so LoRA fine-tuning trains only the adapters."""
    prefix = scope.rstrip("/") + "/" if scope else ""
    return tuple(f"{prefix}*/{leaf}" for leaf in BASE_LEAF_NAMES)


def trainable_mask(params, frozen_patterns) -> dict:
    """Pytree of bools like ``params``: True where no ``frozen_patterns`` pattern matches."""
    return jax.tree_util.tree_map_with_path(lambda path, _: not is_frozen(param_path(path), frozen_patterns),
                                            params)


def trainable_paths(params, frozen_patterns) -> list[str]:
    """Paths of the parameters that ``frozen_patterns`` leaves trainable."""
    leaves = jax.tree_util.tree_flatten_with_path(trainable_mask(params, frozen_patterns))[0]
    return [param_path(path) for path, trainable in leaves if trainable]


def init_adapters(config: LlamaConfig, rng: jax.Array) -> dict:
    """Fresh adapters only (``lora_a`` drawn as the model draws it, ``lora_b`` = 0), a plain nested
    dict. Shapes come from ``jax.eval_shape``, so nothing of a billion-parameter base is allocated."""
    if config.lora_rank == 0:
        return {}
    tokens = jnp.zeros((1, 1), jnp.int32)
    shapes = jax.eval_shape(lambda: nn.meta.unbox(LlamaModel(config).init(
        jax.random.PRNGKey(0), tokens, tokens, jnp.ones((1, 1, 1), bool))["params"]))
    adapters = {k: v for k, v in traverse_util.flatten_dict(shapes, sep="/").items() if is_adapter(k)}

    def draw(key):
        out = {}
        for i, (path, leaf) in enumerate(sorted(adapters.items())):
            if path.endswith("/lora_b"):
                out[path] = jnp.zeros(leaf.shape, leaf.dtype)
            else:
                out[path] = lora_a_init(leaf.ndim - 1)(jax.random.fold_in(key, i), leaf.shape, leaf.dtype)
        return traverse_util.unflatten_dict(out, sep="/")

    return jax.jit(draw)(rng)


def with_adapters(base_params: dict, config: LlamaConfig, rng: jax.Array) -> dict:
    """``base_params`` (e.g. imported by ``hf_import.load_hf``) plus fresh adapters for ``config``."""
    flat = traverse_util.flatten_dict(base_params, sep="/")
    flat.update(traverse_util.flatten_dict(init_adapters(config, rng), sep="/"))
    return traverse_util.unflatten_dict(flat, sep="/")


def merge_adapters(params: dict, config: LlamaConfig) -> tuple[LlamaConfig, dict]:
    """Folds every adapter into its kernel (``W + (alpha / r) A B``) and drops it: the same function
    as a plain model, returned with its config (``lora_rank = 0``), for serving without the extra matmuls."""
    flat = traverse_util.flatten_dict(params, sep="/")
    merged = {k: v for k, v in flat.items() if not is_adapter(k)}
    scale = config.lora_alpha / max(config.lora_rank, 1)
    for key in flat:
        if key.endswith("/lora_a"):
            module = key[: -len("/lora_a")]
            update = jnp.tensordot(flat[key].astype(jnp.float32), flat[module + "/lora_b"].astype(jnp.float32), 1)
            kernel = merged[module + "/kernel"]
            merged[module + "/kernel"] = (kernel.astype(jnp.float32) + scale * update).astype(kernel.dtype)
    return dataclasses.replace(config, lora_rank=0), traverse_util.unflatten_dict(merged, sep="/")
