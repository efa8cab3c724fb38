"""Per-op benchmark cases: the plan (what is timed), inputs, each provider's function, the work counts, the runner.

A case is one line of `gpt bench --plan`: `op mode shape dtype provider`.

Providers, each an implementation chosen through `kernels.implementation(name)`:
    triton            our kernels ("triton")
    reference         the from-scratch PyTorch reference, eager ("reference")
    native            torch's own ops ("native"): F.layer_norm, F.gelu, SDPA by its default dispatch
    compile           torch.compile of the reference (static shapes, compiled afresh for each shape)
    sdpa-flash, sdpa-cudnn, sdpa-efficient, sdpa-math
                      attention only: the native attention with SDPA pinned to one backend
                      (`torch.nn.attention.sdpa_kernel`), so the best of torch is known, not only its default
An implementation that lacks an op (the LM head's `linear_cross_entropy` until it lands), and an SDPA backend
that cannot run a case, are skipped with the reason in the notes; a provider that raises is a failure.

Modes: "fwd" (a training forward: inputs require grad, so saved statistics are part of the cost), "bwd"
(backward through a graph built once outside the timed region) and "fwd+bwd". The LM head (the fused
linear + cross-entropy of the last layer) is timed fwd+bwd only: a fused implementation computes its
gradients in the forward.

Sweeps, scale "gpu" (what GPT-2 124M training runs: B = 16, T = 1024, so 16384 rows; bf16 unless noted):
    attention             (16, 12, 1024, 64) causal first, then dropout 0.1 there; T = 256 ... 8192 at H = 12,
                          D = 64 with B*T = 16384; the same T at D = 128, H = 16
    layer_norm            16384 x {768, 1024, 1280, 1600}, "fp32": under bf16 autocast the model's LayerNorm
                          reads the fp32 residual stream, with fp32 weight and bias
    add_layer_norm        the same rows, "bf16+fp32": x bf16 (a branch's output), residual, weight, bias fp32
    gelu                  16384 x {3072, 4096, 5120, 6400} (the MLP's 4x hidden layer), bf16
    bias_gelu             the same, "bf16+fp32": x bf16 (the Linear's output), bias fp32
    linear_cross_entropy  N x C x V = 16384 x 768 x 50304 (the padded GPT-2 vocabulary), bf16
"quick" (the CPU smoke run) and "interpret" (Triton's CPU interpreter) time tiny fp32 versions of each.

Work counts: LayerNorm and GELU report effective bandwidth from the bytes a fused kernel must move at
least (each tensor read or written once in its own dtype; weights, bias and the fp32 mean/rstd per row
included); attention 4*B*H*T^2*D FLOPs forward, halved when causal, 2.5x that backward; the LM head its
matmul FLOPs, 2*N*C*V forward and 4*N*C*V backward.
"""

from __future__ import annotations

import contextlib
import fnmatch
import itertools
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from tritongpt import kernels
from tritongpt.bench import harness
from tritongpt.kernels import OPS

PROVIDERS = ("triton", "reference", "native", "compile")  # every op
SDPA_BACKENDS = {  # attention only: provider -> torch.nn.attention.SDPBackend member
    "sdpa-flash": "FLASH_ATTENTION",
    "sdpa-cudnn": "CUDNN_ATTENTION",
    "sdpa-efficient": "EFFICIENT_ATTENTION",
    "sdpa-math": "MATH",
}
ALL_PROVIDERS = PROVIDERS + tuple(SDPA_BACKENDS)
MODES = ("fwd", "bwd", "fwd+bwd")
SCALES = ("gpu", "quick", "interpret")

# Dtype label -> (the activation's dtype, the dtype of the rest: residual, weight, bias).
DTYPES = {
    "bf16": (torch.bfloat16, torch.bfloat16),
    "fp32": (torch.float32, torch.float32),
    "bf16+fp32": (torch.bfloat16, torch.float32),
}

GPT2_WIDTHS = (768, 1024, 1280, 1600)  # 124M, 355M, 774M, 1558M
TOKENS = 16384  # rows of one GPT-2 124M training micro-batch: B = 16 x T = 1024


class Unavailable(Exception):
    """A provider that cannot run a case here (no kernel for it, no GPU, an SDPA backend's constraints)."""


# ---------------------------------------------------------------------------------------------------------
# Inputs and work counts. A shape is a dict: {"rows", "width"} for the row-wise ops, {"B", "H", "T", "D"}
# (and "P", the dropout probability) for attention, {"N", "C", "V"} for the LM head. `make` returns
# (args, kwargs); every tensor that requires grad is a leaf to reset.

Args = tuple[tuple, dict]


def _randn(shape, dtype, device, g, scale=1.0, shift=0.0, grad=True) -> torch.Tensor:
    t = torch.randn(shape, dtype=torch.float32, device=device, generator=g).mul_(scale).add_(shift).to(dtype)
    return t.requires_grad_(grad)


def _make_layer_norm(s, act, rest, device, g) -> Args:
    x = _randn((s["rows"], s["width"]), act, device, g)
    w = _randn((s["width"],), rest, device, g, 0.1, 1.0)
    b = _randn((s["width"],), rest, device, g, 0.1)
    return (x, w, b, 1e-5), {}


def _make_add_layer_norm(s, act, rest, device, g) -> Args:
    (x, w, b, eps), _ = _make_layer_norm(s, act, rest, device, g)
    r = _randn((s["rows"], s["width"]), rest, device, g)
    return (x, r, w, b, eps), {}


def _make_gelu(s, act, rest, device, g) -> Args:
    return (_randn((s["rows"], s["width"]), act, device, g),), {}


def _make_bias_gelu(s, act, rest, device, g) -> Args:
    x = _randn((s["rows"], s["width"]), act, device, g)
    return (x, _randn((s["width"],), rest, device, g, 0.1)), {}


def _make_attention(s, act, rest, device, g) -> Args:
    shape = (s["B"], s["H"], s["T"], s["D"])
    return tuple(_randn(shape, act, device, g) for _ in range(3)), {"causal": True, "dropout_p": s.get("P", 0.0)}


def _make_linear_cross_entropy(s, act, rest, device, g) -> Args:
    x = _randn((s["N"], s["C"]), act, device, g)
    w = _randn((s["V"], s["C"]), act, device, g, 0.02)  # GPT-2's init: logits of order 1
    targets = torch.randint(s["V"], (s["N"],), device=device, generator=g)
    return (x, w, targets), {"ignore_index": -1}


def _es(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def _layer_norm_bytes(s, act, rest, mode) -> float:
    n, c, a, r = s["rows"], s["width"], _es(act), _es(rest)
    stats = 2 * n * 4  # fp32 mean and rstd per row
    fwd = 2 * n * c * a + 2 * c * r + stats  # x -> y (in x's dtype); w, b
    bwd = 3 * n * c * a + c * r + stats + 2 * c * r  # x, dy -> dx; w, stats; dw, db
    return {"fwd": fwd, "bwd": bwd, "fwd+bwd": fwd + bwd}[mode]


def _add_layer_norm_bytes(s, act, rest, mode) -> float:
    """x (act) + residual (rest) -> y and the sum, both in the promoted dtype; backward reads the saved sum,
    dy and dsum and writes dx and dresidual (one tensor when the two share a dtype: they are equal)."""
    n, c, a, r = s["rows"], s["width"], _es(act), _es(rest)
    p = max(a, r)
    stats = 2 * n * 4
    fwd = n * c * (a + r + 2 * p) + 2 * c * r + stats
    grads_out = n * c * (a + r) if a != r else n * c * a
    bwd = 3 * n * c * p + grads_out + c * r + stats + 2 * c * r
    return {"fwd": fwd, "bwd": bwd, "fwd+bwd": fwd + bwd}[mode]


def _gelu_bytes(s, act, rest, mode, bias=False) -> float:
    n, a, r = s["rows"] * s["width"], _es(act), _es(rest)
    fwd = 2 * n * a + (s["width"] * r if bias else 0)  # x -> y (+ bias)
    bwd = 3 * n * a + (2 * s["width"] * r if bias else 0)  # x, dy -> dx (+ bias, dbias)
    return {"fwd": fwd, "bwd": bwd, "fwd+bwd": fwd + bwd}[mode]


def attention_flops(s, mode, causal=True) -> float:
    fwd = 4 * s["B"] * s["H"] * s["T"] ** 2 * s["D"] / (2 if causal else 1)
    return {"fwd": fwd, "bwd": 2.5 * fwd, "fwd+bwd": 3.5 * fwd}[mode]


def linear_cross_entropy_flops(s, mode) -> float:
    fwd = 2 * s["N"] * s["C"] * s["V"]  # logits = x @ W^T
    return {"fwd": fwd, "bwd": 2 * fwd, "fwd+bwd": 3 * fwd}[mode]  # dx = dlogits @ W, dW = dlogits^T @ x


@dataclass(frozen=True)
class OpSpec:
    name: str
    unit: str  # "GB/s" (memory-bound) or "TFLOP/s" (matmul-bound)
    ceiling: str  # which measured ceiling the unit is a fraction of: "copy" or "matmul"
    make: Callable[[dict, torch.dtype, torch.dtype, torch.device, torch.Generator], Args]
    work: Callable[[dict, torch.dtype, torch.dtype, str], float]  # (shape, act, rest, mode) -> bytes or FLOPs
    modes: tuple[str, ...] = MODES
    providers: tuple[str, ...] = PROVIDERS

    def label(self, s: dict) -> str:
        if "rows" in s:
            return f"{s['rows']}x{s['width']}"
        return "x".join(f"{k}{v:g}" for k, v in s.items())

    def rate(self, s: dict, dtype: str, mode: str, ms: float) -> float:
        scale = 1e9 if self.unit == "GB/s" else 1e12
        return self.work(s, *DTYPES[dtype], mode) / (ms * 1e-3) / scale


SPECS = {
    "attention": OpSpec(
        "attention", "TFLOP/s", "matmul", _make_attention, lambda s, a, r, m: attention_flops(s, m),
        providers=ALL_PROVIDERS,
    ),
    "layer_norm": OpSpec("layer_norm", "GB/s", "copy", _make_layer_norm, _layer_norm_bytes),
    "add_layer_norm": OpSpec("add_layer_norm", "GB/s", "copy", _make_add_layer_norm, _add_layer_norm_bytes),
    "gelu": OpSpec("gelu", "GB/s", "copy", _make_gelu, _gelu_bytes),
    "bias_gelu": OpSpec(
        "bias_gelu", "GB/s", "copy", _make_bias_gelu, lambda s, a, r, m: _gelu_bytes(s, a, r, m, bias=True)
    ),
    "linear_cross_entropy": OpSpec(
        "linear_cross_entropy", "TFLOP/s", "matmul", _make_linear_cross_entropy,
        lambda s, a, r, m: linear_cross_entropy_flops(s, m), modes=("fwd+bwd",),
    ),
}  # fmt: skip


# ---------------------------------------------------------------------------------------------------------
# Sweeps and the plan


def sweep(op: str, scale: str) -> list[tuple[dict, str]]:
    """(shape, dtype label) of every case of `op` at `scale`, the most telling first (a run cut short by its
    time budget keeps those)."""
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; choose from {', '.join(SCALES)}")
    if op == "attention":
        if scale == "interpret":
            return [({"B": 1, "H": 2, "T": 32, "D": 16}, "fp32")]
        if scale == "quick":
            shapes = [{"B": 1, "H": 2, "T": 128, "D": 64}, {"B": 1, "H": 2, "T": 128, "D": 64, "P": 0.1}]
            return [(s, "fp32") for s in shapes + [{"B": 2, "H": 2, "T": 64, "D": 64}]]
        target = {"B": 16, "H": 12, "T": 1024, "D": 64}
        shapes = [target, {**target, "P": 0.1}]
        shapes += [{"B": TOKENS // t, "H": 12, "T": t, "D": 64} for t in (256, 512, 2048, 4096, 8192)]
        shapes += [{"B": TOKENS // t, "H": 16, "T": t, "D": 128} for t in (256, 512, 1024, 2048, 4096, 8192)]
        return [(s, "bf16") for s in shapes]
    if op == "linear_cross_entropy":
        if scale == "interpret":
            return [({"N": 16, "C": 32, "V": 96}, "fp32")]
        if scale == "quick":
            return [({"N": 256, "C": 64, "V": 1000}, "fp32")]
        return [({"N": TOKENS, "C": 768, "V": 50304}, "bf16")]
    mult = 4 if op in ("gelu", "bias_gelu") else 1  # GELU runs on the MLP's 4x-wide hidden layer
    if scale == "interpret":
        return [({"rows": 16, "width": 64 * mult}, "fp32")]
    if scale == "quick":
        return [({"rows": 256, "width": w * mult}, "fp32") for w in (128, 768)]
    dtype = {"layer_norm": "fp32", "add_layer_norm": "bf16+fp32", "bias_gelu": "bf16+fp32"}.get(op, "bf16")
    return [({"rows": TOKENS, "width": w * mult}, dtype) for w in GPT2_WIDTHS]


@dataclass(frozen=True)
class Case:
    """One timing: `op mode shape dtype provider`, the line `gpt bench --plan` prints."""

    op: str
    mode: str
    shape: tuple[tuple[str, float], ...]  # the shape dict's items, in order
    dtype: str
    provider: str

    @property
    def dims(self) -> dict:
        return dict(self.shape)

    @property
    def label(self) -> str:
        return SPECS[self.op].label(self.dims)

    def line(self) -> str:
        return f"{self.op} {self.mode} {self.label} {self.dtype} {self.provider}"


def plan(
    scale: str,
    ops: tuple[str, ...] = OPS,
    modes: tuple[str, ...] = MODES,
    providers: tuple[str, ...] = ALL_PROVIDERS,
    match: tuple[str, ...] = (),
) -> list[Case]:
    """Every case of `ops` at `scale`, in run order; `match`: fnmatch patterns on `Case.line()`, any may match."""
    cases = []
    for op in (o for o in OPS if o in ops):
        spec = SPECS[op]
        for shape, dtype in sweep(op, scale):
            for provider in (p for p in spec.providers if p in providers):
                for mode in (m for m in spec.modes if m in modes):
                    case = Case(op, mode, tuple(shape.items()), dtype, provider)
                    if not match or any(fnmatch.fnmatchcase(case.line(), pat) for pat in match):
                        cases.append(case)
    return cases


# ---------------------------------------------------------------------------------------------------------
# Providers and runners


def provider_fn(op: str, provider: str, device: torch.device) -> Callable:
    """The callable `provider` runs for `op`; raises Unavailable with the reason where it cannot run here."""
    if provider in SDPA_BACKENDS:
        if op != "attention":
            raise ValueError(f"provider {provider} times attention only, not {op}")
        return _pinned_sdpa(provider)
    impl = "reference" if provider == "compile" else provider
    if impl not in kernels.IMPLEMENTATIONS:
        raise ValueError(f"unknown provider {provider!r}; choose from {', '.join(ALL_PROVIDERS)}")
    if impl == "triton":
        from tritongpt.kernels._common import interpreter_enabled

        if device.type != "cuda" and not interpreter_enabled():
            raise Unavailable("no CUDA GPU here; pass --interpret to run the kernels in Triton's CPU interpreter")
    fn = getattr(kernels.implementation(impl), op, None)
    if fn is None:
        raise Unavailable(f'kernels.implementation("{impl}") has no {op} yet')
    if provider == "compile":
        torch._dynamo.reset()  # a fresh cache per case: static shapes, no recompile limit
        return torch.compile(fn, dynamic=False)
    return fn


def _pinned_sdpa(provider: str) -> Callable:
    """The native attention with SDPA restricted to one backend (its backward follows the forward's kernel)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = getattr(SDPBackend, SDPA_BACKENDS[provider])
    native = kernels.implementation("native").attention

    def attention(q, k, v, causal=True, dropout_p=0.0, scale=None):
        with sdpa_kernel(backend):
            return native(q, k, v, causal=causal, dropout_p=dropout_p, scale=scale)

    return attention


def sdpa_refusal(err: BaseException, caught: list) -> str | None:
    """SDPA's reason for not running a pinned backend (its warnings), or None if `err` is another failure."""
    text = str(err)
    if not isinstance(err, RuntimeError) or not ("No available kernel" in text or "No viable backend" in text):
        return None
    reasons = [str(w.message).split(" (Triggered internally")[0].strip() for w in caught]
    joined = ""
    for r in dict.fromkeys(r for r in reasons if r):  # "X not used because:" runs on into its reason
        joined += r if not joined else (" " if joined.endswith(":") else "; ") + r
    return joined or text.splitlines()[0]


def _tensors(out) -> list[torch.Tensor]:
    return list(out) if isinstance(out, (tuple, list)) else [out]


def _nbytes(args: Args) -> int:
    return sum(t.numel() * t.element_size() for t in args[0] if isinstance(t, torch.Tensor))


def make_sets(op: str, shape: dict, dtype: str, device: torch.device, seed: int = 0) -> list[Args]:
    """Copies of one case's inputs, as many as `harness.rotation_count` asks for on this device."""
    spec = SPECS[op]
    act, rest = DTYPES[dtype]
    g = torch.Generator(device=device).manual_seed(seed)
    first = spec.make(shape, act, rest, device, g)
    n = harness.rotation_count(_nbytes(first), harness.l2_cache_bytes(device))
    return [first] + [spec.make(shape, act, rest, device, g) for _ in range(n - 1)]


def build_runner(fn: Callable, sets: list[Args], mode: str) -> tuple[Callable[[], None], list[torch.Tensor]]:
    """A no-argument callable that runs `mode` once on the next input set, and the leaves to reset to None.

    fwd: fn(inputs); bwd: backward through a graph built here, kept with retain_graph; fwd+bwd: both. The
    upstream gradients are random, drawn once per set (from the set's outputs, so any output shape works).
    On CUDA the "bwd" graph is built on a stream of its own, and each call runs its backward there, joined to
    the caller's stream before and after: autograd runs a backward op on its forward's stream, so this keeps
    the call capturable into a CUDA graph from any stream (`harness.bench_cudagraph`).
    """
    leaves = [t for args, _ in sets for t in args if isinstance(t, torch.Tensor) and t.requires_grad]
    if mode == "fwd":
        it = itertools.cycle(sets)

        def run_fwd() -> None:
            args, kwargs = next(it)
            fn(*args, **kwargs)

        return run_fwd, leaves
    cuda = any(t.is_cuda for t in leaves)
    stream = torch.cuda.Stream() if cuda and mode == "bwd" else None
    prepared = []
    with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
        for args, kwargs in sets:
            outs = _tensors(fn(*args, **kwargs))
            grads = [torch.randn_like(o) for o in outs]
            prepared.append((args, kwargs, outs if mode == "bwd" else None, grads))
    del outs
    if stream is not None:
        torch.cuda.current_stream().wait_stream(stream)
    it = itertools.cycle(prepared)
    if mode == "bwd":

        def run_bwd() -> None:
            _, _, outs, grads = next(it)
            if stream is None:
                torch.autograd.backward(outs, grads, retain_graph=True)
                return
            caller = torch.cuda.current_stream()
            stream.wait_stream(caller)
            with torch.cuda.stream(stream):
                torch.autograd.backward(outs, grads, retain_graph=True)
            caller.wait_stream(stream)

        return run_bwd, leaves
    if mode == "fwd+bwd":

        def run_fwd_bwd() -> None:
            args, kwargs, _, grads = next(it)
            torch.autograd.backward(_tensors(fn(*args, **kwargs)), grads)

        return run_fwd_bwd, leaves
    raise ValueError(f"unknown mode {mode!r}; choose from {', '.join(MODES)}")


# ---------------------------------------------------------------------------------------------------------
# Running the plan: every case as long-format rows, with a tally of what was measured, skipped and failed.


@dataclass
class RunConfig:
    device: torch.device
    warmup_ms: float = 25.0
    rep_ms: float = 100.0
    min_reps: int = 10
    deadline: float = math.inf  # clock() after which the remaining cases are skipped
    cudagraph: bool = True  # on CUDA, also time cases under harness.CUDAGRAPH_BELOW_MS from a CUDA graph
    seed: int = 0
    clock: Callable[[], float] = time.monotonic


@dataclass
class Tally:
    """What a run did with its cases; `notes` say why each skip or failure happened (summary, notes.txt)."""

    measured: int = 0
    skipped: int = 0
    failed: int = 0
    notes: list[str] = field(default_factory=list)

    def skip(self, n: int, note: str) -> None:
        self.skipped += n
        self.notes.append(note)

    def fail(self, n: int, note: str) -> None:
        self.failed += n
        self.notes.append(note)


def run_cases(
    cases: list[Case],
    cfg: RunConfig,
    ceilings: dict,
    tally: Tally,
    emit: Callable[[list[dict]], None] = lambda rows: None,
    log=print,
) -> None:
    """Time `cases` (a `plan`, in its order); `emit` gets each shape's rows as soon as the shape is done.

    Rows: {op, provider, mode, shape, dtype, method, metric, value}. Metrics per timing method: ms, ms_p20,
    ms_p80, the op's rate (GB/s or TFLOP/s) and frac_ceiling; peak_mem_MB (CUDA) with the first method.
    The time budget (`cfg.deadline`) is checked before every case; what it leaves out is counted as skipped.
    """
    groups: dict[tuple, list[Case]] = {}
    for c in cases:
        groups.setdefault((c.op, c.shape, c.dtype), []).append(c)
    keyed = list(groups.items())
    for n_group, ((op, shape_items, dtype), group) in enumerate(keyed):
        label, where = group[0].label, f"{op} {group[0].label} {dtype}"
        handled = 0  # cases of this group measured, skipped or failed
        rows: list[dict] = []
        ms: dict[tuple[str, str], float] = {}
        sets = None
        for provider, pcases in itertools.groupby(group, key=lambda c: c.provider):
            pcases = list(pcases)
            if cfg.clock() > cfg.deadline:
                break
            try:
                fn = provider_fn(op, provider, cfg.device)
                if sets is None:
                    sets = make_sets(op, dict(shape_items), dtype, cfg.device, cfg.seed)
            except Unavailable as e:
                tally.skip(len(pcases), f"{where} `{provider}`: skipped: {e}")
                log(f"  {op} {label} {provider}: skipped ({e})")
                handled += len(pcases)
                continue
            except Exception as e:
                tally.fail(len(pcases), f"{where} `{provider}`: failed ({harness.why_failed(e)})")
                log(f"  {op} {label} {provider}: FAILED ({harness.why_failed(e)})")
                handled += len(pcases)
                continue
            for i, case in enumerate(pcases):
                if cfg.clock() > cfg.deadline:
                    break
                outcome = _run_case(case, fn, sets, cfg, ceilings, rows, tally.notes.append)
                handled += 1
                if isinstance(outcome, float):
                    tally.measured += 1
                    ms[provider, case.mode] = outcome
                elif outcome.startswith("skip:"):  # the backend refuses this shape: every mode alike
                    why = outcome.removeprefix("skip:")
                    tally.skip(len(pcases) - i, f"{where} `{provider}`: skipped: {why}")
                    log(f"  {op} {label} {provider}: skipped ({why})")
                    handled += len(pcases) - i - 1
                    break
                else:
                    tally.fail(1, f"{where} {case.mode} `{provider}`: failed ({outcome})")
                    log(f"  {op} {label} {case.mode} {provider}: FAILED ({outcome})")
            fn = None
            harness.free_memory(cfg.device)
        if ms:
            log(_line(op, label, ms))
        emit(rows)
        sets = None
        harness.free_memory(cfg.device)
        if handled < len(group):
            rest = len(group) - handled + sum(len(g) for _, g in keyed[n_group + 1 :])
            tally.skip(rest, f"{where} and later: {rest} cases skipped, time budget spent")
            log(f"  time budget spent: {rest} cases skipped")
            return


def _run_case(case: Case, fn, sets, cfg: RunConfig, ceilings: dict, rows: list[dict], note) -> float | str:
    """Time one case into `rows`: its median ms (of the last method), "skip:<reason>" or what failed."""
    spec = SPECS[case.op]
    run = leaves = None
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                run, leaves = build_runner(fn, sets, case.mode)
                run()  # warm: compiles, autotunes
            except Exception as e:
                refusal = sdpa_refusal(e, caught) if case.provider in SDPA_BACKENDS else None
                if refusal is not None:
                    return "skip:" + refusal
                raise
        harness.synchronize(cfg.device)
        timings = [harness.bench_fn(run, cfg.device, cfg.warmup_ms, cfg.rep_ms, leaves, cfg.min_reps)]
        mem = harness.peak_memory_mb(run, cfg.device)
        if cfg.cudagraph and cfg.device.type == "cuda" and timings[0].median_ms < harness.CUDAGRAPH_BELOW_MS:
            try:
                timings.append(harness.bench_cudagraph(run, leaves))
            except Exception as e:  # the do_bench figure stands; the notes say why there is no graph figure
                note(f"{case.op} {case.label} {case.dtype} {case.mode} `{case.provider}`: no CUDA-graph timing "
                     f"({harness.why_failed(e)}); do_bench only")  # fmt: skip
    except Exception as e:  # one failing provider must not end the suite
        return harness.why_failed(e)
    finally:
        run = leaves = None
        for args, _ in sets:
            for a in args:
                if isinstance(a, torch.Tensor):
                    a.grad = None
        harness.free_memory(cfg.device)
    ceiling = ceilings.get(spec.ceiling)
    for i, t in enumerate(timings):
        rate = spec.rate(case.dims, case.dtype, case.mode, t.median_ms)
        metrics = {"ms": t.median_ms, "ms_p20": t.p20_ms, "ms_p80": t.p80_ms, spec.unit: rate}
        if ceiling is not None:
            metrics["frac_ceiling"] = rate / ceiling.value
        if mem is not None and i == 0:
            metrics["peak_mem_MB"] = mem
        rows += [_row(case, t.method, k, v) for k, v in metrics.items()]
    return timings[-1].median_ms


def _row(case: Case, method: str, metric: str, value: float) -> dict:
    return dict(op=case.op, provider=case.provider, mode=case.mode, shape=case.label, dtype=case.dtype,
                method=method, metric=metric, value=value)  # fmt: skip


def _line(op: str, label: str, ms: dict) -> str:
    parts = []
    for mode in MODES:
        cells = [f"{p} {v:.3f}" for (p, m), v in ms.items() if m == mode]
        if cells:
            parts.append(f"{mode}: " + ", ".join(cells))
    return f"  {op} {label} ms | " + " | ".join(parts)
