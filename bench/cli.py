"""`gpt bench`: the kernels against the eager reference, torch's native ops and torch.compile.

    gpt bench                                   full suite on the GPU -> bench/results/<gpu>/
    gpt bench --ops attention --modes fwd       a part of it (rows merge into the same results.csv)
    gpt bench --quick                           small shapes; on a CPU: eager, torch, compile
    gpt bench --quick --interpret               also the Triton kernels, in Triton's CPU interpreter
    gpt bench --report-only --out DIR           redraw plots and summary from DIR/results.csv
    gpt bench --report-only --out DIR --merge A/results.csv B/results.csv    combine runs, then redraw

Each run measures the ceilings (copy GB/s, matmul TFLOP/s), then every op's sweep, then the training step,
and writes DIR/results.csv (long format, merged with rows already there), DIR/<op>.png and DIR/summary.md.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"
OPS = ("layer_norm", "add_layer_norm", "gelu", "bias_gelu", "attention")  # bench.ops.OPS, without importing kernels
ALL = OPS + ("train_step",)
ORDER = ("attention", "layer_norm", "train_step", "add_layer_norm", "bias_gelu", "gelu")  # headline results first
PROVIDERS = ("triton", "eager", "torch", "compile")
MODES = ("fwd", "bwd", "fwd+bwd")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="gpt bench", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small shapes and short timings (the CPU smoke run)")
    ap.add_argument("--ops", nargs="+", choices=ALL, default=list(ALL), metavar="OP", help=f"of: {' '.join(ALL)}")
    ap.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES), metavar="MODE", help="fwd bwd fwd+bwd")
    ap.add_argument(
        "--providers", nargs="+", choices=PROVIDERS, default=list(PROVIDERS), metavar="P",
        help="triton eager torch compile (training: a provider like torch-compile runs if both parts are given)",
    )  # fmt: skip
    ap.add_argument(
        "--out", type=Path, help="results folder (default bench/results/<gpu>; quick-<device> with --quick)"
    )
    ap.add_argument("--interpret", action="store_true", help="run the Triton kernels in Triton's CPU interpreter")
    ap.add_argument("--train-batch-sizes", nargs="+", type=int, metavar="B", help="micro-batch sizes of train_step")
    ap.add_argument("--time-budget", type=float, default=math.inf, metavar="S", help="skip what is left after S s")
    ap.add_argument("--report-only", action="store_true", help="only redraw plots and summary from --out")
    ap.add_argument(
        "--merge", nargs="+", type=Path, default=[], metavar="CSV",
        help="with --report-only: first merge these results.csv files (e.g. from separate GPU runs) into --out",
    )  # fmt: skip
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.interpret:
        # Triton picks interpreter or compiler when a kernel is defined: this must precede importing kernels.
        if "kernels.reference" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1":
            print("gpt bench: --interpret must be given before kernels are imported", file=sys.stderr)
            return 2
        os.environ["TRITON_INTERPRET"] = "1"

    from bench import report

    if args.report_only:
        if args.out is None:
            print("gpt bench: --report-only needs --out DIR", file=sys.stderr)
            return 2
        for path in args.merge:
            report.write_csv(report.read_csv(path), args.out / "results.csv")
        if not (args.out / "results.csv").exists():
            print(
                "gpt bench: --report-only needs --out DIR holding a results.csv (or --merge CSV ...)", file=sys.stderr
            )
            return 2
        rows = report.read_csv(args.out / "results.csv")
        notes = _read_notes(args.out)
        notes += [n for path in args.merge for n in _read_notes(path.parent) if n not in notes]
        report.write_plots(rows, args.out)
        report.write_summary(rows, args.out / "summary.md", notes, _read_command(args.out))
        print(f"wrote plots and {args.out / 'summary.md'}")
        return 0

    import torch

    threads = torch.get_num_threads()
    try:
        return _run(args, argv)
    finally:
        torch.set_num_threads(threads)  # a CPU run sets one thread; leave an in-process caller as it was


def _run(args: argparse.Namespace, argv: list[str]) -> int:
    import torch

    from bench import harness, ops, report, train_step

    start = time.monotonic()
    deadline = start + args.time_budget
    cuda = torch.cuda.is_available() and not args.interpret
    device = torch.device("cuda" if cuda else "cpu")
    quick = args.quick or not cuda
    if not cuda and not args.quick:
        print("gpt bench: no CUDA GPU here, so running the --quick sweep on the CPU")
    scale = "interpret" if args.interpret else ("quick" if quick else "gpu")
    if not cuda:
        # A CPU run checks the harness, not the machine; one thread keeps OpenMP spin-waits on a busy
        # 2-core box from turning 0.1 ms calls into 20 ms ones.
        torch.set_num_threads(1)
    env = harness.current_env(device)
    out = args.out or RESULTS_DIR / (f"quick-{env.slug}" if quick else env.slug)
    out.mkdir(parents=True, exist_ok=True)
    command = "gpt bench " + " ".join(argv)
    (out / "command.txt").write_text(command + "\n", encoding="utf-8")
    print(f"gpt bench on {env.gpu} (torch {env.torch}, triton {env.triton}) -> {out}")

    notes: list[str] = []
    ceilings = harness.measure_ceilings(device, quick)
    for c in ceilings.values():
        print(f"  ceiling {c.name}: {c.value:,.4g} {c.unit} ({c.shape} {c.dtype})")
    csv_path = out / "results.csv"
    rows = report.write_csv(report.with_env(report.ceiling_rows(ceilings), env), csv_path)

    if cuda:
        cfg = ops.RunConfig(device, torch.bfloat16, scale, tuple(args.providers), tuple(args.modes))
    elif scale == "interpret":
        cfg = ops.RunConfig(device, torch.float32, scale, tuple(args.providers), tuple(args.modes), 0.0, 0.0, 2)
    else:
        cfg = ops.RunConfig(device, torch.float32, scale, tuple(args.providers), tuple(args.modes), 2.0, 10.0, 3)
    cfg.deadline = deadline
    mcfg, name, seq_len, sizes = train_step.default_setup(quick)
    chosen = set(args.providers)
    train_providers = tuple(p for p in train_step.TRAIN_PROVIDERS if set(p.split("-")) <= chosen)
    earlier_notes = _read_notes(out)
    for op in (o for o in ORDER if o in args.ops):
        t0 = time.monotonic()
        print(f"{op}:")
        if op == "train_step":
            sizes = tuple(args.train_batch_sizes or sizes)
            new = train_step.run_train(mcfg, name, seq_len, sizes, train_providers, env, ceilings, notes, deadline)
        else:
            new = ops.run_op(op, cfg, ceilings, notes)
        rows = report.write_csv(report.with_env(new, env), csv_path)
        # The summary after every op, so a run cut short still leaves one (plots: `--report-only`).
        merged_notes = _merge_notes(out, earlier_notes, notes, args.ops)
        report.write_summary(rows, out / "summary.md", merged_notes, command)
        print(f"  ({time.monotonic() - t0:.1f} s)")

    merged_notes = _merge_notes(out, earlier_notes, notes, args.ops)
    plots = report.write_plots(rows, out)
    report.write_summary(rows, out / "summary.md", merged_notes, command)
    print(f"wrote {csv_path}, {len(plots)} plots, {out / 'summary.md'} in {time.monotonic() - start:.0f} s")
    return 0


def _read_notes(out: Path) -> list[str]:
    p = out / "notes.txt"
    return p.read_text(encoding="utf-8").splitlines() if p.exists() else []


def _read_command(out: Path) -> str:
    p = out / "command.txt"
    return p.read_text(encoding="utf-8").strip() if p.exists() else ""


def _merge_notes(out: Path, earlier: list[str], notes: list[str], ops_run: list[str]) -> list[str]:
    """Notes of earlier runs survive unless this run re-measured their op."""
    kept = [n for n in earlier if n.split(" ")[0].rstrip(":") not in ops_run]
    merged = kept + [n for n in notes if n not in kept]
    (out / "notes.txt").write_text("".join(n + "\n" for n in merged), encoding="utf-8")
    return merged


if __name__ == "__main__":
    sys.exit(main())
