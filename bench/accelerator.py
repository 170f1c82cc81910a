"""Training and decode throughput of every model family, float32 and bfloat16 side by side, on
this process's default device, with both matmul peaks measured in the same process.

    python bench/accelerator.py [--models tiger,tiger_item,prism,pctx,sasrec,two_tower,crbr,latent,gat,semconv]
        [--dtypes float32,bfloat16] [--batch_size 256] [--decode_batch_size 64] [--steps 20] [--flops_only]

Shapes of ``bench/train_throughput.py`` / ``bench/decode.py``: each family at its ``:scientific``
size over 4,344 items, 20-item histories, 4-level SIDs, beam 20 (``tiger``: one token per code,
``tiger_item``: one vector per history item; ``pctx`` decodes its 5-copy ensemble; ``semconv`` is the
from-scratch LLM over made-up titles and its own BPE vocabulary). bfloat16 rows use ``gr_jax.precision`` (bfloat16
compute, float32 parameters and optimizer). FLOPs come from the lowered program (XLA's GPU cost
analysis misses cuBLAS calls in the compiled one); decode FLOPs from the beam search with its depth
loop unrolled (``flops_exact`` false where a loop is counted once: the routing beams of CRBR and the
latent model). One JSON
line per (model, dtype, kind); ``bench/peer_t5.py`` gives the PyTorch peer's lines.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import emit, matmul_peak_gflops  # noqa: E402
from bench.tiger_setup import (  # noqa: E402
    build,
    build_gat,
    build_pctx,
    build_prism,
    build_retriever,
    build_sasrec,
    build_semconv,
    compiled_flops,
    random_batch,
    time_train_steps,
    timed,
)
from configs import tiger as tiger_config  # noqa: E402
from gr_jax.precision import DTYPES, Precision  # noqa: E402
from gr_jax.training import sharding, trainer  # noqa: E402
from gr_jax.training.optim import make_optimizer  # noqa: E402

NUM_ITEMS = 4344
EVENTS_PER_ITEM = 2  # Pctx's events: event e is one of item e % NUM_ITEMS's


def _semconv(unroll: bool):
    """The LLM over a vocabulary trained into a scratch directory (read once, at construction)."""
    with tempfile.TemporaryDirectory(prefix="semconv-llm-") as llm_dir:
        return build_semconv(llm_dir, unroll_decoding=unroll)


# name -> (builder(unroll_decoding) -> model, decode FLOPs exact with the unrolled build)
MODELS = {
    "tiger": (lambda unroll: build(False, unroll_decoding=unroll), True),
    "tiger_item": (lambda unroll: build(True, unroll_decoding=unroll), True),
    "prism": (lambda unroll: build_prism(True, unroll_decoding=unroll), True),
    "pctx": (lambda unroll: build_pctx(events_per_item=EVENTS_PER_ITEM, unroll_decoding=unroll), True),
    "sasrec": (lambda unroll: build_sasrec(), True),
    "two_tower": (lambda unroll: build_retriever("two_tower"), True),
    "crbr": (lambda unroll: build_retriever("crbr"), False),
    "latent": (lambda unroll: build_retriever("latent"), False),
    "gat": (lambda unroll: build_gat(unroll_decoding=unroll), True),
    "semconv": (_semconv, True),
}


def setup(name: str, dtype: str, args):
    """(model, its decode-unrolled twin, precision, config, optimizer, train batch, decode batch)."""
    builder, _ = MODELS[name]
    precision = Precision(compute=DTYPES[dtype], params=jnp.float32)
    model, unrolled = builder(False), builder(True)
    for m in (model, unrolled):
        m.set_precision(precision)
    config = tiger_config.get_config()
    config.mesh.data = 1
    optimizer = make_optimizer(config.train, 10_000)
    extras = {"actions": name == "gat", "events_per_item": EVENTS_PER_ITEM if name == "pctx" else 0}
    batch = random_batch(args.batch_size, args.history, NUM_ITEMS, **extras)
    decode_batch = random_batch(args.decode_batch_size, args.history, NUM_ITEMS, seed=1, **extras)
    return model, unrolled, precision, config, optimizer, batch, decode_batch


def count_flops(name: str, dtype: str, args) -> None:
    """GFLOP per training example and per decoded user from the lowered programs, nothing run:
    for backends whose cost analysis is empty (jax 0.11 on GPU), count on CPU."""
    model, unrolled, precision, config, optimizer, batch, decode_batch = setup(name, dtype, args)
    with trainer.mesh_context(config) as mesh:
        state, shardings = trainer.abstract_state(model, optimizer, config, mesh, batch)
        train = compiled_flops(trainer.jit_train_step(model, optimizer, mesh, shardings), state, batch)
        prepared = jax.eval_shape(lambda p: model.eval_params(precision.for_compute(p)), state.params)
        decode = compiled_flops(jax.jit(lambda p, b: unrolled.topk(p, precision.for_compute(b), args.beam_size)),
                                prepared, decode_batch)
    emit({"name": "flops", "model": name, "dtype": dtype, "batch_size": args.batch_size,
          "gflop_per_example": round(train / args.batch_size / 1e9, 4), "decode_batch_size": args.decode_batch_size,
          "gflop_per_user": round(decode / args.decode_batch_size / 1e9, 4), "flops_exact": MODELS[name][1]})


def measure(name: str, dtype: str, args, peaks: dict) -> None:
    model, unrolled, precision, config, optimizer, batch, decode_batch = setup(name, dtype, args)
    flops_exact = MODELS[name][1]
    common = {"model": name, "dtype": dtype, "history": args.history, "device": str(jax.devices()[0]),
              "device_kind": jax.devices()[0].device_kind, "cpu_count": os.cpu_count()}
    peak = peaks[dtype]
    run = time_train_steps(model, optimizer, config, batch, args.steps)
    seconds, flops = run["seconds"], run["flops"]
    achieved = flops / seconds / 1e9  # NaN where the backend gives no cost analysis
    emit(common | {"name": "train_throughput", "batch_size": args.batch_size,
                   "examples_per_s": round(args.batch_size / seconds, 1),
                   "gflop_per_example": round(flops / args.batch_size / 1e9, 4),
                   "achieved_gflops": round(achieved, 1), "peak_gflops": round(peak, 1),
                   "mfu": round(achieved / peak, 4), "loss_finite": run["finite"],
                   "setup_and_compile_s": round(run["compile_s"], 1)})
    with trainer.mesh_context(config) as mesh:
        prepared = jax.jit(lambda p: model.eval_params(precision.for_compute(p)))(run["state"].params)
        decode = jax.jit(lambda p, b: model.topk(p, precision.for_compute(b), args.beam_size))
        decode_batch = sharding.shard_batch(decode_batch, mesh)
        seconds = timed(decode, prepared, decode_batch, repeats=args.decode_repeats)
        flops = compiled_flops(jax.jit(lambda p, b: unrolled.topk(p, precision.for_compute(b), args.beam_size)),
                               prepared, decode_batch)
        achieved = flops / seconds / 1e9
        emit(common | {"name": "decode", "batch_size": args.decode_batch_size, "beam_size": args.beam_size,
                       "users_per_s": round(args.decode_batch_size / seconds, 1),
                       "gflop_per_user": round(flops / args.decode_batch_size / 1e9, 4), "flops_exact": flops_exact,
                       "achieved_gflops": round(achieved, 1), "peak_gflops": round(peak, 1),
                       "mfu": round(achieved / peak, 4)})


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--decode_batch_size", type=int, default=64)
    parser.add_argument("--history", type=int, default=20)
    parser.add_argument("--beam_size", type=int, default=20)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--decode_repeats", type=int, default=5)
    parser.add_argument("--flops_only", action="store_true", help="only count FLOPs (lowered programs, no run)")
    args = parser.parse_args()
    if args.flops_only:
        for name in args.models.split(","):
            for dtype in args.dtypes.split(","):
                count_flops(name, dtype, args)
        return
    on_cpu = jax.default_backend() == "cpu"
    dtypes = args.dtypes.split(",")
    peaks = {d: matmul_peak_gflops(2048 if on_cpu else 8192, dtype=DTYPES[d]) for d in dtypes}
    emit({"name": "matmul_peak", "device": str(jax.devices()[0]), "device_kind": jax.devices()[0].device_kind,
          "jax": jax.__version__} | {f"{d}_gflops": round(p, 1) for d, p in peaks.items()})
    for name in args.models.split(","):
        for dtype in dtypes:
            try:
                measure(name, dtype, args, peaks)
            except Exception as error:  # one family's failure must not lose the others' rows
                message = f"{type(error).__name__}: {error}"[:500]
                emit({"name": "error", "model": name, "dtype": dtype, "error": message})


if __name__ == "__main__":
    main()
