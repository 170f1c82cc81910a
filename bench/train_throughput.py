"""Training throughput and MFU of the TIGER- or PRISM-size model on Scientific shapes.

    python bench/train_throughput.py [--model prism [--set dsi_fusion=gate ...] | --model gat] [--item_level_history]
        [--batch_size 256] [--steps 20] [--data tiger:scientific]

Prints one JSON line: examples/s, GFLOP per example (XLA cost analysis of the compiled
step; ``flops_upper_bound`` when the step branches, as PRISM's per-item fusion does: the count
is then the costliest branch's), achieved GFLOP/s, the fp32 matmul peak measured in the same
process, and MFU.
The batch is random (every history full, items uniform) unless ``--data`` names a config whose
dataset's training examples give it (assembled as the input pipeline does), so padding and item
popularity are the data's (PRISM's per-item fusion depends on both).
"""

from __future__ import annotations

import argparse
import ast
import os
import sys

import jax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import emit, matmul_peak_gflops  # noqa: E402
from bench.tiger_setup import build, build_gat, build_prism, data_batch, random_batch, time_train_steps  # noqa: E402
from configs import tiger as tiger_config  # noqa: E402
from gr_jax.training.optim import make_optimizer  # noqa: E402


def _literal(value: str):
    """``--set`` values as Python literals (8, 0.5, False), else the string itself (gate)."""
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return value


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--history", type=int, default=20)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--item_level_history", action="store_true")
    parser.add_argument("--dropout_impl", default="hash", choices=["hash", "threefry"])
    parser.add_argument("--model", default="tiger", choices=["tiger", "prism", "gat"])
    parser.add_argument("--data", help="draw the batch from this config's dataset, e.g. tiger:scientific "
                        "(default: random)")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="PRISM model-config override, e.g. dsi_fusion=gate or dsi=False (repeatable)")
    args = parser.parse_args()
    config = tiger_config.get_config()
    config.mesh.data = 1
    if args.model == "prism":
        overrides = {k: _literal(v) for k, v in (s.split("=", 1) for s in args.set)}
        model = build_prism(args.item_level_history, overrides | {"dropout_impl": args.dropout_impl})
    elif args.model == "gat":
        model = build_gat()
    else:
        model = build(args.item_level_history, dropout_impl=args.dropout_impl)
    optimizer = make_optimizer(config.train, 10_000)
    if args.data:
        batch = data_batch(args.data, args.batch_size, len(model.codes))
    else:
        batch = random_batch(args.batch_size, args.history, len(model.codes), actions=args.model == "gat")
    run = time_train_steps(model, optimizer, config, batch, args.steps)
    seconds, flops = run["seconds"], run["flops"]
    peak = matmul_peak_gflops()
    achieved = flops / seconds / 1e9
    emit({"name": "train_throughput", "model": args.model, "overrides": args.set,
          "item_level_history": args.item_level_history, "data": args.data or "random",
          "valid_slots": int(batch["history_mask"].sum()),
          "distinct_history_items": len(set(batch["history"][batch["history_mask"]].tolist())),
          "dropout_impl": args.dropout_impl,
          "batch_size": args.batch_size, "history": args.history, "sid_levels": int(model.codes.shape[1]),
          "examples_per_s": round(args.batch_size / seconds, 1),
          "gflop_per_example": round(flops / args.batch_size / 1e9, 3),
          "achieved_gflops": round(achieved, 1), "peak_gflops": round(peak, 1), "mfu": round(achieved / peak, 3),
          "flops_upper_bound": run["flops_upper_bound"],  # true: so are achieved GFLOP/s and MFU
          "device": str(jax.devices()[0]), "cpu_count": os.cpu_count()})


if __name__ == "__main__":
    main()
