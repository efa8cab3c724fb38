"""LayerNorm over the last dimension: y = (x - mean) / sqrt(var + eps) * weight + bias.

    from kernels import layer_norm, add_layer_norm
    y = layer_norm(x, weight, bias, eps=1e-5)                         # (..., C) -> (..., C)
    y, s = add_layer_norm(x, residual, weight, bias, eps=1e-5)        # s = x + residual, y = layer_norm(s)

Reference (pure PyTorch) lives here beside the Triton kernels; `kernels.reference` re-exports it.

Read top-down: Triton kernels -> host functions (validate, flatten to rows, allocate, launch), registered as
`torch.ops.tritongpt.*` so torch.compile sees through them -> autograd (`register_autograd` on the forward
ops) -> the public functions.

Dtypes: x (and residual) fp16, bf16 or fp32; statistics in fp32 (mean and rstd are saved fp32 per row);
y, s and dx in the input's dtype (add_layer_norm: the promoted dtype of x and residual); dweight, dbias in
the parameters' dtype, reduced in fp32.

Limits: rows up to 65536 wide (`_common.MAX_ROW_WIDTH`; wider raises ValueError) since a whole row is one
register block; the last dimension must have a unit stride or it is copied, other strides are passed to the
kernels. Weight and bias gradients are per-program fp32 partial rows summed with torch afterwards: bit-
identical run to run on one device, but the partition (and so the last bits) depends on the GPU's SM count.
No double backward.
"""

import torch
import triton
import triton.language as tl

from kernels._common import (
    MAX_ROW_WIDTH,
    alloc,
    as_rows,
    as_vector,
    check_inputs,
    launcher,
    library_op,
    reduction_programs,
    row_launch_config,
)


def layer_norm_ref(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, eps: float = 1e-5) -> torch.Tensor:
    """LayerNorm from scratch: biased variance over the last dimension, as in GPT-2 and `F.layer_norm`."""
    mean = x.mean(dim=-1, keepdim=True)
    var = (x - mean).pow(2).mean(dim=-1, keepdim=True)
    y = (x - mean) * torch.rsqrt(var + eps) * weight
    return y + bias if bias is not None else y


def add_layer_norm_ref(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, eps: float = 1e-5
) -> tuple[torch.Tensor, torch.Tensor]:
    """Residual add then LayerNorm: returns (layer_norm(x + residual), x + residual)."""
    s = x + residual
    return layer_norm_ref(s, weight, bias, eps), s


# ---------------------------------------------------------------------------------------------------------
# Triton kernels


@triton.jit
def _layer_norm_fwd_kernel(
    X,  # (n_rows, n_cols) input, row stride stride_x, unit column stride
    R,  # (n_rows, n_cols) residual added to X first (HAS_RESIDUAL), row stride stride_r
    S,  # (n_rows, n_cols) out: X + R in S's dtype (HAS_RESIDUAL), contiguous
    Y,  # (n_rows, n_cols) out: normalised rows, row stride stride_y
    W,  # (n_cols,) weight
    B,  # (n_cols,) bias (HAS_BIAS)
    MEAN,  # (n_rows,) out, fp32: row means
    RSTD,  # (n_rows,) out, fp32: 1 / sqrt(var + eps)
    stride_x,
    stride_r,
    stride_s,
    stride_y,
    n_cols,
    eps,
    HAS_RESIDUAL: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """One program per row: x (+ residual) -> mean, rstd in fp32 -> y = (x - mean) * rstd * w + b."""
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    x = tl.load(X + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:
        s = x + tl.load(R + row * stride_r + cols, mask=mask, other=0.0).to(tl.float32)
        s = s.to(S.dtype.element_ty)
        tl.store(S + row * stride_s + cols, s, mask=mask)
        # Normalise the sum as returned (rounded to S's dtype), so y == layer_norm(s) exactly.
        x = s.to(tl.float32)
    mean = tl.sum(x, axis=0) / n_cols
    xc = tl.where(mask, x - mean, 0.0)
    var = tl.sum(xc * xc, axis=0) / n_cols
    rstd = 1.0 / tl.sqrt(var + eps)
    tl.store(MEAN + row, mean)
    tl.store(RSTD + row, rstd)
    w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    y = xc * rstd * w
    if HAS_BIAS:
        y += tl.load(B + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(Y + row * stride_y + cols, y.to(Y.dtype.element_ty), mask=mask)


# Backward. With n = n_cols, xhat = (x - mean) * rstd and y = xhat * w + b, per row:
#   g     = dy * w                                    (gradient into xhat)
#   dx    = rstd * (g - mean(g) - xhat * mean(g * xhat))
#   (from d xhat_j / d x_i = rstd * (delta_ij - 1/n - xhat_i xhat_j / n))
#   dw    = sum over rows of dy * xhat,   db = sum over rows of dy
# add_layer_norm: s = x + residual is also an output, so its gradient ds is added: dx = dresidual = dx + ds.
# dw, db: each program sums its contiguous chunk of rows into one fp32 partial row; the host adds the
# partial rows with torch. No atomics, so the result is the same every run.
@triton.jit
def _layer_norm_bwd_kernel(
    DY,  # (n_rows, n_cols) upstream gradient, row stride stride_dy
    X,  # (n_rows, n_cols) the normalised input (add_layer_norm: the sum s), row stride stride_x
    W,  # (n_cols,) weight
    MEAN,  # (n_rows,) fp32 row means from the forward
    RSTD,  # (n_rows,) fp32 row 1/std from the forward
    DS,  # (n_rows,) gradient into the sum output (HAS_DSUM), row stride stride_ds
    DX,  # (n_rows, n_cols) out: input gradient, row stride stride_dx
    DW_PARTIAL,  # (n_programs, n_cols) out, fp32: this program's sum of dy * xhat, contiguous
    DB_PARTIAL,  # (n_programs, n_cols) out, fp32: this program's sum of dy, contiguous
    stride_dy,
    stride_x,
    stride_ds,
    stride_dx,
    n_rows,
    n_cols,
    rows_per_program,
    HAS_DSUM: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    row_start = pid * rows_per_program
    row_end = tl.minimum(row_start + rows_per_program, n_rows)
    first = row_start.to(tl.int64)
    DY += first * stride_dy
    X += first * stride_x
    DX += first * stride_dx
    if HAS_DSUM:
        DS += first * stride_ds
    w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    dw = tl.zeros((BLOCK,), dtype=tl.float32)
    db = tl.zeros((BLOCK,), dtype=tl.float32)
    for row in range(row_start, row_end):
        x = tl.load(X + cols, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(DY + cols, mask=mask, other=0.0).to(tl.float32)
        mean = tl.load(MEAN + row)
        rstd = tl.load(RSTD + row)
        xhat = tl.where(mask, (x - mean) * rstd, 0.0)
        g = dy * w
        c_xhat = tl.sum(g * xhat, axis=0) / n_cols
        c_one = tl.sum(g, axis=0) / n_cols
        dx = (g - c_one - xhat * c_xhat) * rstd
        if HAS_DSUM:
            dx += tl.load(DS + cols, mask=mask, other=0.0).to(tl.float32)
            DS += stride_ds
        tl.store(DX + cols, dx.to(DX.dtype.element_ty), mask=mask)
        dw += dy * xhat
        db += dy
        DY += stride_dy
        X += stride_x
        DX += stride_dx
    tl.store(DW_PARTIAL + pid.to(tl.int64) * n_cols + cols, dw, mask=mask)
    tl.store(DB_PARTIAL + pid.to(tl.int64) * n_cols + cols, db, mask=mask)


# ---------------------------------------------------------------------------------------------------------
# Host functions: validate, flatten to rows, allocate, launch. Registered as torch.ops.tritongpt.*.


def _check_width(op: str, n_cols: int) -> None:
    if n_cols > MAX_ROW_WIDTH:
        raise ValueError(f"{op}: rows of width {n_cols} exceed the maximum LayerNorm width {MAX_ROW_WIDTH}")


def _layer_norm_fwd(
    op: str, x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, bias: torch.Tensor | None, eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(y, mean, rstd, s) for layer_norm(x [+ residual]); s (the sum) is None without a residual."""
    device = check_inputs(op, x=x, residual=residual, weight=weight, bias=bias)
    if residual is not None and residual.shape != x.shape:
        raise ValueError(f"{op}: residual has shape {tuple(residual.shape)}, x has {tuple(x.shape)}")
    n_cols = x.shape[-1] if x.dim() else 1
    weight = as_vector(op, "weight", weight, n_cols)
    bias = as_vector(op, "bias", bias, n_cols)
    _check_width(op, n_cols)
    out_dtype = x.dtype if residual is None else torch.promote_types(x.dtype, residual.dtype)
    x2 = as_rows(x)
    n_rows = x2.shape[0]
    y = alloc((n_rows, n_cols), out_dtype, device)
    mean = alloc((n_rows,), torch.float32, device)
    rstd = alloc((n_rows,), torch.float32, device)
    s = alloc((n_rows, n_cols), out_dtype, device) if residual is not None else None
    if n_rows > 0 and n_cols > 0:
        r2 = as_rows(residual) if residual is not None else None
        block, num_warps = row_launch_config(n_cols)
        launcher(_layer_norm_fwd_kernel)[(n_rows,)](
            x2, r2 if r2 is not None else x2, s if s is not None else y, y, weight,
            bias if bias is not None else weight, mean, rstd,
            x2.stride(0), r2.stride(0) if r2 is not None else 0, n_cols, n_cols, n_cols, eps,
            HAS_RESIDUAL=residual is not None, HAS_BIAS=bias is not None, BLOCK=block, num_warps=num_warps,
        )  # fmt: skip
    y = y.view(x.shape)
    return y, mean, rstd, (s.view(x.shape) if s is not None else None)


@library_op("layer_norm")
def layer_norm_fwd(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(y, mean, rstd): y = layer_norm(x) shaped like x; mean, rstd fp32, one per row."""
    y, mean, rstd, _ = _layer_norm_fwd("layer_norm", x, None, weight, bias, eps)
    return y, mean, rstd


@library_op("add_layer_norm")
def add_layer_norm_fwd(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(y, s, mean, rstd): s = x + residual, y = layer_norm(s), in one pass."""
    y, mean, rstd, s = _layer_norm_fwd("add_layer_norm", x, residual, weight, bias, eps)
    return y, s, mean, rstd


@library_op("layer_norm_bwd")
def layer_norm_bwd(
    dy: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    mean: torch.Tensor,
    rstd: torch.Tensor,
    dsum: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dx, dweight, dbias) given the upstream gradient dy, the normalised input x and the saved statistics.

    `dsum`, the gradient into add_layer_norm's sum output, is added to dx when given. dbias is returned even
    for a bias-free LayerNorm (the caller drops it)."""
    op = "layer_norm backward"
    device = check_inputs(op, dy=dy, x=x, weight=weight, mean=mean, rstd=rstd, dsum=dsum)
    n_cols = x.shape[-1] if x.dim() else 1
    weight = as_vector(op, "weight", weight, n_cols)
    x2, dy2 = as_rows(x), as_rows(dy)
    ds2 = as_rows(dsum) if dsum is not None else None
    n_rows = x2.shape[0]
    dx = alloc((n_rows, n_cols), x.dtype, device)
    if n_rows == 0 or n_cols == 0:
        zeros = torch.zeros_like(weight)
        return dx.view(x.shape), zeros, zeros.clone()
    n_programs = reduction_programs(n_rows, device)
    rows_per_program = triton.cdiv(n_rows, n_programs)
    n_programs = triton.cdiv(n_rows, rows_per_program)
    dw_partial = alloc((n_programs, n_cols), torch.float32, device)
    db_partial = alloc((n_programs, n_cols), torch.float32, device)
    block, num_warps = row_launch_config(n_cols)
    launcher(_layer_norm_bwd_kernel)[(n_programs,)](
        dy2, x2, weight, mean, rstd, ds2 if ds2 is not None else dy2, dx, dw_partial, db_partial,
        dy2.stride(0), x2.stride(0), ds2.stride(0) if ds2 is not None else 0, n_cols,
        n_rows, n_cols, rows_per_program,
        HAS_DSUM=dsum is not None, BLOCK=block, num_warps=num_warps,
    )  # fmt: skip
    dw = dw_partial.sum(dim=0).to(weight.dtype)
    db = db_partial.sum(dim=0).to(weight.dtype)
    return dx.view(x.shape), dw, db


# ---------------------------------------------------------------------------------------------------------
# Autograd: the forward ops' backward formulas, registered with torch.library.register_autograd.


def _layer_norm_setup_context(ctx, inputs, output):
    x, weight, bias, _ = inputs
    _, mean, rstd = output
    ctx.save_for_backward(x, weight, mean, rstd)
    ctx.has_bias = bias is not None
    ctx.mark_non_differentiable(mean, rstd)


def _layer_norm_backward(ctx, dy, _dmean, _drstd):
    x, weight, mean, rstd = ctx.saved_tensors
    dx, dw, db = layer_norm_bwd(dy, x, weight, mean, rstd, None)
    return dx, dw, (db if ctx.has_bias else None), None


def _add_layer_norm_setup_context(ctx, inputs, output):
    x, residual, weight, bias, _ = inputs
    _, s, mean, rstd = output
    ctx.save_for_backward(s, weight, mean, rstd)
    ctx.has_bias = bias is not None
    ctx.dtypes = (x.dtype, residual.dtype)
    ctx.mark_non_differentiable(mean, rstd)


def _add_layer_norm_backward(ctx, dy, ds, _dmean, _drstd):
    s, weight, mean, rstd = ctx.saved_tensors
    ds = ds if ds is not None else torch.zeros_like(s)
    dx, dw, db = layer_norm_bwd(dy, s, weight, mean, rstd, ds)
    x_dtype, residual_dtype = ctx.dtypes
    return dx.to(x_dtype), dx.to(residual_dtype), dw, (db if ctx.has_bias else None), None


layer_norm_fwd.register_autograd(_layer_norm_backward, setup_context=_layer_norm_setup_context)
add_layer_norm_fwd.register_autograd(_add_layer_norm_backward, setup_context=_add_layer_norm_setup_context)


# ---------------------------------------------------------------------------------------------------------
# Public functions: the reference's signatures.


def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, eps: float = 1e-5) -> torch.Tensor:
    """LayerNorm over the last dimension of x (any leading shape), fused in one Triton kernel."""
    return layer_norm_fwd(x, weight, bias, float(eps))[0]


def add_layer_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, eps: float = 1e-5
) -> tuple[torch.Tensor, torch.Tensor]:
    """(layer_norm(x + residual), x + residual) in one pass; gradients into both outputs reach x and residual."""
    y, s, _, _ = add_layer_norm_fwd(x, residual, weight, bias, float(eps))
    return y, s
