"""Timing, the card's ceilings and peak memory: what every benchmark in `tritongpt/bench/` shares.

    t = bench_fn(fn, device)                  # Timing(median_ms, p20_ms, p80_ms, reps, method)
    t = bench_cudagraph(fn)                   # the same calls replayed from a CUDA graph: no host dispatch
    ceilings = measure_ceilings(device)       # D2D copy GB/s, large matmul TFLOP/s
    mb = peak_memory_mb(fn, device)           # extra memory one call allocates at its peak (CUDA only)

Timing methods (the CSV's `method` column says which produced a row):

- `do_bench` (CUDA): `triton.testing.do_bench` flushes L2 before every timed call, runs warm-up calls outside
  the timed region and returns quantiles of CUDA-event timings around each call. The host's dispatch of the
  call (Python, autograd, a custom op's ~20 us) is inside the events whenever the GPU waits for it, so a
  kernel of tens of microseconds can be dominated by it.
- `cudagraph` (CUDA): `triton.testing.do_bench_cudagraph` captures many calls into one CUDA graph and times
  its replays: GPU time only. Taken besides `do_bench` for every case faster than `CUDAGRAPH_BELOW_MS`.
- `perf_counter` (CPU, where do_bench cannot run): `cpu_bench`, the same warm-up and quantiles with
  `time.perf_counter`.

Inputs are also rotated: `rotation_count` says how many independent copies of one case's inputs make up
twice the L2 cache, and the benchmark cycles through them, so a small case cannot be served from L2.
"""

from __future__ import annotations

import datetime as dt
import math
import platform
import re
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

QUANTILES = (0.5, 0.2, 0.8)  # median, p20, p80
METHODS = ("do_bench", "cudagraph", "perf_counter")
# Cases faster than this (by do_bench) are also timed from a CUDA graph: ~20 us of host dispatch per op is
# then 10% or more of the figure.
CUDAGRAPH_BELOW_MS = 0.2


@dataclass(frozen=True)
class Timing:
    median_ms: float
    p20_ms: float
    p80_ms: float
    reps: int
    method: str = "perf_counter"  # one of METHODS


@dataclass(frozen=True)
class Env:
    """Where and with what a result was measured: the CSV's gpu, torch, triton and date columns."""

    device: torch.device
    gpu: str
    torch: str
    triton: str
    date: str

    @property
    def slug(self) -> str:
        return slug(self.gpu)


def slug(device_name: str) -> str:
    """A device name as a folder name: 'NVIDIA H100 80GB HBM3' -> 'nvidia-h100-80gb-hbm3'."""
    return re.sub(r"[^a-z0-9]+", "-", device_name.lower()).strip("-") or "unknown"


def current_env(device: torch.device) -> Env:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"cpu {platform.machine()}".strip()
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:  # pragma: no cover - no triton (macOS)
        triton_version = "n/a"
    date = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return Env(device=device, gpu=name, torch=torch.__version__, triton=triton_version, date=date)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def l2_cache_bytes(device: torch.device) -> int:
    """The L2 size on CUDA (50 MB if torch does not report it); 0 elsewhere, where inputs are not rotated."""
    if device.type != "cuda":
        return 0
    return int(getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 50 * 2**20))


def rotation_count(set_bytes: int, cache_bytes: int, max_sets: int = 16) -> int:
    """How many copies of a case's inputs to cycle through so that together they are >= 2x the L2 cache."""
    if cache_bytes <= 0 or set_bytes <= 0:
        return 1
    return max(1, min(max_sets, math.ceil(2 * cache_bytes / set_bytes)))


def _quantiles(times: list[float]) -> Timing:
    if len(times) == 1:
        return Timing(times[0], times[0], times[0], 1, "perf_counter")
    cuts = statistics.quantiles(times, n=10, method="inclusive")  # deciles: cuts[1] = p20, cuts[7] = p80
    return Timing(statistics.median(times), cuts[1], cuts[7], len(times), "perf_counter")


def cpu_bench(
    fn: Callable[[], object],
    warmup_ms: float = 25.0,
    rep_ms: float = 100.0,
    grad_to_none: list[torch.Tensor] | None = None,
    min_reps: int = 5,
    max_reps: int = 10_000,
) -> Timing:
    """do_bench's contract with `time.perf_counter`: warm-up by time, then at least `min_reps` timed calls."""
    fn()
    t0 = time.perf_counter()
    for _ in range(3):
        fn()
    estimate_ms = max((time.perf_counter() - t0) * 1e3 / 3, 1e-6)
    for _ in range(max(1, int(warmup_ms / estimate_ms))):
        fn()
    n_repeat = max(min_reps, min(max_reps, int(rep_ms / estimate_ms)))
    times = []
    for _ in range(n_repeat):
        for t in grad_to_none or ():
            t.grad = None
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return _quantiles(times)


def bench_fn(
    fn: Callable[[], object],
    device: torch.device,
    warmup_ms: float = 25.0,
    rep_ms: float = 100.0,
    grad_to_none: list[torch.Tensor] | None = None,
    min_reps: int = 10,
    max_rep_ms: float = 5_000.0,
) -> Timing:
    """Median, p20 and p80 of `fn` in ms: do_bench on CUDA, `cpu_bench` elsewhere.

    `fn` must already be warm (compiled, autotuned). Slow calls get a longer `rep_ms` so at least `min_reps`
    timed calls back the quantiles (do_bench would otherwise time a 100 ms call once), capped at `max_rep_ms`.
    """
    if device.type != "cuda":
        return cpu_bench(fn, warmup_ms, rep_ms, grad_to_none, min_reps=min(min_reps, 5))
    from triton.testing import do_bench

    synchronize(device)
    t0 = time.perf_counter()
    fn()
    synchronize(device)
    estimate_ms = (time.perf_counter() - t0) * 1e3
    rep = min(max(rep_ms, 1.2 * min_reps * estimate_ms), max_rep_ms)
    out = do_bench(fn, warmup=warmup_ms, rep=rep, grad_to_none=grad_to_none, quantiles=list(QUANTILES))
    median, p20, p80 = (float(v) for v in out)
    return Timing(median, p20, p80, max(1, int(rep / max(median, 1e-6))), "do_bench")


def bench_cudagraph(fn: Callable[[], object], grad_to_none: list[torch.Tensor] | None = None, rep_ms: float = 20.0):
    """Median, p20 and p80 of `fn` in ms from CUDA-graph replays (`triton.testing.do_bench_cudagraph`).

    do_bench_cudagraph captures `rep_ms` worth of unrolled calls into one graph and times 10 replays, so no
    host work is counted. `fn` must already be warm: autotuning cannot happen inside a capture (the attention
    kernels launch the config they chose earlier). It runs on a side stream, as capture requires.
    """
    from triton.testing import do_bench_cudagraph

    with torch.cuda.stream(torch.cuda.Stream()):
        out = do_bench_cudagraph(fn, rep=rep_ms, grad_to_none=grad_to_none, quantiles=list(QUANTILES))
    median, p20, p80 = (float(v) for v in out)
    return Timing(median, p20, p80, max(1, int(rep_ms / max(median, 1e-6))), "cudagraph")


def peak_memory_mb(fn: Callable[[], object], device: torch.device) -> float | None:
    """Memory one call of `fn` allocates at its peak beyond what was allocated before, in MiB (CUDA only)."""
    if device.type != "cuda":
        return None
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - base) / 2**20


def is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err).lower()


def why_failed(err: BaseException) -> str:
    """One line for the notes: "out of memory", or the exception's type and first line (200 characters)."""
    if is_oom(err):
        return "out of memory"
    return f"{type(err).__name__}: {(str(err).splitlines() or [''])[0]}"[:200]


def free_memory(device: torch.device) -> None:
    """On CUDA: collect what cycles still hold and return the cached blocks, so the next case starts empty.
    Nothing on the CPU, where a collection per case only costs time."""
    if device.type == "cuda":
        import gc

        gc.collect()
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------------------
# Ceilings: what the card can do at best, measured once per run, so each result has a fraction to report.


@dataclass(frozen=True)
class Ceiling:
    name: str  # "copy" | "matmul"
    shape: str
    dtype: str
    unit: str  # "GB/s" | "TFLOP/s"
    value: float
    timing: Timing


def measure_ceilings(device: torch.device, quick: bool = False) -> dict[str, Ceiling]:
    """Device-to-device copy bandwidth (bytes read + written) and a large matmul's FLOP rate.

    CUDA: a 1 GiB bf16 copy and an 8192^3 bf16 matmul (the sizes behind the figures in `tritongpt.bench.anchors`).
    CPU or quick: 64 MiB fp32 and 512^3 fp32, enough to give the CPU fractions a scale.
    """
    cuda = device.type == "cuda"
    (n_copy, m), dtype = ceiling_sizes(cuda, quick), torch.bfloat16 if cuda else torch.float32
    warmup, rep = (25.0, 200.0) if cuda else (5.0, 50.0)

    t = _time_copy(n_copy, dtype, device, warmup, rep)
    copy_bytes = 2 * n_copy * torch.empty((), dtype=dtype).element_size()
    copy = Ceiling("copy", f"{n_copy}", dtype_name(dtype), "GB/s", copy_bytes / (t.median_ms * 1e-3) / 1e9, t)
    free_memory(device)
    t = _time_matmul(m, dtype, device, warmup, rep)
    matmul = Ceiling("matmul", f"{m}x{m}x{m}", dtype_name(dtype), "TFLOP/s", 2 * m**3 / (t.median_ms * 1e-3) / 1e12, t)
    free_memory(device)
    return {"copy": copy, "matmul": matmul}


def ceiling_sizes(cuda: bool, quick: bool) -> tuple[int, int]:
    """(elements copied, matmul size m) of `measure_ceilings`."""
    if not cuda:
        return 2**24, 512
    return (2**25, 4096) if quick else (2**29, 8192)


def ceiling_plan(cuda: bool, quick: bool) -> list[str]:
    """The ceilings as `gpt bench --plan` lines."""
    (n, m), dtype = ceiling_sizes(cuda, quick), "bf16" if cuda else "fp32"
    return [f"ceiling copy {n} {dtype} native", f"ceiling matmul {m}x{m}x{m} {dtype} native"]


def _time_copy(n: int, dtype: torch.dtype, device: torch.device, warmup: float, rep: float) -> Timing:
    src = torch.empty(n, dtype=dtype, device=device).uniform_()
    dst = torch.empty_like(src)
    dst.copy_(src)
    return bench_fn(lambda: dst.copy_(src), device, warmup, rep)


def _time_matmul(m: int, dtype: torch.dtype, device: torch.device, warmup: float, rep: float) -> Timing:
    a = torch.randn(m, m, dtype=dtype, device=device)
    b = torch.randn(m, m, dtype=dtype, device=device)
    c = torch.empty(m, m, dtype=dtype, device=device)
    torch.matmul(a, b, out=c)
    return bench_fn(lambda: torch.matmul(a, b, out=c), device, warmup, rep)


def dtype_name(dtype: torch.dtype) -> str:
    return {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}.get(dtype, str(dtype))
