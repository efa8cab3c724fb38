"""The LM head and its loss in one op: mean cross-entropy of the logits x @ weight.T, without the logits.

    from tritongpt.kernels import implementation
    loss = implementation("triton").linear_cross_entropy(x, weight, targets)   # x (N, C), weight (V, C)
    loss = linear_cross_entropy(x, weight, targets, ignore_index=-1, n_classes=50257)  # padded head (V = 50304)

The loss is the mean over the rows whose target is not `ignore_index` of logsumexp(z) - z[target], z the
row's logits over the first `n_classes` columns (all V by default; a padded head passes its real vocabulary:
the padded columns are then outside the softmax and get zero gradient, as in llm.c). It is fp32. A batch
whose rows are all ignored has loss 0 and zero gradients, not 0/0.

The reference (`linear_cross_entropy_ref`, below) materialises the (N, V) logits and upcasts them to fp32,
as `F.cross_entropy((x @ weight.T).float(), targets)` does. At GPT-2 124M's training shape (N = 16 x 1024,
V = 50304) those are 1.6 GB in bf16, 3.3 GB in fp32, and as much again for their gradients
(tritongpt/kernels/README.md has the arithmetic).

The Triton version works through the rows in chunks. Per chunk of rows:
1. logits = x_chunk @ weight.T, a torch matmul (cuBLAS) in x's dtype: (rows, V);
2. one Triton kernel per row: an online logsumexp over the vocabulary in fp32 blocks, the row's loss
   logsumexp - z[target], and, in a second sweep, the logits' gradient softmax(z) - onehot(target) written
   in place over the logits (in their dtype, unscaled);
3. dx_chunk = grad @ weight and dweight += grad.T @ x_chunk, torch matmuls, accumulated in fp32.
So the gradients are complete when the forward returns: the backward only scales the saved dx and dweight
by the upstream gradient (no second pass over the logits), and at most one chunk of logits exists at a
time. The forward does the gradient work only when it will be needed (grad mode on and x or weight
requiring grad); otherwise (`torch.no_grad()`, frozen inputs) it computes the loss alone.

Chunk size: `chunk_rows` picks the largest power of two of rows whose logits fit `LOGITS_CHUNK_BYTES`
(256 MiB: 2048 rows at V = 50304 in bf16) and, on a GPU, a quarter of the free memory; fp16 chunks stop at
`FP16_MAX_CHUNK_ROWS` (the per-chunk dweight matmul sums `rows` products into fp16, whose range ends at
65504). Set the module attribute `CHUNK_ROWS` to an int to override.

Dtypes: x fp16, bf16 or fp32, weight likewise; the matmuls run in x's dtype (weight cast to it, once per
call), so under `torch.autocast` the public function first casts x to autocast's dtype, as nn.Linear would.
Outside autocast x and weight must share a dtype (TypeError otherwise, as the reference's matmul would
fail). The logsumexp, loss and gradient math run in fp32; dx and dweight are accumulated in fp32 over the
chunks (each chunk's matmul rounds its product to x's dtype, as the reference's single matmul rounds its
result) and returned in x's and weight's dtypes: a bf16 head with fp32 master weights gets its dweight
straight from the fp32 sum. targets int64.

Read top-down: reference -> Triton kernel -> chunk size -> host function (validate, loop over chunks,
launch), registered as `torch.ops.tritongpt.linear_cross_entropy` so torch.compile sees through it ->
autograd -> the public function.

Limits: x (..., C) with targets shaped like x's leading dimensions (flattened to rows); targets outside
[0, n_classes) other than ignore_index make the loss NaN, and that row's gradients NaN (the reference raises
an index error; the kernel does not synchronise with the host to check). The gradient work done in the
forward is wasted if the loss is never backpropagated. fp16 logits' gradients below 2^-24 flush to zero
(probabilities that small contribute nothing visible to dx or dweight). Under torch.compile the number of
rows is specialised (the chunk loop runs on the host), so a dynamic batch size recompiles per size. No
double backward.
"""

import sys

import torch
import triton
import triton.language as tl

from tritongpt.kernels._common import alloc, check_inputs, launcher, library_op, row_config


def linear_cross_entropy_ref(
    x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, ignore_index: int = -1, n_classes: int | None = None
) -> torch.Tensor:
    """Mean over non-ignored rows of logsumexp(z) - z[target], z = (x @ weight.T)[:, :n_classes] upcast to
    at least fp32: the whole (N, V) logits tensor, the textbook way. x (..., C), weight (V, C), targets (...)."""
    x = x.reshape(-1, x.shape[-1])
    targets = targets.reshape(-1)
    logits = x @ weight.T  # (N, V) in the matmul's dtype
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    if n_classes is not None:
        logits = logits[:, :n_classes]
    valid = targets != ignore_index
    target_logit = logits.gather(1, torch.where(valid, targets, 0)[:, None])[:, 0]
    losses = torch.where(valid, torch.logsumexp(logits, dim=-1) - target_logit, 0.0)
    return losses.sum() / valid.sum().clamp(min=1)


# ---------------------------------------------------------------------------------------------------------
# Triton kernel
#
# Per row, with z the logits over the first n_classes columns and t the target:
#   lse  = logsumexp(z), accumulated online over column blocks: m = running max, d = sum exp(z - m);
#          a new block with max m' rescales d by exp(m - m')
#   loss = lse - z[t]
#   dloss/dz_j = softmax(z)_j - [j == t] = exp(z_j - lse) - [j == t]   (0 for columns >= n_classes)
# The mean's 1/n_valid and the upstream gradient are applied by the host to dx and dweight, in fp32.


@triton.jit
def _cross_entropy_fwd_kernel(
    LOGITS,  # (chunk, n_cols) in: a chunk's logits; out (COMPUTE_GRAD): softmax - onehot in place; row stride stride_z
    TARGETS,  # (n_rows,) int64 target column per row, stride stride_t; ignore_index: no loss, zero gradient
    LOSS,  # (n_rows,) out, fp32: lse - z[target] (0 for ignored rows, NaN for targets out of range)
    row_start,  # the chunk's first row in TARGETS and LOSS
    stride_z,
    stride_t,
    n_cols,  # V: columns of LOGITS (rows of the weight)
    n_classes,  # the softmax runs over columns < n_classes; the rest are padding
    ignore_index,
    COMPUTE_GRAD: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    LOGITS += row * stride_z
    row += row_start
    target = tl.load(TARGETS + row * stride_t)
    ignored = target == ignore_index
    invalid = ((target < 0) | (target >= n_classes)) & (target != ignore_index)

    m = float("-inf")
    d = 0.0
    for start in range(0, n_classes, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        z = tl.load(LOGITS + cols, mask=cols < n_classes, other=float("-inf")).to(tl.float32)
        m_new = tl.maximum(m, tl.max(z, axis=0))
        d = d * tl.exp(m - m_new) + tl.sum(tl.exp(z - m_new), axis=0)
        m = m_new
    lse = m + tl.log(d)
    z_target = tl.load(LOGITS + tl.where(ignored | invalid, 0, target)).to(tl.float32)
    loss = tl.where(ignored, 0.0, lse - z_target)
    tl.store(LOSS + row, tl.where(invalid, float("nan"), loss))

    if COMPUTE_GRAD:
        for start in range(0, n_cols, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            in_row = cols < n_cols
            z = tl.load(LOGITS + cols, mask=in_row, other=0.0).to(tl.float32)
            g = tl.exp(z - lse) - tl.where(cols == target, 1.0, 0.0)
            g = tl.where((cols < n_classes) & (target != ignore_index), g, 0.0)
            g = tl.where(invalid, float("nan"), g)
            tl.store(LOGITS + cols, g.to(LOGITS.dtype.element_ty), mask=in_row)


# ---------------------------------------------------------------------------------------------------------
# Chunk size

CHUNK_ROWS: int | None = None  # override: rows per chunk (None: `chunk_rows` decides)
LOGITS_CHUNK_BYTES = 256 * 2**20  # the most memory one chunk of logits may take
FP16_MAX_CHUNK_ROWS = 1024  # fp16's range: a dweight entry sums up to `rows` products of x and softmax - onehot
BLOCK_COLS = 4096  # columns per step of the kernel's sweeps over the vocabulary (a power of two)


def chunk_rows(n_rows: int, n_cols: int, dtype: torch.dtype, device: torch.device) -> int:
    """Rows of logits computed at once: `CHUNK_ROWS` if set, else the largest power of two whose (rows, n_cols)
    logits in `dtype` fit LOGITS_CHUNK_BYTES and (on a GPU) a quarter of the free memory, at most n_rows."""
    if CHUNK_ROWS is not None:
        if isinstance(CHUNK_ROWS, bool) or not isinstance(CHUNK_ROWS, int) or CHUNK_ROWS < 1:
            raise ValueError(f"linear_cross_entropy: CHUNK_ROWS must be a positive int or None, got {CHUNK_ROWS!r}")
        return max(1, min(CHUNK_ROWS, n_rows))
    budget = LOGITS_CHUNK_BYTES
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        free += torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)  # torch's cached blocks
        budget = min(budget, free // 4)
    rows = max(1, budget // (max(n_cols, 1) * dtype.itemsize))
    if dtype == torch.float16:
        rows = min(rows, FP16_MAX_CHUNK_ROWS)
    rows = 1 << (rows.bit_length() - 1)  # a power of two: whole chunks for the usual power-of-two batches
    return max(1, min(rows, n_rows))


# ---------------------------------------------------------------------------------------------------------
# Host function: validate, loop over row chunks (matmul, kernel, gradient matmuls). Registered as
# torch.ops.tritongpt.linear_cross_entropy.


def _check_targets(op: str, targets: torch.Tensor, n_rows: int, device: torch.device) -> None:
    if not isinstance(targets, torch.Tensor):
        raise TypeError(f"{op}: targets must be a torch.Tensor, got {type(targets).__name__}")
    if targets.dtype != torch.int64:
        raise TypeError(f"{op}: targets has dtype {targets.dtype}; expected torch.int64 class indices")
    if targets.device != device:
        raise ValueError(f"{op}: targets are on {targets.device}, x on {device}")
    if tuple(targets.shape) != (n_rows,):
        raise ValueError(f"{op}: targets has shape {tuple(targets.shape)}; expected ({n_rows},), one per row of x")


@library_op("linear_cross_entropy")
def linear_cross_entropy_fwd(
    x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, ignore_index: int, n_classes: int, compute_grad: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, dx, dweight): the fp32 mean loss and, when `compute_grad`, its fp32 gradients with respect to
    x (N, C) and weight (V, C) (empty tensors otherwise). targets (N,) int64."""
    op = "linear_cross_entropy"
    device = check_inputs(op, x=x, weight=weight)
    if x.dim() != 2 or weight.dim() != 2 or weight.shape[1] != x.shape[1]:
        raise ValueError(
            f"{op}: x has shape {tuple(x.shape)} and weight {tuple(weight.shape)}; expected (N, C) and (V, C)"
        )
    n_rows, n_cols = x.shape[0], weight.shape[0]
    _check_targets(op, targets, n_rows, device)
    if not 1 <= n_classes <= n_cols:
        raise ValueError(f"{op}: n_classes is {n_classes}; expected 1 <= n_classes <= {n_cols} (rows of weight)")
    w = weight if weight.dtype == x.dtype else weight.to(x.dtype)  # the matmuls run in x's dtype
    row_loss = alloc((n_rows,), torch.float32, device)
    dx = alloc((n_rows, x.shape[1]) if compute_grad else (0,), torch.float32, device)
    dw = torch.zeros(weight.shape if compute_grad else (0,), dtype=torch.float32, device=device)
    chunk = chunk_rows(n_rows, n_cols, x.dtype, device)
    # One row per program, 4096-column blocks over 8 warps (16 elements per thread); no prefetched row loop.
    block, num_warps, _ = row_config(min(n_cols, BLOCK_COLS), per_thread=16, bytes_per_col=0)
    for start in range(0, n_rows, chunk):
        end = min(start + chunk, n_rows)
        xc = x[start:end]
        logits = xc @ w.T  # (rows, V); becomes the logits' gradient in place
        launcher(_cross_entropy_fwd_kernel)[(end - start,)](  # whole tensors and an offset: no mutated views
            logits, targets, row_loss, start, logits.stride(0), targets.stride(0),
            n_cols, n_classes, ignore_index, COMPUTE_GRAD=compute_grad, BLOCK=block, num_warps=num_warps,
        )  # fmt: skip
        if compute_grad:
            dx[start:end] = logits @ w
            dw += logits.T @ xc
    n_valid = (targets != ignore_index).sum().clamp(min=1).to(torch.float32)
    if compute_grad:
        dx /= n_valid
        dw /= n_valid
    return row_loss.sum() / n_valid, dx, dw


# ---------------------------------------------------------------------------------------------------------
# Autograd: the gradients were computed in the forward; the backward scales them by the upstream gradient.


def _setup_context(ctx, inputs, output):
    x, weight, _, _, _, compute_grad = inputs
    _, dx, dw = output
    ctx.save_for_backward(dx, dw)
    ctx.dtypes = (x.dtype, weight.dtype)
    ctx.compute_grad = compute_grad
    ctx.mark_non_differentiable(dx, dw)


def _backward(ctx, dloss, _ddx, _ddw):
    if not ctx.compute_grad:
        raise RuntimeError("linear_cross_entropy: backward of a forward run with compute_grad=False")
    dx, dw = ctx.saved_tensors
    x_dtype, w_dtype = ctx.dtypes
    return (dx * dloss).to(x_dtype), (dw * dloss).to(w_dtype), None, None, None, None


linear_cross_entropy_fwd.register_autograd(_backward, setup_context=_setup_context)


# ---------------------------------------------------------------------------------------------------------
# Public function: the reference's signature.


def linear_cross_entropy(
    x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, ignore_index: int = -1, n_classes: int | None = None
) -> torch.Tensor:
    """Mean cross-entropy (fp32) of the logits x @ weight.T against targets, chunked so the logits never
    exist in full. x (..., C), weight (V, C), targets (...) int64; see the module docstring."""
    check_inputs("linear_cross_entropy", x=x, weight=weight)
    if not isinstance(targets, torch.Tensor):
        raise TypeError(f"linear_cross_entropy: targets must be a torch.Tensor, got {type(targets).__name__}")
    if tuple(targets.shape) != tuple(x.shape[:-1]):
        raise ValueError(
            f"linear_cross_entropy: targets has shape {tuple(targets.shape)}; expected {tuple(x.shape[:-1])}, "
            "x's leading dimensions"
        )
    if torch.is_autocast_enabled(x.device.type):  # the matmuls run in autocast's dtype, as nn.Linear's would
        x = x.to(torch.get_autocast_dtype(x.device.type))
    elif x.dtype != weight.dtype:
        raise TypeError(
            f"linear_cross_entropy: x is {x.dtype} and weight {weight.dtype}; pass one dtype, or run under "
            "torch.autocast"
        )
    compute_grad = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)
    n_classes = weight.shape[0] if n_classes is None else n_classes
    x2 = x.reshape(-1, x.shape[-1]) if x.dim() else x
    t2 = targets.reshape(-1)
    return linear_cross_entropy_fwd(x2, weight, t2, int(ignore_index), int(n_classes), compute_grad)[0]


# ---------------------------------------------------------------------------------------------------------
# Fuzz case space (`gpt verify --fuzz`, tritongpt/fuzz.py): the Limits above as the calls to draw. `draw` names
# each value (the keys of a case's JSON) and skews sizes to the chunk and block edges.


def fuzz_case(op: str, draw) -> dict:
    """A call linear_cross_entropy must get right: rows on both sides of a chunk (CHUNK_ROWS drawn, or the
    default), vocabularies on both sides of the kernel's block (BLOCK_COLS drawn small too), a padded head
    (n_classes < V), ignore_index -1, -100 or a real class, some or all rows ignored, logits up to ~100, leading
    dimensions, fp32, fp16 (bf16 on a GPU), any layout of x, weight and targets."""
    module = sys.modules[__name__]
    block = draw.choice("block_cols", [BLOCK_COLS, 16, 32, 64])
    chunk = draw.choice("chunk_rows", [None, 1, 2, 3, 4, 8])
    draw.setting(module, "BLOCK_COLS", block)
    draw.setting(module, "CHUNK_ROWS", chunk)
    dtype = draw.dtype()
    n_rows = draw.integer("N", 1, 64, near=(*(m * (chunk or 1) for m in (1, 2, 4)), 16, 32))
    n_cols = draw.integer("C", 1, 96, near=(16, 64))
    vocab = draw.integer("V", 1, min(6000, 16 * block), near=(block, 2 * block, 4 * block))
    n_classes = (
        draw.integer("n_classes", 1, vocab, near=(block, vocab - 1)) if draw.choice("padded", [False, True]) else None
    )
    ignore_index = draw.choice("ignore_index", [-1, -100, 0])
    ignored = draw.choice("ignored", ["some", "none", "all"])
    scale = draw.choice("x_scale", [1.0, 0.1, 3.5])
    lead = (n_rows,) if draw.choice("lead", ["rows", "batch"]) == "rows" else (draw.integer("A", 1, 3), n_rows)
    gen = draw.generator()
    targets = torch.randint(0, n_classes or vocab, lead, generator=gen)
    drop = torch.rand(lead, generator=gen) < (0.3 if ignored == "some" else 1.0 if ignored == "all" else 0.0)
    return {
        "x": draw.tensor("x", (*lead, n_cols), dtype, scale),
        "weight": draw.tensor("weight", (vocab, n_cols), dtype, scale),
        "targets": draw.tensor("targets", lead, torch.int64, values=targets.masked_fill(drop, ignore_index)),
        "ignore_index": ignore_index,
        "n_classes": n_classes,
    }


def fuzz_invalid(op: str, draw) -> tuple[dict, str]:
    """A call linear_cross_entropy must refuse, and what its error must name: x and weight widths that differ, a
    weight not 2-D, targets of the wrong dtype, shape, type or device, n_classes outside [1, V], mixed or
    unsupported dtypes, mixed devices."""
    dtype = draw.dtype()
    n_rows, n_cols, vocab = draw.integer("N", 1, 5), draw.integer("C", 1, 16), draw.integer("V", 1, 40)
    x = draw.tensor("x", (n_rows, n_cols), dtype, layout=False)
    weight = draw.tensor("weight", (vocab, n_cols), dtype, layout=False)
    targets = draw.tensor("targets", (n_rows,), torch.int64, high=vocab, layout=False)
    kwargs = {"x": x, "weight": weight, "targets": targets, "ignore_index": -1, "n_classes": None}
    defect = draw.choice("defect", ["width", "weight_rank", "targets_dtype", "targets_shape", "targets_type",
                                    "targets_device", "n_classes", "mixed_dtypes", "dtype", "device"])  # fmt: skip
    if defect == "width":
        kwargs["weight"] = torch.ones((vocab, n_cols + 1), dtype=dtype, device=draw.device)
        return kwargs, "expected (N, C) and (V, C)"
    if defect == "weight_rank":
        kwargs["weight"] = weight[0] if draw.choice("rank", [1, 3]) == 1 else weight[None]
        return kwargs, "expected (N, C) and (V, C)"
    if defect == "targets_dtype":
        bad = draw.choice("bad_dtype", ["int32", "float32", "bool"])
        kwargs["targets"] = targets.to(getattr(torch, bad))
        return kwargs, f"targets has dtype torch.{bad}"
    if defect == "targets_shape":
        kwargs["targets"] = (
            torch.cat([targets, targets[:1]]) if draw.choice("extra", [True, False]) else targets[:, None]
        )
        return kwargs, "targets has shape"
    if defect == "targets_type":
        kwargs["targets"] = targets.tolist()
        return kwargs, "targets must be a torch.Tensor"
    if defect == "targets_device":
        kwargs["targets"] = targets.to(draw.other_device)
        return kwargs, "targets are on"
    if defect == "n_classes":
        kwargs["n_classes"] = draw.choice("bad_n_classes", ["V+1", 0, -3])
        kwargs["n_classes"] = vocab + 1 if kwargs["n_classes"] == "V+1" else kwargs["n_classes"]
        return kwargs, f"n_classes is {kwargs['n_classes']}"
    if defect == "mixed_dtypes":
        kwargs["weight"] = weight.to(torch.float16 if dtype != torch.float16 else torch.float32)
        return kwargs, "pass one dtype"
    if defect == "dtype":
        bad = draw.choice("bad_dtype", ["float64", "int64"])
        name = draw.choice("which", ["x", "weight"])
        kwargs[name] = kwargs[name].to(getattr(torch, bad))
        return kwargs, f"{name} has dtype torch.{bad}"
    kwargs["weight"] = weight.to(draw.other_device)
    return kwargs, "different devices"
