"""Q-Former user tower: encode time vs history length, a full self-attention encoder for contrast,
and incremental append vs full recompute.

    python bench/user_tower.py [--sizes 128,512,2048,8192] [--queries 32] [--batch_size 8]
        [--append_history 4096] [--full_attention_max 4096] [--repeats 5]

Prints JSON lines: one per (encoder, N) with ms per batch, GFLOP per batch (XLA cost analysis)
and MFU against the fp32 matmul peak measured in the same process (``qformer``: the default
single history read); a ``qformer_slope`` line (least-squares ms per 1k history items); an
``append`` line for the default ``history_read="first"`` tower (ms and GFLOP of one ``append``
vs a full recompute at ``--append_history`` items, their ``speedup`` and the max abs difference
of the outputs after the appends); and, for contrast, an ``append_every`` line for the
``history_read="every"`` tower (every layer re-reads its key/value cache: O(N) appends).
Histories are random frozen features, all positions valid; recency slopes are random so the
bias is exercised.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import emit, matmul_peak_gflops  # noqa: E402
from bench.tiger_setup import compiled_flops, timed  # noqa: E402
from gr_jax.models.layers.t5 import EncoderLayer, RMSNorm  # noqa: E402
from gr_jax.models.user_tower import QFormer, QFormerConfig, QFormerUserTower, history_positions, sinusoids  # noqa: E402


class FullAttentionEncoder(nn.Module):
    """The contrast: the same width and depth with bidirectional self-attention over the items
    (O(N²) per layer), item states ``[B, N, D]``."""

    embed_dim: int
    num_layers: int
    num_heads: int
    head_dim: int
    mlp_dim: int

    @nn.compact
    def __call__(self, item_features, mask):
        x = nn.Dense(self.embed_dim, use_bias=False)(item_features)
        x = x + nn.Dense(self.embed_dim, use_bias=False)(sinusoids(history_positions(mask), self.embed_dim))
        for _ in range(self.num_layers):
            x = EncoderLayer(self.embed_dim, self.num_heads, self.head_dim, self.mlp_dim, 0.0)(
                x, None, mask[:, None, None, :], False)
        return RMSNorm()(x)


def history(batch_size: int, length: int, feature_dim: int, seed: int = 0):
    features = np.random.default_rng(seed).standard_normal((batch_size, length, feature_dim), np.float32)
    return jnp.asarray(features), jnp.ones((batch_size, length), bool)


def measure(apply, params, features, mask, repeats: int, peak: float) -> dict:
    fn = jax.jit(apply)
    seconds = timed(fn, params, features, mask, repeats=repeats)
    flops = compiled_flops(fn, params, features, mask)
    return {"ms": round(seconds * 1e3, 3), "gflop": round(flops / 1e9, 3),
            "mfu": round(flops / seconds / 1e9 / peak, 4)}


def random_recency(params: dict, seed: int = 0) -> dict:
    """``params`` with N(0, 1) recency slopes (they initialise to zero)."""
    rng = np.random.default_rng(seed)
    return {name: dict(value, recency=jnp.asarray(rng.normal(size=value["recency"].shape), jnp.float32))
            if isinstance(value, dict) and "recency" in value else value for name, value in params.items()}


def bench_append(model: QFormerUserTower, params, args) -> dict:
    """Per-call ms of ``append`` vs a full recompute of the same history, with the same estimator
    as ``timed``: after a warm-up append, the best of 3 rounds of ``repeats`` appends."""
    n, appends = args.append_history, 1 + 3 * args.repeats
    features, mask = history(args.batch_size, n + appends, args.feature_dim, seed=1)
    init_state = jax.jit(model.init_state, static_argnames="capacity")
    state = init_state(params, features[:, :n], mask[:, :n], capacity=n + appends)
    append = jax.jit(model.append, donate_argnums=1)
    state = jax.block_until_ready(append(params, state, features[:, n]))
    append_s = float("inf")
    for start in range(1, appends, args.repeats):
        tic = time.perf_counter()
        for i in range(start, start + args.repeats):
            state = append(params, state, features[:, n + i])
        jax.block_until_ready(state)
        append_s = min(append_s, (time.perf_counter() - tic) / args.repeats)
    encode = jax.jit(model.encode)
    recompute_s = timed(encode, params, features, mask, repeats=args.repeats)
    difference = float(jnp.max(jnp.abs(state.output - encode(params, features, mask))))
    append_flops = compiled_flops(append, params, state, features[:, -1])
    name = "append" if model.single_read else f"append_{model.module.history_read}"
    return {"name": name, "history_read": model.module.history_read, "history": n, "appends": appends,
            "capacity": None if model.single_read else n + appends,
            "append_ms": round(append_s * 1e3, 3), "recompute_ms": round(recompute_s * 1e3, 3),
            "speedup": round(recompute_s / append_s, 2), "max_abs_diff": difference,
            "append_gflop": round(append_flops / 1e9, 3),
            "recompute_gflop": round(compiled_flops(encode, params, features, mask) / 1e9, 3)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="128,512,2048,8192", help="history lengths N, comma-separated")
    parser.add_argument("--queries", type=int, default=32)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--embed_dim", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--head_dim", type=int, default=16)
    parser.add_argument("--mlp_dim", type=int, default=256)
    parser.add_argument("--feature_dim", type=int, default=384, help="frozen item features (MiniLM: 384)")
    parser.add_argument("--append_history", type=int, default=4096)
    parser.add_argument("--full_attention_max", type=int, default=4096,
                        help="longest N for the full-attention encoder (its [B, H, N, N] logits need memory)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    width = dict(embed_dim=args.embed_dim, num_layers=args.layers, num_heads=args.heads, head_dim=args.head_dim,
                 mlp_dim=args.mlp_dim)
    model = QFormerUserTower(QFormer(QFormerConfig(num_queries=args.queries, **width)))
    every = QFormerUserTower(QFormer(QFormerConfig(num_queries=args.queries, history_read="every", **width)))
    full = FullAttentionEncoder(**width)
    features, mask = history(args.batch_size, sizes[0], args.feature_dim)
    sample = {"history_features": features, "history_mask": mask, "target_features": features[:, 0]}
    params = random_recency(nn.meta.unbox(jax.jit(model.init)(jax.random.PRNGKey(0), sample)))
    every_params = random_recency(nn.meta.unbox(jax.jit(every.init)(jax.random.PRNGKey(0), sample)))
    full_params = jax.jit(full.init)(jax.random.PRNGKey(0), features, mask)
    peak = matmul_peak_gflops()
    common = {"queries": args.queries, "batch_size": args.batch_size, **width, "feature_dim": args.feature_dim,
              "peak_gflops": round(peak, 1), "device": str(jax.devices()[0]), "cpu_count": os.cpu_count()}
    times = []
    for n in sizes:
        features, mask = history(args.batch_size, n, args.feature_dim)
        result = measure(model.encode, params, features, mask, args.repeats, peak)
        times.append(result["ms"])
        emit({"name": "encode", "encoder": "qformer", "history": n, **result, **common})
        if n <= args.full_attention_max:
            result = measure(full.apply, full_params, features, mask, args.repeats, peak)
            emit({"name": "encode", "encoder": "full_attention", "history": n, **result, **common})
    if len(sizes) > 1:
        slope, intercept = np.polyfit(np.array(sizes) / 1000, times, 1)
        emit({"name": "qformer_slope", "sizes": sizes, "ms_per_1k_items": round(slope, 3),
              "intercept_ms": round(intercept, 3), **common})
    emit({**bench_append(model, params, args), **common})
    emit({**bench_append(every, every_params, args), **common})


if __name__ == "__main__":
    main()
