"""`gpt verify`: every Triton op, forward and backward, against the pure-PyTorch reference, as a table.

    gpt verify                      full grid on the GPU (fp16, bf16, fp32) and its variants (below)
    gpt verify --quick              small shapes, fp32 and fp16, on the CPU through Triton's interpreter
    gpt verify --quick --ops gelu,layer_norm --variants none --dtypes fp32
    gpt verify --out DIR            also DIR/verify.csv (one row per check) and DIR/summary.md
    gpt verify --jobs 8 --budget 115 --out DIR      what the GPU session's `check` runs (scripts/gpu_session.sh)
    gpt verify --small              one attention fwd+bwd and one LayerNorm: what compute-sanitizer wraps
    gpt verify --backend native     torch's own ops (F.layer_norm, F.gelu, SDPA) under the same rule
    gpt verify --fuzz 200 [--seed S] [--ops ...] [--dtypes fp16,bf16] [--budget SECONDS] [--out DIR]
                                    200 random cases per op from each op's case space (shapes at block edges,
                                    layouts, dtypes, special values, calls that must be refused); each failure
                                    shrunk and printed as a `gpt verify --case '<json>'` command (tritongpt/fuzz.py)
    gpt verify --case '{"op":"attention","Tk":65}'    one such case alone, as a table

The rule, per output and per input gradient: against a higher-precision reference (fp64 for fp32 inputs,
fp32 for fp16/bf16), the kernel's max error must be at most 2x the same-precision reference's max error for
outputs, 3x for gradients, plus a floor of a few units in the last place of the output's magnitude. The
kernel must be finite wherever the reference is, and non-finite exactly where the high-precision reference
is. Kernel outputs are poisoned (NaN-filled, `tritongpt.kernels._common.POISON_OUTPUTS`) so an element a kernel never
writes fails. Exit status 1 on any failure. torch's float32 matmul precision is held at "highest" while it runs:
the fp32 references and attention's fp32 `tl.dot` are IEEE fp32, never TF32 (whose error the rule's budget,
taken from an IEEE reference, does not cover).

The grid: LayerNorm (+ add) at widths 1, 768, 1000, 3000; GELU (+ bias) at 1, 1000, 3072; causal attention at
T = 1, 97, 1023, 1025 by head dim 64, 80, 128; the LM head and its loss at V = 50257 and a padded 50304 (50257
real classes), logits up to ~100; every dtype. Its variants (`--variants`, all by default with the
triton backend; their rows carry the name), each a path the grid's default leaves out, under the same rule:
    atomic-dq    attention's fast backward (dQ added with fp32 atomics), on the grid's attention cases;
    tma          attention's forward loading K/V through tensor descriptors (`attention._KV_TMA_ONLY`; on a card
                 without them the rows say pointer loads ran), likewise;
    dropout      attention at dropout_p 0.1 against the reference with the kernel's own keep-mask, the same
                 output for the same seed, another mask for another seed, the kept fraction within a binomial
                 tail bound of 0.9; and dropout_p 0 bit-identical to no dropout (`fuzz.check_attention`);
    determinism  the same call twice (same inputs, upstream gradients and seed) gives bit-identical outputs and
                 gradients: every op on its deterministic path, attention with and without dropout. A race or
                 an order-dependent reduction shows here. Every grid case on a GPU, the largest of each op
                 and dtype with --quick.
--quick runs each at small shapes (widths 1, 257, 1000; attention at T = 1, 37 by D = 16, 80, its variants at
T = 37).

--out DIR (a new or empty folder; anything else is refused, exit 2) gets verify.csv, one row per check (op,
variant, check: out/dx/dq/.../same seed/kept/..., dtype, shape, max_err, ref_err, bound, ratio = max_err /
ref_err, pass, note, seconds of the case, gpu, torch, triton, date) and summary.md (status, device, versions,
date, wall time, checks and failures per op, variant and dtype, every failure). Both are rewritten whole after
every case (temporary file, rename): a run killed at any point leaves the checks done so far and a summary
saying the run had not ended. With --fuzz, one row per case: its worst check (failed, else the nearest its
bound), the case's JSON in the note (replayable with --case) and, for a failure, the shrunk case; counts per op
and dtype. --budget starts no case after that many seconds: the summary lists what was left, exit status 1.
--jobs N starts N - 1 helper processes on the same cases, each running every (N-1)-th one: their compiles fill
Triton's on-disk cache ahead of this process, which runs every case and alone reports (a cold GPU run is mostly
compiling; with TRITONGPT_ATTENTION_AUTOTUNE=0 one attention config per launch class).

Without CUDA, or with --quick, TRITON_INTERPRET=1 is set before any kernel is imported. `compare` and
`forward_backward` are the rule's implementation; the tests use them too (through tests/_tolerance.py).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import math
import os
import shlex
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tritongpt.cli import positive
from tritongpt.files import new_folder_problem, write_csv_atomic, write_text_atomic
from tritongpt.kernels import IMPLEMENTATIONS, OPS

OUTPUT_FACTOR = 2.0  # kernel error <= 2x the same-precision reference's error, for outputs
GRAD_FACTOR = 3.0  # ... and 3x for input gradients
# plus this many units in the last place (eps of the dtype) of max(1, max |reference|). Where the same-precision
# reference is exact (its error is 0, so it sets no budget), the ulps are of the op's magnitude instead: the
# largest |value| of any output or gradient of the call. That happens where a result is exact by construction:
# attention at T = 1 has one key, so dq = dk = 0 in any precision, while the kernel's dP - delta carries a few
# ulps of rounding of length-D dot products, whose size is that of dv, not of the zero dq.
FLOOR_ULPS = 8.0

HI_DTYPE = {torch.float32: torch.float64, torch.float16: torch.float32, torch.bfloat16: torch.float32}
DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
DTYPES = {name: dtype for dtype, name in DTYPE_NAMES.items()}


# ---------------------------------------------------------------------------------------------------------
# The rule


@dataclass
class Comparison:
    """One output or gradient of one op run, judged by the error-relative rule."""

    name: str  # "out", "out1", "dx", ...
    err: float  # max |kernel - high-precision reference| over the finite elements
    ref_err: float  # max |same-precision reference - high-precision reference|
    bound: float  # factor * ref_err + floor
    ok: bool
    note: str = ""  # why it failed, when not for the error bound

    @property
    def ratio(self) -> float:
        """err over the reference's error; NaN where there is no reference error (a check other than the rule)."""
        if math.isnan(self.ref_err):
            return math.nan
        return self.err / self.ref_err if self.ref_err > 0 else (0.0 if self.err == 0 else math.inf)


def compare(
    name: str,
    out: torch.Tensor,
    ref: torch.Tensor,
    ref_hi: torch.Tensor,
    factor: float,
    scale: float = 1.0,
    finite_ok: bool = False,
) -> Comparison:
    """Judge `out` (the kernel's) against `ref_hi` (the reference at higher precision), with `ref` (the
    reference at out's precision) setting the error budget: err <= factor * ref_err + floor, the floor being
    FLOOR_ULPS ulps of max(1, max |ref_hi|), or of max(1, scale, max |ref_hi|) where ref_err is 0. With
    `finite_ok` a finite kernel value where ref_hi is not is accepted (not judged)."""
    if out.shape != ref_hi.shape:
        return Comparison(name, math.inf, math.nan, math.nan, False, f"shape {tuple(out.shape)}")
    if out.dtype != ref.dtype:
        return Comparison(name, math.inf, math.nan, math.nan, False, f"dtype {out.dtype}, expected {ref.dtype}")
    o, r, h = (t.detach().to("cpu", torch.float64) for t in (out, ref, ref_hi))
    h_finite = torch.isfinite(h)
    special = ~h_finite & ~torch.isfinite(o) if finite_ok else ~h_finite  # where o must equal h: NaN, +-inf
    note = ""
    special_ok = torch.equal(torch.isnan(o[special]), torch.isnan(h[special])) and torch.equal(
        o[special & ~torch.isnan(h)], h[special & ~torch.isnan(h)]
    )
    if not special_ok:
        note = "non-finite values differ from the reference"
    # The same-precision reference may itself overflow where the high-precision one does not; judge only
    # the elements both references agree are finite.
    both = h_finite & torch.isfinite(r)
    if not torch.isfinite(o[both]).all():
        note = f"{int((~torch.isfinite(o[both])).sum())} non-finite values where the reference is finite"
    if both.any():
        err = (o[both] - h[both]).abs().max().item()
        ref_err = (r[both] - h[both]).abs().max().item()
        scale = max(1.0, scale if ref_err == 0 else 1.0, h[both].abs().max().item())
    else:
        err = ref_err = 0.0
        scale = max(1.0, scale)
    bound = factor * ref_err + FLOOR_ULPS * torch.finfo(out.dtype).eps * scale
    err = err if not math.isnan(err) else math.inf
    return Comparison(name, err, ref_err, bound, not note and err <= bound, note)


def _as_tuple(out: Any) -> tuple[torch.Tensor, ...]:
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def forward_backward(
    fn: Callable[..., Any],
    inputs: dict[str, Any],
    grad_names: Sequence[str],
    upstream: Sequence[torch.Tensor],
    dtype: torch.dtype | None = None,
) -> tuple[tuple[torch.Tensor, ...], dict[str, torch.Tensor]]:
    """Run fn(**inputs) on fresh leaf copies (floating-point ones cast to `dtype` if given; integer ones, such
    as class targets, keep theirs) and backpropagate `upstream`, one gradient per output (cast to each output's
    dtype). Returns (outputs, {name: gradient} for grad_names).

    Copies keep the inputs' strides, so a non-contiguous input stays non-contiguous."""
    leaves = {}
    for name, value in inputs.items():
        if isinstance(value, torch.Tensor):
            cast = dtype if dtype is not None and value.is_floating_point() else value.dtype
            copy = torch.empty_strided(value.shape, value.stride(), dtype=cast, device=value.device)
            copy.copy_(value)
            value = copy.requires_grad_(name in grad_names)
        leaves[name] = value
    outs = _as_tuple(fn(**leaves))
    if grad_names:
        torch.autograd.backward(outs, [g.to(o.dtype) for o, g in zip(outs, upstream, strict=True)])
    return tuple(o.detach() for o in outs), {n: leaves[n].grad for n in grad_names}


def check_op(
    kernel_fn: Callable[..., Any],
    ref_fn: Callable[..., Any],
    inputs: dict[str, Any],
    grad_names: Sequence[str],
    seed: int = 0,
    finite_grads_ok: bool = False,
) -> list[Comparison]:
    """Kernel vs reference on the same inputs and the same random upstream gradients: one Comparison per
    output ("out", "out1", ...) and per input gradient ("d" + name). `finite_grads_ok`: a gradient may be finite
    where the reference's is not (at an infinite input GELU's reference forms inf * 0 = NaN where the kernel
    computes the limit)."""
    dtype = next(v.dtype for v in inputs.values() if isinstance(v, torch.Tensor))
    hi = HI_DTYPE[dtype]
    ref_outs, _ = forward_backward(ref_fn, inputs, (), ())
    gen = torch.Generator().manual_seed(seed)
    upstream = [torch.randn(o.shape, generator=gen, dtype=torch.float32).to(o.device, o.dtype) for o in ref_outs]
    k_outs, k_grads = forward_backward(kernel_fn, inputs, grad_names, upstream)
    r_outs, r_grads = forward_backward(ref_fn, inputs, grad_names, upstream)
    h_outs, h_grads = forward_backward(ref_fn, inputs, grad_names, upstream, dtype=hi)
    result = []
    if len(k_outs) != len(r_outs):
        return [
            Comparison("out", math.inf, math.nan, math.nan, False, f"{len(k_outs)} outputs, expected {len(r_outs)}")
        ]
    finite = [t[torch.isfinite(t)] for t in (*h_outs, *h_grads.values()) if t is not None]
    scale = max((t.abs().max().item() for t in finite if t.numel()), default=1.0)  # the op's magnitude
    for i, (k, r, h) in enumerate(zip(k_outs, r_outs, h_outs, strict=True)):
        result.append(compare("out" if i == 0 else f"out{i}", k, r, h, OUTPUT_FACTOR, scale))
    for name in grad_names:
        k, r, h = k_grads[name], r_grads[name], h_grads[name]
        if k is None:
            result.append(Comparison(f"d{name}", math.inf, math.nan, math.nan, False, "no gradient"))
            continue
        result.append(compare(f"d{name}", k, r, h, GRAD_FACTOR, scale, finite_ok=finite_grads_ok))
    return result


def check_repeatable(
    fn: Callable[..., Any], inputs: dict[str, Any], grad_names: Sequence[str], seed: int = 0
) -> list[Comparison]:
    """The same call twice, on the same inputs with the same upstream gradients and torch seed (dropout's mask
    is drawn from it): every output ("out", ...) and input gradient ("d" + name) must be bit-identical. A race
    or an order-dependent reduction (atomics) shows as a difference; err is the largest one."""
    torch.manual_seed(seed)
    shapes, _ = forward_backward(fn, inputs, (), ())
    gen = torch.Generator().manual_seed(seed)
    upstream = [torch.randn(o.shape, generator=gen, dtype=torch.float32).to(o.device, o.dtype) for o in shapes]
    runs = []
    for _ in range(2):
        torch.manual_seed(seed)
        runs.append(forward_backward(fn, inputs, grad_names, upstream))
    (outs1, grads1), (outs2, grads2) = runs
    pairs = [("out" if i == 0 else f"out{i}", a, b) for i, (a, b) in enumerate(zip(outs1, outs2, strict=True))]
    pairs += [(f"d{n}", grads1[n], grads2[n]) for n in grad_names]
    return [_bit_identical(name, a, b) for name, a, b in pairs]


def _bit_identical(name: str, a: torch.Tensor | None, b: torch.Tensor | None) -> Comparison:
    if a is None or b is None:
        return Comparison(name, math.inf, math.nan, math.nan, False, "no gradient")
    if torch.equal(a, b):
        return Comparison(name, 0.0, math.nan, 0.0, True)
    x, y = a.detach().to("cpu", torch.float64), b.detach().to("cpu", torch.float64)
    differ = ~((x == y) | (torch.isnan(x) & torch.isnan(y)))
    nan = int(torch.isnan(x).sum() + torch.isnan(y).sum())
    diff = (x - y).abs()[differ & ~torch.isnan(x - y)]
    err = diff.max().item() if diff.numel() else (math.inf if differ.any() else 0.0)
    note = f"not bit-identical: {int(differ.sum())} of {a.numel()} elements differ" if differ.any() else ""
    if nan:
        note += (", " if note else "") + f"{nan} NaN"
    return Comparison(name, err, math.nan, 0.0, False, note)


# ---------------------------------------------------------------------------------------------------------
# The grid, its variants and the small set


@dataclass
class Case:
    op: str
    shape: str  # for the table
    dtype: torch.dtype
    inputs: dict[str, Any]
    grad_names: tuple[str, ...]
    variant: str = "default"
    settings: tuple[tuple[Any, str, Any], ...] = ()  # (module or dict, name, value) set while the case runs
    check: str = "rule"  # "rule": check_op; "dropout": fuzz.check_attention; "repeat": check_repeatable
    note: str = ""  # on each of the case's rows


# The grid's variants (the module docstring says what each checks) and the ops each is about.
VARIANTS = ("atomic-dq", "tma", "dropout", "determinism")
VARIANT_OPS = {"atomic-dq": ("attention",), "tma": ("attention",), "dropout": ("attention",), "determinism": OPS}
DROPOUT_P = 0.1


def _shape_str(shape: Iterable[int]) -> str:
    return "x".join(str(s) for s in shape)


def build_cases(op: str, quick: bool, dtypes: Sequence[torch.dtype], device: torch.device, seed: int,
                shapes: Sequence[tuple] | None = None) -> list[Case]:  # fmt: skip
    """The shapes each op is run on: odd sizes and tails (or `shapes`, in the op's form below). Inputs are random
    with a fixed seed. Attention in fp32 runs IEEE fp32 `tl.dot` (`gpt verify` holds torch's float32 matmul
    precision at "highest", which the kernel follows; TF32 would need another budget)."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return (torch.randn(shape, generator=gen) * scale).to(device)

    cases = []
    if op in ("layer_norm", "add_layer_norm"):
        if shapes is None:
            shapes = [(1, 1), (3, 7, 257), (2, 1000)] if quick else [(1, 1), (4, 97, 768), (2, 1025, 1000), (97, 3000)]
        for shape in shapes:
            for dtype in dtypes:
                c = shape[-1]
                inputs = {"x": randn(*shape), "weight": 1 + 0.5 * randn(c), "bias": randn(c)}
                if op == "add_layer_norm":
                    inputs["residual"] = randn(*shape)
                inputs = {k: v.to(dtype) for k, v in inputs.items()}
                cases.append(Case(op, _shape_str(shape), dtype, inputs, tuple(inputs)))
    elif op in ("gelu", "bias_gelu"):
        if shapes is None:
            shapes = [(1, 1), (3, 7, 257), (2, 1000)] if quick else [(1, 1), (4, 97, 3072), (2, 1025, 1000)]
        for shape in shapes:
            for dtype in dtypes:
                inputs = {"x": randn(*shape, scale=3.0)}
                if op == "bias_gelu":
                    inputs["bias"] = randn(shape[-1])
                inputs = {k: v.to(dtype) for k, v in inputs.items()}
                cases.append(Case(op, _shape_str(shape), dtype, inputs, tuple(inputs)))
    elif op == "attention":  # (B, H, T, D), causal
        if shapes is None:
            seqs, dims = ((1, 37), (16, 80)) if quick else ((1, 97, 1023, 1025), (64, 80, 128))
            bh = (1, 2) if quick else (2, 3)
            shapes = [(*bh, t, d) for t in seqs for d in dims]
        for shape in shapes:
            for dtype in dtypes:
                inputs = {n: randn(*shape).to(dtype) for n in ("q", "k", "v")}
                inputs["causal"] = True
                cases.append(Case(op, _shape_str(shape), dtype, inputs, ("q", "k", "v")))
    elif op == "linear_cross_entropy":
        # (rows N, width C, vocabulary V, real classes of a padded head or None, logit scale): V past the
        # kernel's 4096-column block with a tail, a padded head, logits |x.w| ~ 100; every 5th row ignored.
        if shapes is None and quick:
            shapes = [(1, 16, 37, None, 1), (13, 32, 300, None, 1), (7, 64, 5000, None, 1), (24, 48, 128, 100, 1)]
            shapes.append((13, 64, 300, None, 3.5))
        elif shapes is None:
            shapes = [(1, 768, 50257, None, 1), (2049, 768, 50257, None, 1), (4096, 768, 50304, 50257, 1)]
            shapes.append((1000, 768, 50304, 50257, 1.2))
        for n, c, v, n_classes, scale in shapes:
            for dtype in dtypes:
                targets = torch.randint(0, n_classes or v, (n,), generator=gen)
                targets[4::5] = -1
                inputs = {
                    "x": randn(n, c, scale=scale).to(dtype),
                    "weight": randn(v, c, scale=scale).to(dtype),
                    "targets": targets.to(device),
                    "ignore_index": -1,
                    "n_classes": n_classes,
                }
                label = f"{n}x{c}x{v}" + (f":{n_classes}" if n_classes else "") + (" big" if scale > 1 else "")
                cases.append(Case(op, label, dtype, inputs, ("x", "weight")))
    return cases


def build_variant_cases(variant: str, op: str, quick: bool, dtypes: Sequence[torch.dtype], device: torch.device,
                        seed: int) -> list[Case]:  # fmt: skip
    """The cases of one of VARIANTS for `op` (none where the variant is not about op)."""
    attention = importlib.import_module("tritongpt.kernels.attention")
    if op not in VARIANT_OPS[variant]:
        return []
    if variant in ("atomic-dq", "tma"):
        cases = build_cases(op, quick, dtypes, device, seed)
        if quick:  # the interpreter's time: T = 37 alone (T = 1 has one key block either way)
            cases = [c for c in cases if c.inputs["q"].shape[2] > 1]
        setting = (attention, "_DETERMINISTIC", False) if variant == "atomic-dq" else (attention, "_KV_TMA_ONLY", True)
        for c in cases:
            c.variant, c.settings = variant, (setting,)
            if variant == "tma":
                tma = attention._HAS_TMA and attention._tma_ok({"K": c.inputs["k"], "V": c.inputs["v"]})
                c.note = "K/V by tensor descriptors" if tma else "pointer loads: no tensor descriptors here"
        return cases
    if variant == "dropout":
        shapes = [(1, 2, 37, 80)] if quick else [(2, 3, 1025, 64), (2, 3, 97, 128)]
        cases = []
        for p in (DROPOUT_P, 0.0):
            for c in build_cases(op, quick, dtypes, device, seed, shapes):
                c.inputs.update(dropout_p=p, scale=None)
                c.shape, c.variant, c.check = f"{c.shape} p{p:g}", variant, "dropout"
                cases.append(c)
        return cases
    if variant == "determinism":
        cases = build_cases(op, quick, dtypes, device, seed)
        if quick:  # the largest case of each dtype
            size = lambda c: sum(v.numel() for v in c.inputs.values() if isinstance(v, torch.Tensor))  # noqa: E731
            cases = [max((c for c in cases if c.dtype == dtype), key=size) for dtype in dtypes]
        if op == "attention":  # and with dropout: the backward regenerates the same mask
            largest = [c for c in cases if c.inputs["q"].numel() == max(x.inputs["q"].numel() for x in cases)]
            for c in build_cases(op, quick, dtypes, device, seed, [tuple(largest[0].inputs["q"].shape)]):
                c.inputs["dropout_p"], c.shape = DROPOUT_P, f"{c.shape} p{DROPOUT_P:g}"
                cases.append(c)
        for c in cases:
            c.variant, c.check = variant, "repeat"
            c.settings = ((attention, "_DETERMINISTIC", True),) if op == "attention" else ()
        return cases
    raise ValueError(f"unknown variant {variant!r}")


SMALL_SHAPES = {"attention": [(1, 2, 97, 64)], "layer_norm": [(3, 7, 257)]}


def small_cases(dtypes: Sequence[torch.dtype], device: torch.device, seed: int) -> list[Case]:
    """`--small`: one attention forward + backward (two key blocks, a tail, causal) and one LayerNorm, each
    by the rule: what compute-sanitizer wraps (every launch under it is slow)."""
    return [c for op, shapes in SMALL_SHAPES.items() for c in build_cases(op, True, dtypes, device, seed, shapes)]


def resolve(op: str, impl: str = "triton") -> tuple[Callable[..., Any] | None, Callable[..., Any], str]:
    """(function of implementation `impl` or None, reference function, why the implementation is unavailable)."""
    from tritongpt import kernels

    reference = getattr(kernels.implementation("reference"), op)
    try:
        fn = getattr(kernels.implementation(impl), op)
    except (ImportError, AttributeError) as e:
        return None, reference, f"not available ({e})"
    return fn, reference, ""


def run_case(case: Case, kernel: Callable[..., Any], reference: Callable[..., Any], seed: int) -> list[Comparison]:
    """Every comparison of one case, outputs poisoned and its settings applied; a crash is one failed "run"."""
    from tritongpt import fuzz

    with fuzz.settings_applied(case.settings):
        try:
            if case.check == "repeat":
                return check_repeatable(kernel, case.inputs, case.grad_names, seed)
            if case.check == "dropout":
                return fuzz.check_attention(kernel, lambda fn: fn, case.inputs, case.inputs, case.grad_names, seed)
            return check_op(kernel, reference, case.inputs, case.grad_names, seed=seed)
        except Exception as e:  # a crash is a failure of this case, reported in its row
            return [Comparison("run", math.inf, math.nan, math.nan, False, f"{type(e).__name__}: {first_line(e)}")]


def first_line(e: BaseException) -> str:
    """An exception's message, its first line (a row holds one line)."""
    text = str(e).strip()
    return text.splitlines()[0] if text else ""


# ---------------------------------------------------------------------------------------------------------
# The files: DIR/verify.csv and DIR/summary.md

CSV_COLUMNS = ("op", "variant", "check", "dtype", "shape", "max_err", "ref_err", "bound", "ratio", "pass", "note",
               "seconds", "gpu", "torch", "triton", "date")  # fmt: skip


def _num(x: float) -> str:
    return f"{x:.3e}" if math.isfinite(x) else str(x)


class Results:
    """The rows of one run (one per check; with --fuzz one per case) and, with `out`, its two files, rewritten
    whole after every case (a temporary file renamed over the old): a run stopped at any point, killed
    included, leaves every check done so far, and its summary says whether the run ended."""

    def __init__(self, out: Path | None, env: Any, command: str, unit: str = "checks") -> None:
        self.out, self.env, self.command, self.unit = out, env, command, unit
        self.cases: dict[Any, tuple[list[dict[str, Any]], float]] = {}  # key -> (rows, seconds of the case)
        self.t0 = time.perf_counter()

    def add(self, key: Any, op: str, variant: str, dtype: str, shape: str, comparisons: Sequence[Comparison],
            seconds: float, note: str = "", check_prefix: str = "") -> None:  # fmt: skip
        """The rows of one case (replacing those of an earlier `add` with the same key); the files rewritten."""
        rows = []
        for c in comparisons:
            why = c.note or ("" if c.ok else f"err {_num(c.err)} > bound {_num(c.bound)}")
            rows.append({
                "op": op, "variant": variant, "check": check_prefix + c.name, "dtype": dtype, "shape": shape,
                "max_err": _num(c.err), "ref_err": _num(c.ref_err), "bound": _num(c.bound), "ratio": _num(c.ratio),
                "pass": "PASS" if c.ok else "FAIL", "note": "; ".join(x for x in (why, note) if x),
                "seconds": f"{seconds:.2f}",
            })  # fmt: skip
        self.cases[key] = (rows, seconds)
        self.write()

    @property
    def rows(self) -> list[dict[str, Any]]:
        return [r for rows, _ in self.cases.values() for r in rows]

    def write(self, status: str = "running") -> None:
        if self.out is None:
            return
        env = {"gpu": self.env.gpu, "torch": self.env.torch, "triton": self.env.triton, "date": self.env.date}
        write_csv_atomic(self.out / "verify.csv", CSV_COLUMNS, ({**r, **env} for r in self.rows))
        write_text_atomic(self.out / "summary.md", self.summary(status))

    def summary(self, status: str) -> str:
        """The Markdown summary: status, device, versions, date, counts per op, variant and dtype, failures."""
        rows = self.rows
        failed = [r for r in rows if r["pass"] != "PASS"]
        if status == "running":
            status = "INCOMPLETE: the run had not ended when this was written (still running, or killed)"
        where = self.env.gpu + (" (Triton interpreter)" if self.env.device.type == "cpu" else "")
        lines = [
            "# gpt verify: triton against the reference", "",
            f"- status: {status}",
            f"- {len(rows)} {self.unit}, {len(failed)} failed; wall time {time.perf_counter() - self.t0:.1f} s",
            f"- device: {where}", f"- torch {self.env.torch}, triton {self.env.triton}, {self.env.date}",
            f"- command: `{self.command}`", "",
            f"| op | variant | dtype | {self.unit} | failed | seconds |", "|---|---|---|---:|---:|---:|",
        ]  # fmt: skip
        groups: dict[tuple[str, str, str], list[float]] = {}
        for rows_, seconds in self.cases.values():
            for r in rows_:
                g = groups.setdefault((r["op"], r["variant"], r["dtype"]), [0, 0, 0.0])
                g[0] += 1
                g[1] += r["pass"] != "PASS"
            if rows_:
                groups[(rows_[0]["op"], rows_[0]["variant"], rows_[0]["dtype"])][2] += seconds
        lines += [f"| {op} | {v} | {d} | {n} | {f} | {s:.1f} |" for (op, v, d), (n, f, s) in groups.items()]
        lines += ["", "## Failures", ""]
        if not failed:
            lines.append("None.")
        else:
            lines += [
                "| op | variant | check | dtype | shape | max err | bound | note |",
                "|---|---|---|---|---|---:|---:|---|",
            ]
            for r in failed:
                note = r["note"].replace("|", "\\|")
                lines.append(f"| {r['op']} | {r['variant']} | {r['check']} | {r['dtype']} | {r['shape']} | "
                             f"{r['max_err']} | {r['bound']} | {note} |")  # fmt: skip
        return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------------
# The command


HEADER = (f"{'op':<20} {'variant':<11} {'shape':<20} {'dtype':<5} {'check':<10} {'max err':>10} {'ref err':>10} "
          f"{'ratio':>7}  result")  # fmt: skip


def _row(case: Case, c: Comparison) -> str:
    ratio = f"{c.ratio:7.2f}" if math.isfinite(c.ratio) else f"{'-' if math.isnan(c.ratio) else 'inf':>7}"
    result = "PASS" if c.ok else "FAIL" + (f" ({c.note})" if c.note else f" (bound {c.bound:.2e})")
    return (
        f"{case.op:<20} {case.variant:<11} {case.shape:<20} {DTYPE_NAMES.get(case.dtype, '-'):<5} {c.name:<10} "
        f"{c.err:10.2e} {c.ref_err:10.2e} {ratio}  {result}"
    )


def _parse_list(text: str, known: Sequence[str], what: str) -> list[str] | str:
    """A comma-separated subset of `known` (the list), or what is wrong with it (a str)."""
    names = [x.strip() for x in text.split(",") if x.strip()]
    if not names:
        return f"{what} names nothing; choose from {', '.join(known)}"
    unknown = [x for x in names if x not in known]
    if unknown:
        return f"unknown {what.lstrip('-')} {', '.join(unknown)}; choose from {', '.join(known)}"
    return list(dict.fromkeys(names))


def _argument_problem(args: argparse.Namespace) -> str | None:
    if args.budget is not None and not (math.isfinite(args.budget) and args.budget > 0):
        return "--budget takes a positive number of seconds"
    if args.jobs > 1 and (args.fuzz is not None or args.case is not None or args.small):
        return "--jobs is for the grid, not --fuzz, --case or --small"
    try:
        _helper_share(args.helper)
    except ValueError:
        return f"--helper takes K/N with 0 <= K < N, got {args.helper}"
    if args.case is not None:
        given = [f for f, v in (("--out", args.out), ("--budget", args.budget), ("--small", args.small),
                                ("--dtypes", args.dtypes), ("--variants", args.variants)) if v]  # fmt: skip
        if given:
            return f"--case runs one case alone, without {', '.join(given)}"
    if args.small and (args.fuzz is not None or args.variants is not None):
        return "--small runs its own two cases, without --fuzz or --variants"
    if args.fuzz is not None and args.variants is not None:
        return "--variants chooses the grid's extra checks; --fuzz draws its own cases"
    if args.variants is not None and args.backend != "triton":
        return "--variants check the triton backend's own paths"
    if args.fuzz is not None or args.case is not None:
        from tritongpt import fuzz

        return fuzz.argument_problem(args)
    return None


@contextlib.contextmanager
def _fp32_matmul_highest() -> Iterator[None]:
    """torch's fp32 matmuls (the references') and the attention kernel's fp32 `tl.dot` in IEEE fp32, not TF32."""
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(prog="gpt verify", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small shapes, fp32/fp16, CPU through Triton's interpreter")
    ap.add_argument("--ops", default=",".join(OPS), help=f"comma-separated subset of {','.join(OPS)}")
    ap.add_argument("--dtypes", help="comma-separated subset of fp32,fp16,bf16 (default: all three on a GPU, fp32,fp16 "
                    "in the interpreter; --small: fp16 on a GPU, fp32 in the interpreter)")  # fmt: skip
    ap.add_argument("--variants", help=f"the grid's extra checks: comma-separated subset of {','.join(VARIANTS)}, "
                    "or none (default: all, with the triton backend)")  # fmt: skip
    ap.add_argument("--small", action="store_true", help="one small attention fwd+bwd and one LayerNorm (sanitizers)")
    ap.add_argument("--out", type=Path, metavar="DIR", help="also write DIR/verify.csv and DIR/summary.md (new folder)")
    ap.add_argument("--seed", type=int, default=0)
    checked = [name for name in IMPLEMENTATIONS if name != "reference"]
    ap.add_argument("--backend", choices=checked, default="triton", help="implementation checked against the reference")
    ap.add_argument("--fuzz", type=int, metavar="N", help="N random cases per op, failures shrunk to a --case")
    ap.add_argument("--budget", type=float, metavar="SECONDS", help="start no case (with --fuzz: draw none) after this")
    ap.add_argument("--case", metavar="JSON", help="run one case as --fuzz prints it")
    ap.add_argument("--jobs", type=positive, default=1, metavar="N", help="N - 1 helper processes compile the grid's "
                    "kernels ahead of this one (a cold GPU run is mostly compiling)")  # fmt: skip
    ap.add_argument("--helper", metavar="K/N", help=argparse.SUPPRESS)  # one of those helpers: every N-th case from K
    args = ap.parse_args(argv)
    problem = _argument_problem(args)
    if problem:
        ap.error(problem)
    ops = _parse_list(args.ops, OPS, "--ops")
    if isinstance(ops, str):
        ap.error(ops.replace("unknown ops", "unknown op(s)"))
    if not -(2**63) <= args.seed < 2**64:  # what torch.Generator.manual_seed takes
        ap.error(f"--seed must fit in 64 bits, got {args.seed}")
    gpu = torch.cuda.is_available() and not args.quick
    dtype_names = _parse_list(args.dtypes, list(DTYPES), "--dtypes") if args.dtypes is not None else None
    if isinstance(dtype_names, str):
        ap.error(dtype_names)
    if dtype_names and "bf16" in dtype_names and not gpu:
        ap.error("--dtypes bf16 needs a GPU (Triton's interpreter gets bf16 tl.dot wrong)")
    if args.variants is None:
        variants = list(VARIANTS) if args.backend == "triton" and not args.small else []
    elif args.variants.strip() == "none":
        variants = []
    else:
        variants = _parse_list(args.variants, VARIANTS, "--variants")
        if isinstance(variants, str):
            ap.error(variants)
    if args.out is not None:
        problem = new_folder_problem(args.out)
        if problem:
            print(f"gpt verify: error: {problem}", file=sys.stderr)
            return 2

    quick = not gpu
    if quick:
        os.environ["TRITON_INTERPRET"] = "1"  # before any kernel module is imported
    common = importlib.import_module("tritongpt.kernels._common")
    if quick and not common.interpreter_enabled():
        print("gpt verify: error: kernels were imported before the interpreter could be enabled", file=sys.stderr)
        return 2
    if quick and common.interpreter_problem():
        print(f"gpt verify: error: {common.interpreter_problem()}", file=sys.stderr)
        return 2
    device = torch.device("cpu" if quick else "cuda")
    if args.case is not None:
        from tritongpt import fuzz

        return fuzz.run_one(args.case, device)
    if dtype_names is None:
        dtype_names = ["fp16", "bf16", "fp32"] if gpu else ["fp32", "fp16"]
        dtype_names = dtype_names[:1] if args.small else dtype_names
    dtypes = [DTYPES[n] for n in dtype_names]

    from tritongpt.bench.harness import current_env
    from tritongpt.files import StopRequest, folder_lock, os_error_message

    env = current_env(device)
    command = shlex.join(["gpt", "verify", *argv])
    results = Results(args.out, env, command, "cases" if args.fuzz is not None else "checks")
    try:
        if args.out is not None:
            args.out.mkdir(parents=True, exist_ok=True)
        with contextlib.ExitStack() as stack:
            if args.out is not None:
                stack.enter_context(folder_lock(args.out, "gpt verify"))
                problem = new_folder_problem(args.out)  # another run may have written there since the first look
                if problem:
                    print(f"gpt verify: error: {problem}", file=sys.stderr)
                    return 2
            stop = stack.enter_context(StopRequest("stopping after this case", lambda m: print(m, file=sys.stderr)))
            stack.enter_context(_fp32_matmul_highest())
            if args.jobs > 1:
                stack.enter_context(_helpers(args, ops, dtype_names, variants))
            if args.fuzz is not None:
                return _fuzz(args, ops, dtype_names, device, results)
            return _grid(args, ops, dtypes, variants, quick, device, results, stop)
    except BrokenPipeError:  # the reader went away: the dispatcher ends quietly (141); the files so far stay
        raise
    except OSError as e:  # a folder lock held by another run (OutputError), a full disk, ...: one line
        print(f"gpt verify: error: {os_error_message(e)}", file=sys.stderr)
        return 2


@contextlib.contextmanager
def _helpers(args: argparse.Namespace, ops, dtype_names, variants) -> Iterator[None]:
    """`--jobs N`: N - 1 more `gpt verify` processes on the same cases while the block runs, helper K running every
    (N-1)-th case from the K-th, output and files dropped. Their compiles land in Triton's on-disk cache, so this
    process, which runs every case and alone reports, mostly finds its kernels compiled. Ended with the block."""
    import subprocess

    n = args.jobs - 1
    base = [sys.executable, "-m", "tritongpt", "verify", "--ops", ",".join(ops), "--dtypes", ",".join(dtype_names)]
    base += ["--variants", ",".join(variants) or "none", "--seed", str(args.seed), "--backend", args.backend]
    base += ["--quick"] * args.quick + (["--budget", str(args.budget)] if args.budget is not None else [])
    procs = [subprocess.Popen([*base, "--helper", f"{k}/{n}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for k in range(n)]  # fmt: skip
    try:
        yield
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _helper_share(text: str | None) -> tuple[int, int] | None:
    """--helper K/N as (K, N) (None without it); ValueError unless 0 <= K < N."""
    if text is None:
        return None
    k, n = (int(x) for x in text.split("/"))
    if not 0 <= k < n:
        raise ValueError(text)
    return k, n


def _grid(args, ops, dtypes, variants, quick, device, results: Results, stop) -> int:
    """The grid (or --small), then each variant: the table, the files, the exit status."""
    where = "quick, CPU (Triton interpreter)" if quick else torch.cuda.get_device_name(device)
    print(f"gpt verify: {args.backend} vs reference, {where}, torch {torch.__version__}, seed {args.seed}"
          + (f", variants {','.join(variants)}" if variants else ""))  # fmt: skip
    print(HEADER)
    if args.small:
        groups = [(op, "default", lambda op=op: [c for c in small_cases(dtypes, device, args.seed) if c.op == op])
                  for op in SMALL_SHAPES]  # fmt: skip
    else:
        groups = [(op, "default", lambda op=op: build_cases(op, quick, dtypes, device, args.seed)) for op in ops]
        groups += [(op, v, lambda op=op, v=v: build_variant_cases(v, op, quick, dtypes, device, args.seed))
                   for v in variants for op in ops if op in VARIANT_OPS[v]]  # fmt: skip
    deadline = results.t0 + (args.budget if args.budget is not None else math.inf)
    not_run: list[str] = []  # the groups (op variant), or a group's last cases, that the budget or a signal left
    n_checks = n_failed = 0
    share, index = _helper_share(args.helper), -1
    for op, variant, build in groups:
        if not_run or stop.requested or time.perf_counter() >= deadline:
            not_run.append(f"{op} {variant}")
            continue
        kernel, reference, unavailable = resolve(op, args.backend)
        if kernel is None:  # a missing implementation is a failure, never a silent pass
            n_checks, n_failed = n_checks + 1, n_failed + 1
            c = Comparison("run", math.inf, math.nan, math.nan, False, unavailable)
            results.add((op, variant), op, variant, "-", "-", [c], 0.0)
            print(f"{op:<20} {variant:<11} {'-':<20} {'-':<5} {'-':<10} {'':>10} {'':>10} {'':>7}  FAIL: {unavailable}")
            continue
        cases = build()
        for i, case in enumerate(cases):
            if stop.requested or time.perf_counter() >= deadline:
                not_run.append(f"{op} {variant} ({len(cases) - i} of {len(cases)} cases)")
                break
            index += 1
            if share is not None and index % share[1] != share[0]:
                continue
            t0 = time.perf_counter()
            comparisons = run_case(case, kernel, reference, args.seed)
            seconds = time.perf_counter() - t0
            results.add((op, variant, i), op, variant, DTYPE_NAMES[case.dtype], case.shape, comparisons, seconds,
                        case.note)  # fmt: skip
            for c in comparisons:
                n_checks += 1
                n_failed += not c.ok
                print(_row(case, c), flush=True)
    elapsed = time.perf_counter() - results.t0
    if not_run:
        why = "stopped on request" if stop.requested else f"--budget {args.budget:g} s reached"
        status = f"INCOMPLETE: {why} after {elapsed:.1f} s; not run: {', '.join(not_run)}"
        if n_failed:
            status += f"; {n_failed} failed"
    else:
        status = "FAILED" if n_failed else "all passed"
    results.write(status)
    print(f"{n_checks} checks, {n_failed} failed: {status} ({elapsed:.1f} s)")
    if stop.requested:
        return 130
    return 1 if n_failed or not_run else 0


def _fuzz(args, ops, dtype_names, device, results: Results) -> int:
    """--fuzz: fuzz.fuzz, one row per case in the files (its worst comparison; the case's JSON in the note)."""
    from tritongpt import fuzz

    def record(op, i, call, comparisons, seconds, shrunk) -> None:
        used = lambda c: c.err / c.bound if c.bound > 0 else (0.0 if c.err == 0 else math.inf)  # noqa: E731
        worst = max(comparisons, key=lambda c: (not c.ok, used(c)))  # failed, else the nearest its bound
        first = next((v for v in call.kwargs.values() if isinstance(v, torch.Tensor)), None)
        dtype = "-" if first is None else DTYPE_NAMES.get(first.dtype, str(first.dtype).removeprefix("torch."))
        shape = "-" if first is None else (_shape_str(first.shape) or "scalar")
        case = json.dumps(fuzz.compact(call.draw), separators=(",", ":"))
        note = f"case {case}" + (f"; shrunk: {json.dumps(shrunk, separators=(',', ':'))}" if shrunk else "")
        worst = Comparison(worst.name, worst.err, worst.ref_err, worst.bound, all(c.ok for c in comparisons),
                           fuzz.why_failed(comparisons) if not all(c.ok for c in comparisons) else "")  # fmt: skip
        results.add((op, i), op, "fuzz", dtype, shape, [worst], seconds, note, check_prefix=f"case {i}: ")

    failed = fuzz.fuzz(ops, args.fuzz, args.seed, args.budget, device, dtypes=dtype_names, record=record)
    results.write("FAILED" if failed else "all passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
