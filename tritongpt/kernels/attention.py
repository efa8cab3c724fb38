"""Causal multi-head scaled dot-product attention, q, k, v shaped (B, H, T, D).

    from tritongpt.kernels.attention import attention      # Triton, FlashAttention-2 style, autograd-aware
    from tritongpt.kernels.reference import attention       # the oracle, `attention_ref` below

    y = attention(q, k, v, causal=True, dropout_p=0.1)   # q (B, H, Tq, D); k, v (B, H, Tk, D)
    tritongpt.kernels.attention.set_deterministic(False)           # opt in to the faster, non-deterministic backward

The forward streams K/V tiles past one block of queries with an online softmax in fp32 and saves the
logsumexp (B, H, Tq) in fp32: O(T) memory, the (T, T) scores are never stored. The row max is taken on the raw
scores q.k and the scale (times log2(e)) is folded into the exp2 argument, one FMA per score. The backward
recomputes the probabilities from the logsumexp: a pre-pass computes delta = rowsum(dO * O), one kernel owns a
block of keys and loops over queries for dK, dV, another owns a block of queries and loops over keys for dQ
(7 block matmuls per (query block, key block) pair). Those kernels use no atomics: gradients are bit-identical
run to run. `set_deterministic(False)` (or TRITONGPT_ATTENTION_DETERMINISTIC=0 in the environment) switches
to the fast backward: the dK/dV kernel also adds each pair's dQ contribution into an fp32 buffer with atomics
(5 matmuls per pair, one kernel instead of two), so dQ's last bits vary from run to run (at head dim > 64 with
dropout, where that kernel cannot keep its tiles in registers, the deterministic kernels run instead);
`torch.use_deterministic_algorithms(True)` always keeps the deterministic backward.

Causal masking is bottom-right aligned (query i sees keys j <= i + Tk - Tq, what a KV-cache decode step
needs); key blocks above the diagonal are skipped, only blocks cut by the diagonal or the sequence end are
masked. Causal programs are launched heaviest first: query blocks in reverse (the last rows see the most
keys), key blocks in order (the first keys are seen by the most queries), all heads of one such rank before
the next. Dropout on the probabilities is in-kernel: Philox4x32-10 (`tl.philox`) keyed by a seed drawn from
torch's generator (so `torch.manual_seed` reproduces it), counter (key j, query i, b * H + h, 0), regenerated
bit-identically in the backward. `dropout_p == 0` compiles the dropout code out.

Precision: load, compute in fp32, store in the input dtype; the logsumexp and delta stay fp32. For fp32
inputs `tl.dot` follows torch's fp32 matmul policy: IEEE fp32 while
`torch.get_float32_matmul_precision()` is "highest" (torch's default), TF32 when it is "high" or "medium".
fp16/bf16 use the tensor cores with fp32 accumulation.

Launch configuration: on a GPU the three main kernels are autotuned, keyed by a power-of-two bucket of the
sequence length, the head dim, causal, dropout (and the backward mode). A `prune_configs_by` hook narrows the
list, before any benchmarking, to the launch's class in `_REGISTER_SAFE` (head dim up to 64 or 128, dropout or
not: the configs whose sm_90 compile spills no registers) and drops configs over the device's shared memory.
The forward's list also holds variants that load K and V through tensor descriptors (TMA, sm_90+, Triton 3.4+);
the prune drops them unless TRITONGPT_ATTENTION_TMA=1 (read at import: they join the tuning), and the pointer
loads stay the default and the fallback. Inside a CUDA-graph capture the autotuner is bypassed: the config it
picked for that key earlier, else the first config the prune keeps, so no benchmarking happens during capture.
TRITONGPT_ATTENTION_AUTOTUNE=0 makes every launch take that path: one config compiled per kernel and launch
class instead of all of them (a correctness run on a cold GPU checks what it compiles, in a fraction of the
time). `_KV_TMA_ONLY = True` (a module switch for `gpt verify`'s tma variant and the tests) forces the TMA
loads wherever `_tma_ok`: the prune keeps only the TMA configs there, each launch takes the first it keeps
without benchmarking, and the interpreter's config takes them too. Under the interpreter one fixed 64 x 64
block is used.

Registration: `attention_fwd` and `attention_bwd` are registered with `tritongpt.kernels._common.library_op`
(`torch.library.triton_op`s launching through `wrap_triton` on a GPU, so Inductor sees the kernels; opaque
`torch.library.custom_op`s under Triton's interpreter), and the backward is attached to the forward op with
`register_autograd`, as for LayerNorm and GELU. No graph break under torch.compile either way.

Limits: head dim 16-128 (any value; padded to the next power of two inside the kernel); q, k, v must share
B, H, D and dtype (no grouped-query attention); inputs need a unit last stride (otherwise that tensor is
copied once); `scale` must be finite (a negative scale runs as attention(-q, k, v, scale=-scale): one extra
pass over q); with causal and Tq > Tk the first Tq - Tk query rows see no key: their output and gradients
are zero (the reference returns NaN there). bf16 is GPU-only in the tests (Triton's interpreter gets
`tl.dot` on bf16 wrong). A NaN/inf in v reaches the rows that see its key, plus (as 0 * NaN) other rows of
a block that loads it; the reference's dense `att @ v` spreads it to every row. Blocks no row of which is
masked skip the -inf guard of the online softmax, so a row whose scores in such a block are all -inf (only
possible with infinite q or k) gives NaN where the reference may not. The backward recomputes P as
exp2(s - lse) from the saved logsumexp, as FlashAttention-2 does: its absolute error grows with |lse|, so with
scaled scores of magnitude ~20 and more (scale several times 1/sqrt(D) on unit-variance inputs) the gradients'
error exceeds 3x the same-precision reference's, which subtracts the row max exactly. With dropout, dP carries
the factor 1 / (1 - dropout_p), and with it the rounding of the recomputed P and of delta = rowsum(dO * O): at
dropout_p = 0.9 (10x) and twice the default scale, fp32 dq and dk reached 12-18x the reference's error (found by
`gpt verify --fuzz`, which draws dropout_p up to 0.5; training uses 0.0-0.2).
"""

import math
import numbers
import os
import sys
import warnings

import torch
import triton
import triton.language as tl

from tritongpt.kernels._common import alloc, check_inputs, interpreter_enabled, launcher, library_op

MIN_HEAD_DIM = 16
MAX_HEAD_DIM = 128


def attention_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool = True,
    dropout_p: float = 0.0,
    scale: float | None = None,
) -> torch.Tensor:
    """softmax(q k^T * scale + mask) v, materialising the (T, T) scores: the textbook form.

    q: (B, H, Tq, D); k, v: (B, H, Tk, D). With `causal`, query i sees keys j <= i + (Tk - Tq), so a
    query block that continues a cached prefix (Tq < Tk) is masked correctly. Dropout (training only)
    zeroes probabilities with probability `dropout_p` and rescales the rest by 1 / (1 - dropout_p).
    """
    att = attention_probs_ref(q, k, causal, scale)
    if dropout_p > 0.0:
        att = torch.nn.functional.dropout(att, p=dropout_p, training=True)
    return att @ v  # (B, H, Tq, D)


def attention_probs_ref(
    q: torch.Tensor, k: torch.Tensor, causal: bool = True, scale: float | None = None
) -> torch.Tensor:
    """softmax(q k^T * scale + mask), (B, H, Tq, Tk): the reference's probabilities, before dropout."""
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    att = (q @ k.transpose(-2, -1)) * scale  # (B, H, Tq, Tk)
    if causal:
        tq, tk = q.shape[-2], k.shape[-2]
        mask = torch.ones(tq, tk, dtype=torch.bool, device=q.device).triu(diagonal=tk - tq + 1)
        att = att.masked_fill(mask, float("-inf"))
    return torch.softmax(att, dim=-1)


# ---------------------------------------------------------------------------------------------------------
# Triton kernels
# ---------------------------------------------------------------------------------------------------------

# Kernel-side constants (constexpr so @triton.jit may read them); host code uses LOG2E.value.
LOG2E: tl.constexpr = tl.constexpr(1.4426950408889634)  # log2(e): exp(x) = exp2(x * log2(e))
LN2: tl.constexpr = tl.constexpr(0.6931471805599453)  # ln(2)


@triton.jit
def _dropout_keep(seed, bh, rows, cols, dropout_p):
    """Philox keep-mask of one tile of head bh = b * H + h: element (i, j) (query rows, key cols; any
    broadcastable shapes) is kept when the first word of Philox4x32-10 keyed by `seed` at counter
    (j, i, bh, 0) gives a uniform >= dropout_p, so with probability 1 - dropout_p.

    32-bit counters from the row and column vectors: the early Philox rounds run on vectors, not tiles, and no
    64-bit offset tile is formed. The forward, both backward kernels and `_attn_dropout_mask_kernel` call this
    with the same (i, j), so every kernel regenerates the identical mask.
    """
    r, _, _, _ = tl.philox(seed, cols.to(tl.uint32), rows.to(tl.uint32), bh.to(tl.uint32), 0)
    return tl.uint_to_uniform_float(r) >= dropout_p


@triton.jit
def _query_block_start(CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr):
    """First query row of this program (grid axis 1 counts query blocks). With CAUSAL the order is reversed:
    the last rows see the most keys, and programs start in launch order, so the longest start first."""
    pid = tl.program_id(1)
    if CAUSAL:
        pid = tl.num_programs(1) - 1 - pid
    return pid * BLOCK_M


@triton.jit
def _attn_fwd_inner(
    acc, l_i, m_i, q,
    k_ptrs, v_ptrs, k_desc, v_desc, stride_kt, stride_vt,
    offs_m, offs_n, d_ok,
    lo, hi, Tk, diag,
    qk_scale, seed, bh, dropout_p, dropout_scale,
    BLOCK_N: tl.constexpr, MASK: tl.constexpr, CAUSAL: tl.constexpr, DROPOUT: tl.constexpr,
    KV_TMA: tl.constexpr, INPUT_PRECISION: tl.constexpr,
):  # fmt: skip
    """Online softmax over key blocks [lo, hi). MASK: blocks cut by the diagonal or by Tk. In the others every
    row sees every key, so its running max is finite after the block and needs no -inf guard."""
    for start_n in range(lo, hi, BLOCK_N):
        cols = start_n + offs_n
        if MASK:
            kv_mask = (cols[:, None] < Tk) & d_ok[None, :]
        else:
            kv_mask = d_ok[None, :]
        if KV_TMA:
            k = k_desc.load([start_n, 0])  # rows past Tk and columns past HEAD_DIM arrive as zeros
        else:
            k = tl.load(k_ptrs + start_n * stride_kt, mask=kv_mask, other=0.0)
        qk = tl.dot(q, tl.trans(k), input_precision=INPUT_PRECISION)  # (BLOCK_M, BLOCK_N) raw scores
        if MASK:
            valid = cols[None, :] < Tk
            if CAUSAL:
                valid = valid & (cols[None, :] <= offs_m[:, None] + diag)
            s = tl.where(valid, qk * qk_scale, float("-inf"))  # log2 units
            m_new = tl.maximum(m_i, tl.max(s, 1))
            # A row that has seen no key yet keeps m = -inf; subtract 0 instead so exp2 gives 0, not NaN.
            m_sub = tl.where(m_new == float("-inf"), 0.0, m_new)
            p = tl.math.exp2(s - m_sub[:, None])
        else:
            # qk_scale >= 0 (the host makes it so): the max of the raw scores, scaled, is the max of the scaled
            # scores, and the scale folds into the exp2 argument as one FMA per score.
            m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
            m_sub = m_new
            p = tl.math.exp2(qk * qk_scale - m_sub[:, None])
        alpha = tl.math.exp2(m_i - m_sub)
        l_i = l_i * alpha + tl.sum(p, 1)  # the normaliser counts every probability, dropped or not
        if DROPOUT:
            keep = _dropout_keep(seed, bh, offs_m[:, None], cols[None, :], dropout_p)
            p = tl.where(keep, p * dropout_scale, 0.0)
        if KV_TMA:
            v = v_desc.load([start_n, 0])
        else:
            v = tl.load(v_ptrs + start_n * stride_vt, mask=kv_mask, other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=INPUT_PRECISION)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _attn_fwd_kernel(
    Q,  # (B, H, Tq, D) queries, unit last stride
    K,  # (B, H, Tk, D) keys, unit last stride (16-byte aligned rows and base with KV_TMA)
    V,  # (B, H, Tk, D) values, unit last stride (as K with KV_TMA)
    OUT,  # (B, H, Tq, D) output, unit last stride
    LSE,  # (B, H, Tq) fp32 logsumexp of the scaled scores (natural log), contiguous; -inf for a row with no key
    SEED,  # (1,) int64 Philox seed, read only when DROPOUT
    stride_qb, stride_qh, stride_qt,
    stride_kb, stride_kh, stride_kt,
    stride_vb, stride_vh, stride_vt,
    stride_ob, stride_oh, stride_ot,
    H, Tq, Tk,
    qk_scale,  # softmax scale * log2(e), >= 0
    dropout_p, dropout_scale,  # drop probability, 1 / (1 - dropout_p)
    T_BUCKET,  # autotune key only: next power of two of max(Tq, Tk)
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr, DROPOUT: tl.constexpr, KV_TMA: tl.constexpr, INPUT_PRECISION: tl.constexpr,
):  # fmt: skip
    """Grid (B * H, query blocks): one block of BLOCK_M queries of one head per program."""
    bh = tl.program_id(0).to(tl.int64)
    start_m = _query_block_start(CAUSAL, BLOCK_M)
    b = bh // H
    h = bh % H
    diag = Tk - Tq  # query i sees keys j <= i + diag when CAUSAL

    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    m_ok = offs_m < Tq

    q_ptrs = Q + b * stride_qb + h * stride_qh + offs_m.to(tl.int64)[:, None] * stride_qt + offs_d[None, :]
    k_ptrs = K + b * stride_kb + h * stride_kh + offs_n.to(tl.int64)[:, None] * stride_kt + offs_d[None, :]
    v_ptrs = V + b * stride_vb + h * stride_vh + offs_n.to(tl.int64)[:, None] * stride_vt + offs_d[None, :]
    if KV_TMA:
        k_desc = tl.make_tensor_descriptor(K + b * stride_kb + h * stride_kh, shape=[Tk, HEAD_DIM],
                                           strides=[stride_kt, 1], block_shape=[BLOCK_N, BLOCK_D])  # fmt: skip
        v_desc = tl.make_tensor_descriptor(V + b * stride_vb + h * stride_vh, shape=[Tk, HEAD_DIM],
                                           strides=[stride_vt, 1], block_shape=[BLOCK_N, BLOCK_D])  # fmt: skip
    else:
        k_desc = k_ptrs  # unused
        v_desc = v_ptrs
    q = tl.load(q_ptrs, mask=m_ok[:, None] & d_ok[None, :], other=0.0)

    if DROPOUT:
        seed = tl.load(SEED)
    else:
        seed = 0

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

    # Key range: [0, full_end) needs no mask; [full_end, hi) is cut by the diagonal or by Tk.
    if CAUSAL:
        hi = tl.maximum(tl.minimum(Tk, start_m + BLOCK_M + diag), 0)  # keys past hi: above the diagonal, skipped
        full_end = tl.maximum(start_m + diag + 1, 0) // BLOCK_N * BLOCK_N  # row start_m sees keys < start_m+diag+1
        full_end = tl.minimum(full_end, Tk // BLOCK_N * BLOCK_N)
    else:
        hi = Tk
        full_end = Tk // BLOCK_N * BLOCK_N
    acc, l_i, m_i = _attn_fwd_inner(
        acc, l_i, m_i, q, k_ptrs, v_ptrs, k_desc, v_desc, stride_kt, stride_vt, offs_m, offs_n, d_ok,
        0, full_end, Tk, diag, qk_scale, seed, bh, dropout_p, dropout_scale,
        BLOCK_N, False, CAUSAL, DROPOUT, KV_TMA, INPUT_PRECISION,
    )  # fmt: skip
    acc, l_i, m_i = _attn_fwd_inner(
        acc, l_i, m_i, q, k_ptrs, v_ptrs, k_desc, v_desc, stride_kt, stride_vt, offs_m, offs_n, d_ok,
        full_end, hi, Tk, diag, qk_scale, seed, bh, dropout_p, dropout_scale,
        BLOCK_N, True, CAUSAL, DROPOUT, KV_TMA, INPUT_PRECISION,
    )  # fmt: skip

    l_safe = tl.where(l_i == 0.0, 1.0, l_i)  # a row with no visible key (causal, Tq > Tk) outputs 0
    out = acc / l_safe[:, None]
    lse = tl.where(l_i == 0.0, float("-inf"), (m_i + tl.math.log2(l_safe)) * LN2)
    o_ptrs = OUT + b * stride_ob + h * stride_oh + offs_m.to(tl.int64)[:, None] * stride_ot + offs_d[None, :]
    tl.store(o_ptrs, out.to(OUT.dtype.element_ty), mask=m_ok[:, None] & d_ok[None, :])
    tl.store(LSE + bh * Tq + offs_m, lse, mask=m_ok)


# Backward. With z = scale * q k^T (one row i: z_i), P = softmax(z) (row-wise, masked entries 0), dropout
# keep-mask M and r = 1 / (1 - p): O = (P * M * r) V. For an upstream gradient dO:
#   dV    = (P * M * r)^T dO
#   dP    = (dO V^T) * M * r                          (gradient w.r.t. the undropped probabilities)
#   dZ    = P * (dP - delta),  delta_i = sum_j P_ij dP_ij = sum_j (P*M*r)_ij (dO_i . v_j) = dO_i . O_i
#   dQ    = scale * dZ K,      dK = scale * dZ^T Q
# P is recomputed from the saved logsumexp: P_ij = exp(z_ij - lse_i) = exp2((q_i . k_j) * scale * log2(e) -
# lse_i * log2(e)): the scale and the subtraction are one FMA per score, so nothing is pre-scaled. Rows with
# no visible key (causal, Tq > Tk) have lse = -inf; they only ever fall in masked blocks, where P is selected
# to 0. Query rows past Tq load q = dO = 0 and lse = +inf (P = 0): they add nothing to dK, dV without a mask;
# key rows past Tk load k = v = 0: they add nothing to dQ.


@triton.jit
def _attn_bwd_preprocess_kernel(
    OUT,  # (B, H, Tq, D) forward output, unit last stride
    DO,  # (B, H, Tq, D) upstream gradient, unit last stride
    DELTA,  # (B, H, Tq) fp32 output: rowsum(dO * O), contiguous
    stride_ob, stride_oh, stride_ot,
    stride_dob, stride_doh, stride_dot,
    H, Tq,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
):  # fmt: skip
    """Grid (B * H, query blocks)."""
    bh = tl.program_id(0).to(tl.int64)
    offs_m = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    b = bh // H
    h = bh % H
    offs_d = tl.arange(0, BLOCK_D)
    mask = (offs_m[:, None] < Tq) & (offs_d[None, :] < HEAD_DIM)
    rows = offs_m.to(tl.int64)[:, None]
    o = tl.load(OUT + b * stride_ob + h * stride_oh + rows * stride_ot + offs_d[None, :], mask=mask, other=0.0)
    do = tl.load(DO + b * stride_dob + h * stride_doh + rows * stride_dot + offs_d[None, :], mask=mask, other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(DELTA + bh * Tq + offs_m, delta, mask=offs_m < Tq)


@triton.jit
def _attn_bwd_dkdv_inner(
    dk, dv, k, v,
    q_ptrs, do_ptrs, dq_ptrs, LSE_row, DELTA_row, stride_qt, stride_dot, stride_dqt,
    offs_m, offs_n, d_ok,
    lo, hi, Tq, Tk, diag,
    scale, qk_scale, seed, bh, dropout_p, dropout_scale,
    BLOCK_M: tl.constexpr, MASK: tl.constexpr, DROPOUT: tl.constexpr, ATOMIC_DQ: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
):  # fmt: skip
    """Accumulate dK, dV of one key block over query blocks [lo, hi); MASK: blocks cut by the diagonal. With
    ATOMIC_DQ also add each query block's dQ contribution into the fp32 buffer at dq_ptrs.

    Works in the transposed orientation (keys x queries) so dK and dV need no transposed tile.
    """
    for start_m in range(lo, hi, BLOCK_M):
        rows = start_m + offs_m
        row_ok = rows < Tq
        qd_mask = row_ok[:, None] & d_ok[None, :]
        q = tl.load(q_ptrs + start_m * stride_qt, mask=qd_mask, other=0.0)
        lse = tl.load(LSE_row + rows, mask=row_ok, other=float("inf")) * LOG2E
        qkT = tl.dot(k, tl.trans(q), input_precision=INPUT_PRECISION)  # (BLOCK_N, BLOCK_M) raw scores
        pT = tl.math.exp2(qkT * qk_scale - lse[None, :])
        if MASK:
            pT = tl.where(offs_n[:, None] <= rows[None, :] + diag, pT, 0.0)
        do = tl.load(do_ptrs + start_m * stride_dot, mask=qd_mask, other=0.0)
        dpT = tl.dot(v, tl.trans(do), input_precision=INPUT_PRECISION)  # (BLOCK_N, BLOCK_M)
        if DROPOUT:
            keep = _dropout_keep(seed, bh, rows[None, :], offs_n[:, None], dropout_p)  # (keys, queries)
            pdT = tl.where(keep, pT * dropout_scale, 0.0)
            dpT = tl.where(keep, dpT * dropout_scale, 0.0)
        else:
            pdT = pT
        dv += tl.dot(pdT.to(do.dtype), do, input_precision=INPUT_PRECISION)
        delta = tl.load(DELTA_row + rows, mask=row_ok, other=0.0)
        dsT = (pT * (dpT - delta[None, :])).to(q.dtype)
        dk += tl.dot(dsT, q, input_precision=INPUT_PRECISION)
        if ATOMIC_DQ:
            dq = tl.dot(tl.trans(dsT), k, input_precision=INPUT_PRECISION) * scale  # (BLOCK_M, BLOCK_D)
            tl.atomic_add(dq_ptrs + start_m * stride_dqt, dq, mask=qd_mask, sem="relaxed")
    return dk, dv


@triton.jit
def _attn_bwd_dkdv_kernel(
    Q, K, V,  # (B, H, Tq, D), (B, H, Tk, D), (B, H, Tk, D) forward inputs, unit last stride
    DO,  # (B, H, Tq, D) upstream gradient, unit last stride
    LSE, DELTA,  # (B, H, Tq) fp32, contiguous: forward logsumexp, rowsum(dO * O)
    DK, DV,  # (B, H, Tk, D) outputs, unit last stride
    DQ_ACC,  # (B, H, Tq, D) fp32, zero-filled, unit last stride: dQ accumulated with atomics (ATOMIC_DQ only)
    SEED,  # (1,) int64 Philox seed, read only when DROPOUT
    stride_qb, stride_qh, stride_qt,
    stride_kb, stride_kh, stride_kt,
    stride_vb, stride_vh, stride_vt,
    stride_dob, stride_doh, stride_dot,
    stride_dkb, stride_dkh, stride_dkt,
    stride_dvb, stride_dvh, stride_dvt,
    stride_dqb, stride_dqh, stride_dqt,
    H, Tq, Tk,
    scale, qk_scale, dropout_p, dropout_scale,
    T_BUCKET,  # autotune key only
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr, DROPOUT: tl.constexpr, ATOMIC_DQ: tl.constexpr, INPUT_PRECISION: tl.constexpr,
):  # fmt: skip
    """Grid (B * H, key blocks): one block of BLOCK_N keys of one head per program. Key blocks go in order:
    with CAUSAL the first keys are seen by the most queries, so the heaviest programs start first."""
    bh = tl.program_id(0).to(tl.int64)
    start_n = tl.program_id(1) * BLOCK_N
    b = bh // H
    h = bh % H
    diag = Tk - Tq

    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    n_ok = offs_n < Tk
    kv_mask = n_ok[:, None] & d_ok[None, :]
    cols = offs_n.to(tl.int64)[:, None]
    k = tl.load(K + b * stride_kb + h * stride_kh + cols * stride_kt + offs_d[None, :], mask=kv_mask, other=0.0)
    v = tl.load(V + b * stride_vb + h * stride_vh + cols * stride_vt + offs_d[None, :], mask=kv_mask, other=0.0)
    rows = offs_m.to(tl.int64)[:, None]
    q_ptrs = Q + b * stride_qb + h * stride_qh + rows * stride_qt + offs_d[None, :]
    do_ptrs = DO + b * stride_dob + h * stride_doh + rows * stride_dot + offs_d[None, :]
    dq_ptrs = DQ_ACC + b * stride_dqb + h * stride_dqh + rows * stride_dqt + offs_d[None, :]

    if DROPOUT:
        seed = tl.load(SEED)
    else:
        seed = 0

    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    # Query range: [lo, full_lo) is cut by the diagonal, [full_lo, Tq) sees the whole key block.
    if CAUSAL:
        lo = tl.maximum(start_n - diag, 0) // BLOCK_M * BLOCK_M  # first row to see key start_n: start_n - diag
        full_lo = (tl.maximum(start_n + BLOCK_N - 1 - diag, 0) + BLOCK_M - 1) // BLOCK_M * BLOCK_M
    else:
        lo = 0
        full_lo = 0
    dk, dv = _attn_bwd_dkdv_inner(
        dk, dv, k, v, q_ptrs, do_ptrs, dq_ptrs, LSE + bh * Tq, DELTA + bh * Tq, stride_qt, stride_dot, stride_dqt,
        offs_m, offs_n, d_ok, lo, tl.minimum(full_lo, Tq), Tq, Tk, diag,
        scale, qk_scale, seed, bh, dropout_p, dropout_scale,
        BLOCK_M, True, DROPOUT, ATOMIC_DQ, INPUT_PRECISION,
    )  # fmt: skip
    dk, dv = _attn_bwd_dkdv_inner(
        dk, dv, k, v, q_ptrs, do_ptrs, dq_ptrs, LSE + bh * Tq, DELTA + bh * Tq, stride_qt, stride_dot, stride_dqt,
        offs_m, offs_n, d_ok, full_lo, Tq, Tq, Tk, diag,
        scale, qk_scale, seed, bh, dropout_p, dropout_scale,
        BLOCK_M, False, DROPOUT, ATOMIC_DQ, INPUT_PRECISION,
    )  # fmt: skip

    dk = dk * scale
    tl.store(DK + b * stride_dkb + h * stride_dkh + cols * stride_dkt + offs_d[None, :],
             dk.to(DK.dtype.element_ty), mask=kv_mask)  # fmt: skip
    tl.store(DV + b * stride_dvb + h * stride_dvh + cols * stride_dvt + offs_d[None, :],
             dv.to(DV.dtype.element_ty), mask=kv_mask)  # fmt: skip


@triton.jit
def _attn_bwd_dq_inner(
    dq, q, do, lse, delta,
    k_ptrs, v_ptrs, stride_kt, stride_vt,
    offs_m, offs_n, d_ok,
    lo, hi, Tk, diag,
    qk_scale, seed, bh, dropout_p, dropout_scale,
    BLOCK_N: tl.constexpr, MASK: tl.constexpr, CAUSAL: tl.constexpr, DROPOUT: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
):  # fmt: skip
    """Accumulate dQ of one query block over key blocks [lo, hi); MASK: blocks cut by the diagonal or Tk."""
    for start_n in range(lo, hi, BLOCK_N):
        cols = start_n + offs_n
        if MASK:
            kv_mask = (cols[:, None] < Tk) & d_ok[None, :]
        else:
            kv_mask = d_ok[None, :]
        k = tl.load(k_ptrs + start_n * stride_kt, mask=kv_mask, other=0.0)
        v = tl.load(v_ptrs + start_n * stride_vt, mask=kv_mask, other=0.0)
        qk = tl.dot(q, tl.trans(k), input_precision=INPUT_PRECISION)  # (BLOCK_M, BLOCK_N) raw scores
        p = tl.math.exp2(qk * qk_scale - lse[:, None])
        if MASK:
            valid = cols[None, :] < Tk
            if CAUSAL:
                valid = valid & (cols[None, :] <= offs_m[:, None] + diag)
            p = tl.where(valid, p, 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=INPUT_PRECISION)
        if DROPOUT:
            keep = _dropout_keep(seed, bh, offs_m[:, None], cols[None, :], dropout_p)
            dp = tl.where(keep, dp * dropout_scale, 0.0)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision=INPUT_PRECISION)
    return dq


@triton.jit
def _attn_bwd_dq_kernel(
    Q, K, V,  # (B, H, Tq, D), (B, H, Tk, D), (B, H, Tk, D) forward inputs, unit last stride
    DO,  # (B, H, Tq, D) upstream gradient, unit last stride
    LSE, DELTA,  # (B, H, Tq) fp32, contiguous: forward logsumexp, rowsum(dO * O)
    DQ,  # (B, H, Tq, D) output, unit last stride
    SEED,  # (1,) int64 Philox seed, read only when DROPOUT
    stride_qb, stride_qh, stride_qt,
    stride_kb, stride_kh, stride_kt,
    stride_vb, stride_vh, stride_vt,
    stride_dob, stride_doh, stride_dot,
    stride_dqb, stride_dqh, stride_dqt,
    H, Tq, Tk,
    scale, qk_scale, dropout_p, dropout_scale,
    T_BUCKET,  # autotune key only
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr, DROPOUT: tl.constexpr, INPUT_PRECISION: tl.constexpr,
):  # fmt: skip
    """Grid (B * H, query blocks), heaviest first with CAUSAL as in the forward."""
    bh = tl.program_id(0).to(tl.int64)
    start_m = _query_block_start(CAUSAL, BLOCK_M)
    b = bh // H
    h = bh % H
    diag = Tk - Tq

    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    m_ok = offs_m < Tq
    qd_mask = m_ok[:, None] & d_ok[None, :]
    rows = offs_m.to(tl.int64)[:, None]
    q = tl.load(Q + b * stride_qb + h * stride_qh + rows * stride_qt + offs_d[None, :], mask=qd_mask, other=0.0)
    do = tl.load(DO + b * stride_dob + h * stride_doh + rows * stride_dot + offs_d[None, :], mask=qd_mask, other=0.0)
    lse = tl.load(LSE + bh * Tq + offs_m, mask=m_ok, other=float("inf")) * LOG2E
    delta = tl.load(DELTA + bh * Tq + offs_m, mask=m_ok, other=0.0)
    k_ptrs = K + b * stride_kb + h * stride_kh + offs_n.to(tl.int64)[:, None] * stride_kt + offs_d[None, :]
    v_ptrs = V + b * stride_vb + h * stride_vh + offs_n.to(tl.int64)[:, None] * stride_vt + offs_d[None, :]

    if DROPOUT:
        seed = tl.load(SEED)
    else:
        seed = 0

    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    if CAUSAL:  # same key ranges as the forward
        hi = tl.maximum(tl.minimum(Tk, start_m + BLOCK_M + diag), 0)
        full_end = tl.maximum(start_m + diag + 1, 0) // BLOCK_N * BLOCK_N
        full_end = tl.minimum(full_end, Tk // BLOCK_N * BLOCK_N)
    else:
        hi = Tk
        full_end = Tk // BLOCK_N * BLOCK_N
    dq = _attn_bwd_dq_inner(
        dq, q, do, lse, delta, k_ptrs, v_ptrs, stride_kt, stride_vt, offs_m, offs_n, d_ok,
        0, full_end, Tk, diag, qk_scale, seed, bh, dropout_p, dropout_scale,
        BLOCK_N, False, CAUSAL, DROPOUT, INPUT_PRECISION,
    )  # fmt: skip
    dq = _attn_bwd_dq_inner(
        dq, q, do, lse, delta, k_ptrs, v_ptrs, stride_kt, stride_vt, offs_m, offs_n, d_ok,
        full_end, hi, Tk, diag, qk_scale, seed, bh, dropout_p, dropout_scale,
        BLOCK_N, True, CAUSAL, DROPOUT, INPUT_PRECISION,
    )  # fmt: skip

    dq = dq * scale
    tl.store(DQ + b * stride_dqb + h * stride_dqh + rows * stride_dqt + offs_d[None, :],
             dq.to(DQ.dtype.element_ty), mask=qd_mask)  # fmt: skip


@triton.jit
def _attn_dropout_mask_kernel(
    SEED,  # (1,) int64 Philox seed
    MASK,  # (B * H, Tq, Tk) int8 output: 1 where the attention kernels keep the probability
    Tq, Tk, dropout_p,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """Debugging/testing aid: writes the keep-mask the attention kernels use for this seed."""
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    bh = tl.program_id(2)
    keep = _dropout_keep(tl.load(SEED), bh, offs_m[:, None], offs_n[None, :], dropout_p)
    offsets = (bh.to(tl.int64) * Tq + offs_m)[:, None] * Tk + offs_n[None, :]
    tl.store(MASK + offsets, keep.to(tl.int8), mask=(offs_m[:, None] < Tq) & (offs_n[None, :] < Tk))


# ---------------------------------------------------------------------------------------------------------
# Host: backward mode, launch configuration, validation, launches
# ---------------------------------------------------------------------------------------------------------


def _env_flag(name: str, default: bool) -> bool:
    """A boolean environment switch (1/true/on/yes, 0/false/off/no); anything else warns and keeps `default`
    (read at import, where an exception would surface as a traceback from whatever imported the kernels)."""
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    if value.lower() in ("1", "true", "on", "yes"):
        return True
    if value.lower() in ("0", "false", "off", "no"):
        return False
    warnings.warn(f"attention: {name}={value!r} is not 0 or 1; using {int(default)}", stacklevel=2)
    return default


_DETERMINISTIC = _env_flag("TRITONGPT_ATTENTION_DETERMINISTIC", True)
_AUTOTUNE = _env_flag("TRITONGPT_ATTENTION_AUTOTUNE", True)  # 0: the first config the prune keeps, no benchmarking


def set_deterministic(deterministic: bool) -> None:
    """Choose attention's backward for later calls: True (the default) computes dQ in its own kernel, no atomics,
    bit-identical run to run; False adds dQ with fp32 atomics inside the dK/dV kernel (5 block matmuls per
    (query, key) block pair instead of 7, one kernel instead of two), correct to the same tolerance but not
    bit-reproducible. The environment variable TRITONGPT_ATTENTION_DETERMINISTIC=0 sets False at import.
    `torch.use_deterministic_algorithms(True)` overrides False."""
    global _DETERMINISTIC
    if not isinstance(deterministic, bool):
        raise TypeError(f"attention: set_deterministic takes True or False, got {deterministic!r}")
    _DETERMINISTIC = deterministic


def is_deterministic() -> bool:
    """True when attention's backward is the deterministic one (see `set_deterministic`)."""
    return _DETERMINISTIC or torch.are_deterministic_algorithms_enabled()


_INTERPRET = interpreter_enabled()
# Interpreter: one fixed config. Its cost is per block operation, not per element: 64 x 64 ran fwd+bwd at
# (2, 2, 130, 64) 2x faster than 32 x 32 and 3.5x faster than 16 x 16 on CPU (Triton 3.9).
_INTERPRETER_BLOCKS = {"BLOCK_M": 64, "BLOCK_N": 64}
# True: the forward loads K/V through tensor descriptors wherever `_tma_ok` (`gpt verify`'s tma variant, tests):
# on a GPU the prune keeps only the TMA configs and launches skip autotuning; the interpreter's config takes them.
_KV_TMA_ONLY = False
_PREPROCESS_BLOCK_M = 16 if _INTERPRET else 128

# Tensor-descriptor (TMA) loads need Triton's device-side descriptors (3.4+) and a scratch allocator.
_HAS_TMA = hasattr(tl, "make_tensor_descriptor") and hasattr(triton, "set_allocator")
_KV_TMA = _env_flag("TRITONGPT_ATTENTION_TMA", False) and _HAS_TMA  # TMA configs join the autotuning


# Config lists for Hopper, per kernel and per launch class (head dim up to 64 or up to 128, dropout or not; the
# dK/dV kernel with atomic dQ is its own list): (BLOCK_M, BLOCK_N, num_warps, num_stages), blocks of 64 or 128,
# 2-4 stages, 4 or 8 warps, down to 32 only where every larger tile spills (head dim 128 with dropout, atomic
# dQ with dropout or at head dim 128; the dQ kernel keeps BLOCK_M = 64, since wgmma needs 64 rows and 32 falls
# back to mma.sync). Each class lists only configs whose sm_90 compile keeps every tile in registers under both
# Triton 3.6 and 3.9, in fp16 and bf16: no spills, checked by tests/test_sm90_compile.py (SM90_COMPILE.md beside
# this file also shows the dropped ones, e.g. 128 x 128 at head dim 128 with dropout: 160-168 B of spills per
# thread under 3.9, none under 3.6). Dropout's Philox state costs registers; the fused atomic-dQ kernel holds a dQ tile
# more. Not yet measured on a GPU; the first config of a class is the CUDA-graph capture fallback. dK/dV: a
# program owns BLOCK_N keys and streams BLOCK_M queries; dQ: owns BLOCK_M queries, streams keys.
_REGISTER_SAFE: dict[str, dict[tuple[int, bool], list[tuple[int, int, int, int]]]] = {
    "fwd": {
        (64, False): [(128, 64, 4, 3), (128, 128, 8, 3), (128, 64, 8, 3), (128, 128, 8, 2), (64, 64, 4, 4),
                      (64, 128, 8, 3)],
        (64, True): [(128, 64, 8, 3), (64, 64, 4, 3), (64, 128, 8, 3), (64, 64, 8, 3)],
        (128, False): [(128, 128, 8, 3), (128, 64, 8, 3), (128, 128, 8, 2), (64, 64, 8, 3), (64, 128, 8, 3),
                       (64, 64, 4, 3)],
        (128, True): [(128, 64, 8, 3), (64, 64, 8, 3)],
    },
    "dkdv": {
        (64, False): [(64, 128, 8, 3), (64, 64, 4, 3), (64, 128, 8, 2), (64, 64, 4, 4), (64, 64, 8, 3)],
        (64, True): [(64, 64, 8, 3), (64, 128, 8, 3), (64, 64, 4, 3), (64, 128, 8, 2)],
        (128, False): [(64, 64, 8, 3), (64, 64, 8, 2), (32, 128, 8, 3), (32, 64, 4, 3), (32, 64, 8, 3)],
        (128, True): [(32, 64, 8, 3), (32, 128, 8, 3)],
    },
    "dkdv_atomic": {
        (64, False): [(64, 128, 8, 3), (64, 64, 4, 3), (64, 128, 8, 2), (64, 64, 8, 3)],
        (64, True): [(32, 128, 8, 3), (32, 64, 8, 3)],
        (128, False): [(32, 128, 8, 3), (32, 64, 8, 3)],
        (128, True): [],  # every config spills: the deterministic kernels run instead
    },
    "dq": {
        (64, False): [(128, 64, 8, 3), (64, 64, 4, 3), (128, 128, 8, 2), (64, 64, 4, 4), (64, 64, 8, 3),
                      (64, 128, 8, 2)],
        (64, True): [(128, 64, 8, 3), (64, 64, 4, 3), (64, 64, 8, 3), (64, 64, 4, 4)],
        (128, False): [(64, 64, 8, 3), (64, 128, 8, 2), (64, 64, 8, 2), (64, 32, 4, 3), (128, 64, 8, 3),
                       (64, 64, 4, 3)],
        (128, True): [(64, 32, 4, 3), (64, 32, 8, 3), (64, 32, 4, 4), (128, 64, 8, 3)],
    },
}  # fmt: skip


def _register_class(block_d: int, dropout: bool) -> tuple[int, bool]:
    """The `_REGISTER_SAFE` class of a launch: head-dim block 16-64 -> 64, 128 -> 128; dropout or not."""
    return (64 if block_d <= 64 else 128, bool(dropout))


def _configs(kind: str, **kwargs) -> list[triton.Config]:
    """Every config of `kind`'s classes, once each, in list order: the autotuner's list, pruned per launch."""
    blocks = list(dict.fromkeys(b for cls in _REGISTER_SAFE[kind].values() for b in cls))
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n, **kwargs}, num_warps=w, num_stages=s) for m, n, w, s in blocks]


def _atomic_dq_fits(block_d: int, dropout: bool) -> bool:
    """Whether the fused atomic-dQ backward has a spill-free config for this launch class."""
    return bool(_REGISTER_SAFE["dkdv_atomic"][_register_class(block_d, dropout)])


_FWD_CONFIGS = _configs("fwd", KV_TMA=False) + (_configs("fwd", KV_TMA=True) if _HAS_TMA else [])
_DKDV_CONFIGS = _configs("dkdv")
_DKDV_ATOMIC_CONFIGS = _configs("dkdv_atomic")
_DQ_CONFIGS = _configs("dq")

H100_SMEM_PER_BLOCK = 232448  # bytes of opt-in shared memory per block on sm_90; the budget off a GPU


def _smem_budget(device: torch.device) -> int:
    """Shared memory per block a kernel may use on `device` (the H100's when compiling ahead of time)."""
    if device.type != "cuda":
        return H100_SMEM_PER_BLOCK
    index = device.index if device.index is not None else torch.cuda.current_device()
    return triton.runtime.driver.active.utils.get_device_properties(index)["max_shared_mem"]


def _smem_bytes(kind: str, cfg: triton.Config, block_d: int, elem: int) -> int:
    """Shared memory of one config: the tiles loaded once plus `num_stages` copies of the streamed ones (the
    sm_90 compiles match this to within 2 KB)."""
    m, n, stages = cfg.kwargs["BLOCK_M"], cfg.kwargs["BLOCK_N"], cfg.num_stages
    if kind == "fwd":  # q once; k, v streamed
        return elem * block_d * (m + 2 * stages * n)
    if kind.startswith("dkdv"):  # k, v once; q, dO (and lse, delta) streamed
        return elem * block_d * (2 * n + 2 * stages * m) + 8 * stages * m
    return elem * block_d * (2 * m + 2 * stages * n)  # dq: q, dO once; k, v streamed


def _tma_ok(named_args: dict) -> bool:
    """Tensor descriptors need sm_90+ and 16-byte aligned K and V: base and every stride but the last."""
    for name in ("K", "V"):
        t = named_args[name]
        if t.device.type == "cuda" and torch.cuda.get_device_capability(t.device)[0] < 9:
            return False
        elem = t.element_size()
        if (t.storage_offset() * elem) % 16 or any((s * elem) % 16 for s in t.stride()[:-1]):
            return False
    return True


def _kv_tma_allowed(kind: str, named_args: dict) -> set[bool]:
    """The KV_TMA values a launch may take: pointer loads only, unless TRITONGPT_ATTENTION_TMA=1 adds the TMA
    configs or `_KV_TMA_ONLY` forces them; TMA only in the forward and where `_tma_ok`."""
    if kind != "fwd" or not _HAS_TMA or not (_KV_TMA or _KV_TMA_ONLY) or not _tma_ok(named_args):
        return {False}
    return {True} if _KV_TMA_ONLY else {False, True}


def _pruner(kind: str):
    """`prune_configs_by={"early_config_prune": ...}` for one kernel: keeps the configs of the launch's
    `_REGISTER_SAFE` class whose shared memory fits the device, with the KV_TMA values `_kv_tma_allowed`.
    Runs before benchmarking (and, under torch.compile, on FakeTensors: only dtypes, devices and strides
    are read)."""

    def prune(configs: list[triton.Config], named_args: dict, **meta) -> list[triton.Config]:
        q = named_args["Q"]
        elem, block_d = q.element_size(), meta["BLOCK_D"]
        safe = set(_REGISTER_SAFE[kind][_register_class(block_d, meta["DROPOUT"])])
        budget = _smem_budget(q.device)
        tma = _kv_tma_allowed(kind, named_args)
        allowed = [c for c in configs if c.kwargs.get("KV_TMA", False) in tma]
        kept = [
            c
            for c in allowed
            if (c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps, c.num_stages) in safe
            and _smem_bytes(kind, c, block_d, elem) <= budget
        ]
        if kept:
            return kept
        # Nothing fits (fp32 at head dim 128 on a GPU with less shared memory): the smallest config.
        return [min(allowed, key=lambda c: (_smem_bytes(kind, c, block_d, elem), -c.num_warps))]

    return prune


def _tuned(kernel, kind: str, configs: list[triton.Config], key: list[str], reset_to_zero=None):
    """The kernel autotuned over `configs` on a GPU; the plain kernel under the interpreter."""
    if _INTERPRET:
        return kernel
    prune = {"early_config_prune": _pruner(kind)}
    return triton.autotune(configs=configs, key=key, prune_configs_by=prune, reset_to_zero=reset_to_zero)(kernel)


_KEY = ["T_BUCKET", "HEAD_DIM", "CAUSAL", "DROPOUT"]
_attn_fwd = _tuned(_attn_fwd_kernel, "fwd", _FWD_CONFIGS, _KEY)
_attn_bwd_dkdv = _tuned(_attn_bwd_dkdv_kernel, "dkdv", _DKDV_CONFIGS, _KEY + ["ATOMIC_DQ"])
# The fast backward accumulates into DQ_ACC: benchmarking a config must start it from zero each time.
_attn_bwd_dkdv_atomic = _tuned(
    _attn_bwd_dkdv_kernel, "dkdv_atomic", _DKDV_ATOMIC_CONFIGS, _KEY + ["ATOMIC_DQ"], reset_to_zero=["DQ_ACC"]
)
_attn_bwd_dq = _tuned(_attn_bwd_dq_kernel, "dq", _DQ_CONFIGS, _KEY)

# Config the autotuner chose, per (kernel name, autotune key, dtype): used instead of tuning during capture.
_CHOSEN: dict[tuple, triton.Config] = {}


def _launch(kernel, grid, args: tuple, meta: dict, dtype: torch.dtype, interpreter_meta: dict | None = None) -> None:
    """Launch an (autotuned) attention kernel; never benchmark configs inside a CUDA-graph capture, nor at all
    with autotuning switched off. `_KV_TMA_ONLY` launches what the prune keeps now, never a config tuned
    before under other switches."""
    if _INTERPRET:
        launcher(kernel)[grid](*args, **meta, **_INTERPRETER_BLOCKS, **(interpreter_meta or {}))
        return
    key = (kernel.fn.__name__, *(meta[k] for k in kernel.keys), str(dtype))
    if not _AUTOTUNE or _KV_TMA_ONLY or torch.cuda.is_current_stream_capturing():
        config = None if _KV_TMA_ONLY else _CHOSEN.get(key)
        if config is None:  # never tuned for this key: the first config that fits, as pruning would leave it
            named_args = dict(zip(kernel.arg_names, args, strict=False))
            config = kernel.early_config_prune(kernel.configs, named_args, **meta)[0]
        launcher(kernel.fn)[grid](
            *args, **meta, **config.kwargs, num_warps=config.num_warps, num_stages=config.num_stages
        )
        return
    launcher(kernel)[grid](*args, **meta)
    best = getattr(kernel, "best_config", None)
    if best is not None and not torch.compiler.is_compiling():
        _CHOSEN[key] = best


def _tma_allocator(size: int, alignment: int, stream) -> torch.Tensor:
    """Global scratch for device-side tensor descriptors (Triton asks for it at launch)."""
    return torch.empty(size, dtype=torch.int8, device="cuda")


def _input_precision(dtype: torch.dtype) -> str:
    """`tl.dot` precision: fp32 follows torch.get_float32_matmul_precision() (IEEE at "highest")."""
    if dtype == torch.float32 and torch.get_float32_matmul_precision() == "highest":
        return "ieee"
    return "tf32"  # fp32 at "high"/"medium"; ignored for fp16/bf16


def _unit_last_stride(t: torch.Tensor) -> torch.Tensor:
    """The tensor itself when its last dimension is contiguous, else one contiguous copy."""
    return t if t.stride(-1) == 1 or t.shape[-1] <= 1 else t.contiguous()


def _check_attention_inputs(q, k, v, dropout_p, scale) -> None:
    check_inputs("attention", q=q, k=k, v=v)
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != 4:
            raise ValueError(f"attention: {name} must be 4-D (B, H, T, D), got shape {tuple(t.shape)}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"attention: q, k, v must share a dtype, got q={q.dtype}, k={k.dtype}, v={v.dtype}")
    if k.shape != v.shape:
        raise ValueError(f"attention: k and v must have the same shape, got k={tuple(k.shape)}, v={tuple(v.shape)}")
    if q.shape[:2] != k.shape[:2] or q.shape[3] != k.shape[3]:
        raise ValueError(
            f"attention: q (B, H, Tq, D) and k, v (B, H, Tk, D) must agree in B, H and D, got "
            f"q={tuple(q.shape)}, k={tuple(k.shape)}"
        )
    d = q.shape[3]
    if not MIN_HEAD_DIM <= d <= MAX_HEAD_DIM:
        raise ValueError(f"attention: head dim {d} is not supported; the kernel takes {MIN_HEAD_DIM}..{MAX_HEAD_DIM}")
    if isinstance(dropout_p, bool) or not isinstance(dropout_p, numbers.Real) or not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"attention: dropout_p must be a float in [0, 1), got {dropout_p!r}")
    if scale is not None:
        if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
            raise TypeError(f"attention: scale must be a float or None, got {type(scale).__name__} {scale!r}")
        if not math.isfinite(scale):
            raise ValueError(f"attention: scale must be a finite number, got {scale!r}")


def _dropout_seed(device: torch.device) -> torch.Tensor:
    """A (1,) int64 Philox seed drawn from torch's generator for `device` (torch.manual_seed reproduces it)."""
    return torch.randint(0, 2**62, (1,), dtype=torch.int64, device=device)


@library_op("attention_fwd")
def attention_fwd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool,
    dropout_p: float,
    scale: float,
    seed: torch.Tensor | None,
    deterministic: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward launch: (out (B, H, Tq, D) in q's dtype, logsumexp (B, H, Tq) fp32). Inputs already checked;
    scale >= 0. `deterministic` is not used here: it is the backward's mode, an input of the op so that
    register_autograd's backward (and torch.compile) sees the mode of the call that made the output."""
    if scale < 0:
        raise ValueError(f"attention_fwd: scale must be >= 0 here, got {scale!r} (attention() negates q instead)")
    q, k, v = _unit_last_stride(q), _unit_last_stride(k), _unit_last_stride(v)
    batch, heads, tq, d = q.shape
    tk = k.shape[2]
    out = alloc((batch, heads, tq, d), q.dtype, q.device)
    lse = alloc((batch, heads, tq), torch.float32, q.device)
    if out.numel() == 0:
        return out, lse
    dropout = dropout_p > 0.0
    meta = {
        "T_BUCKET": triton.next_power_of_2(max(tq, tk)), "HEAD_DIM": d, "BLOCK_D": triton.next_power_of_2(d),
        "CAUSAL": causal, "DROPOUT": dropout, "INPUT_PRECISION": _input_precision(q.dtype),
    }  # fmt: skip
    args = (
        q, k, v, out, lse, seed if dropout else lse,
        *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *out.stride()[:3],
        heads, tq, tk, scale * LOG2E.value, dropout_p, 1.0 / (1.0 - dropout_p),
    )  # fmt: skip
    if (_KV_TMA or _KV_TMA_ONLY) and not _INTERPRET:
        triton.set_allocator(_tma_allocator)  # per launch: the allocator is per thread (a ContextVar)
    grid = lambda meta: (batch * heads, triton.cdiv(tq, meta["BLOCK_M"]))
    _launch(_attn_fwd, grid, args, meta, q.dtype, {"KV_TMA": _KV_TMA_ONLY and _tma_ok({"K": k, "V": v})})
    return out, lse


@library_op("attention_bwd")
def attention_bwd(
    do: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    causal: bool,
    dropout_p: float,
    scale: float,
    seed: torch.Tensor | None,
    deterministic: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Backward launches: (dq, dk, dv), shaped and typed like q, k, v. `deterministic`: dQ by its own kernel
    (bit-reproducible), else by fp32 atomics inside the dK/dV kernel (see `set_deterministic`)."""
    do, q, k, v = _unit_last_stride(do), _unit_last_stride(q), _unit_last_stride(k), _unit_last_stride(v)
    batch, heads, tq, d = q.shape
    tk = k.shape[2]
    block_d = triton.next_power_of_2(d)
    dropout = dropout_p > 0.0
    # The fused kernel has no spill-free config at head dim > 64 with dropout: the deterministic kernels run.
    deterministic = deterministic or not _atomic_dq_fits(block_d, dropout)
    dk = alloc((batch, heads, tk, d), k.dtype, k.device)
    dv = alloc((batch, heads, tk, d), v.dtype, v.device)
    if deterministic:
        dq = alloc((batch, heads, tq, d), q.dtype, q.device)
        dq_acc = dk  # not read or written without ATOMIC_DQ
    else:
        dq_acc = torch.zeros((batch, heads, tq, d), dtype=torch.float32, device=q.device)
    if batch * heads == 0 or tq == 0:  # no query: no gradient reaches the keys
        dq = dq if deterministic else dq_acc.to(q.dtype)
        return dq, dk.zero_(), dv.zero_()
    delta = alloc((batch, heads, tq), torch.float32, q.device)
    launcher(_attn_bwd_preprocess_kernel)[(batch * heads, triton.cdiv(tq, _PREPROCESS_BLOCK_M))](
        out, do, delta, *out.stride()[:3], *do.stride()[:3], heads, tq,
        HEAD_DIM=d, BLOCK_D=block_d, BLOCK_M=_PREPROCESS_BLOCK_M,
    )  # fmt: skip
    meta = {
        "T_BUCKET": triton.next_power_of_2(max(tq, tk)), "HEAD_DIM": d, "BLOCK_D": block_d, "CAUSAL": causal,
        "DROPOUT": dropout, "INPUT_PRECISION": _input_precision(q.dtype),
    }  # fmt: skip
    tail = (heads, tq, tk, scale, scale * LOG2E.value, dropout_p, 1.0 / (1.0 - dropout_p))
    strides = (*q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *do.stride()[:3])
    seed_arg = seed if dropout else lse
    if tk > 0:
        grid = lambda meta: (batch * heads, triton.cdiv(tk, meta["BLOCK_N"]))
        args = (q, k, v, do, lse, delta, dk, dv, dq_acc, seed_arg, *strides, *dk.stride()[:3], *dv.stride()[:3],
                *dq_acc.stride()[:3], *tail)  # fmt: skip
        kernel = _attn_bwd_dkdv if deterministic else _attn_bwd_dkdv_atomic
        _launch(kernel, grid, args, {**meta, "ATOMIC_DQ": not deterministic}, q.dtype)
    if not deterministic:
        return (dq_acc if q.dtype == torch.float32 else dq_acc.to(q.dtype)), dk, dv
    grid = lambda meta: (batch * heads, triton.cdiv(tq, meta["BLOCK_M"]))
    args = (q, k, v, do, lse, delta, dq, seed_arg, *strides, *dq.stride()[:3], *tail)
    _launch(_attn_bwd_dq, grid, args, meta, q.dtype)
    return dq, dk, dv


def attention_dropout_mask(seed: torch.Tensor, batch: int, heads: int, tq: int, tk: int, dropout_p: float):
    """(B, H, Tq, Tk) bool keep-mask the kernels draw for `seed` (testing aid; see `_dropout_seed`)."""
    mask = torch.empty((batch, heads, tq, tk), dtype=torch.int8, device=seed.device)
    if mask.numel():
        grid = (triton.cdiv(tq, 16), triton.cdiv(tk, 16), batch * heads)
        _attn_dropout_mask_kernel[grid](seed, mask, tq, tk, dropout_p, BLOCK_M=16, BLOCK_N=16)
    return mask.bool()


def dropout_keep_mask(torch_seed: int, batch: int, heads: int, tq: int, tk: int, dropout_p: float,
                      device: torch.device) -> torch.Tensor:  # fmt: skip
    """The (B, H, Tq, Tk) bool keep-mask `attention` draws after torch.manual_seed(torch_seed) (testing aid)."""
    torch.manual_seed(torch_seed)
    return attention_dropout_mask(_dropout_seed(torch.device(device)), batch, heads, tq, tk, dropout_p)


# ---------------------------------------------------------------------------------------------------------
# Autograd: the forward op's backward formula, registered with torch.library.register_autograd.


def _attention_setup_context(ctx, inputs, output):
    q, k, v, causal, dropout_p, scale, seed, deterministic = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, seed)
    ctx.causal, ctx.dropout_p, ctx.scale, ctx.deterministic = causal, dropout_p, scale, deterministic
    ctx.mark_non_differentiable(lse)


def _attention_backward(ctx, dout, _dlse):
    q, k, v, out, lse, seed = ctx.saved_tensors
    dq, dk, dv = attention_bwd(dout, q, k, v, out, lse, ctx.causal, ctx.dropout_p, ctx.scale, seed, ctx.deterministic)
    return dq, dk, dv, None, None, None, None, None


attention_fwd.register_autograd(_attention_backward, setup_context=_attention_setup_context)


# ---------------------------------------------------------------------------------------------------------
# The public function: the reference's signature.


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool = True,
    dropout_p: float = 0.0,
    scale: float | None = None,
) -> torch.Tensor:
    """Fused softmax(q k^T * scale + mask) v: the Triton counterpart of `attention_ref` (same arguments).

    q: (B, H, Tq, D); k, v: (B, H, Tk, D); D in 16..128; fp16, bf16 or fp32 on CUDA (or the CPU with
    TRITON_INTERPRET=1). Returns (B, H, Tq, D) in q's dtype. `scale` (default 1/sqrt(D)) must be finite. With
    dropout_p > 0 a fresh seed is drawn from torch's generator on q's device for each call. The backward is
    deterministic unless `set_deterministic(False)` was called.
    """
    _check_attention_inputs(q, k, v, dropout_p, scale)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    if scale < 0:  # the kernels need scale >= 0 (the row max is taken before scaling): fold the sign into q
        q, scale = -q, -scale
    seed = _dropout_seed(q.device) if dropout_p > 0.0 else None
    out, _ = attention_fwd(q, k, v, bool(causal), float(dropout_p), scale, seed, is_deterministic())
    return out


# ---------------------------------------------------------------------------------------------------------
# Fuzz case space (`gpt verify --fuzz`, tritongpt/fuzz.py): the Limits above as the calls to draw. `draw` names
# each value (the keys of a case's JSON) and skews sizes to the block edges.

_FUZZ_HEAD_DIMS = (16, 32, 64, 80, 96, 128)  # powers of two and the padded ones GPT-style models use
_FUZZ_BLOCKS = [[64, 64], [16, 32], [32, 16], [16, 16], [32, 64], [64, 32]]  # interpreter (BLOCK_M, BLOCK_N)


def fuzz_case(op: str, draw) -> dict:
    """A call attention must get right: any supported head dim; Tq and Tk on both sides of the block edges (causal
    with Tq > Tk too: the fuzzer checks its first rows are 0 and the rest against the reference); causal or
    not; scale None or a multiple ("scale_sqrt_d") of 1/sqrt(D) of either sign, small enough that the scaled
    scores stay far from the exp2-recompute limit above; dropout_p up to 0.5 (Limits); fp32, fp16 (bf16 on a GPU); any
    layout of q, k, v. In the interpreter also its block sizes and the TMA loads; the fast backward anywhere."""
    module = sys.modules[__name__]
    if draw.gpu:
        edges, max_t = (64, 128, 256, 1024), 1100
    else:
        block_m, block_n = draw.choice("blocks", _FUZZ_BLOCKS)
        draw.setting(_INTERPRETER_BLOCKS, "BLOCK_M", block_m)
        draw.setting(_INTERPRETER_BLOCKS, "BLOCK_N", block_n)
        draw.setting(module, "_KV_TMA_ONLY", draw.choice("kv_tma", [False, True]))
        edges, max_t = (block_m, block_n, 2 * block_m, 2 * block_n, 64, 128), 160
    draw.setting(module, "_DETERMINISTIC", not draw.choice("atomic_dq", [False, True]))
    dtype = draw.dtype()
    b, h = draw.integer("B", 1, 3), draw.integer("H", 1, 3)
    d = draw.integer("D", MIN_HEAD_DIM, MAX_HEAD_DIM, near=_FUZZ_HEAD_DIMS)
    causal = draw.choice("causal", [True, False])
    tk = draw.integer("Tk", 1, max_t, near=edges)
    tq = draw.integer("Tq", 1, max_t, near=(*edges, tk))
    scale = draw.choice("scale_sqrt_d", [None, 0.5, 2.0, -1.0, 0.0])
    dropout_p = draw.choice("dropout_p", [0.0, 0.1, 0.3, 0.5], [4, 1, 1, 1])  # not 0.9: see Limits
    q = draw.tensor("q", (b, h, tq, d), dtype)
    k = draw.tensor("k", (b, h, tk, d), dtype)
    v = draw.tensor("v", (b, h, tk, d), dtype)
    scale = None if scale is None else scale / math.sqrt(d)
    return {"q": q, "k": k, "v": v, "causal": causal, "dropout_p": dropout_p, "scale": scale}


def fuzz_invalid(op: str, draw) -> tuple[dict, str]:
    """A call attention must refuse, and what its error must name: a wrong rank, B/H/D or k/v shapes that do not
    agree, an unsupported head dim or dtype, mixed dtypes or devices, a non-tensor, a non-finite or non-number
    scale, dropout_p outside [0, 1)."""
    dtype = draw.dtype()
    d = draw.integer("D", MIN_HEAD_DIM, MAX_HEAD_DIM, near=_FUZZ_HEAD_DIMS)
    shape = (1, 2, draw.integer("T", 1, 9), d)
    q, k, v = (draw.tensor(name, shape, dtype, layout=False) for name in "qkv")
    kwargs = {"q": q, "k": k, "v": v, "causal": draw.choice("causal", [True, False])}
    defect = draw.choice("defect", ["rank", "heads", "head_dims", "kv_shape", "head_dim", "dtype", "mixed_dtypes",
                                    "device", "not_tensor", "scale", "scale_type", "dropout_p"])  # fmt: skip
    name = draw.choice("which", ["q", "k", "v"])
    t = kwargs[name]
    if defect == "rank":
        kwargs[name] = t[0] if draw.choice("rank", [3, 5]) == 3 else t[None]
        return kwargs, f"{name} must be 4-D"
    if defect == "heads":
        kwargs["k"] = kwargs["v"] = torch.cat([k, k[:, :1]], dim=1)
        return kwargs, "agree in B, H and D"
    if defect == "head_dims":
        other = 2 * d if d <= MAX_HEAD_DIM // 2 else d // 2
        kwargs["k"] = kwargs["v"] = torch.zeros((*shape[:3], other), dtype=dtype, device=q.device)
        return kwargs, "agree in B, H and D"
    if defect == "kv_shape":
        kwargs["v"] = torch.cat([v, v[:, :, :1]], dim=2)
        return kwargs, "k and v must have the same shape"
    if defect == "head_dim":
        bad = draw.choice("bad_head_dim", [8, 1, 15, 129, 160, 256])
        kwargs.update({n: torch.zeros((*shape[:3], bad), dtype=dtype, device=q.device) for n in "qkv"})
        return kwargs, f"head dim {bad} is not supported"
    if defect == "dtype":
        bad = draw.choice("bad_dtype", ["float64", "int32", "bool", "complex64"])
        kwargs.update({n: kwargs[n].to(getattr(torch, bad)) for n in "qkv"})
        return kwargs, f"dtype torch.{bad}"
    if defect == "mixed_dtypes":
        kwargs[name] = t.to(torch.float16 if dtype != torch.float16 else torch.float32)
        return kwargs, "must share a dtype"
    if defect == "device":
        kwargs[name] = t.to(draw.other_device)
        return kwargs, "different devices"
    if defect == "not_tensor":
        kwargs[name] = t.tolist()
        return kwargs, f"{name} must be a torch.Tensor"
    if defect == "scale":
        kwargs["scale"] = float(draw.choice("bad_scale", ["nan", "inf", "-inf"]))
        return kwargs, "scale must be a finite number"
    if defect == "scale_type":
        kwargs["scale"] = draw.choice("bad_scale", ["0.1", True, [0.1]])
        return kwargs, "scale must be a float or None"
    kwargs["dropout_p"] = draw.choice("bad_dropout_p", [1.0, -0.1, 1.5, "nan", "inf", "0.1", True])
    if kwargs["dropout_p"] in ("nan", "inf"):
        kwargs["dropout_p"] = float(kwargs["dropout_p"])
    return kwargs, "dropout_p must be a float in [0, 1)"
