"""Per-op benchmark cases: inputs, the function each provider runs, FLOP/byte counts and the sweeps.

Providers:
    triton   our kernels (`kernels.implementation("triton")`)
    eager    the from-scratch PyTorch reference (`kernels.implementation("reference")`)
    torch    torch's native ops (`kernels.implementation("native")`): F.layer_norm, F.gelu, SDPA
    compile  torch.compile of the eager reference (static shapes)

Modes: "fwd" (a training forward: inputs require grad, so saved statistics are part of the cost), "bwd"
(backward through a graph built once outside the timed region) and "fwd+bwd".

Work counts (../shared/ANCHORS.md): LayerNorm and GELU report effective bandwidth from the bytes a fused
kernel must move at least (each tensor read or written once; weights, bias and the fp32 mean/rstd per
row included); attention reports 4*B*H*T^2*D FLOPs forward, halved when causal, 2.5x that backward.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

import kernels
from bench import harness

PROVIDERS = ("triton", "eager", "torch", "compile")
MODES = ("fwd", "bwd", "fwd+bwd")
OPS = ("layer_norm", "add_layer_norm", "gelu", "bias_gelu", "attention")

GPT2_WIDTHS = (768, 1024, 1280, 1600)  # 124M, 355M, 774M, 1558M


class Unavailable(Exception):
    """A provider that cannot run here (the Triton kernels on a CPU without --interpret); the message says why."""


# ---------------------------------------------------------------------------------------------------------
# Inputs and work counts. A shape is a dict: {"rows", "width"} for the row-wise ops, {"B", "H", "T", "D"}
# for attention. `make` returns (args, kwargs); every tensor that requires grad is a leaf to reset.

Args = tuple[tuple, dict]


def _randn(shape, dtype, device, g, scale=1.0, shift=0.0, grad=True) -> torch.Tensor:
    t = torch.randn(shape, dtype=torch.float32, device=device, generator=g).mul_(scale).add_(shift).to(dtype)
    return t.requires_grad_(grad)


def _make_layer_norm(s, dtype, device, g) -> Args:
    x = _randn((s["rows"], s["width"]), dtype, device, g)
    w = _randn((s["width"],), dtype, device, g, 0.1, 1.0)
    b = _randn((s["width"],), dtype, device, g, 0.1)
    return (x, w, b, 1e-5), {}


def _make_add_layer_norm(s, dtype, device, g) -> Args:
    (x, w, b, eps), _ = _make_layer_norm(s, dtype, device, g)
    r = _randn((s["rows"], s["width"]), dtype, device, g)
    return (x, r, w, b, eps), {}


def _make_gelu(s, dtype, device, g) -> Args:
    return (_randn((s["rows"], s["width"]), dtype, device, g),), {}


def _make_bias_gelu(s, dtype, device, g) -> Args:
    x = _randn((s["rows"], s["width"]), dtype, device, g)
    return (x, _randn((s["width"],), dtype, device, g, 0.1)), {}


def _make_attention(s, dtype, device, g) -> Args:
    shape = (s["B"], s["H"], s["T"], s["D"])
    return tuple(_randn(shape, dtype, device, g) for _ in range(3)), {"causal": True}


def _layer_norm_bytes(s, es, mode, extra_in=0, extra_out=0, bwd_in=0) -> float:
    n, c = s["rows"], s["width"]
    stats = 2 * n * 4  # fp32 mean and rstd per row
    fwd = (2 + extra_in + extra_out) * n * c * es + 2 * c * es + stats  # x (+ residual) -> y (+ sum), w, b
    bwd = (3 + bwd_in) * n * c * es + c * es + stats + 2 * c * es  # x, dy (+ dsum) -> dx; w, stats; dw, db
    return {"fwd": fwd, "bwd": bwd, "fwd+bwd": fwd + bwd}[mode]


def _gelu_bytes(s, es, mode, bias=False) -> float:
    n = s["rows"] * s["width"]
    fwd = 2 * n * es + (s["width"] * es if bias else 0)  # x -> y (+ bias)
    bwd = 3 * n * es + (2 * s["width"] * es if bias else 0)  # x, dy -> dx (+ bias, dbias)
    return {"fwd": fwd, "bwd": bwd, "fwd+bwd": fwd + bwd}[mode]


def attention_flops(s, mode, causal=True) -> float:
    fwd = 4 * s["B"] * s["H"] * s["T"] ** 2 * s["D"] / (2 if causal else 1)
    return {"fwd": fwd, "bwd": 2.5 * fwd, "fwd+bwd": 3.5 * fwd}[mode]


@dataclass(frozen=True)
class OpSpec:
    name: str
    unit: str  # "GB/s" (memory-bound) or "TFLOP/s" (attention)
    ceiling: str  # which measured ceiling the unit is a fraction of: "copy" or "matmul"
    make: Callable[[dict, torch.dtype, torch.device, torch.Generator], Args]
    work: Callable[[dict, int, str], float]  # (shape, element size, mode) -> bytes or FLOPs

    def label(self, s: dict) -> str:
        if "rows" in s:
            return f"{s['rows']}x{s['width']}"
        return "x".join(f"{k}{v}" for k, v in s.items())

    def rate(self, s: dict, es: int, mode: str, ms: float) -> float:
        scale = 1e9 if self.unit == "GB/s" else 1e12
        return self.work(s, es, mode) / (ms * 1e-3) / scale


SPECS = {
    "layer_norm": OpSpec("layer_norm", "GB/s", "copy", _make_layer_norm, _layer_norm_bytes),
    "add_layer_norm": OpSpec(
        "add_layer_norm",
        "GB/s",
        "copy",
        _make_add_layer_norm,
        # fwd reads a residual and writes the sum; bwd reads dsum and writes one dx (dx == dresidual).
        lambda s, es, mode: _layer_norm_bytes(s, es, mode, extra_in=1, extra_out=1, bwd_in=1),
    ),
    "gelu": OpSpec("gelu", "GB/s", "copy", _make_gelu, _gelu_bytes),
    "bias_gelu": OpSpec(
        "bias_gelu",
        "GB/s",
        "copy",
        _make_bias_gelu,
        lambda s, es, m: _gelu_bytes(s, es, m, bias=True),
    ),
    "attention": OpSpec("attention", "TFLOP/s", "matmul", _make_attention, lambda s, es, m: attention_flops(s, m)),
}


# ---------------------------------------------------------------------------------------------------------
# Sweeps. "gpu": the full suite; "quick": small CPU-friendly shapes; "interpret": tiny shapes for Triton's
# interpreter. Attention keeps B*T = 16k tokens and H*D = 2048 (FlashAttention's benchmark convention) so
# every length fills the card with the same number of tokens.


def sweep(op: str, scale: str) -> list[dict]:
    if op == "attention":
        if scale == "interpret":
            return [{"B": 1, "H": 2, "T": 32, "D": 16}]
        if scale == "quick":
            return [{"B": 1, "H": 2, "T": t, "D": 64} for t in (64, 128)]
        return [
            {"B": max(1, 16384 // t), "H": 2048 // d, "T": t, "D": d}
            for d in (64, 128)
            for t in (256, 512, 1024, 2048, 4096, 8192)
        ]
    mult = 4 if op in ("gelu", "bias_gelu") else 1  # GELU runs on the MLP's 4x-wide hidden layer
    if scale == "interpret":
        return [{"rows": 16, "width": 64 * mult}]
    if scale == "quick":
        return [{"rows": 256, "width": w * mult} for w in (128, 768)]
    return [{"rows": r, "width": w * mult} for r in (4096, 32768) for w in GPT2_WIDTHS]


# ---------------------------------------------------------------------------------------------------------
# Providers and runners


def provider_fn(op: str, provider: str, device: torch.device) -> Callable:
    """The callable `provider` runs for `op`; raises Unavailable with the reason where it cannot run here."""
    if provider == "eager":
        return getattr(kernels.implementation("reference"), op)
    if provider == "torch":
        return getattr(kernels.implementation("native"), op)
    if provider == "compile":
        torch._dynamo.reset()  # a fresh cache per case: static shapes, no recompile limit
        return torch.compile(getattr(kernels.implementation("reference"), op), dynamic=False)
    if provider == "triton":
        from kernels._common import interpreter_enabled

        if device.type != "cuda" and not interpreter_enabled():
            raise Unavailable("no CUDA GPU here; pass --interpret to run the kernels in Triton's CPU interpreter")
        return getattr(kernels.implementation("triton"), op)
    raise ValueError(f"unknown provider {provider!r}; choose from {', '.join(PROVIDERS)}")


def _tensors(out) -> list[torch.Tensor]:
    return list(out) if isinstance(out, (tuple, list)) else [out]


def _nbytes(args: Args) -> int:
    return sum(t.numel() * t.element_size() for t in args[0] if isinstance(t, torch.Tensor))


def make_sets(spec: OpSpec, shape: dict, dtype: torch.dtype, device: torch.device, seed: int = 0) -> list[Args]:
    """Copies of one case's inputs, as many as `harness.rotation_count` asks for on this device."""
    g = torch.Generator(device=device).manual_seed(seed)
    first = spec.make(shape, dtype, device, g)
    n = harness.rotation_count(_nbytes(first), harness.l2_cache_bytes(device))
    return [first] + [spec.make(shape, dtype, device, g) for _ in range(n - 1)]


def build_runner(fn: Callable, sets: list[Args], mode: str) -> tuple[Callable[[], None], list[torch.Tensor]]:
    """A no-argument callable that runs `mode` once on the next input set, and the leaves to reset to None.

    fwd: fn(inputs); bwd: backward through a graph built here, kept with retain_graph; fwd+bwd: both. The
    upstream gradients are random, drawn once per set (from the set's outputs, so any output shape works).
    """
    leaves = [t for args, _ in sets for t in args if isinstance(t, torch.Tensor) and t.requires_grad]
    if mode == "fwd":
        it = itertools.cycle(sets)

        def run_fwd() -> None:
            args, kwargs = next(it)
            fn(*args, **kwargs)

        return run_fwd, leaves
    prepared = []
    for args, kwargs in sets:
        outs = _tensors(fn(*args, **kwargs))
        grads = [torch.randn_like(o) for o in outs]
        prepared.append((args, kwargs, outs if mode == "bwd" else None, grads))
    del outs
    it = itertools.cycle(prepared)
    if mode == "bwd":

        def run_bwd() -> None:
            _, _, outs, grads = next(it)
            torch.autograd.backward(outs, grads, retain_graph=True)

        return run_bwd, leaves
    if mode == "fwd+bwd":

        def run_fwd_bwd() -> None:
            args, kwargs, _, grads = next(it)
            torch.autograd.backward(_tensors(fn(*args, **kwargs)), grads)

        return run_fwd_bwd, leaves
    raise ValueError(f"unknown mode {mode!r}; choose from {', '.join(MODES)}")


# ---------------------------------------------------------------------------------------------------------
# The suite: every (shape, provider, mode) of one op, as long-format rows.


@dataclass
class RunConfig:
    device: torch.device
    dtype: torch.dtype
    scale: str  # "gpu" | "quick" | "interpret"
    providers: tuple[str, ...]
    modes: tuple[str, ...]
    warmup_ms: float = 25.0
    rep_ms: float = 100.0
    min_reps: int = 10
    deadline: float = math.inf  # time.monotonic() after which remaining cases are skipped
    seed: int = 0


def run_op(op: str, cfg: RunConfig, ceilings: dict, notes: list[str], log=print) -> list[dict]:
    """Benchmark one op over its sweep; returns rows {op, provider, mode, shape, dtype, metric, value}."""
    import time

    spec = SPECS[op]
    dtype_label = harness.dtype_name(cfg.dtype)
    es = torch.empty((), dtype=cfg.dtype).element_size()
    ceiling = ceilings.get(spec.ceiling)
    rows: list[dict] = []
    unavailable: dict[str, str] = {}
    for shape in sweep(op, cfg.scale):
        label = spec.label(shape)
        if time.monotonic() > cfg.deadline:
            notes.append(f"{op} {label} and later shapes: skipped, time budget spent")
            break
        sets = make_sets(spec, shape, cfg.dtype, cfg.device, cfg.seed)
        ms: dict[tuple[str, str], float] = {}
        for provider in cfg.providers:
            if provider in unavailable:
                continue
            try:
                fn = provider_fn(op, provider, cfg.device)
            except Unavailable as e:
                unavailable[provider] = str(e)
                log(f"  {op}: provider {provider} skipped: {e}")
                notes.append(f"{op}: provider `{provider}` skipped: {e}")
                continue
            for mode in cfg.modes:
                row = dict(op=op, provider=provider, mode=mode, shape=label, dtype=dtype_label)
                try:
                    run, leaves = build_runner(fn, sets, mode)
                    run()  # warm: compiles, autotunes
                    harness.synchronize(cfg.device)
                    t = harness.bench_fn(run, cfg.device, cfg.warmup_ms, cfg.rep_ms, leaves, cfg.min_reps)
                    mem = harness.peak_memory_mb(run, cfg.device)
                except Exception as e:  # one failing provider must not end the suite
                    why = "out of memory" if harness.is_oom(e) else f"{type(e).__name__}: {str(e).splitlines()[0]}"
                    log(f"  {op} {label} {mode} {provider}: FAILED ({why})")
                    notes.append(f"{op} {label} {mode} `{provider}`: failed ({why[:200]})")
                    continue
                finally:
                    run = leaves = None
                    for args, _ in sets:
                        for a in args:
                            if isinstance(a, torch.Tensor):
                                a.grad = None
                    harness.free_memory(cfg.device)
                ms[provider, mode] = t.median_ms
                rate = spec.rate(shape, es, mode, t.median_ms)
                metrics = {"ms": t.median_ms, "ms_p20": t.p20_ms, "ms_p80": t.p80_ms, spec.unit: rate}
                if ceiling is not None:
                    metrics["frac_ceiling"] = rate / ceiling.value
                if mem is not None:
                    metrics["peak_mem_MB"] = mem
                rows += [dict(row, metric=k, value=v) for k, v in metrics.items()]
            fn = None
        for (provider, mode), t_ms in ms.items():
            for base in ("eager", "torch"):
                if (base, mode) in ms and base != provider:
                    rows.append(
                        dict(op=op, provider=provider, mode=mode, shape=label, dtype=dtype_label,
                             metric=f"speedup_vs_{base}", value=ms[base, mode] / t_ms)
                    )  # fmt: skip
        log(_line(op, label, cfg.modes, ms))
        del sets
        harness.free_memory(cfg.device)
    return rows


def _line(op: str, label: str, modes, ms: dict) -> str:
    parts = []
    for mode in modes:
        cells = [f"{p} {v:.3f}" for (p, m), v in ms.items() if m == mode]
        if cells:
            parts.append(f"{mode}: " + ", ".join(cells))
    return f"  {op} {label} ms | " + " | ".join(parts)
