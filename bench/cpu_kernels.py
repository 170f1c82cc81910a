"""Micro-benchmarks of the matmul shapes inside a TIGER-size training step, in GFLOP/s.

    python bench/cpu_kernels.py

Prints one JSON line per kernel: the square-matmul peak, the up- and down-projections of the
feed-forward block at batch 256 x 81 tokens, the attention-score products (1,536 small
81x64 . 64x81 GEMMs) in two operand layouts, and the batch sum of one layer's attention-logit
cotangents ``[256, 6, 81, 81]`` (the relative-position bias gradient) as XLA's reduce and as
``gr_jax.ops.batch_sum``'s dot with ones, in milliseconds, float32 and bfloat16.
"""

from __future__ import annotations

import os
import sys
import time

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import emit  # noqa: E402
from gr_jax.ops import batch_sum  # noqa: E402


def seconds(fn, *args, repeats: int = 5) -> float:
    """Mean seconds per call over ``repeats`` calls, after one warm-up call."""
    fn(*args).block_until_ready()
    tic = time.perf_counter()
    for _ in range(repeats):
        out = fn(*args)
    out.block_until_ready()
    return (time.perf_counter() - tic) / repeats


def gflops(fn, *args, flops: float, repeats: int = 5) -> float:
    return flops / seconds(fn, *args, repeats=repeats) / 1e9


def main():
    rows, tokens, heads, head_dim = 256 * 81, 81, 6, 64
    matmul = jax.jit(lambda a, b: a @ b)
    for name, (m, k, n) in {"square_2048": (2048, 2048, 2048), "ffn_up": (rows, 128, 1024),
                            "ffn_down": (rows, 1024, 128), "qkv_proj": (rows, 128, 1152)}.items():
        emit({"name": name, "shape": [m, k, n],
              "gflops": round(gflops(matmul, jnp.ones((m, k)), jnp.ones((k, n)), flops=2 * m * k * n), 1)})
    flops = 2 * 256 * heads * tokens * tokens * head_dim
    for name, spec, shape in (("attention_scores_bqhd", "bqhd,bkhd->bhqk", (256, tokens, heads, head_dim)),
                              ("attention_scores_bhqd", "bhqd,bhkd->bhqk", (256, heads, tokens, head_dim))):
        fn = jax.jit(lambda q, k, spec=spec: jnp.einsum(spec, q, k))
        achieved = gflops(fn, jnp.ones(shape), jnp.ones(shape), flops=flops)
        emit({"name": name, "einsum": spec, "gflops": round(achieved, 1)})
    cotangents = jax.random.normal(jax.random.PRNGKey(0), (256, heads, tokens, tokens))
    for dtype in (jnp.float32, jnp.bfloat16):
        x = cotangents.astype(dtype)
        row = {"name": "batch_sum", "shape": list(x.shape), "dtype": jnp.dtype(dtype).name}
        for impl, fn in (("reduce_ms", jax.jit(lambda x: x.sum(0, dtype=jnp.float32))), ("dot_ms", jax.jit(batch_sum))):
            row[impl] = round(seconds(fn, x) * 1e3, 2)
        emit(row)


if __name__ == "__main__":
    main()
