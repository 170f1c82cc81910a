"""Training throughput and MFU of the TIGER- or PRISM-size model on Scientific shapes.

    python bench/train_throughput.py [--model prism [--set dsi_fusion=gate ...] | --model gat] [--item_level_history]
        [--batch_size 256] [--steps 20] [--data tiger:scientific] [--against tiger --rounds 8]

Prints one JSON line: examples/s, GFLOP per example (XLA cost analysis of the compiled
step; ``flops_upper_bound`` when the step branches, as PRISM's per-item fusion does: the count
is then the costliest branch's), achieved GFLOP/s, the fp32 matmul peak measured in the same
process, and MFU.
The batch is random (every history full, items uniform) unless ``--data`` names a config whose
dataset's training examples give it (assembled as the input pipeline does), so padding and item
popularity are the data's (PRISM's per-item fusion depends on both).

``--against tiger`` compares two models in one process instead: both steps are compiled, then
timed in ``--rounds`` alternating rounds of ``--steps`` steps (the order flips every round), and one
JSON line gives each round's step-time ratio and their median. Between processes this box's
matmul peak varies by 1.5x, so ratios of separate runs carry that noise; rounds in one process
see the same machine state to within seconds.
"""

from __future__ import annotations

import argparse
import ast
import os
import statistics
import sys

import jax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import emit, matmul_peak_gflops  # noqa: E402
from bench.tiger_setup import (  # noqa: E402
    CompiledTrainStep,
    build,
    build_gat,
    build_prism,
    data_batch,
    random_batch,
    time_train_steps,
)
from configs import tiger as tiger_config  # noqa: E402
from gr_jax.training.optim import make_optimizer  # noqa: E402


def _literal(value: str):
    """``--set`` values as Python literals (8, 0.5, False), else the string itself (gate)."""
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return value


def build_model(name: str, args):
    """The bench's model ``name`` (``--set`` overrides apply to PRISM)."""
    if name == "prism":
        overrides = {k: _literal(v) for k, v in (s.split("=", 1) for s in args.set)}
        return build_prism(args.item_level_history, overrides | {"dropout_impl": args.dropout_impl})
    if name == "gat":
        return build_gat()
    return build(args.item_level_history, dropout_impl=args.dropout_impl)


def compare(models: dict, optimizer, config, batch: dict, steps: int, rounds: int) -> dict:
    """Seconds per step of each of two models over ``rounds`` alternating rounds (``CompiledTrainStep``)."""
    from gr_jax.training import trainer

    (first, _), (second, _) = models.items()
    times = {name: [] for name in models}
    with trainer.mesh_context(config) as mesh:
        compiled = {name: CompiledTrainStep(m, optimizer, config, batch, mesh) for name, m in models.items()}
        for r in range(rounds):
            for name in (models if r % 2 == 0 else reversed(models)):
                times[name].append(compiled[name].run(steps))
    ratios = [a / b for a, b in zip(times[first], times[second])]
    return {"times": times, "ratios": ratios, "compile_s": {name: c.compile_s for name, c in compiled.items()},
            "finite": all(bool(c.metrics["finite"]) for c in compiled.values())}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--history", type=int, default=20)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--item_level_history", action="store_true")
    parser.add_argument("--dropout_impl", default="hash", choices=["hash", "threefry"])
    parser.add_argument("--model", default="tiger", choices=["tiger", "prism", "gat"])
    parser.add_argument("--against", choices=["tiger", "prism", "gat"],
                        help="time this model too, alternating with --model in one process, and print the ratio")
    parser.add_argument("--rounds", type=int, default=8, help="alternating rounds of --steps steps (--against)")
    parser.add_argument("--data", help="draw the batch from this config's dataset, e.g. tiger:scientific "
                        "(default: random)")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="PRISM model-config override, e.g. dsi_fusion=gate or dsi=False (repeatable)")
    args = parser.parse_args()
    if args.against == args.model:
        parser.error(f"--against {args.against}: name a model other than --model")
    config = tiger_config.get_config()
    config.mesh.data = 1
    model = build_model(args.model, args)
    optimizer = make_optimizer(config.train, 10_000)
    if args.data:
        batch = data_batch(args.data, args.batch_size, len(model.codes))
    else:
        actions = "gat" in (args.model, args.against)
        batch = random_batch(args.batch_size, args.history, len(model.codes), actions=actions)
    shape = {"item_level_history": args.item_level_history, "data": args.data or "random",
             "valid_slots": int(batch["history_mask"].sum()),
             "distinct_history_items": len(set(batch["history"][batch["history_mask"]].tolist())),
             "dropout_impl": args.dropout_impl, "batch_size": args.batch_size, "history": args.history,
             "sid_levels": int(model.codes.shape[1])}
    machine = {"device": str(jax.devices()[0]), "cpu_count": os.cpu_count()}
    if args.against:
        models = {args.model: model, args.against: build_model(args.against, args)}
        run = compare(models, optimizer, config, batch, args.steps, args.rounds)
        emit({"name": "train_step_ratio", "models": list(models), "overrides": args.set, **shape,
              "steps_per_round": args.steps, "rounds": args.rounds,
              "examples_per_s": {k: [round(args.batch_size / t, 1) for t in v] for k, v in run["times"].items()},
              "step_ratio_per_round": [round(r, 3) for r in run["ratios"]],
              "step_ratio_median": round(statistics.median(run["ratios"]), 3),
              "step_ratio_max": round(max(run["ratios"]), 3), "finite": run["finite"],
              "compile_s": {k: round(v, 1) for k, v in run["compile_s"].items()},
              "peak_gflops": round(matmul_peak_gflops(), 1), **machine})
        return
    run = time_train_steps(model, optimizer, config, batch, args.steps)
    seconds, flops = run["seconds"], run["flops"]
    peak = matmul_peak_gflops()
    achieved = flops / seconds / 1e9
    emit({"name": "train_throughput", "model": args.model, "overrides": args.set, **shape,
          "examples_per_s": round(args.batch_size / seconds, 1),
          "gflop_per_example": round(flops / args.batch_size / 1e9, 3),
          "achieved_gflops": round(achieved, 1), "peak_gflops": round(peak, 1), "mfu": round(achieved / peak, 3),
          "flops_upper_bound": run["flops_upper_bound"],  # true: so are achieved GFLOP/s and MFU
          **machine})


if __name__ == "__main__":
    main()
