"""Checks and launch helpers shared by the Triton ops. Errors name the op, the argument and the problem.

Besides the input checks this module holds what every op's host code needs the same way:

- `as_rows`: a tensor seen as (n_rows, n_cols) rows with a unit last stride (the kernels take row strides);
- `row_config` and `row_programs`: launch settings for a kernel that keeps whole rows in registers and loops
  over a chunk of rows per program (warps, pipeline stages, how many programs fill the GPU);
- `alloc`: output allocation, honouring the `POISON_OUTPUTS` debug flag (NaN-filled outputs, so an element
  a kernel forgot to write shows up as NaN — `gpt verify` switches it on);
- `library_op` and `launcher`: registration with `torch.library`, so `torch.compile` sees through the ops.

Registration. On a GPU each op is a `torch.library.triton_op` and its kernels are launched through
`wrap_triton`: torch.compile traces the host function with FakeTensors and hands the kernel launches to
Inductor, without a graph break. Under Triton's CPU interpreter that is impossible — `@triton.jit` then makes
an `InterpretedFunction`, which `wrap_triton` cannot capture and which would dereference the FakeTensors — so
the op is a plain `torch.library.custom_op` (opaque to Inductor, still no graph break) whose fake
implementation is the same host function with the kernel launches skipped. One host function thus serves as
the real and the fake implementation in both modes.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
import triton

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)

# Debug hook: when True, host functions allocate outputs filled with NaN instead of uninitialised memory.
POISON_OUTPUTS = False

# Widest row a row-wise kernel (LayerNorm) accepts: the whole row lives in registers as one block.
MAX_ROW_WIDTH = 65536

LIBRARY = "tritongpt"


def interpreter_enabled() -> bool:
    """True when Triton runs kernels in its CPU interpreter (TRITON_INTERPRET=1 set before import)."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def _major_minor(version: str) -> tuple[int, int]:
    parts = (version.split("+")[0].split(".") + ["0"])[:2]
    return tuple(int("".join(c for c in part if c.isdigit()) or 0) for part in parts)  # type: ignore[return-value]


def interpreter_problem() -> str | None:
    """Why Triton's CPU interpreter cannot run our kernels in this environment, or None when it can.

    Known: Triton before 3.7 with numpy 2.4 or newer. Its interpreter turns a loop bound (`tl.range(start, end)`
    with a computed start, which every kernel here has) into an int with `int()` of a one-element array, an
    error since numpy 2.4, so every kernel would fail with "only 0-dimensional arrays can be converted to
    Python scalars" (fixed in Triton 3.7). The GPU image pairs Triton 3.6 with numpy 2.5: there, run the
    kernels on the GPU; the compiled path is unaffected.
    """
    import numpy

    if _major_minor(triton.__version__) < (3, 7) and _major_minor(numpy.__version__) >= (2, 4):
        return (
            f"Triton {triton.__version__}'s CPU interpreter cannot run with numpy {numpy.__version__} (numpy 2.4 "
            "broke its loops; fixed in Triton 3.7): install 'numpy<2.4' or 'triton>=3.7', or run on a CUDA GPU"
        )
    return None


def check_inputs(op: str, **tensors: torch.Tensor | None) -> torch.device:
    """Validate the tensors one Triton op is handed; returns their common device.

    - each is a torch.Tensor of fp16, bf16 or fp32 (others: TypeError naming the argument and dtype);
    - all on one device (ValueError listing the devices);
    - that device is CUDA, or the CPU with Triton's interpreter on (ValueError saying how to turn it on).
    None values (optional arguments) are skipped.
    """
    device = None
    for name, t in tensors.items():
        if t is None:
            continue
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype not in SUPPORTED_DTYPES:
            raise TypeError(f"{op}: {name} has dtype {t.dtype}; supported: float16, bfloat16, float32")
        if device is None:
            device = t.device
        elif t.device != device:
            devices = ", ".join(f"{n}={v.device}" for n, v in tensors.items() if v is not None)
            raise ValueError(f"{op}: tensors are on different devices ({devices})")
    if device is None:
        raise ValueError(f"{op}: no tensor given")
    if device.type == "cuda":
        return device
    if device.type == "cpu" and interpreter_enabled():
        problem = interpreter_problem()
        if problem:
            raise RuntimeError(f"{op}: {problem}")
        return device
    if device.type == "cpu":
        raise ValueError(
            f"{op}: got CPU tensors, but Triton kernels run on CUDA GPUs. Move the tensors to a GPU, use the "
            "reference (tritongpt.kernels.reference), or set TRITON_INTERPRET=1 before importing tritongpt.kernels "
            "to run them in Triton's CPU interpreter."
        )
    raise ValueError(f"{op}: unsupported device {device}; Triton kernels need CUDA tensors")


def as_vector(op: str, name: str, t: torch.Tensor | None, n_cols: int) -> torch.Tensor | None:
    """A per-column parameter (weight, bias) checked to have shape (n_cols,) — ValueError naming it otherwise —
    and returned with a unit stride (copied only when strided). None stays None."""
    if t is None:
        return None
    if tuple(t.shape) != (n_cols,):
        raise ValueError(f"{op}: {name} has shape {tuple(t.shape)}; expected ({n_cols},) to match the last dim")
    return t if t.stride(0) == 1 or n_cols <= 1 else t.contiguous()


def as_rows(t: torch.Tensor) -> torch.Tensor:
    """`t` as a 2-D (n_rows, n_cols) tensor over its last dimension, with a unit last stride.

    Copies only when the last dimension is strided (e.g. a transposed view or an expanded gradient) or when
    the leading dimensions cannot be merged into one row stride; otherwise a view. A 0-d tensor is one row
    of one column.
    """
    n_cols = t.shape[-1] if t.dim() else 1
    if n_cols > 1 and t.stride(-1) != 1:
        t = t.contiguous()
    return t.reshape(math.prod(t.shape[:-1]), n_cols)


class RowConfig(NamedTuple):
    """Launch settings of a kernel that holds whole rows in registers (see `row_config`)."""

    block: int  # next power of two of the row width: one row is one register block
    num_warps: int  # warps per program
    num_stages: int  # software-pipelining depth of the kernel's row loop (1: none)


# Shared memory the prefetch buffers of a row loop may take per program: small enough that several programs
# share an SM (228 KB on an H100).
PIPELINE_SMEM_BYTES = 48 * 1024


def row_config(n_cols: int, per_thread: int, bytes_per_col: int) -> RowConfig:
    """Launch settings for a row-wise kernel of width `n_cols`.

    - block: next power of two of the width;
    - num_warps: the fewest that keep at most `per_thread` elements of a row per thread (at most 32 warps). For
      GPT-2 widths (768-1600) and per_thread=32 that is one warp, so the row's reductions are warp shuffles,
      with no shared-memory round trip or barrier;
    - num_stages: 2 (the next row's loads issued while this one is computed: `cp.async` on sm_80+) when two
      rows of all the tensors the loop loads (`bytes_per_col` bytes per column together) fit in
      `PIPELINE_SMEM_BYTES`, else 1.
    """
    block = triton.next_power_of_2(max(n_cols, 1))
    num_warps = min(32, max(1, block // (32 * per_thread)))
    num_stages = 2 if 2 * block * bytes_per_col <= PIPELINE_SMEM_BYTES else 1
    return RowConfig(block, num_warps, num_stages)


def row_programs(n_rows: int, device: torch.device, num_warps: int, warps_per_sm: int) -> int:
    """How many programs share `n_rows` rows, each looping over one contiguous chunk.

    On a GPU: enough for about `warps_per_sm` resident warps on every SM (at most 32 programs per SM, the
    hardware's limit); 8 in the interpreter. Where each program writes an fp32 partial row of a weight gradient,
    a smaller `warps_per_sm` keeps those partials (and their final sum) small. The partition depends only on
    the shape and the device, so results are bit-identical run to run on the same device."""
    if device.type == "cuda":
        sms = torch.cuda.get_device_properties(device).multi_processor_count
        target = sms * min(32, max(1, warps_per_sm // num_warps))
    else:
        target = 8
    return max(1, min(n_rows, target))


def alloc(shape: tuple[int, ...] | torch.Size, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A fresh output buffer: uninitialised, or NaN-filled while `POISON_OUTPUTS` is set."""
    if POISON_OUTPUTS:
        return torch.full(tuple(shape), float("nan"), dtype=dtype, device=device)
    return torch.empty(tuple(shape), dtype=dtype, device=device)


def _is_fake(value: Any) -> bool:
    from torch._subclasses.fake_tensor import FakeTensor

    return isinstance(value, FakeTensor)


class _InterpretedLaunch:
    """`kernel[grid](...)` for the interpreter: launches on real tensors, does nothing on FakeTensors (the
    host function then acts as the op's fake implementation: it only needs to allocate the outputs)."""

    def __init__(self, kernel: Any) -> None:
        self.kernel = kernel

    def __getitem__(self, grid: Any) -> Callable[..., None]:
        def launch(*args: Any, **kwargs: Any) -> None:
            if any(_is_fake(a) for a in (*args, *kwargs.values())):
                return
            self.kernel[grid](*args, **kwargs)

        return launch


def launcher(kernel: Any) -> Any:
    """What a host function indexes with a grid to launch `kernel`: `wrap_triton(kernel)` when compiling for
    a GPU (traceable by torch.compile), the interpreted kernel, skipped on FakeTensors, under the interpreter."""
    if interpreter_enabled():
        return _InterpretedLaunch(kernel)
    return torch.library.wrap_triton(kernel)


def library_op(name: str) -> Callable[[Callable[..., Any]], Any]:
    """Decorator registering a host function as `torch.ops.tritongpt.<name>` (see the module docstring).

    The function's annotations give the schema; it must not mutate or return its inputs."""

    def register(fn: Callable[..., Any]) -> Any:
        qualname = f"{LIBRARY}::{name}"
        if interpreter_enabled():
            op = torch.library.custom_op(qualname, fn, mutates_args=())
            op.register_fake(fn)
            return op
        return torch.library.triton_op(qualname, fn, mutates_args=())

    return register
