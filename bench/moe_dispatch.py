"""Dense vs sparse top-k dispatch for PRISM's DSI mixture of experts, on this device.

    python bench/moe_dispatch.py [--rows 1025] [--repeats 20]

PRISM's ``MoEFusion`` runs all four experts on every (item, level) token and keeps the top two
(``gr_jax/models/prism.py``). Sparse dispatch would compute only the selected experts: half the
expert FLOPs. This measures whether that is faster here, on the first expert layer (3d -> d_moe,
the largest matmul) at the shapes of a Scientific batch (``--rows`` fused items x 4 levels; 1,025
is the bucket a Scientific batch of 256 users fills), three ways, each checked against the dense
result first:

- ``dense``: one einsum over all experts (what ``MoEFusion`` does);
- ``ragged_dot``: the (token, expert) pairs sorted by expert, ``jax.lax.ragged_dot`` over the groups;
- ``blocked``: the sorted pairs padded per expert to blocks of 128 rows, each block multiplied by
  its expert's gathered kernel (a batched matmul; MegaBlocks' layout without its kernels).

Then the whole ``MoEFusion`` forward + backward at the same size, with and without the
rematerialisation that PRISM's per-item fusion adds, beside the time its matmul FLOPs would take
at the measured peak. Times: ``tiger_setup.timed`` (best of three means). One JSON line per measurement.
"""

from __future__ import annotations

import argparse
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import emit, matmul_peak_gflops  # noqa: E402
from bench.tiger_setup import timed  # noqa: E402
from gr_jax.models.prism import SOURCES, MoEFusion  # noqa: E402

EXPERTS, TOP_K, DIM, EXPERT_DIM, LEVELS, BLOCK = 4, 2, 128, 256, 4, 128


def dense(x, kernel, top):
    """Every expert on every token, expert-major ``[E, T, h]`` as in ``MoEFusion`` (``top`` unused)."""
    del top
    return jnp.einsum("ti,eih->eth", x, kernel)


def sorted_pairs(top):
    """The (token, expert) pairs of ``top [T, k]`` sorted by expert: (token ``[T k]``, expert, group sizes ``[E]``)."""
    expert = top.reshape(-1)
    order = jnp.argsort(expert, stable=True)
    return order // top.shape[1], expert[order], jnp.bincount(expert, length=EXPERTS)


def ragged(x, kernel, top):
    """The selected experts' outputs ``[T k, h]``, pairs in ``sorted_pairs`` order."""
    token, _, sizes = sorted_pairs(top)
    return jax.lax.ragged_dot(x[token], kernel, sizes)


def blocked(x, kernel, top):
    """As ``ragged``, through per-expert groups padded to ``BLOCK`` rows and a batched matmul."""
    token, expert, sizes = sorted_pairs(top)
    pairs = token.size
    padded = -(-sizes // BLOCK) * BLOCK
    group_start, padded_start = jnp.cumsum(sizes) - sizes, jnp.cumsum(padded) - padded
    slot = padded_start[expert] + jnp.arange(pairs) - group_start[expert]  # each pair's padded row
    blocks = pairs // BLOCK + EXPERTS
    rows = jnp.full((blocks * BLOCK,), -1, jnp.int32).at[slot].set(token)
    block_expert = jnp.minimum(jnp.searchsorted(jnp.cumsum(padded), jnp.arange(blocks) * BLOCK, side="right"),
                               EXPERTS - 1)
    inputs = jnp.where(rows[:, None] >= 0, x[jnp.maximum(rows, 0)], 0.0).reshape(blocks, BLOCK, -1)
    out = jnp.einsum("bri,bih->brh", inputs, kernel[block_expert]).reshape(blocks * BLOCK, -1)
    return out[slot]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1025, help="fused items (each has 4 level tokens)")
    parser.add_argument("--repeats", type=int, default=10, help="calls per timing (best of 3 timings)")
    args = parser.parse_args()
    tokens = args.rows * LEVELS
    keys = jax.random.split(jax.random.PRNGKey(0), 4)
    x = jax.random.normal(keys[0], (tokens, SOURCES * DIM))
    kernel = jax.random.normal(keys[1], (EXPERTS, SOURCES * DIM, EXPERT_DIM)) * 0.05
    top = jax.lax.top_k(jax.random.normal(keys[2], (tokens, EXPERTS)), TOP_K)[1]
    peak = matmul_peak_gflops()
    emit({"name": "moe_dispatch_peak", "peak_gflops": round(peak, 1), "device": str(jax.devices()[0])})

    token, expert, _ = sorted_pairs(top)
    want = np.asarray(dense(x, kernel, top))[np.asarray(expert), np.asarray(token)]
    for name, fn in (("dense", dense), ("ragged_dot", ragged), ("blocked", blocked)):
        if fn is not dense:
            np.testing.assert_allclose(np.asarray(jax.jit(fn)(x, kernel, top)), want, rtol=2e-4, atol=2e-4)
        flops = 2 * tokens * SOURCES * DIM * EXPERT_DIM * (EXPERTS if fn is dense else TOP_K)
        forward = timed(jax.jit(fn), x, kernel, top, repeats=args.repeats)
        grad = jax.jit(jax.grad(lambda x, w, fn=fn: (fn(x, w, top) ** 2).sum(), argnums=(0, 1)))
        backward = timed(grad, x, kernel, repeats=args.repeats)
        emit({"name": "moe_first_layer", "impl": name, "tokens": tokens, "matmul_gflop": round(flops / 1e9, 2),
              "forward_ms": round(forward * 1e3, 1), "forward_backward_ms": round(backward * 1e3, 1)})

    sources = jax.random.normal(keys[3], (args.rows, LEVELS, SOURCES, DIM))
    weight = jnp.ones((args.rows, LEVELS))
    row_keys = jnp.arange(tokens, dtype=jnp.uint32).reshape(args.rows, LEVELS)
    fusion = MoEFusion()
    params = fusion.init(jax.random.PRNGKey(1), sources, weight, False)
    layer_macs = SOURCES * DIM * EXPERT_DIM + EXPERT_DIM * EXPERT_DIM // 2 + EXPERT_DIM // 2 * EXPERT_DIM // 4
    expert_flops = 2 * tokens * EXPERTS * layer_macs
    for remat in (False, True):
        def loss(params, sources, remat=remat):
            apply = lambda p, s: fusion.apply(p, s, weight, True, row_keys, jnp.uint32(3))
            fused, stats = (jax.checkpoint(apply) if remat else apply)(params, sources)
            return (fused ** 2).sum() + stats["balance"]
        step = timed(jax.jit(jax.grad(loss, argnums=(0, 1))), params, sources, repeats=args.repeats)
        passes = 4 if remat else 3  # forward (twice with remat) + the backward's two products per matmul
        emit({"name": "moe_fusion_train", "tokens": tokens, "remat": remat, "forward_backward_ms": round(step * 1e3, 1),
              "expert_matmuls_at_peak_ms": round(passes * expert_flops / peak / 1e6, 1)})


if __name__ == "__main__":
    main()
