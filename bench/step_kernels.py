"""TIGER's (or PRISM's) training step with each of its fast formulations swapped for its plain reference, in one
process: every variant is compiled, then timed in alternating rounds.

    python bench/step_kernels.py [--model prism] [--item_level_history] [--rounds 4] [--steps 3]

Variants: ``fast`` (what the models run); ``relu_then_dropout``: the feed-forward ReLU-dropout as
ReLU, then dropout (``dropout.masked_relu_reference``); ``broadcast_bias``: the relative-position
bias added by broadcasting, its gradient XLA's batch reduce (``logits + bias``); ``no_dropout``:
dropout rate 0, the floor. The references give the same values and gradients (tests/models:
``test_dropout.py``, ``test_layers.py``); ``same_loss`` checks the first step's losses here. One
JSON line: each variant's median examples/s and its examples/s per round.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import emit  # noqa: E402
from bench.tiger_setup import CompiledTrainStep, build, build_prism, random_batch  # noqa: E402
from configs import tiger as tiger_config  # noqa: E402
from gr_jax.models import prism  # noqa: E402
from gr_jax.models.layers import dropout, t5  # noqa: E402
from gr_jax.training import trainer  # noqa: E402
from gr_jax.training.optim import make_optimizer  # noqa: E402

# variant -> (module attributes to swap while the step is traced, dropout rate)
VARIANTS = {
    "fast": ({}, 0.1),
    "relu_then_dropout": ({(dropout, "masked_relu"): dropout.masked_relu_reference,
                           (prism, "masked_relu"): dropout.masked_relu_reference}, 0.1),
    "broadcast_bias": ({(t5, "add_batch_shared"): lambda x, bias: x + bias}, 0.1),
    "no_dropout": ({}, 0.0),
}


@contextlib.contextmanager
def swapped(replacements: dict):
    """Module attributes replaced for the duration (the step is traced inside)."""
    saved = {key: getattr(*key) for key in replacements}
    for (module, name), value in replacements.items():
        setattr(module, name, value)
    try:
        yield
    finally:
        for (module, name), value in saved.items():
            setattr(module, name, value)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiger", choices=["tiger", "prism"])
    parser.add_argument("--item_level_history", action="store_true")
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3, help="steps per round")
    args = parser.parse_args()
    config = tiger_config.get_config()
    config.mesh.data = 1
    optimizer = make_optimizer(config.train, 10_000)
    batch = random_batch(args.batch_size, 20, 4344)
    times, losses, steps = {name: [] for name in VARIANTS}, {}, {}
    with trainer.mesh_context(config) as mesh:
        for name, (replacements, rate) in VARIANTS.items():
            with swapped(replacements):  # CompiledTrainStep traces, compiles and runs its warm-up steps
                model = (build(args.item_level_history, dropout=rate) if args.model == "tiger" else
                         build_prism(args.item_level_history, {"dropout": rate}))
                steps[name] = CompiledTrainStep(model, optimizer, config, batch, mesh)
            losses[name] = float(steps[name].metrics["loss"])
        for r in range(args.rounds):
            for name in (list(VARIANTS) if r % 2 == 0 else list(VARIANTS)[::-1]):
                times[name].append(steps[name].run(args.steps))
    with_dropout = [losses[name] for name, (_, rate) in VARIANTS.items() if rate > 0]
    emit({"name": "step_kernels", "same_loss": max(with_dropout) - min(with_dropout) < 1e-4,
          "losses": losses, "model": args.model, "item_level_history": args.item_level_history,
          "batch_size": args.batch_size,
          "examples_per_s": {k: round(args.batch_size / statistics.median(v), 1) for k, v in times.items()},
          "per_round": {k: [round(args.batch_size / t, 1) for t in v] for k, v in times.items()}})


if __name__ == "__main__":
    main()
