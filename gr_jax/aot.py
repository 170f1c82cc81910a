"""Ahead-of-time compilation of a config's train step for a TPU topology you do not have.

    python -m gr_jax.aot --config=configs/tiger.py:scientific_full --workdir=RUN --topology=v5e:4x4 \
        [--config.mesh.model=4 ...]

Compiles exactly the step the trainer runs (same model, optimizer, logical sharding rules and
global batch) for the topology's devices, laid out as the config's ``(data, model)`` mesh, and
prints per device: parameter, optimizer-state and XLA temporary (activation) memory against the
chip's HBM, the FLOPs of one step and XLA's TPU cost-model step time. A step that does not fit
in HBM ends with one line and exit status 2. The model's shapes come from ``RUN``'s dataset and
SID table (run its data, features and tokenize stages first, on any machine). Needs the
``libtpu`` wheel (``pip install -e ".[tpu]"``); nothing runs on a TPU.
"""

from __future__ import annotations

import json
import math
import os
import sys

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/tiger.py:scientific_full.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "A run whose data (and features/tokenize) stages are done.")
_TOPOLOGY = flags.DEFINE_string("topology", None, "TPU topology name, e.g. v5e:4x4, v5p:4x4x4, v6e:16x16.")
flags.mark_flags_as_required(["config", "workdir", "topology"])

GIB = 2 ** 30
# Per chip by ``device_kind``, from the public TPU specifications: HBM (GiB), bf16 peak (TFLOP/s),
# HBM bandwidth (GB/s).
CHIPS = {"TPU v4": (32, 275, 1228), "TPU v5 lite": (16, 197, 819), "TPU v5": (95, 459, 2765),
         "TPU v6 lite": (32, 918, 1640)}


def shard_bytes(tree) -> int:
    """Bytes one device holds of a tree of sharded ``ShapeDtypeStruct``s."""
    import jax

    return sum(math.prod(leaf.sharding.shard_shape(leaf.shape)) * leaf.dtype.itemsize
               for leaf in jax.tree.leaves(tree))


def compile_for_topology(config, workdir: str, topology: str):
    """Lowers and compiles the train step for ``topology``; returns its per-device report and the
    abstract (sharded) train state."""
    import flax.linen as nn
    import jax
    import numpy as np
    from jax.experimental import topologies

    from gr_jax import stages
    from gr_jax.data.pipeline import train_dataset, train_rows
    from gr_jax.precision import Precision
    from gr_jax.training import sharding, trainer
    from gr_jax.training.optim import make_optimizer

    try:
        devices = topologies.get_topology_desc(platform="tpu", topology_name=topology).devices
    except Exception as error:  # noqa: BLE001 (libtpu missing or an unknown name: one line either way)
        raise ValueError(f"--topology={topology}: no TPU topology description ({str(error).splitlines()[0][:200]}); "
                         f"install the TPU extra (pip install -e '.[tpu]') and use a name like v5e:4x4") from error
    artifacts = stages.Artifacts(config, workdir)
    try:
        stages.check_inputs(["train"], artifacts)
    except stages.MissingArtifactError as error:
        needed = ",".join(n for n in ("data", "features", "tokenize") if stages.STAGE_SECTIONS[n] in config)
        raise ValueError(f"{workdir} lacks the model's inputs ({error}); make them first: python -m gr_jax.main "
                         f"--config=<this config> --config.stages={needed} --workdir={workdir}") from error
    model, interactions = artifacts.model(), artifacts.dataset.users
    if model.trainable:  # "auto" resolves for the target chip, not for this process's CPU
        model.set_precision(Precision.from_config(config.model, backend="tpu"))
    phases = model.training_phases(train_rows(interactions), interactions)
    batch = train_dataset(interactions, max_history=config.data.max_history, global_batch_size=config.train.batch_size,
                          seed=config.seed, shard=(0, 1), with_partner=model.needs_partner, rows=phases[0])[0]
    steps = trainer.total_train_steps(config.train, trainer.steps_per_epoch(phases, config.train.batch_size))
    optimizer = make_optimizer(config.train, steps, getattr(model, "frozen", ()))
    mesh = sharding.make_mesh(config.mesh, devices)
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.logical_rules(config)):
        example = {k: jax.ShapeDtypeStruct(np.shape(v), np.asarray(v).dtype, sharding=sharding.batch_sharding(mesh))
                   for k, v in batch.items()}
        state, shardings = trainer.abstract_state(model, optimizer, config, mesh, example)
        try:
            compiled = trainer.jit_train_step(model, optimizer, mesh, shardings).lower(state, example).compile()
        except ValueError as error:
            if "evenly divide" not in str(error):
                raise
            raise ValueError(f"{str(error).splitlines()[0]}; choose a mesh.model that divides that dimension or map "
                             f"its logical axis to '' in config.sharding.rules") from error
    memory = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    kind = devices[0].device_kind
    hbm, peak_tflops, bandwidth = CHIPS.get(kind, (None, None, None))
    flops, accessed = float(cost.get("flops", float("nan"))), float(cost.get("bytes accessed", float("nan")))
    cost_model = float(cost.get("optimal_seconds", -1.0))  # negative: the cost model had no estimate
    peak = (memory.argument_size_in_bytes + memory.output_size_in_bytes - memory.alias_size_in_bytes
            + memory.temp_size_in_bytes + memory.generated_code_size_in_bytes)
    num_params = sum(math.prod(p.shape) for p in jax.tree.leaves(state.params))
    return {"topology": topology, "device_kind": kind, "devices": len(devices), "mesh": dict(mesh.shape),
            "model": config.model.name, "params": num_params, "global_batch": config.train.batch_size,
            "precision": model.precision.describe(),
            "params_gib": shard_bytes(state.params) / GIB, "optimizer_gib": shard_bytes(state.opt_state) / GIB,
            "temp_gib": memory.temp_size_in_bytes / GIB, "peak_gib": peak / GIB, "hbm_gib": hbm,
            "gflops_per_step_per_device": flops / 1e9, "gb_accessed_per_step_per_device": accessed / 1e9,
            "cost_model_step_ms": 1e3 * cost_model if cost_model > 0 else None,
            # a lower bound: the step at the chip's bf16 peak or its HBM bandwidth, whichever binds
            "roofline_step_ms": 1e3 * max(flops / (peak_tflops * 1e12), accessed / (bandwidth * 1e9))
            if peak_tflops else None}, state


def describe(report: dict) -> str:
    hbm = f"{report['hbm_gib']} GiB HBM" if report["hbm_gib"] else "HBM unknown"
    return (f"{report['model']} ({report['params'] / 1e6:.1f} M params, global batch {report['global_batch']}) on "
            f"{report['topology']} ({report['devices']} x {report['device_kind']}, mesh {report['mesh']}), per device: "
            f"params {report['params_gib']:.3f} GiB, optimizer {report['optimizer_gib']:.3f} GiB, temporaries "
            f"{report['temp_gib']:.3f} GiB, peak {report['peak_gib']:.3f} GiB of {hbm}; "
            f"{report['gflops_per_step_per_device']:.1f} GFLOP and {report['gb_accessed_per_step_per_device']:.2f} GB "
            f"of memory traffic per step; XLA cost-model step {ms(report['cost_model_step_ms'])}, roofline "
            f"(bf16 peak / HBM bandwidth) {ms(report['roofline_step_ms'])}")


def ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f} ms"


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")  # a description only: no TPU VM to find
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # no TPU is used: no need for libtpu's process lock
    try:
        report, _ = compile_for_topology(_CONFIG.value, _WORKDIR.value, _TOPOLOGY.value)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    print(describe(report))
    print(json.dumps({"name": "aot"} | report))
    if report["hbm_gib"] and report["peak_gib"] > report["hbm_gib"]:
        print(f"error: the step needs {report['peak_gib']:.1f} GiB per device, more than the {report['hbm_gib']} GiB "
              f"of a {report['device_kind']}; shard the model (--config.mesh.model), lower train.batch_size or "
              f"use a larger topology", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    app.run(main)
