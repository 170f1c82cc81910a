"""Mixed precision for every model family: parameters stored in ``model.param_dtype``, the forward
pass computed in ``model.dtype``.

The trainer casts the stored parameters and the batch's floating inputs to the compute dtype
around ``model.loss`` and ``model.topk`` (the policy of DeepMind's ``jmp``), so gradients and the
optimizer state stay in the parameter dtype and no model needs a dtype argument on each layer.
Models keep softmax, normalisation statistics and losses in float32 (``gr_jax.ops.softmax``, the
``astype(float32)`` before each log-softmax). ``"auto"`` is bfloat16 on GPU and TPU, float32 on
CPU (XLA:CPU has no fast bfloat16 matmul).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from gr_jax.config_schema import check_choice

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def resolve(name: str, backend: str | None = None, field: str = "model.dtype") -> Any:
    """The dtype of a config value: ``float32``, ``bfloat16`` or ``auto`` (by the backend)."""
    check_choice(field, name)
    if name == "auto":
        return jnp.bfloat16 if (backend or jax.default_backend()) in ("gpu", "tpu") else jnp.float32
    return DTYPES[name]


def _cast_floating(tree, dtype):
    def cast(x):
        return x.astype(dtype) if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.floating) else x

    return jax.tree.map(cast, tree)


@dataclasses.dataclass(frozen=True)
class Precision:
    compute: Any = jnp.float32
    params: Any = jnp.float32

    @classmethod
    def from_config(cls, model_section, backend: str | None = None) -> Precision:
        return cls(compute=resolve(model_section.get("dtype", "float32"), backend),
                   params=resolve(model_section.get("param_dtype", "float32"), backend, "model.param_dtype"))

    def store(self, params):
        """Freshly initialised parameters in the storage dtype."""
        return _cast_floating(params, self.params)

    def for_compute(self, tree):
        """Parameters or a batch with their floating arrays in the compute dtype (integers untouched)."""
        if self.compute == jnp.float32 and self.params == jnp.float32:
            return tree
        return _cast_floating(tree, self.compute)

    def describe(self) -> str:
        return f"compute {jnp.dtype(self.compute).name}, parameters {jnp.dtype(self.params).name}"
