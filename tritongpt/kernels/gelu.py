"""GELU, tanh approximation (GPT-2's): 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).

    from tritongpt.kernels import gelu, bias_gelu
    y = gelu(x)              # any shape
    y = bias_gelu(h, bias)   # gelu(h + bias), bias (C,) broadcast over the last dimension of h (..., C)

Reference (pure PyTorch) lives here beside the Triton kernels; `tritongpt.kernels.reference` re-exports it.

Read top-down: Triton kernels -> host functions (validate, flatten to rows, allocate, launch), registered as
`torch.ops.tritongpt.*` so torch.compile sees through them -> autograd (`register_autograd` on the forward
ops) -> the public functions.

Kernels: the forward is one (ROWS, BLOCK) tile per program (8 KB of x: 32 fp16 elements per thread); the backward
loops over its chunk of rows in such tiles with 2 pipeline stages (`tl.range`), so the next tile's x and dy
are in flight while this one is computed, and keeps the bias gradient as a tile summed once at the end.

Dtypes: x fp16, bf16 or fp32; math in fp32; y and dx stored in x's dtype; dbias in bias's dtype, reduced in
fp32. tanh appears only as 1 + tanh(u) = 2 sigmoid(2u), written with exp in an overflow-free form (Triton 3.6
has no portable `tanh`), which also avoids cancellation where tanh(u) nears +-1.

Limits: the last dimension must have a unit stride or it is copied; other strides are passed to the kernels.
The bias gradient is per-program fp32 partial rows summed with torch afterwards: bit-identical run to run on
one device, but the partition (and so the last bits) depends on the GPU's SM count. No double backward.
"""

import math

import torch
import triton
import triton.language as tl

from tritongpt.kernels._common import (
    PIPELINE_SMEM_BYTES,
    alloc,
    as_rows,
    as_vector,
    check_inputs,
    launcher,
    library_op,
    row_programs,
)

# Kernel-side constants (constexpr so @triton.jit may read them); host code uses SQRT_2_OVER_PI.value. In
# kernels they multiply from the right (tensor * constexpr): the interpreter mishandles constexpr * tensor.
SQRT_2_OVER_PI: tl.constexpr = tl.constexpr(math.sqrt(2.0 / math.pi))
GELU_COEF: tl.constexpr = tl.constexpr(0.044715)

# Tiles: up to BLOCK_COLS columns and TILE_BYTES of one tensor (4 x 1024 for GPT-2's 3072-wide MLP in fp16/bf16,
# 2 x 1024 in fp32) over NUM_WARPS warps: four 16-byte loads in flight per thread and tensor.
BLOCK_COLS = 1024
TILE_BYTES = 8192
NUM_WARPS = 4
# The bias-gradient backward writes one fp32 partial row per row program: about 16 resident warps per SM.
BIAS_GRAD_WARPS_PER_SM = 16


def gelu_ref(x: torch.Tensor) -> torch.Tensor:
    """GELU with the tanh approximation, written out (matches `F.gelu(x, approximate="tanh")`)."""
    return 0.5 * x * (1.0 + torch.tanh(SQRT_2_OVER_PI.value * (x + 0.044715 * x * x * x)))


def bias_gelu_ref(x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """gelu(x + bias), bias broadcast over the last dimension (the MLP's first Linear without its bias)."""
    return gelu_ref(x + bias)


# ---------------------------------------------------------------------------------------------------------
# Triton kernels


@triton.jit
def _sigmoid_2u(u):
    """(s, s (1 - s)) for s = sigmoid(2u) = (1 + tanh(u)) / 2, from e = exp(-2|u|) in (0, 1]:
    s = 1 / (1 + e) for u >= 0, e / (1 + e) below; s (1 - s) = e / (1 + e)^2 = (1 - tanh(u)^2) / 4.
    exp never overflows, and neither 1 + tanh nor 1 - tanh^2 is formed by cancellation. NaN stays NaN."""
    e = tl.exp(-2.0 * tl.abs(u))
    r = 1.0 / (1.0 + e)
    s = tl.where(u >= 0.0, r, e * r)
    return s, e * r * r


@triton.jit
def _bias_gelu_fwd_kernel(
    X,  # (n_rows, n_cols) input, row stride stride_x, unit column stride
    BIAS,  # (n_cols,) bias added before the GELU (HAS_BIAS)
    Y,  # (n_rows, n_cols) out: gelu(x + bias) in Y's dtype, contiguous
    stride_x,
    n_rows,
    n_cols,
    HAS_BIAS: tl.constexpr,
    ROWS: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """Program (i, j): the (ROWS, BLOCK) tile at rows i * ROWS, columns j * BLOCK;
    y = gelu(z) = z (1 + tanh(u)) / 2 = z sigmoid(2u), z = x + bias, u = sqrt(2/pi) (z + 0.044715 z^3)."""
    rows = (tl.program_id(0) * ROWS + tl.arange(0, ROWS)).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = (rows[:, None] < n_rows) & (cols[None, :] < n_cols)
    z = tl.load(X + rows[:, None] * stride_x + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        z += tl.load(BIAS + cols, mask=cols < n_cols, other=0.0).to(tl.float32)[None, :]
    s, _ = _sigmoid_2u((z + z * GELU_COEF * z * z) * SQRT_2_OVER_PI)
    tl.store(Y + rows[:, None] * n_cols + cols[None, :], (z * s).to(Y.dtype.element_ty), mask=mask)


# Backward. With z = x + bias, u = k (z + c z^3), k = sqrt(2/pi), c = 0.044715 and s = sigmoid(2u), the
# forward is y = z (1 + tanh(u)) / 2 = z s, so with ds/du = 2 s (1 - s):
#   dy/dz = s + 2 z s (1 - s) k (1 + 3 c z^2)
#   dx = dy * dy/dz,   dbias = sum over rows of dx
# dbias: each program sums its chunk of rows into one fp32 partial row, which the host adds with torch.
@triton.jit
def _bias_gelu_bwd_kernel(
    DY,  # (n_rows, n_cols) upstream gradient, row stride stride_dy
    X,  # (n_rows, n_cols) forward input, row stride stride_x
    BIAS,  # (n_cols,) bias (HAS_BIAS)
    DX,  # (n_rows, n_cols) out: input gradient in DX's dtype, contiguous
    DB_PARTIAL,  # (n_row_programs, n_cols) out, fp32: this program's sum of dx (HAS_BIAS), contiguous
    stride_dy,
    stride_x,
    n_rows,
    n_cols,
    rows_per_program,
    HAS_BIAS: tl.constexpr,
    ROWS: tl.constexpr,
    BLOCK: tl.constexpr,
    NUM_STAGES: tl.constexpr,
):
    """Program (i, j): rows [i * rows_per_program, ...) of columns [j * BLOCK, ...), ROWS rows per step, the
    next step's x and dy loaded while this one is computed (NUM_STAGES = 2)."""
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    col_ok = cols < n_cols
    row_start = tl.program_id(0) * rows_per_program
    row_end = tl.minimum(row_start + rows_per_program, n_rows)
    if HAS_BIAS:
        b = tl.load(BIAS + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
        db = tl.zeros((ROWS, BLOCK), dtype=tl.float32)
    for first in tl.range(row_start, row_end, ROWS, num_stages=NUM_STAGES):
        rows = (first + tl.arange(0, ROWS)).to(tl.int64)
        mask = (rows[:, None] < row_end) & col_ok[None, :]
        z = tl.load(X + rows[:, None] * stride_x + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(DY + rows[:, None] * stride_dy + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        if HAS_BIAS:
            z += b
        z2 = z * z
        s, s_1ms = _sigmoid_2u(z * SQRT_2_OVER_PI * (1.0 + z2 * GELU_COEF))
        # s (1 - s) underflows to 0 long before z^2 overflows; the guard keeps 0 * inf from making a NaN.
        slope = 2.0 * z * s_1ms * SQRT_2_OVER_PI * (1.0 + z2 * (3.0 * GELU_COEF))
        dydz = s + tl.where(s_1ms > 0.0, slope, 0.0)
        dx = dy * dydz
        tl.store(DX + rows[:, None] * n_cols + cols[None, :], dx.to(DX.dtype.element_ty), mask=mask)
        if HAS_BIAS:
            # Masked elements add 0: dy loads as 0 there and dy/dz of z = bias is finite (NaN only where the
            # column's real rows are NaN too).
            db += dx
    if HAS_BIAS:
        tl.store(DB_PARTIAL + tl.program_id(0).to(tl.int64) * n_cols + cols, tl.sum(db, 0), mask=col_ok)


# ---------------------------------------------------------------------------------------------------------
# Host functions: validate, flatten to rows, allocate, launch. Registered as torch.ops.tritongpt.*.


def _tile(n_cols: int, elem_size: int) -> tuple[int, int]:
    """(ROWS, BLOCK) of one tile: BLOCK columns (at most `BLOCK_COLS`), ROWS rows to make `TILE_BYTES`."""
    block = min(BLOCK_COLS, triton.next_power_of_2(n_cols))
    return max(1, TILE_BYTES // (block * elem_size)), block


def _bias_gelu_fwd(op: str, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    device = check_inputs(op, x=x, bias=bias)
    n_cols = x.shape[-1] if x.dim() else 1
    bias = as_vector(op, "bias", bias, n_cols)
    x2 = as_rows(x)
    n_rows = x2.shape[0]
    y = alloc((n_rows, n_cols), x.dtype, device)
    if n_rows > 0 and n_cols > 0:
        rows, block = _tile(n_cols, x.element_size())
        launcher(_bias_gelu_fwd_kernel)[(triton.cdiv(n_rows, rows), triton.cdiv(n_cols, block))](
            x2, bias if bias is not None else x2, y, x2.stride(0), n_rows, n_cols,
            HAS_BIAS=bias is not None, ROWS=rows, BLOCK=block, num_warps=NUM_WARPS,
        )  # fmt: skip
    return y.view(x.shape)


def _bias_gelu_bwd(
    op: str, dy: torch.Tensor, x: torch.Tensor, bias: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    device = check_inputs(op, dy=dy, x=x, bias=bias)
    n_cols = x.shape[-1] if x.dim() else 1
    bias = as_vector(op, "bias", bias, n_cols)
    x2, dy2 = as_rows(x), as_rows(dy)
    n_rows = x2.shape[0]
    dx = alloc((n_rows, n_cols), x.dtype, device)
    if n_rows == 0 or n_cols == 0:
        return dx.view(x.shape), (torch.zeros_like(bias) if bias is not None else None)
    rows, block = _tile(n_cols, x.element_size())
    col_programs = triton.cdiv(n_cols, block)
    # With a bias each row program writes one fp32 partial row of dbias: fewer programs keep those small.
    warps_per_sm = BIAS_GRAD_WARPS_PER_SM if bias is not None else 64
    n_row_programs = row_programs(triton.cdiv(n_rows, rows), device, NUM_WARPS * col_programs, warps_per_sm)
    rows_per_program = triton.cdiv(triton.cdiv(n_rows, n_row_programs), rows) * rows
    n_row_programs = triton.cdiv(n_rows, rows_per_program)
    db_partial = alloc((n_row_programs, n_cols), torch.float32, device) if bias is not None else None
    tile_bytes = rows * block * (x.element_size() + dy.element_size())
    stages = 2 if 2 * tile_bytes <= PIPELINE_SMEM_BYTES else 1
    launcher(_bias_gelu_bwd_kernel)[(n_row_programs, col_programs)](
        dy2, x2, bias if bias is not None else x2, dx, db_partial if db_partial is not None else dx,
        dy2.stride(0), x2.stride(0), n_rows, n_cols, rows_per_program,
        HAS_BIAS=bias is not None, ROWS=rows, BLOCK=block, NUM_STAGES=stages, num_warps=NUM_WARPS,
    )  # fmt: skip
    db = db_partial.sum(dim=0).to(bias.dtype) if bias is not None else None
    return dx.view(x.shape), db


@library_op("gelu")
def gelu_fwd(x: torch.Tensor) -> torch.Tensor:
    """gelu(x) shaped like x."""
    return _bias_gelu_fwd("gelu", x, None)


@library_op("bias_gelu")
def bias_gelu_fwd(x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """gelu(x + bias) shaped like x, in x's dtype."""
    return _bias_gelu_fwd("bias_gelu", x, bias)


@library_op("gelu_bwd")
def gelu_bwd(dy: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """dx = dy * gelu'(x)."""
    return _bias_gelu_bwd("gelu backward", dy, x, None)[0]


@library_op("bias_gelu_bwd")
def bias_gelu_bwd(dy: torch.Tensor, x: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(dx, dbias): dx = dy * gelu'(x + bias), dbias = dx summed over all rows."""
    return _bias_gelu_bwd("bias_gelu backward", dy, x, bias)


# ---------------------------------------------------------------------------------------------------------
# Autograd: the forward ops' backward formulas, registered with torch.library.register_autograd.


def _gelu_setup_context(ctx, inputs, output):
    ctx.save_for_backward(inputs[0])


def _gelu_backward(ctx, dy):
    (x,) = ctx.saved_tensors
    return gelu_bwd(dy, x)


def _bias_gelu_setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _bias_gelu_backward(ctx, dy):
    x, bias = ctx.saved_tensors
    return bias_gelu_bwd(dy, x, bias)


gelu_fwd.register_autograd(_gelu_backward, setup_context=_gelu_setup_context)
bias_gelu_fwd.register_autograd(_bias_gelu_backward, setup_context=_bias_gelu_setup_context)


# ---------------------------------------------------------------------------------------------------------
# Public functions: the reference's signatures.


def gelu(x: torch.Tensor) -> torch.Tensor:
    """GELU (tanh approximation) of x, elementwise, in one Triton kernel."""
    check_inputs("gelu", x=x)  # a non-tensor: our TypeError, not the op dispatcher's RuntimeError
    return gelu_fwd(x)


def bias_gelu(x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """gelu(x + bias), bias (C,) broadcast over the last dimension of x; the add is fused into the kernel."""
    check_inputs("bias_gelu", x=x, bias=bias)
    return bias_gelu_fwd(x, bias)


# ---------------------------------------------------------------------------------------------------------
# Fuzz case space (`gpt verify --fuzz`, tritongpt/fuzz.py): the Limits above as the calls to draw. `draw` names
# each value (the keys of a case's JSON) and skews sizes to the tile edges.

_FUZZ_WIDTHS = (1, 256, 512, BLOCK_COLS, 2 * BLOCK_COLS, 3 * BLOCK_COLS)  # tiles: up to BLOCK_COLS columns
_FUZZ_ELEMENTS = {"cpu": 2**17, "cuda": 2**24}  # most elements of x drawn (the interpreter is slow)


def fuzz_case(op: str, draw) -> dict:
    """A call gelu / bias_gelu must get right: any shape (0-d and 1-d too; bias_gelu over the last dim), row
    counts on both sides of a tile (TILE_BYTES / BLOCK_COLS rows), magnitudes up to the dtype's largest (what
    overflows in the cast is inf), NaN and +-inf in a few elements, fp32, fp16 (bf16 on a GPU), any layout."""
    dtype = draw.dtype()
    n_cols = draw.integer("C", 1, 3 * BLOCK_COLS + 1, near=_FUZZ_WIDTHS)
    most_rows = max(1, min(600, _FUZZ_ELEMENTS[draw.device.type] // n_cols))
    tile_rows = TILE_BYTES // (min(BLOCK_COLS, triton.next_power_of_2(n_cols)) * dtype.itemsize)
    lead = draw.choice("lead", ["rows", "row", "batch"] + (["scalar"] if op == "gelu" else []))
    if lead == "scalar":
        shape = ()
    elif lead == "row":
        shape = (n_cols,)
    elif lead == "rows":
        shape = (draw.integer("rows", 0, most_rows, near=(1, tile_rows, 2 * tile_rows)), n_cols)
    else:
        shape = (draw.integer("A", 1, 3), draw.integer("rows", 0, max(1, most_rows // 3), near=(tile_rows,)), n_cols)
    magnitude = draw.choice("x_scale", [3.0, 1e-3, 30.0, 1e3, "max"])
    scale = torch.finfo(dtype).max / 4 if magnitude == "max" else magnitude
    kwargs = {"x": draw.tensor("x", shape, dtype, scale, specials=True)}
    if op == "bias_gelu":
        kwargs["bias"] = draw.tensor("bias", (n_cols,), dtype, specials=True)
    return kwargs


def fuzz_invalid(op: str, draw) -> tuple[dict, str]:
    """A call gelu / bias_gelu must refuse, and what its error must name: an unsupported dtype, a bias of the
    wrong shape, mixed devices, a non-tensor."""
    dtype = draw.dtype()
    n_cols = draw.integer("C", 1, 64, near=(1, 32))
    kwargs = {"x": draw.tensor("x", (draw.integer("rows", 1, 4), n_cols), dtype, layout=False)}
    if op == "bias_gelu":
        kwargs["bias"] = draw.tensor("bias", (n_cols,), dtype, layout=False)
    defect = draw.choice("defect", ["dtype", "device", "not_tensor"] + (["bias_shape"] if op == "bias_gelu" else []))
    name = draw.choice("which", list(kwargs))
    if defect == "dtype":
        bad = draw.choice("bad_dtype", ["float64", "int32", "bool"])
        kwargs[name] = kwargs[name].to(getattr(torch, bad))
        return kwargs, f"{name} has dtype torch.{bad}"
    if defect == "bias_shape":
        bad = draw.choice("bad_shape", [[n_cols + 1], [max(n_cols - 1, 0)], [1, n_cols], []])
        kwargs["bias"] = torch.ones(bad, dtype=dtype, device=draw.device)
        return kwargs, f"bias has shape {tuple(bad)}"
    if defect == "device":  # gelu's one tensor alone on another device: a device no kernel runs on
        kwargs[name] = kwargs[name].to(draw.other_device)
        alone = "CPU tensors" if draw.gpu else "unsupported device meta"
        return kwargs, "different devices" if op == "bias_gelu" else alone
    kwargs[name] = kwargs[name].tolist()
    return kwargs, f"{name} must be a torch.Tensor"
