"""`gpt verify`: every Triton op, forward and backward, against the pure-PyTorch reference, as a table.

    gpt verify                      full grid on the GPU (fp16, bf16, fp32)
    gpt verify --quick              small shapes, fp32 and fp16, on the CPU through Triton's interpreter
    gpt verify --quick --ops gelu,layer_norm
    gpt verify --backend native     torch's own ops (F.layer_norm, F.gelu, SDPA) under the same rule
    gpt verify --fuzz 200 [--seed S] [--ops ...] [--budget SECONDS]
                                    200 random cases per op from each op's case space (shapes at block edges,
                                    layouts, dtypes, special values, calls that must be refused); each failure
                                    shrunk and printed as a `gpt verify --case '<json>'` command (tritongpt/fuzz.py)
    gpt verify --case '{"op":"attention","Tk":65}'    one such case alone, as a table

The rule, per output and per input gradient: against a higher-precision reference (fp64 for fp32 inputs,
fp32 for fp16/bf16), the kernel's max error must be at most 2x the same-precision reference's max error for
outputs, 3x for gradients, plus a floor of a few units in the last place of the output's magnitude. The
kernel must be finite wherever the reference is, and non-finite exactly where the high-precision reference
is. Kernel outputs are poisoned (NaN-filled, `tritongpt.kernels._common.POISON_OUTPUTS`) so an element a kernel never
writes fails. Exit status 1 on any failure. The grid checks attention without dropout (a random mask has no
reference to compare against); --fuzz checks it against the reference with the kernel's own keep-mask.

Without CUDA, or with --quick, TRITON_INTERPRET=1 is set before any kernel is imported. `compare` and
`forward_backward` are the rule's implementation; the tests use them too (through tests/_tolerance.py).
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

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


# ---------------------------------------------------------------------------------------------------------
# The grid


@dataclass
class Case:
    op: str
    shape: str  # for the table
    dtype: torch.dtype
    inputs: dict[str, Any]
    grad_names: tuple[str, ...]


def _shape_str(shape: Iterable[int]) -> str:
    return "x".join(str(s) for s in shape)


def build_cases(op: str, quick: bool, dtypes: Sequence[torch.dtype], device: torch.device, seed: int) -> list[Case]:
    """The shapes each op is run on: odd sizes and tails. Inputs are random with a fixed seed."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return (torch.randn(shape, generator=gen) * scale).to(device)

    cases = []
    if op in ("layer_norm", "add_layer_norm"):
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
        shapes = [(1, 1), (3, 7, 257), (2, 1000)] if quick else [(1, 1), (4, 97, 3072), (2, 1025, 1000)]
        for shape in shapes:
            for dtype in dtypes:
                inputs = {"x": randn(*shape, scale=3.0)}
                if op == "bias_gelu":
                    inputs["bias"] = randn(shape[-1])
                inputs = {k: v.to(dtype) for k, v in inputs.items()}
                cases.append(Case(op, _shape_str(shape), dtype, inputs, tuple(inputs)))
    elif op == "attention":
        seqs, dims = ((1, 37), (16, 80)) if quick else ((1, 97, 1023, 1025), (64, 80, 128))
        bh = (1, 2) if quick else (2, 3)
        for t in seqs:
            for d in dims:
                for dtype in dtypes:
                    if not quick and dtype == torch.float32:
                        continue  # on the GPU fp32 attention would run in TF32: fp16/bf16 only
                    shape = (*bh, t, d)
                    inputs = {n: randn(*shape).to(dtype) for n in ("q", "k", "v")}
                    inputs["causal"] = True
                    cases.append(Case(op, _shape_str(shape), dtype, inputs, ("q", "k", "v")))
    elif op == "linear_cross_entropy":
        # (rows N, width C, vocabulary V, real classes of a padded head or None, logit scale): V past the
        # kernel's 4096-column block with a tail, a padded head, logits |x.w| ~ 100; every 5th row ignored.
        if quick:
            shapes = [(1, 16, 37, None, 1), (13, 32, 300, None, 1), (7, 64, 5000, None, 1), (24, 48, 128, 100, 1)]
            shapes.append((13, 64, 300, None, 3.5))
        else:
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


def resolve(op: str, impl: str = "triton") -> tuple[Callable[..., Any] | None, Callable[..., Any], str]:
    """(function of implementation `impl` or None, reference function, why the implementation is unavailable)."""
    from tritongpt import kernels

    reference = getattr(kernels.implementation("reference"), op)
    try:
        fn = getattr(kernels.implementation(impl), op)
    except (ImportError, AttributeError) as e:
        return None, reference, f"not available ({e})"
    return fn, reference, ""


# ---------------------------------------------------------------------------------------------------------
# The command


HEADER = f"{'op':<20} {'shape':<16} {'dtype':<5} {'pass':<9} {'max err':>10} {'ref err':>10} {'ratio':>7}  result"


def _row(case: Case, c: Comparison) -> str:
    ratio = f"{c.ratio:7.2f}" if math.isfinite(c.ratio) else f"{'inf':>7}"
    result = "PASS" if c.ok else "FAIL" + (f" ({c.note})" if c.note else f" (bound {c.bound:.2e})")
    return (
        f"{case.op:<20} {case.shape:<16} {DTYPE_NAMES[case.dtype]:<5} {c.name:<9} "
        f"{c.err:10.2e} {c.ref_err:10.2e} {ratio}  {result}"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="gpt verify", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small shapes, fp32/fp16, CPU through Triton's interpreter")
    ap.add_argument("--ops", default=",".join(OPS), help=f"comma-separated subset of {','.join(OPS)}")
    ap.add_argument("--seed", type=int, default=0)
    checked = [name for name in IMPLEMENTATIONS if name != "reference"]
    ap.add_argument("--backend", choices=checked, default="triton", help="implementation checked against the reference")
    ap.add_argument("--fuzz", type=int, metavar="N", help="N random cases per op, failures shrunk to a --case")
    ap.add_argument("--budget", type=float, metavar="SECONDS", help="with --fuzz: stop drawing cases after this long")
    ap.add_argument("--case", metavar="JSON", help="run one case as --fuzz prints it")
    args = ap.parse_args(argv)
    if args.fuzz is not None or args.case is not None or args.budget is not None:
        from tritongpt import fuzz

        problem = fuzz.argument_problem(args)
        if problem:
            ap.error(problem)
    ops = [o.strip() for o in args.ops.split(",") if o.strip()]
    if not ops:
        ap.error(f"--ops names no op; choose from {', '.join(OPS)}")
    unknown = [o for o in ops if o not in OPS]
    if unknown:
        ap.error(f"unknown op(s) {', '.join(unknown)}; choose from {', '.join(OPS)}")
    if not -(2**63) <= args.seed < 2**64:  # what torch.Generator.manual_seed takes
        ap.error(f"--seed must fit in 64 bits, got {args.seed}")

    quick = args.quick or not torch.cuda.is_available()
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
        return fuzz.run_one(args.case, device)
    if args.fuzz is not None:
        return 1 if fuzz.fuzz(ops, args.fuzz, args.seed, args.budget, device) else 0
    dtypes = [torch.float32, torch.float16] if quick else [torch.float16, torch.bfloat16, torch.float32]

    print(f"gpt verify: {args.backend} vs reference, "
          f"{'quick, CPU (Triton interpreter)' if quick else torch.cuda.get_device_name(device)}, "
          f"torch {torch.__version__}, seed {args.seed}")  # fmt: skip
    print(HEADER)
    n_checks = n_failed = 0
    t0 = time.perf_counter()
    previous_poison = common.POISON_OUTPUTS
    try:
        for op in ops:
            kernel, reference, unavailable = resolve(op, args.backend)
            if kernel is None:  # a missing implementation is a failure, never a silent pass
                n_failed += 1
                print(f"{op:<20} {'-':<16} {'-':<5} {'-':<9} {'':>10} {'':>10} {'':>7}  FAIL: {unavailable}")
                continue
            for case in build_cases(op, quick, dtypes, device, args.seed):
                common.POISON_OUTPUTS = True
                try:
                    comparisons = check_op(kernel, reference, case.inputs, case.grad_names, seed=args.seed)
                except Exception as e:  # a crash is a failure of this case, reported in its row
                    comparisons = [Comparison("run", math.inf, math.nan, math.nan, False, f"{type(e).__name__}: {e}")]
                finally:
                    common.POISON_OUTPUTS = previous_poison
                for c in comparisons:
                    n_checks += 1
                    n_failed += not c.ok
                    print(_row(case, c), flush=True)
    finally:
        common.POISON_OUTPUTS = previous_poison
    status = "FAILED" if n_failed else "all passed"
    print(f"{n_checks} checks, {n_failed} failed: {status} ({time.perf_counter() - t0:.1f} s)")
    return 1 if n_failed else 0


if __name__ == "__main__":
    sys.exit(main())
