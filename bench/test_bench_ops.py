"""The `gpt bench` op cases through pytest-benchmark, for those who prefer its tables and comparisons.

    pytest bench/ --benchmark-only                              every op, provider and mode
    pytest bench/ --benchmark-only -k "attention and fwd"       a part
    pytest bench/ --benchmark-only --benchmark-save=h100        keep a run to --benchmark-compare later

On a GPU the shapes are the full sweep's (bf16); elsewhere the quick CPU shapes (fp32), and the triton
provider only where TRITON_INTERPRET=1 was set before pytest started. Each round is one call on the next
rotated input set, synchronized; gradients are reset between rounds outside the timed region.
"""

from __future__ import annotations

import pytest
import torch

from bench import harness, ops
from kernels._common import interpreter_enabled

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
DTYPE = torch.bfloat16 if CUDA else torch.float32
SCALE = "gpu" if CUDA else ("interpret" if interpreter_enabled() else "quick")
if not CUDA:
    torch.set_num_threads(1)  # as `gpt bench` on a CPU: OpenMP spin-waits on a busy small box swamp 0.1 ms calls
PROVIDERS = ops.PROVIDERS if CUDA or interpreter_enabled() else tuple(p for p in ops.PROVIDERS if p != "triton")

CASES = [
    (op, shape, provider, mode)
    for op in ops.OPS
    for shape in ops.sweep(op, SCALE)
    for provider in PROVIDERS
    for mode in ops.MODES
]


def _id(case) -> str:
    op, shape, provider, mode = case
    return f"{op}-{ops.SPECS[op].label(shape)}-{provider}-{mode}"


_fn_cache: dict = {}


def _provider_fn(op: str, shape: dict, provider: str):
    """One callable per (op, shape, provider), kept while the cases of that shape run (compile: one build)."""
    key = (op, ops.SPECS[op].label(shape), provider)
    if key not in _fn_cache:
        if provider == "compile":
            for k in [k for k in _fn_cache if k[2] == "compile"]:
                del _fn_cache[k]
        _fn_cache[key] = ops.provider_fn(op, provider, DEVICE)
    return _fn_cache[key]


@pytest.mark.parametrize("case", CASES, ids=[_id(c) for c in CASES])
def test_op(benchmark, case):
    op, shape, provider, mode = case
    spec = ops.SPECS[op]
    try:
        fn = _provider_fn(op, shape, provider)
    except ops.Unavailable as e:
        pytest.skip(str(e))
    sets = ops.make_sets(spec, shape, DTYPE, DEVICE)
    run, leaves = ops.build_runner(fn, sets, mode)

    def reset() -> None:
        for t in leaves:
            t.grad = None

    def call() -> None:
        run()
        harness.synchronize(DEVICE)

    es = torch.empty((), dtype=DTYPE).element_size()
    benchmark.extra_info.update(op=op, provider=provider, mode=mode, shape=spec.label(shape), unit=spec.unit)
    benchmark.pedantic(call, setup=reset, rounds=50 if CUDA else 5, warmup_rounds=3 if CUDA else 1)
    if benchmark.stats is not None:  # None under --benchmark-disable
        benchmark.extra_info[spec.unit] = spec.rate(shape, es, mode, benchmark.stats.stats.median * 1e3)
