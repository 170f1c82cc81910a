"""Semantic Convergence's LLM on this machine: training tokens/s and MFU, decoding users/s at beam 20,
and LoRA against full fine-tuning (trainable parameters, optimizer-state bytes, step time).

    python bench/semconv.py --workdir runs/semconv-sci [--set lora_rank=8 ...] [--steps 10]

Reads a workdir whose features and tokenize stages ran (``configs/semconv.py:scientific``), builds
the model as the train stage does, and times the trainer's jitted step on real training batches
and ``topk`` on validation users. Prints one JSON line per variant (full fine-tuning, then each
``--lora_rank``): tokens/s counts every valid prompt and response token of the task mixture;
FLOPs come from XLA's cost analysis of the step; the fp32 matmul peak is measured in this process.
"""

from __future__ import annotations

import argparse
import ast
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import emit, matmul_peak_gflops  # noqa: E402
from bench.tiger_setup import time_train_steps, timed  # noqa: E402
from configs import semconv as semconv_config  # noqa: E402
from gr_jax import stages  # noqa: E402
from gr_jax.data.splits import assemble_batch, example_index  # noqa: E402
from gr_jax.models import registry  # noqa: E402
from gr_jax.params import is_frozen, param_path  # noqa: E402
from gr_jax.training.optim import make_optimizer  # noqa: E402


def mixture_tokens(model, batch: dict) -> int:
    """Valid prompt + response tokens of one training batch's task mixture."""
    total, start = 0, 0
    for i, (task, rows) in enumerate(model.task_rows(len(batch["target"])).items()):
        part = {k: jnp.asarray(batch[k][start:start + rows]) for k in ("history", "history_mask", "target")}
        total += int(model.builder.build(task, part, jax.random.PRNGKey(i)).valid.sum())
        start += rows
    return total


def optimizer_bytes(opt_state) -> int:
    return sum(x.size * x.dtype.itemsize for x in jax.tree_util.tree_leaves(opt_state) if hasattr(x, "dtype"))


def batch_of(interactions, split: str, size: int, max_history: int) -> dict:
    rows = example_index(interactions, split)[:size]
    return {k: jnp.asarray(v) for k, v in assemble_batch(interactions, rows, max_history).items()}


def run_variant(config, artifacts, interactions, args, name: str) -> dict:
    model = registry.build(config, artifacts)
    optimizer = make_optimizer(config.train, 10_000, model.frozen)
    batch = batch_of(interactions, "train", config.train.batch_size, config.data.max_history)
    run = time_train_steps(model, optimizer, config, batch, args.steps)
    params = run["state"].params
    total = sum(int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(params))
    frozen = tuple(config.train.frozen) + model.frozen
    trainable = sum(int(np.prod(leaf.shape)) for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]
                    if not is_frozen(param_path(path), frozen))
    tokens = mixture_tokens(model, batch)
    record = {"name": name, "batch_size": config.train.batch_size, "tokens_per_step": tokens,
              "step_seconds": run["seconds"], "tokens_per_s": tokens / run["seconds"],
              "examples_per_s": config.train.batch_size / run["seconds"], "gflop_per_step": run["flops"] / 1e9,
              "achieved_gflops": run["flops"] / run["seconds"] / 1e9, "params": total, "trainable_params": trainable,
              "optimizer_state_mib": optimizer_bytes(run["state"].opt_state) / 2**20, "compile_s": run["compile_s"]}
    if args.decode_users:
        users = batch_of(interactions, "valid", args.decode_users, config.data.max_history)
        topk = jax.jit(lambda p, b: model.topk(p, b, config.eval.list_size))
        seconds = timed(topk, params, users, repeats=1)
        record |= {"decode_beam": model.beam_size, "decode_users": args.decode_users,
                   "decode_users_per_s": args.decode_users / seconds}
    return record


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="runs/semconv-sci")
    parser.add_argument("--variant", default="scientific")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--decode_users", type=int, default=256)
    parser.add_argument("--lora_rank", type=int, action="append", default=[], help="LoRA variants to add (repeatable)")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="model-config override")
    args = parser.parse_args()
    config = semconv_config.get_config(args.variant)
    for item in args.set:
        key, value = item.split("=", 1)
        config.model[key] = ast.literal_eval(value)
    artifacts = stages.Artifacts(config, args.workdir)
    interactions = artifacts.dataset.users
    peak = matmul_peak_gflops()
    for rank in [0] + args.lora_rank:
        variant = config.copy_and_resolve_references()
        variant.model.lora_rank = rank
        record = run_variant(variant, artifacts, interactions, args, "full" if rank == 0 else f"lora_r{rank}")
        emit(record | {"peak_gflops": peak, "mfu": record["achieved_gflops"] / peak})


if __name__ == "__main__":
    main()
