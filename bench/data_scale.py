"""The data stage and one epoch of the training input pipeline on a large synthetic dataset.

    python bench/data_scale.py --items 1000000 --users 770000 [--workdir runs/data-scale] [--epochs 1]

The synthetic generator's default structure (5 x 4 x 4 category tree, 5 + ~8 events per user:
about 13 events per user) at ``--items`` items and ``--users`` users, through the data stage
(generate, validate, write the TFDS ArrayRecord splits; then load them back as a fresh training
run does) and ``--epochs`` epochs of ``pipeline.train_dataset`` batches (TIGER's batch 256 and
history 20, assembled in this process). Each phase runs in its own process, so its peak RSS is
its own. One JSON line: ``{"name": "data_scale", "items", "users", "events", "train_examples",
"build_s", "build_peak_rss_gb", "load_s", "load_peak_rss_gb", "tfds_decode_us_per_record",
"proto_parse_us_per_record", "pipeline_s", "pipeline_examples_per_s", "pipeline_peak_rss_gb",
"report"}`` (``report``: the data stage's cleaning counts; the two per-record times compare the
loader's proto parse with TFDS's own decoding on the same user records). A built dataset is
reused (delete ``--workdir`` to rebuild).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import emit, load_config  # noqa: E402
from gr_jax.data import pipeline, tfds_builder  # noqa: E402


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def data_config(items: int, users: int):
    config = load_config("tiger")
    config.data.synthetic.update(num_items=items, num_users=users)
    return config


def build_phase(config, tfds_dir: str) -> dict:
    start = time.perf_counter()
    tfds_builder.build(config.data, tfds_dir)
    return {"build_s": time.perf_counter() - start, "build_peak_rss_gb": peak_rss_gb()}


def decode_us_per_record(builder, records: int = 20000) -> dict:
    """Microseconds per user record: the loader's direct proto parse against TFDS's per-field
    NumPy decoding (``tfds.data_source``), on the same first ``records`` records."""
    source = builder.as_data_source(split="users")
    keys = range(min(records, len(source)))
    start = time.perf_counter()
    source.__getitems__(keys)
    tfds_seconds = time.perf_counter() - start
    start = time.perf_counter()
    next(tfds_builder.record_chunks(source, "users"))  # the loader's parse of one chunk
    parse_seconds = time.perf_counter() - start
    parsed = min(tfds_builder.LOAD_CHUNK, len(source))
    return {"tfds_decode_us_per_record": tfds_seconds / len(keys) * 1e6,
            "proto_parse_us_per_record": parse_seconds / parsed * 1e6}


def load_and_pipeline_phase(config, tfds_dir: str, epochs: int) -> dict:
    builder = tfds_builder.builder_for(config.data, tfds_dir)
    start = time.perf_counter()
    dataset = tfds_builder.load(builder)
    stats = dataset.stats()
    out = {"load_s": time.perf_counter() - start, "load_peak_rss_gb": peak_rss_gb(),
           "events": stats["num_events"], "report": dataset.report} | decode_us_per_record(builder)
    start = time.perf_counter()
    rows = pipeline.train_rows(dataset.users)
    batches = pipeline.train_dataset(dataset.users, max_history=config.data.max_history,
                                     global_batch_size=config.train.batch_size, seed=0, num_epochs=epochs,
                                     rows=rows, shard=(0, 1))
    examples = 0
    for count, batch in enumerate(pipeline.batch_iterator(batches, workers=0), 1):
        examples += len(batch["target"])
        if count % 20000 == 0:
            print(f"pipeline: {examples} of {len(rows) * epochs} examples, "
                  f"{examples / (time.perf_counter() - start):.0f}/s", file=sys.stderr, flush=True)
    seconds = time.perf_counter() - start
    return out | {"train_examples": len(rows), "pipeline_s": seconds, "pipeline_examples_per_s": examples / seconds,
                  "pipeline_peak_rss_gb": peak_rss_gb()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, required=True)
    parser.add_argument("--users", type=int, required=True)
    parser.add_argument("--workdir", default="runs/data-scale")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--phase", choices=("build", "load"), help=argparse.SUPPRESS)  # one child's job
    args = parser.parse_args()
    config = data_config(args.items, args.users)
    tfds_dir = os.path.join(args.workdir, "tfds")
    if args.phase == "build":
        print(json.dumps(build_phase(config, tfds_dir)))
        return
    if args.phase == "load":
        print(json.dumps(load_and_pipeline_phase(config, tfds_dir, args.epochs), default=int))
        return
    record = {"name": "data_scale", "items": args.items, "users": args.users}
    for phase in ("build", "load"):
        done = subprocess.run([sys.executable, __file__, *sys.argv[1:], f"--phase={phase}"], check=True,
                              stdout=subprocess.PIPE, text=True)
        record |= json.loads(done.stdout.strip().splitlines()[-1])
    emit(record)


if __name__ == "__main__":
    main()
