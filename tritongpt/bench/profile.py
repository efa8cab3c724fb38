"""Where the time goes: a torch.profiler table of one training step, and one kernel call for Nsight Compute.

    python -m tritongpt.bench.profile step --backend triton+compile --out DIR      # GPT-2 124M, B 16, T 1024
    python -m tritongpt.bench.profile step --backend native --small --out DIR      # a tiny model (the CPU's)
    python -m tritongpt.bench.profile step --backend triton --small --interpret --out DIR
    python -m tritongpt.bench.profile kernel --op layer_norm --shape 16384x768 --dtype bf16 --mode fwd
    python -m tritongpt.bench.profile ncu --op attention --shape 16,12,1024,64 --dtype bf16 --out DIR
    python -m tritongpt.bench.profile ncu --op layer_norm --out DIR --print-command   # the ncu command only
    python -m tritongpt.bench.profile ncu-report ncu.csv --out DIR                    # ncu's CSV -> ncu.md

Why: where a benchmark goal is missed, the notes must say why from a measurement. `step` answers "where does
a training step's time go" (the step of `gpt bench`'s train_step: the same model, batch, bf16 autocast, TF32
and fused AdamW, from `tritongpt.bench.train_step`); `ncu` answers "why is this one kernel slow" (memory
throughput, occupancy, registers, warp stall reasons).

`step`: builds the model for `--backend` (a `gpt bench` training backend: native, triton, reference,
+compile), warms it up outside the profile (compiles, autotunes, creates the optimizer state), then records
`--steps` steps with torch.profiler (CPU activity, and CUDA where there is a GPU; one more step before them
warms the profiler and is not recorded). Every step ends with a device synchronize, so each step's kernels
lie inside it. Writes into DIR (new or empty; anything else is refused):
    ops.md    the top `--top` rows of one step (per-step averages) ranked by self device time on a GPU (kernel
              rows: Triton kernels by their own names, `_attn_fwd_kernel`, Inductor's `triton_*_fused_*`, cuBLAS
              `nvjet_*`/`sm90_xmma_*`), by self CPU time on the CPU (op rows); then the same time by category
    ops.csv   every row (CPU ops, annotations, device kernels/copies), with gpu, torch, triton, date columns
    trace.json  with --trace: the Chrome trace of the recorded steps (large)
and prints one line: ms per step, the top three rows and their shares.
"% of step" is a row's self time over the step's wall time as the profiler saw it (`ProfilerStep*`, a
synchronized step, with the profiler's overhead): device rows add up to the device's busy share of the step
(the rest is the device idle, waiting for the host), CPU rows on the CPU to 100% (`ProfilerStep*`'s own row
is host time outside every op: Python, autograd's bookkeeping). On CUDA the CPU rows can add up to more than
100%: autograd runs the backward's ops on a thread of its own. The step time is the profiled one; `gpt bench`
gives the unprofiled figure.

Categories (`category`), first match wins, on the lower-cased op or kernel name:
    loss         cross_entropy, log_softmax / logsoftmax, nll_loss, logsumexp
    attention    attn, attention, flash, fmha, sdpa, scaled_dot_product, softmax (the reference's)
    layer norm   layer_norm, layernorm, gammabeta (torch's LayerNorm weight-gradient kernels)
    GELU         gelu
    optimizer    adam, optimizer, multi_tensor_apply (fused AdamW's kernel), foreach
    matmul       the words mm, addmm, bmm, baddbmm, matmul, linear; gemm, cutlass, xmma, nvjet, cublas, wgmma
    other        everything else: elementwise ops, copies and casts, embedding, dropout, memset
A name in none of them takes the category of the nearest enclosing op that has one (a kernel's launching op,
then that op's parents): the optimizer's elementwise ops are optimizer, autocast's casts inside `aten::linear`
matmul, so one name can make rows in several categories. Inductor's fused kernels are named after the ops they
fuse (`triton_per_fused_add_native_layer_norm_3` is layer norm); a fusion that joins two categories goes to
the first in the list. The LM head's matmuls inside our fused loss count as matmul.

`kernel`: runs one op (`--op`, `--shape`, `--dtype`, `--mode`, `--provider`: a `gpt bench` provider, default
triton) a few times to warm up (Triton compiles, attention autotunes), then once more inside a marked region:
`torch.cuda.profiler.start()`/`stop()` (cudaProfilerStart/Stop) around an NVTX range named
"tritongpt:<op> <mode>". The region is what `ncu --profile-from-start off` profiles. The profiler API, not an
NVTX filter, bounds it: NVTX push/pop ranges are per thread, and autograd launches a backward's kernels from a
thread of its own, outside the main thread's range. Inputs are built as `gpt bench` builds them
(`tritongpt.bench.ops`), one set. On the CPU (`--interpret`) the call runs in Triton's interpreter, with no
region.

`ncu`: runs `kernel` under Nsight Compute (`ncu_command`, the one place the command line is written):
    ncu --target-processes all --profile-from-start off --clock-control none
        --kernel-name regex:<our kernels of op and mode> --section SpeedOfLight --section MemoryWorkloadAnalysis
        --section Occupancy --section LaunchStats --section WarpStateStats
        --metrics regex:smsp__average_warps_issue_stalled_.*_per_issue_active\\.ratio
        --csv --page details --log-file DIR/ncu.csv python -m tritongpt.bench.profile kernel ...
then turns DIR/ncu.csv into DIR/ncu.md as `ncu-report` does, naming the command (two files in all).
`--print-command` prints that command line (shell-quoted) and runs nothing. With a provider other than triton
no `--kernel-name` filter is given: every kernel of the region is profiled (torch's own are few per op).

`ncu-report CSV --out DIR`: reads ncu's `--csv --page details` output (one row per kernel launch, section and
metric: ID, Kernel Name, Section Name, Metric Name, Metric Unit, Metric Value; lines before the header, like
`==PROF==`, are skipped; numbers may carry thousands separators) and writes DIR/ncu.md: per launch its
duration, DRAM throughput (% of peak) and bandwidth, SM throughput, achieved and theoretical occupancy,
registers per thread, block and grid, the top warp stall reasons (cycles per issued instruction and their
share) and ncu's own optimisation hints with their estimated speedup.

Limits: ncu replays each profiled kernel many times (one pass per group of counters) with caches flushed
between passes (`--cache-control all`, its default); clocks are left as they run (`--clock-control none`, as
the lent machines' notes advise, rather than ncu's base-clock default). Its duration is one cold call, not
do_bench's median. ncu needs the GPU's counters: on the lent machines they were readable under Firecracker
and not under gVisor ("Failed to initialize the profiler"), where `ncu` fails with ncu's own message. The
kernel names ncu and torch.profiler show for Triton kernels are the `@triton.jit` function names; under
torch.compile Inductor may add a suffix, which the regex tolerates. Kernels are linked to their launching op
through the events' `linked_correlation_id`; a torch without it leaves each name to decide its category.
Exit status: 0 done; 1 ncu failed or profiled nothing; 2 bad arguments or an output folder that is not new
or empty; 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tritongpt.bench.cli import PROVIDERS, TRAIN_PROVIDERS  # name lists without a torch import
from tritongpt.cli import positive
from tritongpt.files import (
    OutputError,
    new_folder_problem,
    os_error_message,
    temp_name,
    write_csv_atomic,
    write_text_atomic,
)
from tritongpt.kernels import OPS

PROG = "python -m tritongpt.bench.profile"
MODES = ("fwd", "bwd", "fwd+bwd")


class ProfileError(Exception):
    """A mistake in the command line or its files: one `PROG: error:` line, exit status 2."""


# ---------------------------------------------------------------------------------------------------------
# Categories: where a row's time goes, by its name (the rule is in the module docstring)

CATEGORIES = (
    ("loss", r"cross_entropy|log_?softmax|nll_loss|logsumexp"),
    ("attention", r"attn|attention|flash|fmha|sdpa|scaled_dot_product|softmax"),
    ("layer norm", r"layer_?norm|gammabeta"),
    ("GELU", r"gelu"),
    ("optimizer", r"adam|optimizer|multi_tensor_apply|foreach"),
    ("matmul", r"(?<![a-z])(mm|addmm|bmm|baddbmm|matmul|linear)(?![a-z])|gemm|cutlass|xmma|nvjet|cublas|wgmma"),
)
OTHER = "other"
_CATEGORY_RES = tuple((name, re.compile(pattern)) for name, pattern in CATEGORIES)


def category(name: str) -> str:
    """The category of an op or kernel name: the first of CATEGORIES whose pattern it contains, else "other"."""
    low = name.lower()
    return next((cat for cat, pattern in _CATEGORY_RES if pattern.search(low)), OTHER)


# ---------------------------------------------------------------------------------------------------------
# Output folders


def new_out_dir(out: Path) -> Path:
    """Create `out` for a profile's files: it must be new or an empty folder (nothing else is touched)."""
    problem = new_folder_problem(out)
    if problem:
        raise ProfileError(problem)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ProfileError(os_error_message(e)) from None
    return out


def _interpret(enabled: bool) -> None:
    """Triton's CPU interpreter on, before any kernel is defined (as `gpt bench --interpret` does)."""
    if not enabled:
        return
    if "tritongpt.kernels.reference" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1":
        raise ProfileError("--interpret must be given before kernels are imported")
    os.environ["TRITON_INTERPRET"] = "1"
    from tritongpt.kernels._common import interpreter_problem

    if interpreter_problem():
        raise ProfileError(interpreter_problem())


def _device(interpret: bool):
    import torch

    return torch.device("cuda" if torch.cuda.is_available() and not interpret else "cpu")


# ---------------------------------------------------------------------------------------------------------
# step: torch.profiler over training steps

OPS_COLUMNS = [
    "name", "kind", "category", "calls_per_step", "self_ms", "total_ms", "pct_of_step", "clock",
    "backend", "shape", "dtype", "steps", "step_ms", "gpu", "torch", "triton", "date",
]  # fmt: skip


def category_in_context(name: str, launcher) -> str:
    """`category(name)`; where that is "other", the category of the nearest enclosing op that has one (walking
    `launcher` and its `cpu_parent`s): the optimizer's elementwise ops are optimizer, autocast's casts inside
    `aten::linear` are matmul, a generic elementwise kernel launched by a LayerNorm backward is layer norm."""
    own = category(name)
    while own == OTHER and launcher is not None:
        own = category(launcher.name)
        launcher = launcher.cpu_parent
    return own


def step_name(name: str) -> str:
    """Event names as `key_averages` groups them: the steps' own ranges ProfilerStep#N as ProfilerStep*."""
    return re.sub(r"^ProfilerStep#\d+$", "ProfilerStep*", name)


def _link(event) -> int:
    """The id of the op that launched a device event (0: none known; a torch whose events lack the field)."""
    return getattr(event, "linked_correlation_id", 0) or 0


def step_rows(events, n_steps: int, step_ms: float) -> list[dict]:
    """The profiler's events (`prof.events()`) as rows of (name, kind, category), averaged per step.

    kind: "device" (a kernel, copy or memset, on the device clock; its launching op is the CPU op whose id is
    its `linked_correlation_id`), "cpu_op" (host clock) or "annotation" (record_function ranges such as
    ProfilerStep*, Optimizer.step: on the host clock, and on CUDA also as device-side spans around their
    kernels, clock "device", which `ranked` leaves out as torch's own tables do). One name can make several
    rows, one per category its calls fall in (`category_in_context`). pct_of_step: self time over `step_ms`."""
    from torch.autograd import DeviceType

    # the ops a device event can be linked to: CPU events that are not themselves linked (runtime calls are)
    ops = {e.id: e for e in events if e.device_type == DeviceType.CPU and not _link(e)}
    agg: dict[tuple[str, str, str, str], list[float]] = {}
    for e in events:
        clock = "host" if e.device_type == DeviceType.CPU else "device"
        kind = "annotation" if getattr(e, "is_user_annotation", False) else ("cpu_op" if clock == "host" else "device")
        if clock == "device":
            cat = category_in_context(e.name, ops.get(_link(e)))
            self_us = total_us = e.self_device_time_total
        else:
            cat = category_in_context(e.name, e.cpu_parent)
            self_us, total_us = e.self_cpu_time_total, e.cpu_time_total
        cell = agg.setdefault((step_name(e.name), kind, cat, clock), [0, 0.0, 0.0])
        cell[0] += 1
        cell[1] += self_us
        cell[2] += total_us
    rows = []
    for (name, kind, cat, clock), (calls, self_us, total_us) in agg.items():
        self_ms = self_us / 1e3 / n_steps
        rows.append(dict(
            name=name, kind=kind, category=cat, calls_per_step=calls / n_steps, self_ms=self_ms,
            total_ms=total_us / 1e3 / n_steps, pct_of_step=100 * self_ms / step_ms if step_ms > 0 else 0.0,
            clock=clock,
        ))  # fmt: skip
    return sorted(rows, key=lambda r: (r["clock"] != "device", r["kind"] != "device", -r["self_ms"]))


def step_ms_of(events, n_steps: int) -> float:
    """A step's wall time as the profiler saw it: the mean length of the ProfilerStep#N ranges."""
    return sum(e.cpu_time_total for e in events if step_name(e.name) == "ProfilerStep*") / 1e3 / n_steps


def ranked(rows: list[dict], on_device: bool) -> list[dict]:
    """The rows that share out the step's time, most first: on a GPU the device's kernels, copies and memsets
    (not the device-side spans of record_function ranges, which overlap them), on the CPU the host rows (ops
    and annotations)."""
    want = ("device", "device") if on_device else ("host", None)
    mine = [r for r in rows if r["clock"] == want[0] and want[1] in (None, r["kind"]) and r["self_ms"] > 0]
    return sorted(mine, key=lambda r: -r["self_ms"])


def by_category(rows: list[dict]) -> list[tuple[str, float, float, str]]:
    """(category, ms per step, % of step, its largest row's name) of ranked rows, largest first."""
    out: dict[str, list] = {}
    for r in rows:  # rows come largest first: the first row of a category is its largest
        cell = out.setdefault(r["category"], [0.0, 0.0, r["name"]])
        cell[0] += r["self_ms"]
        cell[1] += r["pct_of_step"]
    return sorted(((c, ms, pct, top) for c, (ms, pct, top) in out.items()), key=lambda t: -t[1])


def _short(name: str, width: int = 90) -> str:
    name = " ".join(name.split()).replace("|", "\\|")
    return name if len(name) <= width else name[: width - 1] + "…"


def ops_markdown(rows: list[dict], meta: dict, on_device: bool, top: int) -> str:
    """ops.md: the top rows of one step and the time by category."""
    ranks = ranked(rows, on_device)
    clock = "device (CUDA kernels, copies, memsets)" if on_device else "host (CPU ops and annotations)"
    busy = sum(r["pct_of_step"] for r in ranks)
    lines = [
        f"# Profile of one training step: `{meta['backend']}`, {meta['shape']}, {meta['dtype']}",
        "",
        f"{meta['gpu']}, torch {meta['torch']}, triton {meta['triton']}, {meta['date']}. Command: `{meta['command']}`",
        "",
        f"Step: {meta['step_ms']:.2f} ms under the profiler (mean of {meta['steps']} synchronized steps after "
        f"warm-up; `gpt bench` times it unprofiled). Rows: self time per step on the {clock} clock; % of step = "
        "self time / step time.",
        "",
    ]
    if on_device:
        lines += [f"The device was busy {busy:.1f}% of the step; idle (waiting for the host) {100 - busy:.1f}%.", ""]
    lines += [f"## Top {min(top, len(ranks))} of {len(ranks)} rows", ""]
    lines += ["| # | name | category | calls | self ms | % of step |", "|---|---|---|---|---|---|"]
    for i, r in enumerate(ranks[:top], 1):
        lines.append(
            f"| {i} | `{_short(r['name'])}` | {r['category']} | {r['calls_per_step']:g} | {r['self_ms']:.3f} | "
            f"{r['pct_of_step']:.1f} |"
        )
    lines += ["", "## By category", "", "| category | ms | % of step | largest row |", "|---|---|---|---|"]
    for cat, ms, pct, name in by_category(ranks):
        lines.append(f"| {cat} | {ms:.3f} | {pct:.1f} | `{_short(name, 60)}` |")
    if on_device:
        lines.append(f"| (device idle) | {meta['step_ms'] * (100 - busy) / 100:.3f} | {100 - busy:.1f} | |")
    lines += [
        "",
        "Categories by name, first match wins (`tritongpt.bench.profile.CATEGORIES`): "
        + "; ".join(f"{c}: `{p}`" for c, p in CATEGORIES)
        + f"; {OTHER}: the rest.",
    ]
    if not on_device:
        lines.append("`ProfilerStep*`: host time of the step outside every op (Python, autograd's bookkeeping).")
    lines.append("Every row, CPU and device, is in ops.csv.")
    return "\n".join(lines) + "\n"


def summary_line(rows: list[dict], meta: dict, on_device: bool) -> str:
    top = ", ".join(f"{_short(r['name'], 50)} {r['pct_of_step']:.1f}%" for r in ranked(rows, on_device)[:3])
    return (
        f"profile step {meta['backend']} {meta['shape']} {meta['dtype']}: {meta['step_ms']:.2f} ms/step "
        f"(profiled); top: {top}"
    )


def _setup(args, cuda: bool):
    """(config, its name, batch size, sequence length) of a step command line."""
    from tritongpt.bench import train_step
    from tritongpt.config import ConfigError, load_model_config

    scale = "interpret" if args.interpret else ("gpu" if cuda and not args.small else "quick")
    cfg, name, seq_len, (bsz, *_) = train_step.default_setup(scale)
    if args.config:
        try:
            cfg = load_model_config(args.config)
        except (ConfigError, OSError) as e:
            raise ProfileError(f"--config {args.config}: {e}") from None
        name, seq_len = Path(args.config).stem, cfg.context_length
    bsz, seq_len = args.batch_size or bsz, args.seq_len or seq_len
    if seq_len > cfg.context_length:
        raise ProfileError(f"--seq-len {seq_len} is longer than the model's context length {cfg.context_length}")
    return cfg, name, bsz, seq_len


def profile_step(args, argv: list[str]) -> int:
    from torch.profiler import ProfilerActivity, profile, schedule

    from tritongpt.backend import check_backend_runs
    from tritongpt.bench import harness, train_step

    device = _device(args.interpret)
    cuda = device.type == "cuda"
    cfg, name, bsz, seq_len = _setup(args, cuda)
    try:
        check_backend_runs(args.backend.split("+")[0], device)
    except ValueError as e:
        raise ProfileError(f"--backend {args.backend}: {e}") from None
    out = new_out_dir(args.out)
    if not cuda and not (args.small or args.config or args.interpret):
        print("profile: no CUDA GPU here, so profiling the small model (--small)", flush=True)
    env = harness.current_env(device)
    dtype = "bf16-autocast" if cuda else "fp32"
    meta = dict(
        backend=args.backend, shape=train_step.shape_label(name, bsz, seq_len), dtype=dtype, steps=args.steps,
        gpu=env.gpu, torch=env.torch, triton=env.triton, date=env.date, command=f"{PROG} " + shlex.join(argv),
    )  # fmt: skip
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with train_step.tf32(cuda):
        model, gpt = train_step.build(cfg, args.backend, device)
        step = train_step.make_step(model, train_step.make_optimizer(gpt), cfg.vocab_size, bsz, seq_len, device,
                                    bf16_autocast=cuda)  # fmt: skip
        t0 = time.monotonic()
        train_step.warm_up(step, device)
        print(f"profile: warmed up {args.backend} in {time.monotonic() - t0:.1f} s", flush=True)
        with profile(activities=activities, schedule=schedule(wait=0, warmup=1, active=args.steps, repeat=1)) as prof:
            for _ in range(args.steps + 1):
                step()
                harness.synchronize(device)
                prof.step()
    events = prof.events()
    meta["step_ms"] = step_ms_of(events, args.steps)
    rows = [{**r, **meta} for r in step_rows(events, args.steps, meta["step_ms"])]
    formatted = ({k: f"{v:.6g}" if isinstance(v, float) else v for k, v in r.items()} for r in rows)
    write_csv_atomic(out / "ops.csv", OPS_COLUMNS, formatted)
    write_text_atomic(out / "ops.md", ops_markdown(rows, meta, cuda, args.top))
    if args.trace:
        tmp = temp_name(out / "trace.json")
        try:
            prof.export_chrome_trace(str(tmp))
            os.replace(tmp, out / "trace.json")
        finally:
            tmp.unlink(missing_ok=True)
    print(summary_line(rows, meta, cuda) + f" -> {out}", flush=True)
    return 0


# ---------------------------------------------------------------------------------------------------------
# kernel: one call of one op inside a region for Nsight Compute

# Our Triton kernels per op and mode (the @triton.jit names in tritongpt/kernels/): ncu's --kernel-name filter.
_FWD = {
    "layer_norm": "_layer_norm_fwd_kernel",
    "add_layer_norm": "_layer_norm_fwd_kernel",
    "gelu": "_bias_gelu_fwd_kernel",
    "bias_gelu": "_bias_gelu_fwd_kernel",
    "attention": "_attn_fwd_kernel",
    "linear_cross_entropy": "_cross_entropy_fwd_kernel",  # its gradients are computed in the forward
}
_BWD = {
    "layer_norm": "_layer_norm_bwd_kernel",
    "add_layer_norm": "_layer_norm_bwd_kernel",
    "gelu": "_bias_gelu_bwd_kernel",
    "bias_gelu": "_bias_gelu_bwd_kernel",
    "attention": "_attn_bwd_",  # preprocess (delta), dK/dV, dQ
    "linear_cross_entropy": "_cross_entropy_fwd_kernel",  # the backward only scales: no Triton kernel
}


def kernel_regex(op: str, mode: str) -> str:
    """The regex (for `ncu --kernel-name regex:`) naming our Triton kernels that `op` runs in `mode`."""
    names = {"fwd": [_FWD[op]], "bwd": [_BWD[op]], "fwd+bwd": [_FWD[op], _BWD[op]]}[mode]
    return "|".join(dict.fromkeys(names))


def parse_shape(op: str, text: str) -> dict:
    """`--shape` as the shape dict of `tritongpt.bench.ops`: ROWSxWIDTH for the row-wise ops, B,H,T,D (or
    BxHxTxD) for attention, NxCxV for the LM head; parentheses and spaces are ignored."""
    keys = {"attention": ("B", "H", "T", "D"), "linear_cross_entropy": ("N", "C", "V")}.get(op, ("rows", "width"))
    parts = [p for p in re.split(r"[x,]", text.strip().strip("()").replace(" ", "")) if p]
    try:
        dims = [int(p) for p in parts]
    except ValueError:
        dims = []
    if len(dims) != len(keys) or min(dims, default=0) < 1:
        want = {"attention": "B,H,T,D", "linear_cross_entropy": "NxCxV"}.get(op, "ROWSxWIDTH")
        raise ProfileError(f"--shape {text!r}: {op} takes {want}, {len(keys)} positive whole numbers")
    return dict(zip(keys, dims, strict=True))


def _kernel_case(args, cuda: bool) -> tuple[dict, str]:
    """(shape, dtype label): given, else the first case `gpt bench` times for the op at this scale."""
    from tritongpt.bench import ops

    shape, dtype = ops.sweep(args.op, "gpu" if cuda else "interpret")[0]
    if args.shape:
        shape = parse_shape(args.op, args.shape)
    return shape, args.dtype or dtype


def run_kernel(args) -> int:
    import torch

    from tritongpt.bench import harness, ops

    device = _device(args.interpret)
    cuda = device.type == "cuda"
    shape, dtype = _kernel_case(args, cuda)
    try:
        fn = ops.provider_fn(args.op, args.provider, device)
    except (ops.Unavailable, ValueError) as e:
        raise ProfileError(f"--provider {args.provider}: {e}") from None
    act, rest = ops.DTYPES[dtype]
    g = torch.Generator(device=device).manual_seed(0)
    run, leaves = ops.build_runner(fn, [ops.SPECS[args.op].make(shape, act, rest, device, g)], args.mode)

    def call() -> None:
        for t in leaves:  # no gradient to accumulate into: an accumulation would add a kernel to the region
            t.grad = None
        run()

    for _ in range(args.warmup):  # compile, autotune
        call()
    harness.synchronize(device)
    label = f"{args.op} {args.mode} {ops.SPECS[args.op].label(shape)} {dtype} {args.provider}"
    t0 = time.perf_counter()
    if cuda:
        torch.cuda.profiler.start()
        torch.cuda.nvtx.range_push(f"tritongpt:{args.op} {args.mode}")
        try:
            call()
            torch.cuda.synchronize(device)
        finally:
            torch.cuda.nvtx.range_pop()
            torch.cuda.profiler.stop()
        where = "in the profiler region (cudaProfilerStart/Stop)"
    else:
        call()
        where = "on the CPU (no profiler region)"
    ms = (time.perf_counter() - t0) * 1e3
    ours = f"; our kernels: {kernel_regex(args.op, args.mode)}" if args.provider == "triton" else ""
    print(f"profile kernel {label}: one call {where}, {ms:.3f} ms wall{ours}", flush=True)
    return 0


# ---------------------------------------------------------------------------------------------------------
# ncu: the command line, and its CSV

NCU_SECTIONS = ("SpeedOfLight", "MemoryWorkloadAnalysis", "Occupancy", "LaunchStats", "WarpStateStats")
STALL_PREFIX, STALL_SUFFIX = "smsp__average_warps_issue_stalled_", "_per_issue_active.ratio"
STALL_METRICS = "regex:" + re.escape(STALL_PREFIX) + ".*" + re.escape(STALL_SUFFIX)


def kernel_argv(args) -> list[str]:
    """The `kernel` arguments of a parsed `kernel` or `ncu` command line."""
    argv = ["--op", args.op, "--mode", args.mode, "--provider", args.provider, "--warmup", str(args.warmup)]
    argv += ["--shape", args.shape] if args.shape else []
    return argv + (["--dtype", args.dtype] if args.dtype else [])


def ncu_command(kernel_args: list[str], csv_path: Path, regex: str | None, ncu: str = "ncu") -> list[str]:
    """The Nsight Compute command that profiles `kernel` with `kernel_args` into `csv_path` (module docstring)."""
    cmd = [ncu, "--target-processes", "all", "--profile-from-start", "off", "--clock-control", "none"]
    cmd += ["--kernel-name", f"regex:{regex}"] if regex else []
    for section in NCU_SECTIONS:
        cmd += ["--section", section]
    cmd += ["--metrics", STALL_METRICS, "--csv", "--page", "details", "--log-file", str(csv_path)]
    return cmd + [sys.executable, "-m", "tritongpt.bench.profile", "kernel", *kernel_args]


def run_ncu(args) -> int:
    regex = kernel_regex(args.op, args.mode) if args.provider == "triton" else None
    csv_path = args.out / "ncu.csv"
    cmd = ncu_command(kernel_argv(args), csv_path, regex, args.ncu)
    if args.print_command:
        print(shlex.join(cmd))
        return 0
    out = new_out_dir(args.out)
    print(f"profile: {shlex.join(cmd)}", flush=True)
    try:
        code = subprocess.run(cmd, check=False).returncode
    except FileNotFoundError:
        raise ProfileError(f"{args.ncu}: no such program (Nsight Compute's ncu; --ncu PATH names another)") from None
    if code != 0:
        print(f"{PROG}: error: ncu exited with status {code} (its output is above and in {csv_path})",
              file=sys.stderr)  # fmt: skip
        return 1
    return report_ncu(csv_path, out, new_folder=False, command=shlex.join(cmd))


def _number(text: str) -> float | None:
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return None  # "n/a", names (Function Cache Configuration), empty


_PREFIX = {"": 1.0, "n": 1e-9, "u": 1e-6, "µ": 1e-6, "m": 1e-3, "K": 1e3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}


def _scaled(value: float, unit: str, base: str) -> float | None:
    """`value` in `unit` (ncu's: usecond, us, msecond, Gbyte/second, Tbyte/s, byte/s, ...) in units of `base`
    (second or byte/second); None where the unit is not a prefixed form of `base`."""
    patterns = {"second": r"(n|u|µ|m)?(second|s)", "byte/second": r"(K|k|M|G|T)?(byte|B)/(second|s)"}
    m = re.fullmatch(patterns[base], unit.strip())
    return None if m is None else value * _PREFIX[m.group(1) or ""]


@dataclass
class KernelLaunch:
    """One profiled launch of ncu's details page: its metrics by (section, name) as (unit, text)."""

    id: str
    name: str
    metrics: dict[tuple[str, str], tuple[str, str]] = field(default_factory=dict)
    rules: list[tuple[str, str, float | None]] = field(default_factory=list)  # (name, description, est. speedup %)

    def get(self, section: str, name: str) -> float | None:
        unit_text = self.metrics.get((section, name))
        return None if unit_text is None else _number(unit_text[1])

    def text(self, section: str, name: str) -> str:
        return self.metrics.get((section, name), ("", ""))[1]

    def duration_us(self) -> float | None:
        unit, text = self.metrics.get(("GPU Speed Of Light Throughput", "Duration"), ("", ""))
        v = _number(text)
        s = None if v is None else _scaled(v, unit, "second")
        return None if s is None else s * 1e6

    def dram_gbs(self) -> float | None:
        unit, text = self.metrics.get(("Memory Workload Analysis", "Memory Throughput"), ("", ""))
        v = _number(text)
        b = None if v is None else _scaled(v, unit, "byte/second")
        return None if b is None else b / 1e9

    def stalls(self) -> list[tuple[str, float]]:
        """(reason, cycles per issued instruction) of every warp stall reason, largest first; "selected" (the
        warp issuing) is not a stall and is left out."""
        out = []
        for (_, name), (_, text) in self.metrics.items():
            if name.startswith(STALL_PREFIX) and name.endswith(STALL_SUFFIX):
                reason = name[len(STALL_PREFIX) : -len(STALL_SUFFIX)]
                v = _number(text)
                if v is not None and reason != "selected" and not reason.endswith("_not_issued"):
                    out.append((reason, v))
        return sorted(out, key=lambda t: -t[1])


NCU_REQUIRED = ("ID", "Kernel Name", "Section Name", "Metric Name", "Metric Unit", "Metric Value")


def parse_ncu_csv(text: str) -> list[KernelLaunch]:
    """The launches of ncu's `--csv --page details` output, in ID order; ValueError when it holds no such table."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith('"ID",')), None)
    if start is None:
        raise ValueError(
            'no ncu details table (a header line starting "ID",): was it written with --csv --page details?'
        )
    reader = csv.DictReader(lines[start:])
    missing = [c for c in NCU_REQUIRED if c not in (reader.fieldnames or ())]
    if missing:
        raise ValueError(f"ncu CSV without the column(s) {', '.join(missing)}")
    launches: dict[str, KernelLaunch] = {}
    for row in reader:
        if row.get("ID") is None or not row["ID"].strip().isdigit():  # ==PROF== or program lines after the table
            continue
        k = launches.setdefault(row["ID"], KernelLaunch(row["ID"], row["Kernel Name"]))
        if row["Metric Name"]:
            k.metrics[row["Section Name"], row["Metric Name"]] = (row["Metric Unit"] or "", row["Metric Value"] or "")
        elif row.get("Rule Name") and row.get("Rule Type") == "OPT":
            k.rules.append(
                (row["Rule Name"], row.get("Rule Description") or "", _number(row.get("Estimated Speedup") or ""))
            )
    return sorted(launches.values(), key=lambda k: int(k.id))


def _fmt(v: float | None, spec: str = ".1f") -> str:
    return "n/a" if v is None else format(v, spec)


def ncu_markdown(launches: list[KernelLaunch], source: str, command: str = "") -> str:
    """ncu.md: per launch the figures that say why a kernel is as fast as it is."""
    sol, occ, launch = "GPU Speed Of Light Throughput", "Occupancy", "Launch Statistics"
    lines = [
        f"# Nsight Compute: {len(launches)} kernel launch{'es' if len(launches) != 1 else ''}",
        "",
        f"From `{source}` (ncu `--csv --page details`). Duration of one profiled call (caches flushed before it). "
        "DRAM %: DRAM throughput as a share of the card's peak; SM %: compute throughput; occupancy: active warps "
        "per SM as a share of the maximum, achieved vs the launch's theoretical limit. Stalls: cycles per issued "
        "instruction a warp spends stalled for each reason (share of all stalls).",
        "",
        *([f"Command: `{command}`", ""] if command else []),
        "| ID | kernel | µs | DRAM % | DRAM GB/s | SM % | occupancy achieved / theoretical % | regs/thread "
        "| block | grid | top stalls |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for k in launches:
        stalls = k.stalls()
        total = sum(v for _, v in stalls)
        top = ", ".join(f"{r} {v:.1f} ({100 * v / total:.0f}%)" for r, v in stalls[:3]) if total > 0 else "n/a"
        cells = [
            k.id, f"`{_short(k.name, 60)}`", _fmt(k.duration_us(), ".2f"), _fmt(k.get(sol, "DRAM Throughput")),
            _fmt(k.dram_gbs(), ".0f"), _fmt(k.get(sol, "Compute (SM) Throughput")),
            f"{_fmt(k.get(occ, 'Achieved Occupancy'))} / {_fmt(k.get(occ, 'Theoretical Occupancy'))}",
            _fmt(k.get(launch, "Registers Per Thread"), ".0f"), k.text(launch, "Block Size") or "n/a",
            k.text(launch, "Grid Size") or "n/a", top,
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    hints = [(k, r) for k in launches for r in k.rules]
    if hints:
        lines += ["", "ncu's hints (OPT rules; estimated speedup of the launch):", ""]
        for k, (rule, desc, speedup) in hints:
            est = f" (est. {speedup:.0f}%)" if speedup is not None else ""
            lines.append(f"- ID {k.id} `{_short(k.name, 40)}` {rule}{est}: {_short(desc, 300)}")
    return "\n".join(lines) + "\n"


def report_ncu(csv_path: Path, out: Path, new_folder: bool, command: str = "") -> int:
    """ncu.md in `out` (first made as `new_out_dir` makes it, with `new_folder`) from the CSV at `csv_path`,
    naming the `command` that wrote it; one line per launch on stdout. 1 when it holds no launch."""
    try:
        text = csv_path.read_text(encoding="utf-8", errors="replace")
        launches = parse_ncu_csv(text)
    except OSError as e:
        raise ProfileError(os_error_message(e)) from None
    except ValueError as e:
        raise ProfileError(f"{csv_path}: {e}") from None
    if not launches:
        print(f"{PROG}: error: {csv_path} holds no profiled kernel (did the filter match none?)", file=sys.stderr)
        return 1
    if new_folder:
        new_out_dir(out)
    write_text_atomic(out / "ncu.md", ncu_markdown(launches, csv_path.name, command))
    for k in launches:
        stalls = k.stalls()
        print(
            f"ncu {k.id} {_short(k.name, 50)}: {_fmt(k.duration_us(), '.2f')} us, DRAM "
            f"{_fmt(k.get('GPU Speed Of Light Throughput', 'DRAM Throughput'))}% of peak, occupancy "
            f"{_fmt(k.get('Occupancy', 'Achieved Occupancy'))}%, top stall {stalls[0][0] if stalls else 'n/a'}"
        )
    print(f"wrote {out / 'ncu.md'}")
    return 0


# ---------------------------------------------------------------------------------------------------------
# The command line


def _kernel_options(p: argparse.ArgumentParser, interpret: bool) -> None:
    p.add_argument("--op", required=True, choices=OPS)
    p.add_argument("--shape", help="ROWSxWIDTH; attention B,H,T,D; LM head NxCxV (default: gpt bench's first case)")
    p.add_argument("--dtype", choices=("bf16", "fp32", "bf16+fp32"), help="default: gpt bench's for the op")
    p.add_argument("--mode", choices=MODES, default="fwd")
    p.add_argument("--provider", choices=PROVIDERS, default="triton", help="a gpt bench provider (default triton)")
    p.add_argument("--warmup", type=positive, default=3, help="calls before the profiled one (default 3)")
    if interpret:
        p.add_argument("--interpret", action="store_true", help="on the CPU, in Triton's interpreter")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    s = sub.add_parser("step", help="torch.profiler table of training steps")
    s.add_argument("--backend", required=True, choices=TRAIN_PROVIDERS)
    size = s.add_mutually_exclusive_group()
    size.add_argument("--config", help="model preset or TOML (default: gpt2-124m on a GPU)")
    size.add_argument("--small", action="store_true", help="a tiny model (the default without a GPU)")
    s.add_argument("--batch-size", type=positive, help="micro-batch (default 16 on a GPU)")
    s.add_argument("--seq-len", type=positive, help="tokens per row (default 1024 on a GPU)")
    s.add_argument("--steps", type=positive, default=5, help="profiled steps (default 5)")
    s.add_argument("--top", type=positive, default=30, help="rows in ops.md (default 30)")
    s.add_argument("--trace", action="store_true", help="also write trace.json (Chrome trace; large)")
    s.add_argument("--interpret", action="store_true", help="on the CPU, the Triton kernels in the interpreter")
    s.add_argument("--out", type=Path, required=True, help="new or empty folder for ops.md, ops.csv")
    k = sub.add_parser("kernel", help="one call of one op inside a cudaProfilerStart/Stop region")
    _kernel_options(k, interpret=True)
    n = sub.add_parser("ncu", help="`kernel` under Nsight Compute, then ncu.md")
    _kernel_options(n, interpret=False)
    n.add_argument("--out", type=Path, required=True, help="new or empty folder for ncu.csv and ncu.md")
    n.add_argument("--ncu", default=os.environ.get("NCU", "ncu"), help="the ncu program (default $NCU or ncu)")
    n.add_argument("--print-command", action="store_true", help="print the ncu command line; run nothing")
    r = sub.add_parser("ncu-report", help="ncu's --csv --page details output -> ncu.md")
    r.add_argument("csv", type=Path)
    r.add_argument("--out", type=Path, required=True, help="new or empty folder for ncu.md")
    return ap


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    threads = None
    try:
        if args.command == "ncu-report":
            if not args.csv.is_file():
                raise ProfileError(f"{args.csv}: {'a folder, not a file' if args.csv.is_dir() else 'no such file'}")
            return report_ncu(args.csv, args.out, new_folder=True)
        if args.command == "ncu":
            return run_ncu(args)
        _interpret(args.interpret)
        import torch

        threads = torch.get_num_threads()
        if not torch.cuda.is_available() or args.interpret:
            torch.set_num_threads(1)  # a tiny CPU run: OpenMP spin-waits on shared cores cost more than they give
        return profile_step(args, argv) if args.command == "step" else run_kernel(args)
    except ProfileError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except OutputError as e:
        print(f"{PROG}: error: {os_error_message(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\n{PROG}: interrupted", file=sys.stderr)
        return 130
    finally:
        if threads is not None:
            import torch

            torch.set_num_threads(threads)


if __name__ == "__main__":  # under `gpt`'s rules for Ctrl-C and standard output
    from tritongpt.cli import run_guarded

    sys.exit(run_guarded("python -m tritongpt.bench.profile", main))
