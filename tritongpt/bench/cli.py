"""`gpt bench`: our kernels against the reference, torch's native ops, torch.compile and every SDPA backend.

    gpt bench --plan                              every case the full GPU suite times, one per line
    gpt bench                                     the full suite on a GPU -> results/<gpu>/
    gpt bench --ops attention --match '*xD64*'    a part of it (its rows merge into the same results.csv)
    gpt bench --quick                             small shapes; on a CPU: reference, native, compile, SDPA
    gpt bench --quick --interpret                 also the Triton kernels, in Triton's CPU interpreter
    gpt bench --report-only --out DIR             redraw plots and summary from DIR/results.csv
    gpt bench --report-only --merge A/results.csv B/results.csv C/decode.csv
                                                  combine runs into results/<their gpu>/ (or --out DIR)

A case is one `--plan` line: `op mode shape dtype provider`. A run measures the card's ceilings (copy GB/s,
matmul TFLOP/s), then its cases in plan order, and writes DIR/results.csv after every shape (long format,
merged with the rows already there), then DIR/<op>.png and DIR/summary.md. --time-budget is checked before
every case; the cases it leaves out are listed as skipped.

DIR must be new, empty, or a results folder of gpt bench (holding its results.csv or decode.csv, or only the
command.txt, notes.txt and summary.md of a run that measured nothing): anything else is refused and left as it
was. Every file is replaced atomically: a full disk leaves no empty or half-written file. Exit status: 0 when
every case ran or was skipped for a stated reason (no kernel for it, SDPA refused the shape, time budget
spent); 1 when a case failed or nothing was measured; 2 for bad arguments; 130 on Ctrl-C (the shapes finished
so far are in results.csv).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

from tritongpt.bench import RESULTS_DIR
from tritongpt.files import os_error_message, silence_stdout, write_text_atomic
from tritongpt.kernels import OPS  # imports no torch, so --help needs none

# The names tritongpt.bench.ops and tritongpt.bench.train_step define, repeated so that --help needs no torch import.
ALL = OPS + ("train_step",)
PROVIDERS = ("triton", "reference", "native", "compile", "sdpa-flash", "sdpa-cudnn", "sdpa-efficient", "sdpa-math")
TRAIN_PROVIDERS = ("native+compile", "triton+compile", "triton", "native", "reference")
MODES = ("fwd", "bwd", "fwd+bwd")
RUN_FILES = ("command.txt", "notes.txt", "summary.md")  # what a run writes before its first results


class BenchError(Exception):
    """A mistake in the command line or its files: printed as one `gpt bench: error:` line, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="gpt bench", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--plan", action="store_true", help="print the cases a run would time, one per line; time none")
    ap.add_argument("--quick", action="store_true", help="small shapes and short timings (the CPU smoke run)")
    ap.add_argument("--interpret", action="store_true", help="run the Triton kernels in Triton's CPU interpreter")
    ap.add_argument("--ops", nargs="+", choices=ALL, default=list(ALL), metavar="OP", help=" ".join(ALL))
    ap.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES), metavar="MODE", help="fwd bwd fwd+bwd")
    ap.add_argument(
        "--providers", nargs="+", choices=PROVIDERS + TRAIN_PROVIDERS[:2], default=list(PROVIDERS), metavar="P",
        help=f"of: {' '.join(PROVIDERS)}; the training step runs a backend named here,\n"
        "or one whose parts are (native+compile: native and compile)",
    )  # fmt: skip
    ap.add_argument(
        "--match", nargs="+", default=[], metavar="PATTERN",
        help="only the cases whose plan line matches one of these shell patterns, e.g. '*xD64*' '* triton'",
    )  # fmt: skip
    ap.add_argument("--out", type=Path, help="results folder (default results/<gpu>; quick-<device> with --quick)")
    ap.add_argument("--train-batch-sizes", nargs="+", type=int, metavar="B", help="micro-batch sizes of train_step")
    ap.add_argument("--time-budget", type=float, default=math.inf, metavar="S", help="skip the cases left after S s")
    ap.add_argument("--no-plots", action="store_true", help="write no PNGs (draw them later with --report-only)")
    ap.add_argument("--report-only", action="store_true", help="time nothing: redraw plots and summary")
    ap.add_argument(
        "--merge", nargs="+", type=Path, default=[], metavar="CSV",
        help="with --report-only: first merge these results.csv / decode.csv files into the same-named file of\n"
        "--out (default: results/<the GPU they were measured on>)",
    )  # fmt: skip
    return ap


def main(argv: list[str] | None = None) -> int:
    """Exit 0 when done; 141 when done but the reader of standard output went away on the way (`gpt bench |
    head`: the run goes on and writes its files, the output stops), as for SIGPIPE; 2 on an error."""
    _READER_GONE.clear()
    code = _main(argv)
    return 141 if code == 0 and _READER_GONE else code


def _main(argv: list[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        _check_args(args)
        if args.interpret:
            # Triton picks interpreter or compiler when a kernel is defined: this must precede importing kernels.
            if "tritongpt.kernels.reference" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1":
                raise BenchError("--interpret must be given before kernels are imported")
            os.environ["TRITON_INTERPRET"] = "1"
            if not args.plan and not args.report_only:
                from tritongpt.kernels._common import interpreter_problem

                if interpreter_problem():
                    raise BenchError(interpreter_problem())
        if args.report_only:
            return _report_only(args)
        if args.plan:
            return _plan(args)
        import torch

        threads = torch.get_num_threads()
        try:
            return _run(args, argv)
        finally:
            torch.set_num_threads(threads)  # a CPU run sets one thread; leave an in-process caller as it was
    except BenchError as e:
        print(f"gpt bench: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # disk full, a results file turned into a folder, ...: what was written stays
        print(f"gpt bench: error: {os_error_message(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ngpt bench: interrupted", file=sys.stderr)
        return 130


def _check_args(args: argparse.Namespace) -> None:
    if args.merge and not args.report_only:
        raise BenchError("--merge combines earlier results and needs --report-only (it times nothing)")
    if args.report_only and args.plan:
        raise BenchError("--plan and --report-only exclude each other")
    if args.report_only and args.out is None and not args.merge:
        raise BenchError("--report-only needs --out DIR holding a results.csv, or --merge CSV ...")
    if math.isnan(args.time_budget) or args.time_budget <= 0:
        raise BenchError(f"--time-budget must be a positive number of seconds, got {args.time_budget:g}")
    bad = [b for b in args.train_batch_sizes or () if b < 1]
    if bad:
        raise BenchError(f"--train-batch-sizes must be positive, got {' '.join(map(str, bad))}")


_READER_GONE: list[bool] = []  # one entry once standard output's reader has gone away (`main` exits 141)


def _say(*args) -> None:
    """print that outlives its reader (`gpt bench | head`): the output stops, the run goes on."""
    try:
        print(*args, flush=True)
    except BrokenPipeError:
        silence_stdout()
        _READER_GONE.append(True)


# ---------------------------------------------------------------------------------------------------------
# The plan


def _scale(args: argparse.Namespace, cuda: bool) -> str:
    if args.interpret:
        return "interpret"
    return "quick" if args.quick or not cuda else "gpu"


def _train_chosen(providers: list[str]) -> tuple[str, ...]:
    """Training backends that run: those named, and those all of whose parts are named."""
    return tuple(p for p in TRAIN_PROVIDERS if p in providers or set(p.split("+")) <= set(providers))


def _cases(args: argparse.Namespace, scale: str):
    """(op cases, training cases) of this command line at `scale`, --match applied."""
    from tritongpt.bench import ops, train_step

    op_cases = ops.plan(scale, tuple(args.ops), tuple(args.modes), tuple(args.providers), tuple(args.match))
    train_cases = []
    if "train_step" in args.ops:
        import fnmatch

        _, name, seq_len, sizes = train_step.default_setup(scale)
        chosen = _train_chosen(args.providers)
        lines = train_step.plan_lines(name, seq_len, args.train_batch_sizes or sizes, chosen, scale)
        train_cases = [c for c in lines if not args.match or any(fnmatch.fnmatchcase(c.line, p) for p in args.match)]
    if not op_cases and not train_cases:
        raise BenchError("no case to time: --ops, --modes, --providers and --match leave nothing (see --plan)")
    return op_cases, train_cases


def _plan(args: argparse.Namespace) -> int:
    """Print every case: the full GPU suite unless --quick or --interpret (on any machine: nothing is timed)."""
    from tritongpt.bench import harness

    scale = _scale(args, cuda=True)
    op_cases, train_cases = _cases(args, scale)
    lines = harness.ceiling_plan(scale == "gpu", scale != "gpu") + [c.line() for c in op_cases]
    lines += [c.line for c in train_cases]
    try:
        for line in lines:
            print(line)
        sys.stdout.flush()
    except BrokenPipeError:  # `gpt bench --plan | head`
        silence_stdout()
        _READER_GONE.append(True)
        return 0
    print(f"# {len(op_cases) + len(train_cases)} cases ({scale} scale), plus the 2 ceilings", file=sys.stderr)
    return 0


# ---------------------------------------------------------------------------------------------------------
# Output folders: never destroy what is not ours


def _check_out(out: Path, create: bool = True, device: str | None = None) -> None:
    """Refuse an --out that is a file, not writable, a non-empty folder that is not a results folder, or one
    holding another device's results than `device`'s."""
    from tritongpt.bench import report

    if out.exists() and not out.is_dir():
        raise BenchError(f"--out {out} is a file, not a folder")
    if out.is_dir():
        ours = [out / n for n in ("results.csv", "decode.csv") if (out / n).is_file()]
        if not ours and any(p.name not in RUN_FILES for p in out.iterdir()):
            raise BenchError(
                f"{out} is not empty and holds no results.csv or decode.csv of gpt bench; "
                "choose a new or empty folder (nothing in it was changed)"
            )
        for f in ours:
            try:
                rows = report.read_csv(f)
            except (ValueError, OSError) as e:
                raise BenchError(f"cannot add results to {f}: {e}") from None
            other = sorted({r["gpu"] for r in rows} - {device}) if device else []
            if other:
                raise BenchError(f"{f} holds results of {', '.join(other)}, not of {device}; choose another --out")
    if not create:
        return
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=out, prefix=".gpt-bench-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise BenchError(f"cannot write into {out}: {e.strerror or e}") from None


def _read_notes(out: Path) -> list[str]:
    p = out / "notes.txt"
    return p.read_text(encoding="utf-8").splitlines() if p.is_file() else []


def _read_command(out: Path) -> str:
    p = out / "command.txt"
    return p.read_text(encoding="utf-8").strip() if p.is_file() else ""


def _merge_notes(out: Path, earlier: list[str], notes: list[str], redone: set[str]) -> list[str]:
    """Notes of earlier runs survive unless this run re-ran what they are about (`redone`: "op shape" prefixes,
    and "op" alone for notes about a whole op)."""
    kept = [
        n for n in earlier if " ".join(n.split(" ")[:2]) not in redone and n.split(" ")[0].rstrip(":") not in redone
    ]
    merged = kept + [n for n in notes if n not in kept]
    write_text_atomic(out / "notes.txt", "".join(n + "\n" for n in merged))
    return merged


def _report_only(args: argparse.Namespace) -> int:
    from tritongpt.bench import harness, report

    merged: dict[str, list[dict]] = {}
    for path in args.merge:
        if not path.is_file():
            raise BenchError(f"--merge {path}: {'a folder, not a CSV file' if path.is_dir() else 'no such file'}")
        try:
            rows = report.read_csv(path)
        except (ValueError, OSError) as e:
            raise BenchError(f"--merge {e}") from None
        if not rows:
            raise BenchError(f"--merge {path}: holds no results")
        target = "decode.csv" if path.name == "decode.csv" else "results.csv"
        merged.setdefault(target, []).extend(rows)
    gpus = sorted({r["gpu"] for rows in merged.values() for r in rows})
    if len(gpus) > 1:  # one folder per device: a summary's ratios must never pair two cards' figures
        raise BenchError(f"the files to merge come from {len(gpus)} devices ({', '.join(gpus)}); merge each alone")
    out = args.out or RESULTS_DIR / harness.slug(gpus[0])
    _check_out(out, create=bool(merged), device=gpus[0] if gpus else None)
    for target, rows in merged.items():
        report.write_csv(rows, out / target)
        _say(f"merged {len(rows)} rows into {out / target}")
    if not (out / "results.csv").is_file():
        if merged:
            return 0  # decode.csv only: it has no plots or summary
        raise BenchError(f"--report-only needs {out / 'results.csv'} (or --merge CSV ...)")
    rows = report.read_csv(out / "results.csv")
    notes = _read_notes(out)
    notes += [n for path in args.merge for n in _read_notes(path.parent) if n not in notes]
    if args.merge:
        write_text_atomic(out / "notes.txt", "".join(n + "\n" for n in notes))
    plots = [] if args.no_plots else report.write_plots(rows, out, _say)
    report.write_summary(rows, out / "summary.md", notes, _read_command(out))
    _say(f"wrote {len(plots)} plots and {out / 'summary.md'}")
    return 0


# ---------------------------------------------------------------------------------------------------------
# A run


def _run(args: argparse.Namespace, argv: list[str]) -> int:
    import torch

    from tritongpt.bench import harness, ops, report, train_step

    start = time.monotonic()
    deadline = start + args.time_budget
    cuda = torch.cuda.is_available() and not args.interpret
    device = torch.device("cuda" if cuda else "cpu")
    scale = _scale(args, cuda)
    op_cases, train_cases = _cases(args, scale)
    env = harness.current_env(device)
    out = args.out or RESULTS_DIR / (f"{env.slug}" if scale == "gpu" else f"quick-{env.slug}")
    _check_out(out, device=env.gpu)
    if not cuda and not args.quick and not args.interpret:
        _say("gpt bench: no CUDA GPU here, so running the --quick sweep on the CPU")
    if not cuda:
        # A CPU run checks the harness, not the machine; one thread keeps OpenMP spin-waits on a busy
        # 2-core box from turning 0.1 ms calls into 20 ms ones.
        torch.set_num_threads(1)
    command = "gpt bench " + " ".join(argv)
    write_text_atomic(out / "command.txt", command + "\n")
    n_cases = len(op_cases) + len(train_cases)
    _say(f"gpt bench on {env.gpu} (torch {env.torch}, triton {env.triton}): {n_cases} cases -> {out}")

    csv_path = out / "results.csv"
    earlier_notes = _read_notes(out)
    redone = {f"{c.op} {c.label}" for c in op_cases} | ({"train_step"} if train_cases else set())
    tally = ops.Tally()
    state = {"rows": report.read_csv(csv_path) if csv_path.exists() else []}

    def emit(rows: list[dict]) -> None:  # after every shape: the CSV and the summary, so a cut run keeps both
        if rows:
            state["rows"] = report.write_csv(report.with_env(rows, env), csv_path)
        notes = _merge_notes(out, earlier_notes, tally.notes, redone)
        report.write_summary(state["rows"], out / "summary.md", notes, command)

    try:
        ceilings = harness.measure_ceilings(device, scale != "gpu")
        for c in ceilings.values():
            _say(f"  ceiling {c.name}: {c.value:,.4g} {c.unit} ({c.shape} {c.dtype}, {c.timing.method})")
        emit(report.ceiling_rows(ceilings))
        if cuda:
            cfg = ops.RunConfig(device, deadline=deadline)
        elif scale == "interpret":
            cfg = ops.RunConfig(device, 0.0, 0.0, 2, deadline)
        else:
            cfg = ops.RunConfig(device, 2.0, 10.0, 3, deadline)
        for op in ops.OPS:
            mine = [c for c in op_cases if c.op == op]
            if mine:
                t0 = time.monotonic()
                _say(f"{op}: {len(mine)} cases")
                ops.run_cases(mine, cfg, ceilings, tally, emit, _say)
                _say(f"  ({time.monotonic() - t0:.1f} s)")
        if train_cases:
            t0 = time.monotonic()
            cfg_model, name, seq_len, _ = train_step.default_setup(scale)
            _say(f"train_step: {len(train_cases)} cases")
            train_step.run_train(cfg_model, name, seq_len, train_cases, env, ceilings, tally, deadline, emit, _say)
            _say(f"  ({time.monotonic() - t0:.1f} s)")
    except KeyboardInterrupt:
        emit([])
        print(f"\ngpt bench: interrupted; the shapes finished so far are in {csv_path}", file=sys.stderr)
        return 130
    emit([])
    plots = [] if args.no_plots else report.write_plots(state["rows"], out, _say)
    _say(
        f"wrote {csv_path}, {len(plots)} plots, {out / 'summary.md'} in {time.monotonic() - start:.0f} s: "
        f"{tally.measured} measured, {tally.skipped} skipped, {tally.failed} failed of {n_cases} cases"
    )
    if tally.failed or not tally.measured:
        what = f"{tally.failed} cases failed" if tally.failed else "nothing was measured"
        print(f"gpt bench: {what} (the reasons are in {out / 'notes.txt'})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
