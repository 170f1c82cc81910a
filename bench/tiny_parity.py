"""Runs every system's ``:tiny`` config end to end and records (or checks) its eval metrics.

    python bench/tiny_parity.py --record bench/results/tiny_metrics.json   # on a reference commit
    python bench/tiny_parity.py --check bench/results/tiny_metrics.json    # after a change

Refactors that must not change behaviour are checked with ``--check``: every metric of every
split must match the recorded value to ``--atol``. One JSON line per system.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

from bench.common import emit, load_config  # noqa: E402
from gr_jax import stages  # noqa: E402

SYSTEMS = ("popularity", "cooccurrence", "sasrec", "duorec", "tiger", "prism", "pctx", "qformer", "two_tower",
           "crbr", "latent", "gat", "semconv", "rqvae", "rqkmeans")


def run_system(name: str, workdir: str) -> dict:
    config = load_config(f"{name}:tiny")
    stages.run(config, workdir)
    record = {}
    metrics = os.path.join(workdir, "eval", "metrics.json")
    if os.path.exists(metrics):
        with open(metrics) as f:
            record["metrics"] = json.load(f)
    for sids in ("sid_table.npz", "pctx_sids.npz"):
        path = os.path.join(workdir, "tokenize", sids)
        if os.path.exists(path):
            import numpy as np

            with np.load(path) as arrays:
                record["sid_codes_sha1"] = hashlib.sha1(arrays["codes"].tobytes()).hexdigest()
    return record


def compare(expected: dict, actual: dict, atol: float, path: str = "") -> list[str]:
    problems = []
    for key, value in expected.items():
        where = f"{path}/{key}"
        if key not in actual:
            problems.append(f"{where} missing")
        elif isinstance(value, dict):
            problems += compare(value, actual[key], atol, where)
        elif isinstance(value, float):
            if abs(value - actual[key]) > atol:
                problems.append(f"{where}: {actual[key]} != recorded {value}")
        elif value != actual[key]:
            problems.append(f"{where}: {actual[key]} != recorded {value}")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--record", help="write the metrics of --systems to this JSON file (other systems in it kept)")
    mode.add_argument("--check", help="compare against this JSON file; exit 1 on any difference")
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--atol", type=float, default=1e-6)
    args = parser.parse_args()
    recorded = {}
    if args.check:
        with open(args.check) as f:
            recorded = json.load(f)
    results, failed = {"devices": jax.device_count()}, False
    for name in args.systems.split(","):
        tic = time.time()
        with tempfile.TemporaryDirectory() as workdir:
            record = run_system(name, workdir)
        results[name] = record
        line = {"name": "tiny_parity", "system": name, "seconds": round(time.time() - tic, 1)}
        if "metrics" in record:
            line |= {"test_ndcg@10": record["metrics"]["test"]["ndcg@10"],
                     "test_recall@10": record["metrics"]["test"]["recall@10"]}
        if args.check and name not in recorded:
            line["recorded"] = False  # a system newer than the recording: nothing to compare
        elif args.check:
            problems = compare(recorded[name], record, args.atol)
            line |= {"equal": not problems, "problems": problems[:5]}
            failed |= bool(problems)
        emit(line)
    if args.record:
        if os.path.exists(args.record):
            with open(args.record) as f:
                results = json.load(f) | results
        with open(args.record, "w") as f:
            json.dump(results, f, indent=1, sort_keys=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
