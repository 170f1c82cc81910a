"""Input pipeline throughput vs the SASRec training step rate, on the same batches.

    python bench/input_pipeline.py --config=sasrec:scientific [--workers 0,4,8] [--data_dir DIR]

Prints one JSON line: pipeline examples/s (Grain, batches assembled from the TFDS-loaded
sequences), SASRec train examples/s (jitted step, after compilation) and their ratio.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import emit, load_config, load_dataset  # noqa: E402
from gr_jax.data.pipeline import batch_iterator, train_dataset  # noqa: E402
from gr_jax.models.sasrec import SASRecRecommender  # noqa: E402
from gr_jax.training.optim import make_optimizer  # noqa: E402
from gr_jax.training.trainer import TrainState, make_train_step  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="sasrec:scientific")
    parser.add_argument("--data_dir", default="", help="the raw data directory (default: the config's data.dir)")
    parser.add_argument("--batches", type=int, default=400)
    parser.add_argument("--train_steps", type=int, default=100)
    parser.add_argument("--workers", default="0", help="comma-separated data.workers values to time (0: in-process)")
    args = parser.parse_args()
    config = load_config(args.config)
    if args.data_dir:
        config.data.dir = args.data_dir
    dataset = load_dataset(config)
    ds = train_dataset(dataset.users, max_history=config.data.max_history,
                       global_batch_size=config.train.batch_size, seed=0)
    rates = {}
    for workers in map(int, args.workers.split(",")):
        iterator = batch_iterator(ds, workers)
        next(iterator)  # workers started
        tic = time.perf_counter()
        batches = []
        for _ in range(args.batches):
            batch = next(iterator)  # worker batches live in shared memory: keep copies of a few only
            if len(batches) < args.train_steps:
                batches.append({k: np.array(v) for k, v in batch.items()})
        rates[workers] = args.batches * config.train.batch_size / (time.perf_counter() - tic)
        iterator.close()

    model = SASRecRecommender(config.model, dataset.num_items, config.data.max_history)
    optimizer = make_optimizer(config.train, 10_000)
    device_batches = [{k: jnp.asarray(v) for k, v in b.items()} for b in batches[:args.train_steps]]
    params = model.init(jax.random.PRNGKey(0), device_batches[0])
    state = TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params), jax.random.PRNGKey(1))
    step = jax.jit(make_train_step(model, optimizer), donate_argnums=0)
    state, _ = step(state, device_batches[0])
    jax.block_until_ready(state)
    tic = time.perf_counter()
    for batch in device_batches:
        state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    train_rate = len(device_batches) * config.train.batch_size / (time.perf_counter() - tic)
    for workers, rate in rates.items():
        emit({"name": "input_pipeline", "config": args.config, "batch_size": config.train.batch_size,
              "workers": workers, "pipeline_examples_per_s": round(rate), "train_examples_per_s": round(train_rate),
              "ratio": round(rate / train_rate, 1), "device": str(jax.devices()[0]), "cpu_count": os.cpu_count()})


if __name__ == "__main__":
    main()
