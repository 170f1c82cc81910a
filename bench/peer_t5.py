"""The PyTorch peer of TIGER-style retrieval: Hugging Face ``T5ForConditionalGeneration`` trained
with AdamW and decoded by ``generate`` with a dict-trie ``prefix_allowed_tokens_fn``, at the
shapes of ``bench/train_throughput.py`` and ``bench/decode.py`` (T5 4+4, d 128, d_ff 1024, 6 heads
× 64, batch 256 of 20-item histories with one token per code, 4-token SIDs over 4,344 items; beam
20, batch 64).

    python bench/peer_t5.py [--device cuda] [--dtype bfloat16] [--batch_size 256] [--decode_batch_size 64]

Needs ``torch`` and ``transformers`` (never imported by gr_jax or its tests). Prints one JSON line
per measurement with the fields of the gr_jax benches (``examples_per_s``, ``users_per_s``, GFLOP
from ``torch.utils.flop_counter``, the matmul peak measured in the same process, MFU).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch
import transformers
from torch.utils.flop_counter import FlopCounterMode

NUM_ITEMS, LEVELS, CODES, USER_BUCKETS = 4344, 4, 256, 2000
SPECIAL = 2  # pad (= decoder start) and eos


def random_sids(seed: int = 0) -> np.ndarray:
    """Distinct random SIDs, as ``bench/tiger_setup.random_sid_codes``."""
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, CODES, (NUM_ITEMS, LEVELS))
    codes[:, -1] = np.arange(NUM_ITEMS) % CODES
    return codes


def code_tokens(codes: np.ndarray) -> np.ndarray:
    """Token ids of codes ``[..., L]``: level l, code c -> SPECIAL + l * CODES + c."""
    return SPECIAL + np.arange(codes.shape[-1]) * CODES + codes


def build_model(device: str) -> transformers.T5ForConditionalGeneration:
    config = transformers.T5Config(vocab_size=SPECIAL + LEVELS * CODES + USER_BUCKETS, d_model=128, d_kv=64, d_ff=1024,
                                   num_layers=4, num_decoder_layers=4, num_heads=6, dropout_rate=0.1,
                                   feed_forward_proj="relu", pad_token_id=0, eos_token_id=1,
                                   decoder_start_token_id=0)
    torch.manual_seed(0)
    return transformers.T5ForConditionalGeneration(config).to(device)


def batch(sids: np.ndarray, size: int, history: int, device: str, seed: int = 0):
    """Encoder ids ``[B, 1 + history * L]`` (user token, then every history item's codes) and labels ``[B, L]``."""
    rng = np.random.default_rng(seed)
    items = rng.integers(0, NUM_ITEMS, (size, history + 1))
    users = SPECIAL + LEVELS * CODES + rng.integers(0, USER_BUCKETS, (size, 1))
    inputs = np.concatenate([users, code_tokens(sids[items[:, :-1]]).reshape(size, -1)], 1)
    labels = code_tokens(sids[items[:, -1]])
    as_tensor = lambda a: torch.as_tensor(a, dtype=torch.long, device=device)
    return as_tensor(inputs), as_tensor(labels)


def trie_fn(sids: np.ndarray):
    """``prefix_allowed_tokens_fn`` over a dict trie of the catalogue's SID tokens."""
    trie: dict[tuple, list[int]] = {}
    for row in code_tokens(sids):
        for level in range(LEVELS):
            trie.setdefault(tuple(row[:level]), set()).add(int(row[level]))
    trie = {prefix: sorted(children) for prefix, children in trie.items()}

    def allowed(batch_id, sent):
        return trie.get(tuple(sent[1:].tolist()), [1])

    return allowed


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def seconds_per_call(fn, repeats: int, device: str) -> float:
    """Mean wall seconds of ``repeats`` calls of ``fn``, the device synchronised before and after."""
    sync(device)
    tic = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync(device)
    return (time.perf_counter() - tic) / repeats


def matmul_peak_gflops(device: str, dtype: torch.dtype) -> float:
    size = 8192 if device.startswith("cuda") else 2048
    a = torch.randn(size, size, device=device, dtype=dtype)
    a @ a
    sync(device)
    best = float("inf")
    for _ in range(10):
        tic = time.perf_counter()
        a @ a
        sync(device)
        best = min(best, time.perf_counter() - tic)
    return 2 * size**3 / best / 1e9


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                        help="bfloat16: torch.autocast compute, float32 parameters (the gr_jax policy)")
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--decode_batch_size", type=int, default=64)
    parser.add_argument("--history", type=int, default=20)
    parser.add_argument("--beam_size", type=int, default=20)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--decode_repeats", type=int, default=3)
    args = parser.parse_args()
    device, dtype = args.device, getattr(torch, args.dtype)
    autocast = lambda: torch.autocast(device_type=device.split(":")[0], dtype=dtype, enabled=dtype != torch.float32)
    sids = random_sids()
    model = build_model(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    inputs, labels = batch(sids, args.batch_size, args.history, device)
    common = {"model": "peer_t5", "framework": f"torch {torch.__version__} transformers {transformers.__version__}",
              "dtype": args.dtype, "history": args.history, "sid_levels": LEVELS, "device": device,
              "device_name": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu",
              "cpu_count": os.cpu_count()}

    def train_step():
        with autocast():
            loss = model(input_ids=inputs, labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    model.train()
    with FlopCounterMode(display=False) as counter:
        train_step()
    train_flops = counter.get_total_flops()
    for _ in range(2):
        train_step()
    seconds = seconds_per_call(train_step, args.steps, device)
    peak = matmul_peak_gflops(device, dtype)
    achieved = train_flops / seconds / 1e9
    print(json.dumps(common | {"name": "train_throughput", "batch_size": args.batch_size,
                               "examples_per_s": round(args.batch_size / seconds, 1),
                               "gflop_per_example": round(train_flops / args.batch_size / 1e9, 3),
                               "achieved_gflops": round(achieved, 1), "peak_gflops": round(peak, 1),
                               "mfu": round(achieved / peak, 3)}), flush=True)

    model.eval()
    allowed = trie_fn(sids)
    decode_inputs, _ = batch(sids, args.decode_batch_size, args.history, device, seed=1)

    def decode():
        with torch.no_grad(), autocast():
            return model.generate(input_ids=decode_inputs, num_beams=args.beam_size,
                                  num_return_sequences=args.beam_size, max_new_tokens=LEVELS, min_new_tokens=LEVELS,
                                  prefix_allowed_tokens_fn=allowed, do_sample=False, early_stopping=True)

    with FlopCounterMode(display=False) as counter:
        out = decode()
    decode_flops = counter.get_total_flops()
    generated = out[:, 1:].cpu().numpy().reshape(args.decode_batch_size, args.beam_size, -1)
    valid = {tuple(r) for r in code_tokens(sids).tolist()}
    share_valid = float(np.mean([tuple(s[:LEVELS]) in valid for s in generated.reshape(-1, generated.shape[-1])]))
    seconds = seconds_per_call(decode, args.decode_repeats, device)
    achieved = decode_flops / seconds / 1e9
    print(json.dumps(common | {"name": "decode", "batch_size": args.decode_batch_size, "beam_size": args.beam_size,
                               "users_per_s": round(args.decode_batch_size / seconds, 1),
                               "gflop_per_user": round(decode_flops / args.decode_batch_size / 1e9, 4),
                               "achieved_gflops": round(achieved, 1), "peak_gflops": round(peak, 1),
                               "mfu": round(achieved / peak, 3), "valid_sid_share": round(share_valid, 4)}),
          flush=True)


if __name__ == "__main__":
    main()
