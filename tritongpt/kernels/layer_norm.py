"""LayerNorm over the last dimension: y = (x - mean) / sqrt(var + eps) * weight + bias.

    from tritongpt.kernels.layer_norm import layer_norm, add_layer_norm
    y = layer_norm(x, weight, bias, eps=1e-5)                         # (..., C) -> (..., C)
    y, s = add_layer_norm(x, residual, weight, bias, eps=1e-5)        # s = x + residual, y = layer_norm(s)

Reference (pure PyTorch) lives here beside the Triton kernels; `tritongpt.kernels.reference` re-exports it.

Read top-down: Triton kernels -> host functions (validate, flatten to rows, allocate, launch), registered as
`torch.ops.tritongpt.*` so torch.compile sees through them -> autograd (`register_autograd` on the forward
ops) -> the public functions.

Kernels: each program loops over a contiguous chunk of rows (`tl.range` with 2 pipeline stages where two rows
fit in a small shared-memory budget, so the next row is loaded while this one is computed). The forward keeps
a row in one warp up to width 1024 (its reductions are warp shuffles; the mean gets one correction step, the
corrected two-pass), loads weight and bias once per program, and launches enough programs to fill every SM
(rows wider than 4096: one program per row, weight and bias loaded after the statistics, where registers are
short); the backward spreads a row over a few more warps (it holds twice the live values) and reduces the
row's three sums as one triple.

Dtypes: x (and residual) fp16, bf16 or fp32; statistics in fp32 (mean and rstd are saved fp32 per row);
y, s and dx in the input's dtype (add_layer_norm: the promoted dtype of x and residual). Under torch.autocast
y is written in autocast's dtype (bf16 for the model's bf16 training): it feeds a matmul that would cast it
anyway, and writing it narrow saves that cast's pass; s stays in the promoted dtype. dweight, dbias in the
parameters' dtype, reduced in fp32.

Limits: rows up to 65536 wide (`_common.MAX_ROW_WIDTH`; wider raises ValueError) since a whole row is one
register block; eps must be a positive finite number (ValueError otherwise: eps <= 0 divides by zero on a
constant row); the last dimension must have a unit stride or it is copied, other strides are passed to the
kernels. Weight and bias gradients are per-program fp32 partial rows summed with torch afterwards: bit-
identical run to run on one device, but the partition (and so the last bits) depends on the GPU's SM count.
No double backward.
"""

import math
import numbers

import torch
import triton
import triton.language as tl

from tritongpt.kernels._common import (
    MAX_ROW_WIDTH,
    SUPPORTED_DTYPES,
    alloc,
    as_rows,
    as_vector,
    check_inputs,
    interpreter_enabled,
    launcher,
    library_op,
    row_config,
    row_programs,
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
def _layer_norm_fwd_row(
    X, R, S, Y, W, B, MEAN, RSTD, w, b, row, row64, cols, mask, stride_x, stride_r, n_cols, eps,
    HAS_RESIDUAL: tl.constexpr, HAS_BIAS: tl.constexpr, LOAD_WB: tl.constexpr,
):  # fmt: skip
    """One row: x (+ residual) -> mean, rstd in fp32 -> y = (x - mean) * rstd * w + b (row64: 64-bit row).
    LOAD_WB: load w and b from W and B only after the statistics, so they and x are not all live at once."""
    x = tl.load(X + row64 * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:
        s = x + tl.load(R + row64 * stride_r + cols, mask=mask, other=0.0).to(tl.float32)
        s = s.to(S.dtype.element_ty)
        tl.store(S + row64 * n_cols + cols, s, mask=mask)
        # Normalise the sum as returned (rounded to S's dtype), so y == layer_norm(s) exactly.
        x = s.to(tl.float32)
    mean = tl.sum(x, axis=0) / n_cols
    xc = tl.where(mask, x - mean, 0.0)
    # One correction step: the fp32 sum leaves the mean off by about an ulp of |mean|, an error of ulp(mean) / std
    # in y, which is large where |mean| >> std (rows at 300 +- 1: 5x the reference's error, whose sum of the
    # row is nearly exact). corr = mean(xc) is that error to first order; the variance around the corrected
    # mean is mean(xc^2) - corr^2, and y is formed from xc - corr (not from the rounded corrected mean).
    corr = tl.sum(xc, axis=0) / n_cols
    var = tl.maximum(tl.sum(xc * xc, axis=0) / n_cols - corr * corr, 0.0)
    mean += corr
    xc = tl.where(mask, xc - corr, 0.0)
    rstd = 1.0 / tl.sqrt(var + eps)
    tl.store(MEAN + row, mean)
    tl.store(RSTD + row, rstd)
    if LOAD_WB:
        w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    y = xc * rstd * w
    if HAS_BIAS:
        if LOAD_WB:
            b = tl.load(B + cols, mask=mask, other=0.0).to(tl.float32)
        y += b
    tl.store(Y + row64 * n_cols + cols, y.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _layer_norm_fwd_kernel(
    X,  # (n_rows, n_cols) input, row stride stride_x, unit column stride
    R,  # (n_rows, n_cols) residual added to X first (HAS_RESIDUAL), row stride stride_r
    S,  # (n_rows, n_cols) out: X + R in S's dtype (HAS_RESIDUAL), contiguous
    Y,  # (n_rows, n_cols) out: normalised rows in Y's dtype, contiguous
    W,  # (n_cols,) weight
    B,  # (n_cols,) bias (HAS_BIAS)
    MEAN,  # (n_rows,) out, fp32: row means
    RSTD,  # (n_rows,) out, fp32: 1 / sqrt(var + eps)
    stride_x,
    stride_r,
    n_rows,
    n_cols,
    rows_per_program,
    eps,
    HAS_RESIDUAL: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    BLOCK: tl.constexpr,
    NUM_STAGES: tl.constexpr,
    ROW_LOOP: tl.constexpr,
):
    """ROW_LOOP (narrow rows): program p normalises rows [p * rows_per_program, ...) one after another, weight
    and bias loaded once, the next row's loads in flight while this one is computed (NUM_STAGES = 2). Otherwise
    (wide rows, where registers are short) program p normalises row p alone."""
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    if ROW_LOOP:
        w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
        if HAS_BIAS:
            b = tl.load(B + cols, mask=mask, other=0.0).to(tl.float32)
        else:
            b = w  # unused
        row_start = pid * rows_per_program
        row_end = tl.minimum(row_start + rows_per_program, n_rows)
        first = row_start.to(tl.int64)
        for row in tl.range(row_start, row_end, num_stages=NUM_STAGES):
            _layer_norm_fwd_row(
                X, R, S, Y, W, B, MEAN, RSTD, w, b, row, first + (row - row_start), cols, mask, stride_x, stride_r,
                n_cols, eps, HAS_RESIDUAL, HAS_BIAS, False,
            )  # fmt: skip
    else:
        _layer_norm_fwd_row(
            X, R, S, Y, W, B, MEAN, RSTD, 0.0, 0.0, pid, pid.to(tl.int64), cols, mask, stride_x, stride_r, n_cols,
            eps, HAS_RESIDUAL, HAS_BIAS, True,
        )  # fmt: skip


@triton.jit
def _add_triple(a0, a1, a2, b0, b1, b2):
    return a0 + b0, a1 + b1, a2 + b2


# Backward. With n = n_cols, xhat = (x - mean) * rstd and y = xhat * w + b, per row:
#   g     = dy * w                                    (gradient into xhat)
#   dx    = rstd * (g - mean(g) - (xhat - mean(xhat)) * mean(g * xhat))
#   (from d xhat_j / d x_i = rstd * (delta_ij - 1/n - xhat_i xhat_j / n))
#   dw    = sum over rows of dy * xhat,   db = sum over rows of dy
# mean(xhat) is 0 but for the rounding of the saved fp32 mean, which biases xhat by ulp(mean) * rstd: where
# |mean| >> std (a row at 300 +- 1) that bias, times mean(g * xhat), was ~4x the reference's error in dx. The
# reference's autograd (through mean and var) subtracts it; so do we. The three row sums (of g * xhat, g and
# xhat) are one reduction of a triple: one pass through the reduction tree (and, where a row spans several
# warps, one shared-memory exchange instead of three).
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
    DS,  # (n_rows, n_cols) gradient into the sum output (HAS_DSUM), row stride stride_ds
    DX,  # (n_rows, n_cols) out: input gradient, contiguous
    DW_PARTIAL,  # (n_programs, n_cols) out, fp32: this program's sum of dy * xhat, contiguous
    DB_PARTIAL,  # (n_programs, n_cols) out, fp32: this program's sum of dy, contiguous
    stride_dy,
    stride_x,
    stride_ds,
    n_rows,
    n_cols,
    rows_per_program,
    HAS_DSUM: tl.constexpr,
    BLOCK: tl.constexpr,
    NUM_STAGES: tl.constexpr,
    ONE_REDUCTION: tl.constexpr,
):
    """Program p: rows [p * rows_per_program, ...), the next row's x, dy (and ds) prefetched (NUM_STAGES = 2).
    ONE_REDUCTION: the row's three sums as one reduction of a triple; otherwise (Triton's interpreter) three
    tl.sum, since the interpreter runs a reduction with a combine function of ours element by element in Python:
    a sequential fp32 sum, slow and, on a 50k-wide row, with 55x the reference's error in dx."""
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    row_start = pid * rows_per_program
    row_end = tl.minimum(row_start + rows_per_program, n_rows)
    w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    dw = tl.zeros((BLOCK,), dtype=tl.float32)
    db = tl.zeros((BLOCK,), dtype=tl.float32)
    first = row_start.to(tl.int64)
    for row in tl.range(row_start, row_end, num_stages=NUM_STAGES):
        row64 = first + (row - row_start)  # 64-bit offsets
        x = tl.load(X + row64 * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(DY + row64 * stride_dy + cols, mask=mask, other=0.0).to(tl.float32)
        mean = tl.load(MEAN + row)
        rstd = tl.load(RSTD + row)
        xhat = tl.where(mask, (x - mean) * rstd, 0.0)
        g = dy * w
        if ONE_REDUCTION:
            sum_gxhat, sum_g, sum_xhat = tl.reduce((g * xhat, g, xhat), 0, _add_triple)
        else:
            sum_gxhat, sum_g, sum_xhat = tl.sum(g * xhat, axis=0), tl.sum(g, axis=0), tl.sum(xhat, axis=0)
        dx = (g - sum_g / n_cols - (xhat - sum_xhat / n_cols) * (sum_gxhat / n_cols)) * rstd
        if HAS_DSUM:
            dx += tl.load(DS + row64 * stride_ds + cols, mask=mask, other=0.0).to(tl.float32)
        tl.store(DX + row64 * n_cols + cols, dx.to(DX.dtype.element_ty), mask=mask)
        dw += dy * xhat
        db += dy
    tl.store(DW_PARTIAL + pid.to(tl.int64) * n_cols + cols, dw, mask=mask)
    tl.store(DB_PARTIAL + pid.to(tl.int64) * n_cols + cols, db, mask=mask)


# ---------------------------------------------------------------------------------------------------------
# Host functions: validate, flatten to rows, allocate, launch. Registered as torch.ops.tritongpt.*.

# Row settings (see `_common.row_config`): the forward keeps up to 32 elements of a row per thread (one warp
# per program up to width 1024) and fills the GPU with programs; the backward, which holds about twice the
# live values per element, up to 16, with fewer programs since each writes an fp32 partial row of dW and dB.
_FWD_PER_THREAD, _FWD_WARPS_PER_SM = 32, 64
_BWD_PER_THREAD, _BWD_WARPS_PER_SM = 16, 16
# Widest block the forward loops over rows with (weight and bias kept in registers); wider rows, where registers
# are short, get one program each.
_ROW_LOOP_MAX_BLOCK = 4096
_INTERPRET = interpreter_enabled()  # read once at import, as Triton decides interpreter or compiler


def _check_width(op: str, n_cols: int) -> None:
    if n_cols > MAX_ROW_WIDTH:
        raise ValueError(f"{op}: rows of width {n_cols} exceed the maximum LayerNorm width {MAX_ROW_WIDTH}")


def _check_eps(op: str, eps: float) -> None:
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not (math.isfinite(eps) and eps > 0):
        raise ValueError(f"{op}: eps must be a positive finite number, got {eps!r}")


def _layer_norm_fwd(
    op: str,
    x: torch.Tensor,
    residual: torch.Tensor | None,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    eps: float,
    out_dtype: torch.dtype | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(y, mean, rstd, s) for layer_norm(x [+ residual]); s (the sum) is None without a residual. y is in
    `out_dtype` when given, else in x's dtype (with a residual: the promoted dtype, which s always has)."""
    device = check_inputs(op, x=x, residual=residual, weight=weight, bias=bias)
    _check_eps(op, eps)
    if out_dtype is not None and out_dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"{op}: out_dtype {out_dtype} is not supported; use float16, bfloat16 or float32")
    if residual is not None and residual.shape != x.shape:
        raise ValueError(f"{op}: residual has shape {tuple(residual.shape)}, x has {tuple(x.shape)}")
    n_cols = x.shape[-1] if x.dim() else 1
    weight = as_vector(op, "weight", weight, n_cols)
    bias = as_vector(op, "bias", bias, n_cols)
    _check_width(op, n_cols)
    sum_dtype = x.dtype if residual is None else torch.promote_types(x.dtype, residual.dtype)
    x2 = as_rows(x)
    n_rows = x2.shape[0]
    y = alloc((n_rows, n_cols), out_dtype or sum_dtype, device)
    mean = alloc((n_rows,), torch.float32, device)
    rstd = alloc((n_rows,), torch.float32, device)
    s = alloc((n_rows, n_cols), sum_dtype, device) if residual is not None else None
    if n_rows > 0 and n_cols > 0:
        r2 = as_rows(residual) if residual is not None else None
        row_bytes = x.element_size() + (residual.element_size() if residual is not None else 0)
        cfg = row_config(n_cols, _FWD_PER_THREAD, row_bytes)
        row_loop = cfg.block <= _ROW_LOOP_MAX_BLOCK
        n_programs = row_programs(n_rows, device, cfg.num_warps, _FWD_WARPS_PER_SM) if row_loop else n_rows
        rows_per_program = triton.cdiv(n_rows, n_programs)
        launcher(_layer_norm_fwd_kernel)[(triton.cdiv(n_rows, rows_per_program),)](
            x2, r2 if r2 is not None else x2, s if s is not None else y, y, weight,
            bias if bias is not None else weight, mean, rstd,
            x2.stride(0), r2.stride(0) if r2 is not None else 0, n_rows, n_cols, rows_per_program, eps,
            HAS_RESIDUAL=residual is not None, HAS_BIAS=bias is not None, BLOCK=cfg.block,
            NUM_STAGES=cfg.num_stages, ROW_LOOP=row_loop, num_warps=cfg.num_warps,
        )  # fmt: skip
    y = y.view(x.shape)
    return y, mean, rstd, (s.view(x.shape) if s is not None else None)


@library_op("layer_norm")
def layer_norm_fwd(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, eps: float, out_dtype: torch.dtype | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(y, mean, rstd): y = layer_norm(x) shaped like x, in out_dtype (None: x's dtype); mean, rstd fp32, one
    per row."""
    y, mean, rstd, _ = _layer_norm_fwd("layer_norm", x, None, weight, bias, eps, out_dtype)
    return y, mean, rstd


@library_op("add_layer_norm")
def add_layer_norm_fwd(
    x: torch.Tensor,
    residual: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    eps: float,
    out_dtype: torch.dtype | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(y, s, mean, rstd): s = x + residual (promoted dtype), y = layer_norm(s) (out_dtype, None: s's), in one
    pass."""
    y, mean, rstd, s = _layer_norm_fwd("add_layer_norm", x, residual, weight, bias, eps, out_dtype)
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
    row_bytes = x.element_size() + dy.element_size() + (dsum.element_size() if dsum is not None else 0)
    cfg = row_config(n_cols, _BWD_PER_THREAD, row_bytes)
    n_programs = row_programs(n_rows, device, cfg.num_warps, _BWD_WARPS_PER_SM)
    rows_per_program = triton.cdiv(n_rows, n_programs)
    n_programs = triton.cdiv(n_rows, rows_per_program)
    dw_partial = alloc((n_programs, n_cols), torch.float32, device)
    db_partial = alloc((n_programs, n_cols), torch.float32, device)
    launcher(_layer_norm_bwd_kernel)[(n_programs,)](
        dy2, x2, weight, mean, rstd, ds2 if ds2 is not None else dy2, dx, dw_partial, db_partial,
        dy2.stride(0), x2.stride(0), ds2.stride(0) if ds2 is not None else 0,
        n_rows, n_cols, rows_per_program,
        HAS_DSUM=dsum is not None, BLOCK=cfg.block, NUM_STAGES=cfg.num_stages, ONE_REDUCTION=not _INTERPRET,
        num_warps=cfg.num_warps,
    )  # fmt: skip
    dw = dw_partial.sum(dim=0).to(weight.dtype)
    db = db_partial.sum(dim=0).to(weight.dtype)
    return dx.view(x.shape), dw, db


# ---------------------------------------------------------------------------------------------------------
# Autograd: the forward ops' backward formulas, registered with torch.library.register_autograd.


def _layer_norm_setup_context(ctx, inputs, output):
    x, weight, bias, _, _ = inputs
    _, mean, rstd = output
    ctx.save_for_backward(x, weight, mean, rstd)
    ctx.has_bias = bias is not None
    ctx.mark_non_differentiable(mean, rstd)


def _layer_norm_backward(ctx, dy, _dmean, _drstd):
    x, weight, mean, rstd = ctx.saved_tensors
    dx, dw, db = layer_norm_bwd(dy, x, weight, mean, rstd, None)
    return dx, dw, (db if ctx.has_bias else None), None, None


def _add_layer_norm_setup_context(ctx, inputs, output):
    x, residual, weight, bias, _, _ = inputs
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
    return dx.to(x_dtype), dx.to(residual_dtype), dw, (db if ctx.has_bias else None), None, None


layer_norm_fwd.register_autograd(_layer_norm_backward, setup_context=_layer_norm_setup_context)
add_layer_norm_fwd.register_autograd(_add_layer_norm_backward, setup_context=_add_layer_norm_setup_context)


# ---------------------------------------------------------------------------------------------------------
# Public functions: the reference's signatures.


def _autocast_dtype(x: torch.Tensor) -> torch.dtype | None:
    """Under torch.autocast for x's device type, its lower-precision dtype (the normalised output goes to a
    matmul, which would cast it to that dtype anyway); None otherwise."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return None


def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, eps: float = 1e-5) -> torch.Tensor:
    """LayerNorm over the last dimension of x (any leading shape), fused in one Triton kernel. y is in x's dtype,
    or in autocast's dtype while torch.autocast is on (statistics in fp32 either way)."""
    _check_eps("layer_norm", eps)
    check_inputs("layer_norm", x=x, weight=weight, bias=bias)  # a non-tensor: our TypeError, not the dispatcher's
    return layer_norm_fwd(x, weight, bias, float(eps), _autocast_dtype(x))[0]


def add_layer_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, eps: float = 1e-5
) -> tuple[torch.Tensor, torch.Tensor]:
    """(layer_norm(x + residual), x + residual) in one pass; gradients into both outputs reach x and residual.
    The sum is in the promoted dtype of x and residual; the normalised output too, or in autocast's dtype while
    torch.autocast is on."""
    _check_eps("add_layer_norm", eps)
    check_inputs("add_layer_norm", x=x, residual=residual, weight=weight, bias=bias)
    y, s, _, _ = add_layer_norm_fwd(x, residual, weight, bias, float(eps), _autocast_dtype(x))
    return y, s


# ---------------------------------------------------------------------------------------------------------
# Fuzz case space (`gpt verify --fuzz`, tritongpt/fuzz.py): the Limits above as the calls to draw. `draw` names
# each value (the keys of a case's JSON) and skews sizes to the block edges.

# Widths at the kernels' edges: one warp per row up to 1024 (forward), the row loop up to _ROW_LOOP_MAX_BLOCK,
# one register block per row up to MAX_ROW_WIDTH.
_FUZZ_WIDTHS = (1, 32, 512, 1024, 2048, _ROW_LOOP_MAX_BLOCK, 8192, MAX_ROW_WIDTH)
_FUZZ_ELEMENTS = {"cpu": 2**17, "cuda": 2**24}  # most elements of x drawn (the interpreter is slow)


def fuzz_case(op: str, draw) -> dict:
    """A call layer_norm / add_layer_norm must get right: widths 1..MAX_ROW_WIDTH skewed to the block edges, 0
    rows and more, one to three dimensions; eps > 0; with or without bias; x scaled and offset (mean >> std;
    constant rows),
    with NaN or +-inf in a few elements; fp32, fp16 (bf16 on a GPU); add_layer_norm's residual in x's dtype or
    another (the sum and output in the promoted one); any layout of every tensor."""
    dtype = draw.dtype()
    n_cols = draw.integer("C", 1, MAX_ROW_WIDTH, near=_FUZZ_WIDTHS)
    most_rows = max(1, min(70, _FUZZ_ELEMENTS[draw.device.type] // n_cols))
    lead = draw.choice("lead", ["rows", "row", "batch"])
    if lead == "row":
        shape = (n_cols,)
    elif lead == "rows":
        shape = (draw.integer("rows", 0, most_rows, near=(1, 8)), n_cols)
    else:
        shape = (draw.integer("A", 1, 3), draw.integer("rows", 0, max(1, most_rows // 3)), n_cols)
    scale = draw.choice("x_scale", [1.0, 1e-3, 30.0, 1e3, 0.0])  # 0: constant rows (x_mean, exact in fp32)
    offset = draw.choice("x_mean", [0.0, 10.0, 300.0])
    eps = draw.choice("eps", [1e-5, 1e-6, 1e-3, 1.0, 1e-12])
    kwargs = {"x": draw.tensor("x", shape, dtype, scale, offset, specials=True)}
    if op == "add_layer_norm":
        kwargs["residual"] = draw.tensor("residual", shape, draw.dtype("residual_dtype", same=dtype), scale)
    kwargs["weight"] = draw.tensor("weight", (n_cols,), dtype, 0.5, 1.0)
    kwargs["bias"] = draw.tensor("bias", (n_cols,), dtype) if draw.choice("bias", [True, False]) else None
    kwargs["eps"] = eps
    return kwargs


def fuzz_invalid(op: str, draw) -> tuple[dict, str]:
    """A call layer_norm / add_layer_norm must refuse, and what its error must name: an unsupported dtype, a
    weight, bias or residual of the wrong shape, rows wider than MAX_ROW_WIDTH, eps not positive and finite,
    mixed devices, a non-tensor."""
    dtype = draw.dtype()
    n_cols = draw.integer("C", 1, 64, near=(1, 32))
    shape = (draw.integer("rows", 1, 4), n_cols)
    kwargs = {"x": draw.tensor("x", shape, dtype, layout=False)}
    if op == "add_layer_norm":
        kwargs["residual"] = draw.tensor("residual", shape, dtype, layout=False)
    kwargs["weight"] = draw.tensor("weight", (n_cols,), dtype, layout=False)
    kwargs["bias"] = draw.tensor("bias", (n_cols,), dtype, layout=False)
    defects = ["dtype", "weight_shape", "bias_shape", "width", "eps", "device", "not_tensor"]
    defect = draw.choice("defect", defects + (["residual_shape"] if op == "add_layer_norm" else []))
    name = draw.choice("which", list(kwargs))
    if defect == "dtype":
        bad = draw.choice("bad_dtype", ["float64", "int32", "bool"])
        kwargs[name] = kwargs[name].to(getattr(torch, bad))
        return kwargs, f"{name} has dtype torch.{bad}"
    if defect in ("weight_shape", "bias_shape"):
        name = defect.split("_")[0]
        bad = draw.choice("bad_shape", [[n_cols + 1], [max(n_cols - 1, 0)], [1, n_cols], [n_cols, 1]])
        kwargs[name] = torch.ones(bad, dtype=dtype, device=draw.device)
        return kwargs, f"{name} has shape {tuple(bad)}"
    if defect == "residual_shape":
        kwargs["residual"] = kwargs["residual"][:, None] if draw.choice("bad_shape", ["3d", "rows"]) == "3d" else (
            torch.cat([kwargs["residual"], kwargs["residual"]]))  # fmt: skip
        return kwargs, "residual has shape"
    if defect == "width":
        wide = MAX_ROW_WIDTH + draw.integer("extra", 1, 7)
        kwargs = {n: (t[:1, :1].expand(1, wide) if t.dim() == 2 else t[:1].expand(wide)) for n, t in kwargs.items()}
        return kwargs, f"rows of width {wide} exceed"
    if defect == "eps":
        bad = draw.choice("bad_eps", [0.0, -1e-5, "nan", "inf", "-inf", "1e-5", True])
        kwargs["eps"] = float(bad) if bad in ("nan", "inf", "-inf") else bad
        return kwargs, "eps must be a positive finite number"
    if defect == "device":
        kwargs[name] = kwargs[name].to(draw.other_device)
        return kwargs, "different devices"
    kwargs[name] = kwargs[name].tolist()
    return kwargs, f"{name} must be a torch.Tensor"
