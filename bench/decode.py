"""Beam-search decode throughput and MFU of the TIGER-size model on Scientific shapes.

    python bench/decode.py [--model gat] [--item_level_history] [--batch_size 64] [--beam_size 20]

Prints one JSON line: users/s for top-20 retrieval with trie-constrained beam search
(encoder once per user, KV-cached decoder, one jitted lax.scan), GFLOP per user from XLA's
cost analysis, the fp32 matmul peak measured in the same process, and MFU.
"""

from __future__ import annotations

import argparse
import os
import sys

import jax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import emit, matmul_peak_gflops  # noqa: E402
from bench.tiger_setup import build, build_gat, compiled_flops, random_batch, timed  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--beam_size", type=int, default=20)
    parser.add_argument("--history", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--item_level_history", action="store_true")
    parser.add_argument("--model", default="tiger", choices=["tiger", "gat"])
    args = parser.parse_args()
    if args.model == "gat":
        model, unrolled = (build_gat(beam_size=args.beam_size, unroll_decoding=u) for u in (False, True))
    else:
        model, unrolled = (build(args.item_level_history, beam_size=args.beam_size, unroll_decoding=u)
                           for u in (False, True))
    batch = random_batch(args.batch_size, args.history, len(model.codes), actions=args.model == "gat")
    params = jax.jit(model.init)(jax.random.PRNGKey(0), batch)
    decode = jax.jit(lambda p, b: model.topk(p, b, args.beam_size))
    seconds = timed(decode, params, batch, repeats=args.repeats)
    # The same program with the depth loop unrolled, so that every level is counted.
    flops = compiled_flops(jax.jit(lambda p, b: unrolled.topk(p, b, args.beam_size)), params, batch)
    peak = matmul_peak_gflops()
    achieved = flops / seconds / 1e9
    emit({"name": "decode", "model": args.model, "item_level_history": args.item_level_history,
          "batch_size": args.batch_size, "beam_size": args.beam_size, "history": args.history,
          "sid_levels": int(model.codes.shape[1]), "users_per_s": round(args.batch_size / seconds, 1),
          "gflop_per_user": round(flops / args.batch_size / 1e9, 4), "achieved_gflops": round(achieved, 1),
          "peak_gflops": round(peak, 1), "mfu": round(achieved / peak, 3), "device": str(jax.devices()[0]),
          "cpu_count": os.cpu_count()})


if __name__ == "__main__":
    main()
