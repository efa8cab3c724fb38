"""Causal multi-head scaled dot-product attention, q, k, v shaped (B, H, T, D).

    from kernels import attention                 # Triton, FlashAttention-2 style, autograd-aware
    from kernels.reference import attention       # the oracle, `attention_ref` below

    y = attention(q, k, v, causal=True, dropout_p=0.1)   # q (B, H, Tq, D); k, v (B, H, Tk, D)

The forward streams K/V tiles past one block of queries with an online softmax in fp32 (exp2, with log2(e)
folded into the scale) and saves the logsumexp (B, H, Tq) in fp32: O(T) memory, the (T, T) scores are never
stored. The backward recomputes the probabilities from the logsumexp: a pre-pass computes
delta = rowsum(dO * O), one kernel owns a block of keys and loops over queries for dK, dV, another owns a
block of queries and loops over keys for dQ. No atomics: gradients are bit-identical run to run.
Causal masking is bottom-right aligned (query i sees keys j <= i + Tk - Tq, what a KV-cache decode step
needs); key blocks above the diagonal are skipped, only blocks cut by the diagonal or the sequence end are
masked. Dropout on the probabilities is in-kernel: Philox (`tl.rand`) keyed by a seed drawn from torch's
generator (so `torch.manual_seed` reproduces it) and the element's (b, h, i, j) index, regenerated in the
backward. `dropout_p == 0` compiles the dropout code out.

Precision: load, compute in fp32, store in the input dtype; the logsumexp and delta stay fp32. For fp32
inputs `tl.dot` follows torch's fp32 matmul policy: IEEE fp32 while
`torch.get_float32_matmul_precision()` is "highest" (torch's default), TF32 when it is "high" or "medium".
fp16/bf16 use the tensor cores with fp32 accumulation.

Launch configuration: on a GPU the three main kernels are autotuned over a short list of Hopper-minded
configs, keyed by a power-of-two bucket of the sequence length, the head dim, causal and dropout; inside a
CUDA-graph capture the autotuner is bypassed (the config it picked for that key earlier, else the first
config), so no benchmarking happens during capture. Under the interpreter one fixed 64 x 64 block is used.

torch.compile: the forward and backward host functions are registered with `kernels._common.library_op`:
`torch.library.triton_op`s launching through `wrap_triton` on a GPU, so Inductor sees the kernels; under
Triton's interpreter (whose kernels cannot be traced) opaque `torch.library.custom_op`s whose fake
implementation is the same host function with the launches skipped. No graph break either way.

Limits: head dim 16-128 (any value; padded to the next power of two inside the kernel); q, k, v must share
B, H, D and dtype (no grouped-query attention); inputs need a unit last stride (otherwise that tensor is
copied once); with causal and Tq > Tk the first Tq - Tk query rows see no key: their output and gradients
are zero (the reference returns NaN there). bf16 is GPU-only in the tests (Triton's interpreter gets
`tl.dot` on bf16 wrong). A NaN/inf in v reaches the rows that see its key, plus (as 0 * NaN) other rows of
a block that loads it; the reference's dense `att @ v` spreads it to every row, so the kernel is never
non-finite where the reference is finite.
"""

import math

import torch
import triton
import triton.language as tl

from kernels._common import alloc, check_inputs, interpreter_enabled, launcher, library_op

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
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    att = (q @ k.transpose(-2, -1)) * scale  # (B, H, Tq, Tk)
    if causal:
        tq, tk = q.shape[-2], k.shape[-2]
        mask = torch.ones(tq, tk, dtype=torch.bool, device=q.device).triu(diagonal=tk - tq + 1)
        att = att.masked_fill(mask, float("-inf"))
    att = torch.softmax(att, dim=-1)
    if dropout_p > 0.0:
        att = torch.nn.functional.dropout(att, p=dropout_p, training=True)
    return att @ v  # (B, H, Tq, D)


# ---------------------------------------------------------------------------------------------------------
# Triton kernels
# ---------------------------------------------------------------------------------------------------------

# Kernel-side constants (constexpr so @triton.jit may read them); host code uses LOG2E.value.
LOG2E: tl.constexpr = tl.constexpr(1.4426950408889634)  # log2(e): exp(x) = exp2(x * log2(e))
LN2: tl.constexpr = tl.constexpr(0.6931471805599453)  # ln(2)


@triton.jit
def _dropout_keep(seed, rng_offsets, dropout_p):
    """Philox keep-mask: element (b, h, i, j) is kept with probability 1 - dropout_p.

    rng_offsets = ((b * H + h) * Tq + i) * Tk + j (int64), the same in the forward, both backward kernels
    and `_attn_dropout_mask_kernel`, so every kernel regenerates the identical mask.
    """
    return tl.rand(seed, rng_offsets) >= dropout_p


@triton.jit
def _attn_fwd_inner(
    acc, l_i, m_i, q,
    k_ptrs, v_ptrs, stride_kt, stride_vt,
    offs_m, offs_n, d_ok,
    lo, hi, Tk, diag,
    qk_scale, seed, dropout_p, dropout_scale, rng_rows,
    BLOCK_N: tl.constexpr, MASK: tl.constexpr, CAUSAL: tl.constexpr, DROPOUT: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
):  # fmt: skip
    """Online softmax over key blocks [lo, hi). MASK: blocks cut by the diagonal or by Tk."""
    for start_n in range(lo, hi, BLOCK_N):
        cols = start_n + offs_n
        if MASK:
            kv_mask = (cols[:, None] < Tk) & d_ok[None, :]
        else:
            kv_mask = d_ok[None, :]
        k = tl.load(k_ptrs + start_n * stride_kt, mask=kv_mask, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=INPUT_PRECISION) * qk_scale  # (BLOCK_M, BLOCK_N), log2 units
        if MASK:
            valid = cols[None, :] < Tk
            if CAUSAL:
                valid = valid & (cols[None, :] <= offs_m[:, None] + diag)
            s = tl.where(valid, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        # A row that has seen no key yet keeps m = -inf; subtract 0 instead so exp2 gives 0, not NaN.
        m_sub = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.math.exp2(s - m_sub[:, None])
        alpha = tl.math.exp2(m_i - m_sub)
        l_i = l_i * alpha + tl.sum(p, 1)  # the normaliser counts every probability, dropped or not
        if DROPOUT:
            keep = _dropout_keep(seed, rng_rows[:, None] + cols[None, :], dropout_p)
            p = tl.where(keep, p * dropout_scale, 0.0)
        v = tl.load(v_ptrs + start_n * stride_vt, mask=kv_mask, other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=INPUT_PRECISION)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _attn_fwd_kernel(
    Q,  # (B, H, Tq, D) queries, unit last stride
    K,  # (B, H, Tk, D) keys, unit last stride
    V,  # (B, H, Tk, D) values, unit last stride
    OUT,  # (B, H, Tq, D) output, unit last stride
    LSE,  # (B, H, Tq) fp32 logsumexp of the scaled scores (natural log), contiguous; -inf for a row with no key
    SEED,  # (1,) int64 Philox seed, read only when DROPOUT
    stride_qb, stride_qh, stride_qt,
    stride_kb, stride_kh, stride_kt,
    stride_vb, stride_vh, stride_vt,
    stride_ob, stride_oh, stride_ot,
    H, Tq, Tk,
    qk_scale,  # softmax scale * log2(e)
    dropout_p, dropout_scale,  # drop probability, 1 / (1 - dropout_p)
    T_BUCKET,  # autotune key only: next power of two of max(Tq, Tk)
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr, DROPOUT: tl.constexpr, INPUT_PRECISION: tl.constexpr,
):  # fmt: skip
    start_m = tl.program_id(0) * BLOCK_M
    bh = tl.program_id(1).to(tl.int64)
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
    q = tl.load(q_ptrs, mask=m_ok[:, None] & d_ok[None, :], other=0.0)

    if DROPOUT:
        seed = tl.load(SEED)
    else:
        seed = 0
    rng_rows = (bh * Tq + offs_m) * Tk  # int64, see _dropout_keep

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
        acc, l_i, m_i, q, k_ptrs, v_ptrs, stride_kt, stride_vt, offs_m, offs_n, d_ok,
        0, full_end, Tk, diag, qk_scale, seed, dropout_p, dropout_scale, rng_rows,
        BLOCK_N, False, CAUSAL, DROPOUT, INPUT_PRECISION,
    )  # fmt: skip
    acc, l_i, m_i = _attn_fwd_inner(
        acc, l_i, m_i, q, k_ptrs, v_ptrs, stride_kt, stride_vt, offs_m, offs_n, d_ok,
        full_end, hi, Tk, diag, qk_scale, seed, dropout_p, dropout_scale, rng_rows,
        BLOCK_N, True, CAUSAL, DROPOUT, INPUT_PRECISION,
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
# P is recomputed from the saved logsumexp: P_ij = exp(z_ij - lse_i) = exp2(z_ij * log2(e) - lse_i * log2(e)).
# Rows with no visible key (causal, Tq > Tk) have lse = -inf; they only ever fall in masked blocks, where P
# is selected to 0. Query rows past Tq load q = dO = 0 and lse = +inf (P = 0): they add nothing to dK, dV
# without a mask.


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
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    bh = tl.program_id(1).to(tl.int64)
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
    q_ptrs, do_ptrs, LSE_row, DELTA_row, stride_qt, stride_dot,
    offs_m, offs_n, d_ok,
    lo, hi, Tq, Tk, diag,
    qk_scale, seed, dropout_p, dropout_scale, rng_base,
    BLOCK_M: tl.constexpr, MASK: tl.constexpr, DROPOUT: tl.constexpr, INPUT_PRECISION: tl.constexpr,
):  # fmt: skip
    """Accumulate dK, dV of one key block over query blocks [lo, hi); MASK: blocks cut by the diagonal.

    Works in the transposed orientation (keys x queries) so no large tile is transposed after the dots.
    """
    for start_m in range(lo, hi, BLOCK_M):
        rows = start_m + offs_m
        row_ok = rows < Tq
        qd_mask = row_ok[:, None] & d_ok[None, :]
        q = tl.load(q_ptrs + start_m * stride_qt, mask=qd_mask, other=0.0)
        lse = tl.load(LSE_row + rows, mask=row_ok, other=float("inf")) * LOG2E
        sT = tl.dot(k, tl.trans(q), input_precision=INPUT_PRECISION) * qk_scale  # (BLOCK_N, BLOCK_M)
        pT = tl.math.exp2(sT - lse[None, :])
        if MASK:
            pT = tl.where(offs_n[:, None] <= rows[None, :] + diag, pT, 0.0)
        do = tl.load(do_ptrs + start_m * stride_dot, mask=qd_mask, other=0.0)
        dpT = tl.dot(v, tl.trans(do), input_precision=INPUT_PRECISION)  # (BLOCK_N, BLOCK_M)
        if DROPOUT:
            keep = _dropout_keep(seed, rng_base + rows.to(tl.int64)[None, :] * Tk + offs_n[:, None], dropout_p)
            pdT = tl.where(keep, pT * dropout_scale, 0.0)
            dpT = tl.where(keep, dpT * dropout_scale, 0.0)
        else:
            pdT = pT
        dv += tl.dot(pdT.to(do.dtype), do, input_precision=INPUT_PRECISION)
        delta = tl.load(DELTA_row + rows, mask=row_ok, other=0.0)
        dsT = pT * (dpT - delta[None, :])
        dk += tl.dot(dsT.to(q.dtype), q, input_precision=INPUT_PRECISION)
    return dk, dv


@triton.jit
def _attn_bwd_dkdv_kernel(
    Q, K, V,  # (B, H, Tq, D), (B, H, Tk, D), (B, H, Tk, D) forward inputs, unit last stride
    DO,  # (B, H, Tq, D) upstream gradient, unit last stride
    LSE, DELTA,  # (B, H, Tq) fp32, contiguous: forward logsumexp, rowsum(dO * O)
    DK, DV,  # (B, H, Tk, D) outputs, unit last stride
    SEED,  # (1,) int64 Philox seed, read only when DROPOUT
    stride_qb, stride_qh, stride_qt,
    stride_kb, stride_kh, stride_kt,
    stride_vb, stride_vh, stride_vt,
    stride_dob, stride_doh, stride_dot,
    stride_dkb, stride_dkh, stride_dkt,
    stride_dvb, stride_dvh, stride_dvt,
    H, Tq, Tk,
    scale, qk_scale, dropout_p, dropout_scale,
    T_BUCKET,  # autotune key only
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr, DROPOUT: tl.constexpr, INPUT_PRECISION: tl.constexpr,
):  # fmt: skip
    start_n = tl.program_id(0) * BLOCK_N
    bh = tl.program_id(1).to(tl.int64)
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
    q_ptrs = Q + b * stride_qb + h * stride_qh + offs_m.to(tl.int64)[:, None] * stride_qt + offs_d[None, :]
    do_ptrs = DO + b * stride_dob + h * stride_doh + offs_m.to(tl.int64)[:, None] * stride_dot + offs_d[None, :]

    if DROPOUT:
        seed = tl.load(SEED)
    else:
        seed = 0
    rng_base = bh * Tq * Tk

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
        dk, dv, k, v, q_ptrs, do_ptrs, LSE + bh * Tq, DELTA + bh * Tq, stride_qt, stride_dot,
        offs_m, offs_n, d_ok, lo, tl.minimum(full_lo, Tq), Tq, Tk, diag,
        qk_scale, seed, dropout_p, dropout_scale, rng_base,
        BLOCK_M, True, DROPOUT, INPUT_PRECISION,
    )  # fmt: skip
    dk, dv = _attn_bwd_dkdv_inner(
        dk, dv, k, v, q_ptrs, do_ptrs, LSE + bh * Tq, DELTA + bh * Tq, stride_qt, stride_dot,
        offs_m, offs_n, d_ok, full_lo, Tq, Tq, Tk, diag,
        qk_scale, seed, dropout_p, dropout_scale, rng_base,
        BLOCK_M, False, DROPOUT, INPUT_PRECISION,
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
    qk_scale, seed, dropout_p, dropout_scale, rng_rows,
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
        s = tl.dot(q, tl.trans(k), input_precision=INPUT_PRECISION) * qk_scale  # (BLOCK_M, BLOCK_N)
        p = tl.math.exp2(s - lse[:, None])
        if MASK:
            valid = cols[None, :] < Tk
            if CAUSAL:
                valid = valid & (cols[None, :] <= offs_m[:, None] + diag)
            p = tl.where(valid, p, 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=INPUT_PRECISION)
        if DROPOUT:
            keep = _dropout_keep(seed, rng_rows[:, None] + cols[None, :], dropout_p)
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
    start_m = tl.program_id(0) * BLOCK_M
    bh = tl.program_id(1).to(tl.int64)
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
    rng_rows = (bh * Tq + offs_m) * Tk

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
        0, full_end, Tk, diag, qk_scale, seed, dropout_p, dropout_scale, rng_rows,
        BLOCK_N, False, CAUSAL, DROPOUT, INPUT_PRECISION,
    )  # fmt: skip
    dq = _attn_bwd_dq_inner(
        dq, q, do, lse, delta, k_ptrs, v_ptrs, stride_kt, stride_vt, offs_m, offs_n, d_ok,
        full_end, hi, Tk, diag, qk_scale, seed, dropout_p, dropout_scale, rng_rows,
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
    bh = tl.program_id(2).to(tl.int64)
    offsets = (bh * Tq + offs_m)[:, None] * Tk + offs_n[None, :]
    keep = _dropout_keep(tl.load(SEED), offsets, dropout_p)
    tl.store(MASK + offsets, keep.to(tl.int8), mask=(offs_m[:, None] < Tq) & (offs_n[None, :] < Tk))


# ---------------------------------------------------------------------------------------------------------
# Host: launch configuration, validation, launches
# ---------------------------------------------------------------------------------------------------------

_INTERPRET = interpreter_enabled()
# Interpreter: one fixed config. Its cost is per block operation, not per element: 64 x 64 ran fwd+bwd at
# (2, 2, 130, 64) 2x faster than 32 x 32 and 3.5x faster than 16 x 16 on CPU (Triton 3.9).
_INTERPRETER_BLOCKS = {"BLOCK_M": 64, "BLOCK_N": 64}
_PREPROCESS_BLOCK_M = 16 if _INTERPRET else 128
_AUTOTUNE_KEY = ["T_BUCKET", "HEAD_DIM", "CAUSAL", "DROPOUT"]


def _configs(blocks: list[tuple[int, int, int, int]]) -> list[triton.Config]:
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s) for m, n, w, s in blocks]


# (BLOCK_M, BLOCK_N, num_warps, num_stages) for Hopper, after the shapes Triton's fused-attention tutorial
# uses; not yet measured here. 256-row blocks are left out: at D = 128 they spill registers.
_FWD_CONFIGS = _configs([(128, 64, 4, 3), (128, 128, 8, 3), (64, 64, 4, 3), (128, 32, 4, 4)])
# dK/dV: a program owns BLOCK_N keys and streams BLOCK_M queries; dQ: owns BLOCK_M queries, streams keys.
_DKDV_CONFIGS = _configs([(32, 128, 4, 3), (64, 64, 4, 3), (64, 128, 8, 3)])
_DQ_CONFIGS = _configs([(128, 32, 4, 3), (64, 64, 4, 3), (128, 64, 8, 3)])


def _tuned(kernel, configs):
    """The kernel autotuned over `configs` on a GPU; the plain kernel under the interpreter."""
    if _INTERPRET:
        return kernel
    return triton.autotune(configs=configs, key=_AUTOTUNE_KEY)(kernel)


_attn_fwd = _tuned(_attn_fwd_kernel, _FWD_CONFIGS)
_attn_bwd_dkdv = _tuned(_attn_bwd_dkdv_kernel, _DKDV_CONFIGS)
_attn_bwd_dq = _tuned(_attn_bwd_dq_kernel, _DQ_CONFIGS)

# Config the autotuner chose, per (kernel name, autotune key, dtype): used instead of tuning during capture.
_CHOSEN: dict[tuple, triton.Config] = {}


def _launch(kernel, grid, args: tuple, meta: dict, dtype: torch.dtype) -> None:
    """Launch an (autotuned) attention kernel; never benchmark configs inside a CUDA-graph capture."""
    if _INTERPRET:
        launcher(kernel)[grid](*args, **meta, **_INTERPRETER_BLOCKS)
        return
    key = (kernel.fn.__name__, *(meta[k] for k in _AUTOTUNE_KEY), str(dtype))
    if torch.cuda.is_current_stream_capturing():
        config = _CHOSEN.get(key, kernel.configs[0])
        launcher(kernel.fn)[grid](
            *args, **meta, **config.kwargs, num_warps=config.num_warps, num_stages=config.num_stages
        )
        return
    launcher(kernel)[grid](*args, **meta)
    best = getattr(kernel, "best_config", None)
    if best is not None and not torch.compiler.is_compiling():
        _CHOSEN[key] = best


def _input_precision(dtype: torch.dtype) -> str:
    """`tl.dot` precision: fp32 follows torch.get_float32_matmul_precision() (IEEE at "highest")."""
    if dtype == torch.float32 and torch.get_float32_matmul_precision() == "highest":
        return "ieee"
    return "tf32"  # fp32 at "high"/"medium"; ignored for fp16/bf16


def _unit_last_stride(t: torch.Tensor) -> torch.Tensor:
    """The tensor itself when its last dimension is contiguous, else one contiguous copy."""
    return t if t.stride(-1) == 1 or t.shape[-1] <= 1 else t.contiguous()


def _check_attention_inputs(q, k, v, dropout_p) -> None:
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
    if not isinstance(dropout_p, (int, float)) or not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"attention: dropout_p must be a float in [0, 1), got {dropout_p!r}")


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
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward launch: (out (B, H, Tq, D) in q's dtype, logsumexp (B, H, Tq) fp32). Inputs already checked."""
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
    grid = lambda meta: (triton.cdiv(tq, meta["BLOCK_M"]), batch * heads)
    _launch(_attn_fwd, grid, args, meta, q.dtype)
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
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Backward launches: (dq, dk, dv), shaped and typed like q, k, v."""
    do, q, k, v = _unit_last_stride(do), _unit_last_stride(q), _unit_last_stride(k), _unit_last_stride(v)
    batch, heads, tq, d = q.shape
    tk = k.shape[2]
    dq = alloc((batch, heads, tq, d), q.dtype, q.device)
    dk = alloc((batch, heads, tk, d), k.dtype, k.device)
    dv = alloc((batch, heads, tk, d), v.dtype, v.device)
    if batch * heads == 0:
        return dq, dk, dv
    if tq == 0:  # no query: no gradient reaches the keys
        return dq, dk.zero_(), dv.zero_()
    block_d = triton.next_power_of_2(d)
    delta = alloc((batch, heads, tq), torch.float32, q.device)
    launcher(_attn_bwd_preprocess_kernel)[(triton.cdiv(tq, _PREPROCESS_BLOCK_M), batch * heads)](
        out, do, delta, *out.stride()[:3], *do.stride()[:3], heads, tq,
        HEAD_DIM=d, BLOCK_D=block_d, BLOCK_M=_PREPROCESS_BLOCK_M,
    )  # fmt: skip
    dropout = dropout_p > 0.0
    meta = {
        "T_BUCKET": triton.next_power_of_2(max(tq, tk)), "HEAD_DIM": d, "BLOCK_D": block_d, "CAUSAL": causal,
        "DROPOUT": dropout, "INPUT_PRECISION": _input_precision(q.dtype),
    }  # fmt: skip
    tail = (heads, tq, tk, scale, scale * LOG2E.value, dropout_p, 1.0 / (1.0 - dropout_p))
    strides = (*q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *do.stride()[:3])
    seed_arg = seed if dropout else lse
    if tk > 0:
        grid = lambda meta: (triton.cdiv(tk, meta["BLOCK_N"]), batch * heads)
        args = (q, k, v, do, lse, delta, dk, dv, seed_arg, *strides, *dk.stride()[:3], *dv.stride()[:3], *tail)
        _launch(_attn_bwd_dkdv, grid, args, meta, q.dtype)
    grid = lambda meta: (triton.cdiv(tq, meta["BLOCK_M"]), batch * heads)
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


# ---------------------------------------------------------------------------------------------------------
# Autograd and the public function
# ---------------------------------------------------------------------------------------------------------


class AttentionFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, causal, dropout_p, scale, seed):
        out, lse = attention_fwd(q, k, v, causal, dropout_p, scale, seed)
        ctx.save_for_backward(q, k, v, out, lse, seed)
        ctx.causal, ctx.dropout_p, ctx.scale = causal, dropout_p, scale
        return out

    @staticmethod
    def backward(ctx, do):
        q, k, v, out, lse, seed = ctx.saved_tensors
        dq, dk, dv = attention_bwd(do, q, k, v, out, lse, ctx.causal, ctx.dropout_p, ctx.scale, seed)
        return dq, dk, dv, None, None, None, None


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
    TRITON_INTERPRET=1). Returns (B, H, Tq, D) in q's dtype. With dropout_p > 0 a fresh seed is drawn
    from torch's generator on q's device for each call.
    """
    _check_attention_inputs(q, k, v, dropout_p)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    seed = _dropout_seed(q.device) if dropout_p > 0.0 else None
    return AttentionFunction.apply(q, k, v, bool(causal), float(dropout_p), scale, seed)
