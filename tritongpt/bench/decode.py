"""Decode speed: tokens/s of greedy generation with and without the KV cache, GPT-2 124M shape (random weights).

    python -m tritongpt.bench.decode                        # GPU: 256 and 1024 tokens, 64 timed steps each
    python -m tritongpt.bench.decode --device cpu --steps 4  # CPU: a few steps only (no cache is slow there)
    python -m tritongpt.bench.decode --device cpu --threads 1  # CPU shared with other jobs: avoid oversubscription
    python -m tritongpt.bench.decode --lengths 128 512 --backend reference --dtype bfloat16
    python -m tritongpt.bench.decode --out "$OUT/decode"    # the CSV into another folder (a GPU session)

"At N tokens": a random prompt of N - steps - 1 tokens, then steps + 1 generated tokens, so the sequence ends
at N tokens. The first generated token (the cached prefill, or a first full forward) is not timed; the next
`steps` are. With the cache each is one token through the model against the cache; without it each runs the
whole sequence through the model again (nanoGPT's loop). Prefill time is reported on its own.

Prints a table and writes DIR/decode.csv, DIR = --out or results/<device>/ (long format: op, provider,
mode, shape, dtype, method, metric, value, gpu, torch, triton, date; method "perf_counter": the host's
clock around synchronized calls), replacing rows it re-measures.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from tritongpt.bench import RESULTS_DIR
from tritongpt.bench.harness import current_env
from tritongpt.bench.harness import synchronize as sync
from tritongpt.bench.report import read_csv, with_env, write_csv
from tritongpt.config import BACKENDS, ConfigError, load_model_config
from tritongpt.generate import generate_stream
from tritongpt.model import GPT

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def time_decode(model: GPT, prompt: torch.Tensor, steps: int, use_cache: bool) -> tuple[float, float]:
    """(seconds of the untimed first token, seconds of the next `steps` tokens) of greedy generation."""
    device = prompt.device
    sync(device)
    t0 = time.perf_counter()
    stream = generate_stream(model, prompt, steps + 1, temperature=0.0, use_cache=use_cache)
    next(stream)
    sync(device)
    t1 = time.perf_counter()
    for _ in stream:
        pass
    sync(device)
    return t1 - t0, time.perf_counter() - t1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m tritongpt.bench.decode", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    ap.add_argument("--config", default="gpt2-124m", help="model preset (default: gpt2-124m)")
    ap.add_argument("--lengths", type=int, nargs="+", default=[256, 1024], help="sequence length at the end")
    ap.add_argument("--steps", type=int, default=None, help="timed tokens per run (default: 64 GPU, 4 CPU)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--backend", choices=BACKENDS, default="auto")
    ap.add_argument("--dtype", choices=list(DTYPES), default="float32")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--no-csv", action="store_true", help="print the table only")
    ap.add_argument("--out", type=Path, help="folder of decode.csv (default: results/<device>/)")
    args = ap.parse_args(argv)
    try:
        device = torch.device(args.device)
    except RuntimeError:
        ap.error(f"--device {args.device!r} is not a device (cpu, cuda, cuda:1, ...)")
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error(f"--device {args.device}: no CUDA GPU here")
    if args.steps is not None and args.steps < 1:
        ap.error(f"--steps must be at least 1, got {args.steps}")
    if args.threads is not None and args.threads < 1:
        ap.error(f"--threads must be at least 1, got {args.threads}")
    steps = args.steps or (64 if device.type == "cuda" else 4)
    try:
        cfg = load_model_config(args.config)
    except ConfigError as e:
        ap.error(str(e))
    cfg.backend = args.backend
    for n in args.lengths:
        if not steps + 2 <= n <= cfg.context_length:
            ap.error(f"length {n} must be in [steps + 2, context_length] = [{steps + 2}, {cfg.context_length}]")
    env = current_env(device)
    path = (args.out or RESULTS_DIR / env.slug) / "decode.csv"
    if not args.no_csv:  # before minutes of decoding: the CSV must be writable and, if there, one of ours
        try:
            if path.exists():
                read_csv(path)
            path.parent.mkdir(parents=True, exist_ok=True)
        except (ValueError, OSError) as e:
            ap.error(f"cannot write {path}: {e}")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = GPT(cfg).to(device=device, dtype=DTYPES[args.dtype]).eval()

    print(
        f"decode, {args.config}, {args.dtype}, backend {args.backend}, {env.gpu} ({torch.get_num_threads()} threads), "
        f"batch 1, {steps} timed tokens"
    )
    print(f"{'tokens':>7} {'cache tok/s':>12} {'no-cache tok/s':>15} {'speedup':>8} {'prefill ms':>11}")
    rows = []
    with torch.inference_mode():
        for n in args.lengths:
            prompt = torch.randint(0, cfg.vocab_size, (1, n - steps - 1), device=device)
            result = {}
            for use_cache in (True, False):
                time_decode(model, prompt[:, -8:], 2, use_cache)  # warm-up: kernels compiled and tuned
                first, timed = time_decode(model, prompt, steps, use_cache)
                result[use_cache] = (first, steps / timed)
            speedup = result[True][1] / result[False][1]
            print(
                f"{n:>7} {result[True][1]:>12.1f} {result[False][1]:>15.2f} {speedup:>7.1f}x "
                f"{result[True][0] * 1e3:>11.1f}"
            )
            shape = f"{args.config} B1xT{n}"
            common = dict(op="decode", mode="decode", shape=shape, dtype=args.dtype, method="perf_counter")
            rows += [
                {**common, "provider": f"{args.backend}-cache", "metric": "tokens/s", "value": result[True][1]},
                {**common, "provider": f"{args.backend}-no-cache", "metric": "tokens/s", "value": result[False][1]},
                {**common, "provider": f"{args.backend}-cache", "metric": "prefill_ms", "value": result[True][0] * 1e3},
                {**common, "provider": f"{args.backend}-cache", "metric": "speedup_vs_no-cache", "value": speedup},
            ]
    if not args.no_csv:
        write_csv(with_env(rows, env), path)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":  # under `gpt`'s rules for Ctrl-C and standard output
    from tritongpt.cli import run_guarded

    sys.exit(run_guarded("python -m tritongpt.bench.decode", main))
