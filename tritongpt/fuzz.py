"""`gpt verify --fuzz N` and `gpt verify --case JSON`: every op on random calls drawn from its own case space,
judged by `gpt verify`'s rule; each failure shrunk to a smallest failing case, printed as one command.

    gpt verify --fuzz 200                               200 cases per op (no GPU: Triton's interpreter)
    gpt verify --fuzz 2000 --seed 7 --ops attention --budget 600
    gpt verify --case '{"op":"attention","Tk":65,"causal":false}'

Case spaces. Each op's module (tritongpt/kernels/<op>.py) ends with `fuzz_case(op, draw)` and
`fuzz_invalid(op, draw)`, written from its Limits paragraph and its block and chunk sizes: the calls the op must
get right, and calls it must refuse. They ask a `Draw` for named values (sizes skewed to block and chunk
boundaries, dtypes, memory layouts, special values, module settings such as the interpreter's block sizes);
the names and values of one call are its case, a JSON object. Replaying a case asks the same questions and
gets the recorded answers (a missing one: its simplest value), so `--case` runs exactly the failing call, and a
shrunk or hand-written case is a valid call by construction.

Checks, per case, with the kernels' outputs poisoned (NaN-filled) as in `gpt verify`:
- a valid call: `verify.check_op`, the output(s) and every input gradient against the reference. Where an input
  holds NaN or +-inf, a gradient may be finite where the reference's is not (see `check_op`). Inputs are
  built from a NaN-filled base (padding, offsets, strides), so a read outside the view shows.
- attention: rows that see no key (causal, Tq > Tk) are zero, and dropout_p = 0 gives the no-dropout output bit
  for bit; with dropout, the rule against the reference with the kernel's own keep-mask, the same output for
  the same seed, and the kept fraction of the mask within a Hoeffding bound (false alarm < 1e-9).
- an invalid call: a TypeError or ValueError with a one-line message that names the problem. Returning a
  result, any other exception, or a message without the problem's name fails.

Drawing: case i of op X under --seed S comes from random.Random("S:X:i"): the same cases on any machine and
Python, case i independent of the ones before it. --budget stops drawing (each op gets an equal share of
what is left); shrinking a failure may take SHRINK_RUNS more runs or SHRINK_SECONDS beyond it. An op stops after
MAX_FAILURES failures.

Shrinking: greedy, one named value at a time, towards its simplest value (for an integer: its smallest value,
the block edges below it, half way, one less; for a choice: the options before it), kept when the case still
fails the same way (the rule; a dropout check; a refusal; a crash of the same exception type), until no value
can be made simpler. The printed case leaves out every value at its simplest. This is Hypothesis's idea
(record the choices, shrink them, replay) without its engine: its one stop is a count of examples, not a
wall-clock budget; its draws for a seed change between its releases (the GPU image has another); and each
shrink step here is a kernel run in the interpreter (about a second), so the steps need a budget of their own.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import math
import random
import shlex
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from tritongpt import verify
from tritongpt.verify import Comparison, first_line

SHRINK_RUNS = 80  # at most this many runs to shrink one failure ...
SHRINK_SECONDS = 120.0  # ... and this long
MAX_FAILURES = 3  # per op and run: then the op stops (the same bug would be found and shrunk again)
INVALID_SHARE = 0.15  # of the drawn cases: calls the op must refuse
DTYPES = verify.DTYPES  # "fp32", "fp16", "bf16"
# Memory layouts of a drawn tensor (see Draw.tensor), contiguous the most often.
LAYOUTS = ("contiguous", "strided", "padded", "offset", "expanded", "transposed")
LAYOUT_WEIGHTS = (4, 1, 1, 1, 1, 1)
SPECIALS = ("none", "nan", "inf", "-inf")
SPECIAL_WEIGHTS = (12, 1, 1, 1)
TARGET_PAD = 2**40  # what an integer tensor's base holds outside the view: an index no op may accept


class CaseError(ValueError):
    """A case that cannot be replayed here: an unknown key, a value out of its range or not among its options."""


# ---------------------------------------------------------------------------------------------------------
# Drawing and replaying one case


class Draw:
    """The named values of one case: drawn from `rng`, or (rng None) replayed from `given`.

    The op modules' `fuzz_case` / `fuzz_invalid` call `integer`, `choice`, `dtype`, `tensor` and `setting`; what
    they get is recorded in `case` (the JSON object) with its range in `specs` (for shrinking). In a replay a
    missing value is the simplest one; a value out of range is clamped, or with `strict` refused (CaseError)."""

    def __init__(
        self,
        op: str,
        device: torch.device,
        rng: random.Random | None = None,
        given: dict[str, Any] | None = None,
        strict: bool = False,
        dtypes: Sequence[str] | None = None,
    ) -> None:
        self.op, self.device, self.rng, self.strict = op, device, rng, strict
        self.allowed_dtypes = None if dtypes is None else tuple(dtypes)  # what `dtype` draws (not replays)
        self.given = dict(given or {})
        self.case: dict[str, Any] = {"op": op}
        self.specs: dict[str, tuple[Any, ...]] = {}  # name -> ("int", lo, hi, edges) or ("choice", options)
        self.views: dict[int, tuple[torch.Tensor, torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]] = {}
        self.settings: list[tuple[Any, str, Any]] = []  # (module or dict, name, value) set while the case runs
        self.gpu = device.type == "cuda"
        self.other_device = torch.device("cpu" if self.gpu else "meta")  # for mixed-device calls
        self._gen: torch.Generator | None = None

    def _record(self, name: str, value: Any, spec: tuple[Any, ...]) -> Any:
        if name in self.case:
            raise RuntimeError(f"fuzz case space of {self.op} draws {name!r} twice")
        self.case[name], self.specs[name] = value, spec
        return value

    def integer(self, name: str, lo: int, hi: int, near: Sequence[int] = ()) -> int:
        """An int in [lo, hi], drawn skewed to `near` (block edges) and their neighbours, and to small values."""
        hi = max(lo, hi)
        edges = tuple(sorted({e + d for e in near for d in (-1, 0, 1) if lo <= e + d <= hi}))
        if self.rng is not None:
            r = self.rng.random()
            if edges and r < 0.45:
                value = self.rng.choice(edges)
            elif r < 0.6:
                value = self.rng.randint(lo, min(hi, lo + 3))
            else:  # log-uniform: small sizes (cheap in the interpreter) as often as large ones per octave
                value = lo + int(math.exp(self.rng.uniform(0.0, math.log(hi - lo + 1)))) - 1
        else:
            value = self.given.get(name, lo)
            if isinstance(value, bool) or not isinstance(value, int):
                raise CaseError(f"{name} must be an integer, got {value!r}")
            if not lo <= value <= hi:
                if self.strict:
                    raise CaseError(f"{name}={value} is outside {lo}..{hi} in this case")
                value = min(max(value, lo), hi)
        return self._record(name, value, ("int", lo, hi, edges))

    def choice(self, name: str, options: Sequence[Any], weights: Sequence[float] | None = None) -> Any:
        """One of `options` (JSON values; the first is the simplest)."""
        options = list(options)
        if self.rng is not None:
            value = self.rng.choices(options, weights=weights)[0]
        else:
            value = self.given.get(name, options[0])
            if _index(options, value) is None:
                if self.strict:
                    shown = ", ".join(json.dumps(o) for o in options)
                    raise CaseError(f"{name}={json.dumps(value)} is not one of {shown} here")
                value = options[0]
        return self._record(name, value, ("choice", options))

    def dtype(self, name: str = "dtype", same: torch.dtype | None = None) -> torch.dtype:
        """fp32 or fp16; bf16 too on a GPU (Triton's interpreter gets `tl.dot` on bf16 wrong). With `same`, also
        "same" (the simplest): that dtype. Drawing with `allowed_dtypes` (`--dtypes`) gives only those: the
        options stay the same (a case's JSON reads the same under any restriction), the others get weight 0."""
        if self.strict and not self.gpu and self.given.get(name) == "bf16":
            raise CaseError(f"{name} bf16 is drawn only on a GPU (Triton's interpreter gets bf16 tl.dot wrong)")
        options = (["same"] if same is not None else []) + self.dtypes()
        weights = None
        if self.allowed_dtypes is not None:
            same_name = verify.DTYPE_NAMES.get(same, "")
            weights = [float((same_name if o == "same" else o) in self.allowed_dtypes) for o in options]
        value = self.choice(name, options, weights)
        return same if value == "same" else DTYPES[value]

    def dtypes(self) -> list[str]:
        return ["fp32", "fp16", "bf16"] if self.gpu else ["fp32", "fp16"]

    def generator(self) -> torch.Generator:
        """The case's value generator, seeded by its "seed" (also torch's seed while the case runs)."""
        if self._gen is None:
            self._gen = torch.Generator().manual_seed(self.integer("seed", 0, 2**31 - 1))
        return self._gen

    def tensor(
        self,
        name: str,
        shape: Sequence[int],
        dtype: torch.dtype,
        scale: float = 1.0,
        offset: float = 0.0,
        high: int | None = None,
        values: torch.Tensor | None = None,
        specials: bool = False,
        layout: bool = True,
    ) -> torch.Tensor:
        """Argument `name` of `shape` on the case's device: normal values times `scale` plus `offset`, integers in
        [0, high), or `values`; with `specials`, NaN or +-inf in 1-3 elements ("<name>_special"); in a drawn
        memory layout ("<name>_layout", with `layout`):

        contiguous; strided: last-dim stride 2; padded: rows of a wider tensor ("<name>_pad" more columns);
        offset: starting "<name>_storage_offset" elements into its storage (misaligned); expanded: dim 0 of a
        2-D or larger tensor broadcast (stride 0); transposed: dims -3 and -2 swapped in memory (the model's
        (B, T, H, D) -> (B, H, T, D)). A 1-D tensor is not expanded: a LayerNorm row of one repeated value that
        is not exactly its mean in fp32 is ill-conditioned (rstd = 1/sqrt(eps) amplifies the mean's rounding), and
        the fp32 reference's own error there, the rule's budget, is 0 or not by luck of summation order.

        Returns the view the op is called with. Its base holds NaN (integers: TARGET_PAD) outside the view; the
        fuzzer makes the input gradient's leaf the base and the view inside the call."""
        shape = tuple(shape)
        gen = self.generator()
        if values is None:
            if high is None:
                values = torch.randn(shape, generator=gen) * scale + offset
            else:
                values = torch.randint(0, max(high, 1), shape, generator=gen)
        kind = self.choice(f"{name}_special", SPECIALS, SPECIAL_WEIGHTS) if specials else "none"
        if kind != "none" and values.numel():
            where = torch.randint(0, values.numel(), (int(torch.randint(1, 4, (1,), generator=gen)),), generator=gen)
            values = values.clone()
            values.view(-1)[where] = float(kind)
        values = values.to(dtype)
        allowed = [lay for lay in LAYOUTS if _layout_fits(lay, shape)] if layout else ["contiguous"]
        how = self.choice(f"{name}_layout", allowed, [LAYOUT_WEIGHTS[LAYOUTS.index(lay)] for lay in allowed])
        base_shape, view = self._layout(name, how, shape)
        fill = float("nan") if dtype.is_floating_point else TARGET_PAD
        base = torch.full(base_shape, fill, dtype=dtype, device=self.device)
        if how == "expanded":
            base.copy_(values[:1])
        else:
            view(base).copy_(values)
        t = view(base)
        self.views[id(t)] = (t, base, view)
        return t

    def _layout(self, name: str, how: str, shape: tuple[int, ...]):
        n = shape[-1] if shape else 1
        if how == "strided":
            return (*shape[:-1], 2 * n), lambda t: t[..., ::2]
        if how == "padded":
            pad = self.integer(f"{name}_pad", 1, 8)
            return (*shape[:-1], n + pad), lambda t: t[..., :n]
        if how == "offset":
            start, numel = self.integer(f"{name}_storage_offset", 1, 7), math.prod(shape)
            return (start + numel,), lambda t: t[start : start + numel].view(shape)
        if how == "expanded":
            return (1, *shape[1:]), lambda t: t.expand(shape)
        if how == "transposed":
            swapped = (*shape[:-3], shape[-2], shape[-3], shape[-1])
            return swapped, lambda t: t.transpose(-3, -2)
        return shape, lambda t: t

    def setting(self, target: Any, name: str, value: Any) -> None:
        """Set attribute (or dict item) `name` of `target` to `value` while the case runs."""
        self.settings.append((target, name, value))


def _index(options: list[Any], value: Any) -> int | None:
    """Position of value among options, types compared too (True is not 1, 1 is not 1.0)."""
    for i, option in enumerate(options):
        if type(option) is type(value) and option == value:
            return i
    return None


def _layout_fits(how: str, shape: tuple[int, ...]) -> bool:
    if how == "contiguous":
        return True
    if how in ("strided", "offset"):
        return len(shape) >= 1 and shape[-1] > 1
    if how == "padded":
        return len(shape) >= 2
    if how == "expanded":  # not a 1-D tensor's only dim: that makes constant rows (see Draw.tensor)
        return len(shape) >= 2 and shape[0] > 1
    return len(shape) >= 3  # transposed


def compact(draw: Draw) -> dict[str, Any]:
    """The case without the values at their simplest (replay fills those in): what a repro needs."""
    out = {"op": draw.op}
    for name, value in draw.case.items():
        spec = draw.specs.get(name)
        if spec is not None and _cost_of(spec, value) > 0:
            out[name] = value
    return out


def _cost_of(spec: tuple[Any, ...], value: Any) -> int:
    if spec[0] == "int":
        return value - spec[1]
    return _index(spec[1], value) or 0


def cost(draw: Draw) -> int:
    """How far a case is from the simplest one: what shrinking lowers."""
    return sum(_cost_of(draw.specs[name], value) for name, value in draw.case.items() if name in draw.specs)


def _space(op: str) -> Any:
    """The module of op's kernels, which holds its case space: where its reference is defined."""
    from tritongpt import kernels

    return importlib.import_module(getattr(kernels.implementation("reference"), op).__module__)


@dataclass
class Call:
    draw: Draw
    kwargs: dict[str, Any]
    expected_error: str | None  # an invalid call: what its error message must name; None for a valid call


def build(op: str, device: torch.device, rng: random.Random | None = None, given: dict | None = None,
          strict: bool = False, dtypes: Sequence[str] | None = None) -> Call:  # fmt: skip
    """Draw (rng) or replay (given) one case of op: a valid call, or with probability INVALID_SHARE one the op
    must refuse. `dtypes`: the dtype names a draw may give (all of the device's when None)."""
    draw = Draw(op, device, rng, given, strict, dtypes)
    space = _space(op)
    if draw.choice("invalid", [False, True], [1 - INVALID_SHARE, INVALID_SHARE]):
        kwargs, expected = space.fuzz_invalid(op, draw)
    else:
        kwargs, expected = space.fuzz_case(op, draw), None
    if strict:
        unused = sorted(set(draw.given) - set(draw.case))
        if unused:
            raise CaseError(f"{', '.join(unused)}: not used by this {op} case (unknown, or not drawn on this device)")
    return Call(draw, kwargs, expected)


# ---------------------------------------------------------------------------------------------------------
# Running one case


def _fail(name: str, note: str) -> Comparison:
    return Comparison(name, math.inf, math.nan, math.nan, False, note)


def _passed(name: str) -> Comparison:
    return Comparison(name, 0.0, 0.0, 0.0, True)


@contextlib.contextmanager
def settings_applied(settings: Sequence[tuple[Any, str, Any]]) -> Iterator[None]:
    """Outputs poisoned and each (module or dict, name, value) set while the block runs; all put back after."""
    from tritongpt.kernels import _common

    saved = []
    try:
        for target, name, value in [(_common, "POISON_OUTPUTS", True), *settings]:
            if isinstance(target, dict):
                saved.append((target, name, target[name]))
                target[name] = value
            else:
                saved.append((target, name, getattr(target, name)))
                setattr(target, name, value)
        yield
    finally:
        for target, name, value in reversed(saved):
            if isinstance(target, dict):
                target[name] = value
            else:
                setattr(target, name, value)


def run_case(call: Call) -> list[Comparison]:
    """Every check of one case (see the module docstring); a crash is one failed "run" comparison."""
    from tritongpt import kernels

    op, draw = call.draw.op, call.draw
    kernel = getattr(kernels.implementation("triton"), op)
    reference = getattr(kernels.implementation("reference"), op)
    with settings_applied(draw.settings), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # numpy's overflow and NaN warnings in the interpreter
        torch.manual_seed(draw.case.get("seed", 0))
        try:
            if call.expected_error is not None:
                return [_check_refused(kernel, call.kwargs, call.expected_error)]
            return _check_valid(op, draw, call.kwargs, kernel, reference)
        except Exception as e:  # a crash fails this case; its row says how
            return [_fail("run", f"{type(e).__name__}: {first_line(e)}")]


def _check_refused(kernel: Callable[..., Any], kwargs: dict[str, Any], expected: str) -> Comparison:
    try:
        kernel(**kwargs)
    except (TypeError, ValueError) as e:
        message = str(e)
        if "\n" in message.strip():
            return _fail("error", f"{type(e).__name__} over several lines: {first_line(e)}")
        if expected not in message:
            return _fail("error", f"{type(e).__name__} does not name {expected!r}: {message}")
        return _passed("error")
    except Exception as e:
        return _fail("error", f"{type(e).__name__} instead of a TypeError or ValueError naming {expected!r}: "
                              f"{first_line(e)}")  # fmt: skip
    return _fail("error", f"returned a result instead of refusing the call ({expected})")


def _check_valid(op, draw, kwargs, kernel, reference) -> list[Comparison]:
    inputs: dict[str, Any] = {}
    views: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}
    for name, value in kwargs.items():
        entry = draw.views.get(id(value))
        if entry is not None and entry[0] is value:
            inputs[name], views[name] = entry[1], entry[2]
        else:
            inputs[name] = value
    # check_op takes the high precision from the first tensor: the widest first (add_layer_norm's residual).
    inputs = dict(sorted(inputs.items(), key=lambda kv: -_width(kv[1])))
    grad_names = tuple(n for n, v in inputs.items() if isinstance(v, torch.Tensor) and v.is_floating_point())
    specials = any(
        isinstance(v, torch.Tensor) and v.is_floating_point() and not torch.isfinite(v).all() for v in kwargs.values()
    )

    def viewed(fn: Callable[..., Any]) -> Callable[..., Any]:
        return lambda **kw: fn(**{k: views[k](v) if k in views else v for k, v in kw.items()})

    seed = draw.case.get("seed", 0)
    if op == "attention":
        return check_attention(kernel, viewed, inputs, kwargs, grad_names, seed)
    return verify.check_op(viewed(kernel), viewed(reference), inputs, grad_names, seed=seed, finite_grads_ok=specials)


def _width(value: Any) -> int:
    return value.element_size() if isinstance(value, torch.Tensor) and value.is_floating_point() else 0


def check_attention(kernel, viewed, inputs, kwargs, grad_names, seed) -> list[Comparison]:
    """The rule (against the reference with the kernel's own dropout mask), then rows without keys and the
    dropout checks: "p=0" (bit-identical to no dropout), "same seed" (the same output again), "kept" (the
    mask's kept fraction within a binomial tail bound of 1 - p: Hoeffding's, a false alarm < 1e-9 at any size;
    ~6.5 sigma at p = 0.5, ~11 sigma at p = 0.1), "other seed" (torch seed + 1 draws another mask; only where
    two independent masks would agree with probability < 1e-9). `viewed(fn)` wraps a function to take the
    inputs' bases (the fuzzer's layouts); `gpt verify`'s dropout variant passes the identity."""
    from tritongpt.kernels import attention as attention_module

    q, k = kwargs["q"], kwargs["k"]
    causal, p, scale = kwargs["causal"], kwargs["dropout_p"], kwargs["scale"]
    (b, h, tq, _), tk = q.shape, k.shape[2]
    first = max(tq - tk, 0) if causal else 0  # rows before `first` see no key: zero here, NaN in the reference
    keep = attention_module.dropout_keep_mask(seed, b, h, tq, tk, p, q.device)[:, :, first:] if p > 0 else None

    def kernel_rows(**kw):
        torch.manual_seed(seed)  # the dropout mask's seed comes from torch's generator
        return kernel(**kw)[:, :, first:]

    def reference_rows(q, k, v, causal, dropout_p, scale):
        att = attention_module.attention_probs_ref(q[:, :, first:], k, causal, scale)
        if keep is not None:
            att = att * keep.to(att.dtype) / (1.0 - dropout_p)
        return att @ v

    result = verify.check_op(viewed(kernel_rows), viewed(reference_rows), inputs, grad_names, seed=seed)
    with torch.no_grad():
        torch.manual_seed(seed)
        out = kernel(**kwargs)
        if first:
            zero = torch.equal(out[:, :, :first], torch.zeros_like(out[:, :, :first]))
            result.append(_passed("no keys") if zero else _fail("no keys", "rows that see no key are not 0"))
        if p == 0:
            plain = kernel(kwargs["q"], kwargs["k"], kwargs["v"], causal=causal, scale=scale)
            same = torch.equal(out, plain)
            result.append(_passed("p=0") if same else _fail("p=0", "dropout_p=0 differs from no dropout"))
            return result
        torch.manual_seed(seed)
        same = torch.equal(out, kernel(**kwargs))
        result.append(_passed("same seed") if same else _fail("same seed", "same seed, different output"))
        n = keep.numel()
        if n:
            kept = keep.float().mean().item()
            bound = math.sqrt(math.log(2 / 1e-9) / (2 * n))  # Hoeffding: P(|kept - (1 - p)| > bound) < 1e-9
            note = f"kept {kept:.4f} of {n}, expected {1 - p:.4f} +- {bound:.4f}"
            off = abs(kept - (1 - p))
            result.append(Comparison("kept", off, math.nan, bound, off <= bound, "" if off <= bound else note))
        if n * math.log(p * p + (1 - p) * (1 - p)) < math.log(1e-9):  # else equal masks are no evidence
            full = attention_module.dropout_keep_mask(seed, b, h, tq, tk, p, q.device)
            other = attention_module.dropout_keep_mask(seed + 1, b, h, tq, tk, p, q.device)
            same = torch.equal(full, other)
            result.append(_fail("other seed", "another seed drew the same mask") if same else _passed("other seed"))
    return result


def failure_kind(comparisons: Sequence[Comparison]) -> str:
    """How a case failed ("" when it passed): what a shrunk case must keep failing with."""
    failed = [c for c in comparisons if not c.ok]
    if not failed:
        return ""
    c = failed[0]
    if c.name == "run":
        return "crash " + c.note.split(":")[0]
    if c.name in ("error", "no keys", "p=0", "same seed", "kept", "other seed"):
        return c.name
    return "rule"


# ---------------------------------------------------------------------------------------------------------
# Shrinking


def _candidates(spec: tuple[Any, ...], value: Any) -> list[Any]:
    """Simpler values than `value`, the simplest first."""
    if spec[0] == "choice":
        return spec[1][: _index(spec[1], value) or 0]
    lo, hi, edges = spec[1], spec[2], spec[3]
    if hi - lo > 2**20:  # a seed: only its simplest value is worth a run
        return [lo] if value > lo else []
    out = [lo, *(e for e in edges if e < value), (lo + value) // 2, value - 1]
    return [v for v in dict.fromkeys(out) if lo <= v < value]


def shrink(call: Call, kind: str, runs: int = SHRINK_RUNS, seconds: float = SHRINK_SECONDS) -> tuple[Call, int]:
    """A smallest case found that fails with `kind`, and the number of runs it took."""
    op, device = call.draw.op, call.draw.device
    deadline = time.perf_counter() + seconds
    best, n = call, 0
    progress = True
    while progress and n < runs and time.perf_counter() < deadline:
        progress = False
        for name in list(best.draw.case):
            spec = best.draw.specs.get(name)
            if spec is None or name not in best.draw.case:
                continue
            for value in _candidates(spec, best.draw.case[name]):
                if n >= runs or time.perf_counter() >= deadline:
                    break
                try:
                    candidate = build(op, device, given={**best.draw.case, name: value},
                                      dtypes=best.draw.allowed_dtypes)  # fmt: skip
                except CaseError:
                    continue
                if cost(candidate.draw) >= cost(best.draw):
                    continue
                n += 1
                if failure_kind(run_case(candidate)) == kind:
                    best, progress = candidate, True
                    break
    return best, n


# ---------------------------------------------------------------------------------------------------------
# The commands


def repro(case: dict[str, Any]) -> str:
    return "gpt verify --case " + shlex.quote(json.dumps(case, separators=(",", ":")))


def why_failed(comparisons: Sequence[Comparison]) -> str:
    failed = [c for c in comparisons if not c.ok]
    return "; ".join(
        f"{c.name}: {c.note}" if c.note else f"{c.name}: err {c.err:.2e} > bound {c.bound:.2e}" for c in failed[:3]
    )


def _print(line: str) -> None:
    print(line, flush=True)  # a long campaign's progress shows in a log file as it goes


# record(op, i, call, comparisons, seconds, shrunk): each case as it is judged (shrunk None), and a failed one again
# once shrunk (shrunk: the compact case that fails alone, or None where the shrunk case passes alone).
Record = Callable[[str, int, Call, list[Comparison], float, dict[str, Any] | None], None]


def fuzz(ops: Sequence[str], n: int, seed: int, budget: float | None, device: torch.device,
         out: Callable[[str], None] = _print, dtypes: Sequence[str] | None = None,
         record: Record | None = None) -> int:  # fmt: skip
    """Up to `n` cases per op (within `budget` seconds in all); prints each failure, shrunk, as a command.
    `dtypes`: the dtype names drawn (all of the device's when None); `record`: told of every case (`gpt verify
    --out` writes them down). Returns the number of failed cases."""
    where = "CPU (Triton interpreter)" if device.type == "cpu" else torch.cuda.get_device_name(device)
    out(f"gpt verify --fuzz: triton vs reference, {where}, torch {torch.__version__}, seed {seed}, {n} cases per op"
        + (f", dtypes {','.join(dtypes)}" if dtypes is not None else "")
        + (f", budget {budget:g} s" if budget is not None else ""))  # fmt: skip
    t0 = time.perf_counter()
    end = t0 + budget if budget is not None else math.inf
    total = failed = 0
    for i_op, op in enumerate(ops):
        op_end = time.perf_counter() + (end - time.perf_counter()) / (len(ops) - i_op)
        cases = invalid = 0
        seen: list[dict[str, Any]] = []
        op_t0 = time.perf_counter()
        for i in range(n):
            if time.perf_counter() >= op_end:
                break
            case_t0 = time.perf_counter()
            call = build(op, device, rng=random.Random(f"{seed}:{op}:{i}"), dtypes=dtypes)
            comparisons = run_case(call)
            if record is not None:
                record(op, i, call, comparisons, time.perf_counter() - case_t0, None)
            cases += 1
            invalid += call.expected_error is not None
            kind = failure_kind(comparisons)
            if not kind:
                continue
            failed += 1
            out(f"FAIL {op} case {i}: {why_failed(comparisons)}")
            out(f"  drawn: {json.dumps(compact(call.draw), separators=(',', ':'))}")
            small, runs = shrink(call, kind)
            case = compact(small.draw)
            again = failure_kind(run_case(build(op, device, given=case, strict=True)))
            duplicate = f", as failure {seen.index(case) + 1} above" if case in seen else ""
            out(f"  shrunk in {runs} runs to a case that {'fails' if again else 'PASSES'} alone{duplicate}:")
            out(f"  {repro(case)}")
            if record is not None:
                record(op, i, call, comparisons, time.perf_counter() - case_t0, case if again else None)
            seen.append(case)
            if len(seen) >= MAX_FAILURES:
                out(f"  {op}: {MAX_FAILURES} failures, on to the next op")
                break
        total += cases
        status = f"{len(seen)} failed" if seen else "all passed"
        out(f"{op:<20} {cases:5d} cases ({invalid} invalid calls)  {status}  {time.perf_counter() - op_t0:6.1f} s")
    out(f"{total} cases, {failed} failed: {'FAILED' if failed else 'all passed'} ({time.perf_counter() - t0:.1f} s)")
    return failed


def run_one(case_json: str, device: torch.device, out: Callable[[str], None] = print) -> int:
    """`gpt verify --case`: one case, as a table of `gpt verify`. Returns the exit status: 0 passed, 1 failed, 2 a
    case that cannot be replayed here (with a one-line error)."""
    case = parse_case(case_json)
    try:
        call = build(case["op"], device, given=case, strict=True)
    except CaseError as e:
        print(f"gpt verify: error: --case: {e}", file=sys.stderr)
        return 2
    out(f"case {json.dumps(call.draw.case, separators=(',', ':'))}")
    out(verify.HEADER)
    first = next((v for v in call.kwargs.values() if isinstance(v, torch.Tensor)), None)
    shape = "x".join(str(s) for s in first.shape) if first is not None else "-"
    dtype = first.dtype if first is not None and first.dtype in verify.DTYPE_NAMES else torch.float32
    row_case = verify.Case(case["op"], shape, dtype, {}, ())
    comparisons = run_case(call)
    for c in comparisons:
        out(verify._row(row_case, c))
    n_failed = sum(not c.ok for c in comparisons)
    out(f"{len(comparisons)} checks, {n_failed} failed: {'FAILED' if n_failed else 'all passed'}")
    return 1 if n_failed else 0


def parse_case(text: str) -> dict[str, Any]:
    """The JSON object of --case, with an "op" among kernels.OPS (CaseError otherwise)."""
    from tritongpt import kernels

    try:
        case = json.loads(text)
    except json.JSONDecodeError as e:
        raise CaseError(f"--case is not JSON: {e}") from None
    if not isinstance(case, dict) or case.get("op") not in kernels.OPS:
        raise CaseError(f'--case must be a JSON object with "op" one of {", ".join(kernels.OPS)}')
    return case


def argument_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with verify's --fuzz / --case arguments, or None (verify checks --budget)."""
    if args.fuzz is not None and args.case is not None:
        return "--fuzz and --case exclude each other"
    if args.fuzz is not None and args.fuzz < 1:
        return f"--fuzz takes a number of cases per op >= 1, got {args.fuzz}"
    if args.backend != "triton":
        return "--fuzz and --case check the triton backend"
    if args.case is not None:
        try:
            parse_case(args.case)
        except CaseError as e:
            return str(e)
    return None
