"""The error-relative rule, for tests: kernel error against a higher-precision reference (fp64 for fp32
inputs, fp32 for fp16/bf16) at most 2x the same-precision reference's error for outputs, 3x for gradients,
plus a floor of a few units in the last place; finite wherever the reference is.

The implementation is `tritongpt.verify`'s, so `gpt verify` and the tests judge by the same code:

    from _tolerance import assert_matches_reference
    assert_matches_reference(layer_norm, reference.layer_norm, {"x": x, "weight": w, "bias": b}, ("x", "weight"))
"""

from collections.abc import Callable, Sequence
from typing import Any

import pytest
import torch

from tritongpt.verify import GRAD_FACTOR, HI_DTYPE, OUTPUT_FACTOR, Comparison, check_op, compare, forward_backward

# What a kernel test runs in: fp32 and fp16 everywhere (on a CPU through Triton's interpreter), bf16 on a GPU
# only (the interpreter gets bf16 `tl.dot` wrong).
DTYPES = [
    pytest.param(torch.float32, id="fp32"),
    pytest.param(torch.float16, id="fp16"),
    pytest.param(torch.bfloat16, id="bf16", marks=pytest.mark.gpu),
]

__all__ = [
    "DTYPES",
    "GRAD_FACTOR",
    "HI_DTYPE",
    "OUTPUT_FACTOR",
    "Comparison",
    "assert_compiled_matches_eager",
    "assert_matches_reference",
    "assert_rule",
    "check_op",
    "compare",
    "forward_backward",
]


def assert_rule(comparisons: Sequence[Comparison]) -> None:
    """AssertionError listing every comparison that broke the rule."""
    failed = [c for c in comparisons if not c.ok]
    if failed:
        lines = [
            f"{c.name}: err {c.err:.3e} > bound {c.bound:.3e} (reference's own err {c.ref_err:.3e}) {c.note}"
            for c in failed
        ]
        raise AssertionError("error-relative rule broken:\n  " + "\n  ".join(lines))


def assert_matches_reference(
    kernel_fn: Callable[..., Any],
    ref_fn: Callable[..., Any],
    inputs: dict[str, Any],
    grad_names: Sequence[str],
    seed: int = 0,
) -> list[Comparison]:
    """Run kernel and reference on copies of `inputs` with the same random upstream gradients; assert the
    rule on every output and every gradient in `grad_names`. Returns the comparisons."""
    comparisons = check_op(kernel_fn, ref_fn, inputs, grad_names, seed=seed)
    assert_rule(comparisons)
    return comparisons


def assert_compiled_matches_eager(fn: Callable[..., Any], args: Sequence[Any], dy: Any, backend: str) -> None:
    """`torch.compile(fn, fullgraph=True)` (which fails on any graph break) gives the eager outputs and input
    gradients under the upstream gradient `dy`."""
    results = []
    for f in (fn, torch.compile(fn, backend=backend, fullgraph=True)):
        leaves = [a.clone().requires_grad_() for a in args]
        out = f(*leaves)
        results.append((out, *torch.autograd.grad(out, leaves, dy)))
    for eager, compiled in zip(*results, strict=True):
        torch.testing.assert_close(compiled, eager)
