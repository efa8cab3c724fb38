"""The `gpt bench` op cases through pytest-benchmark, for those who prefer its tables and comparisons.

    pytest tests/bench_ops.py --benchmark-only                            every case of `gpt bench --plan`'s ops
    pytest tests/bench_ops.py --benchmark-only -k "attention and fwd"     a part
    pytest tests/bench_ops.py --benchmark-only --benchmark-save=h100      keep a run to --benchmark-compare later

Named without the `test_` prefix so that a plain `pytest` (CI) never collects it: it times every case of the
plan, which is a benchmark run, not a test. Named on the command line, pytest collects it all the same. It
lives under tests/, beside the tests, so the wheel does not ship it.

On a GPU the cases are the full suite's; elsewhere the "interpret" ones (tiny, fp32), the triton provider
through Triton's interpreter, which tests/conftest.py switches on where there is no CUDA. A provider that cannot
run a case (no kernel for the op yet, an SDPA backend that refuses the shape) is skipped with the reason. Each
round is one call on the next rotated input set, synchronized; gradients are reset between rounds outside the
timed region.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from tritongpt.bench import harness, ops
from tritongpt.kernels._common import interpreter_enabled

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
SCALE = "gpu" if CUDA else ("interpret" if interpreter_enabled() else "quick")
if not CUDA:
    torch.set_num_threads(1)  # as `gpt bench` on a CPU: OpenMP spin-waits on a busy small box swamp 0.1 ms calls
PROVIDERS = tuple(p for p in ops.ALL_PROVIDERS if CUDA or interpreter_enabled() or p != "triton")
CASES = ops.plan(SCALE, providers=PROVIDERS)

_fn_cache: dict = {}


def _provider_fn(case: ops.Case):
    """One callable per (op, shape, provider), kept while the cases of that shape run (compile: one build)."""
    key = (case.op, case.shape, case.dtype, case.provider)
    if key not in _fn_cache:
        if case.provider == "compile":
            for k in [k for k in _fn_cache if k[3] == "compile"]:
                del _fn_cache[k]
        _fn_cache[key] = ops.provider_fn(case.op, case.provider, DEVICE)
    return _fn_cache[key]


@pytest.mark.parametrize("case", CASES, ids=[c.line().replace(" ", "-") for c in CASES])
def test_op(benchmark, case: ops.Case):
    try:
        fn = _provider_fn(case)
    except ops.Unavailable as e:
        pytest.skip(str(e))
    sets = ops.make_sets(case.op, case.dims, case.dtype, DEVICE)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            run, leaves = ops.build_runner(fn, sets, case.mode)
            run()  # warm, and where SDPA refuses a pinned backend, it says so here
        except RuntimeError as e:
            refusal = ops.sdpa_refusal(e, caught) if case.provider in ops.SDPA_BACKENDS else None
            if refusal is None:
                raise
            pytest.skip(refusal)

    def reset() -> None:
        for t in leaves:
            t.grad = None

    def call() -> None:
        run()
        harness.synchronize(DEVICE)

    spec = ops.SPECS[case.op]
    benchmark.extra_info.update(op=case.op, provider=case.provider, mode=case.mode, shape=case.label,
                                dtype=case.dtype, unit=spec.unit)  # fmt: skip
    benchmark.pedantic(call, setup=reset, rounds=50 if CUDA else 5, warmup_rounds=3 if CUDA else 1)
    if benchmark.stats is not None:  # None under --benchmark-disable
        ms = benchmark.stats.stats.median * 1e3
        benchmark.extra_info[spec.unit] = spec.rate(case.dims, case.dtype, case.mode, ms)
