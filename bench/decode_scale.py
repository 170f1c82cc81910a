"""Constrained decoding against catalogue size: dense and compact trie tables (issue "catalogue scale").

    python bench/decode_scale.py [--items 10000,100000,1000000,10000000] [--dense_limit_gb 2]

For each catalogue size: random 4-level SIDs over 256 codes (``tiger_setup.random_sid_codes``),
each trie kind built (``build_s``, ``trie_bytes`` of its decoding tables), then TIGER-size
beam search (``configs/tiger.py`` model, beam 20, batch 64 users of 20 history items, top-20) with
the tables passed to the jitted search as arguments; ``users_per_s`` over ``--repeats`` batches
after a compile. The dense table is skipped (one line with ``skipped``) above ``--dense_limit_gb``.
One JSON line per size and kind.
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import sys
import time

import jax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import emit  # noqa: E402
from bench.tiger_setup import build, random_batch, random_sid_codes, timed  # noqa: E402
from gr_jax.decoding.trie import TrieTables, build_trie, dense_bytes  # noqa: E402

LEVELS, CODES = 4, 256


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", default="10000,100000,1000000,10000000")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--beam_size", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dense_limit_gb", type=float, default=2.0)
    args = parser.parse_args()
    # The model's own (small) table is unused: every search gets a catalogue's tables as an argument.
    model = build(False, num_items=1000, num_levels=LEVELS, codebook_size=CODES, beam_size=args.beam_size)
    batch = random_batch(args.batch_size, 20, 1000)
    params = jax.jit(model.init)(jax.random.PRNGKey(0), batch)
    search = jax.jit(lambda p, t, b: model.search(p, model.inputs(b), args.beam_size, tables=t).results())
    for items in (int(n) for n in args.items.split(",")):
        codes = random_sid_codes(items, LEVELS, CODES)
        for kind in ("dense", "compact"):
            record = {"name": "decode_scale", "items": items, "trie": kind, "levels": LEVELS, "codebook_size": CODES}
            if kind == "dense":
                prefixes = build_trie(codes, CODES, "compact").prefix_counts
                if dense_bytes(prefixes, CODES) > args.dense_limit_gb * 2**30:
                    emit(record | {"trie_bytes": dense_bytes(prefixes, CODES),
                                   "skipped": f"over --dense_limit_gb={args.dense_limit_gb}"})
                    continue
            tic = time.perf_counter()
            trie = build_trie(codes, CODES, kind)
            build_s = time.perf_counter() - tic
            tables = jax.device_put(TrieTables.of(trie))
            seconds = timed(search, params, tables, batch, repeats=args.repeats)
            emit(record | {"trie_bytes": trie.nbytes(), "build_s": round(build_s, 2), "fan_out": trie.fan_out,
                           "users_per_s": round(args.batch_size / seconds, 1), "batch_size": args.batch_size,
                           "beam_size": args.beam_size,
                           "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)})
            del trie, tables
            gc.collect()


if __name__ == "__main__":
    main()
