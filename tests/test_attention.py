"""The fused attention kernel against `tritongpt.kernels.reference.attention`: forward and dq, dk, dv by the
error-relative rule, masking (causal, Tq != Tk, tails), layouts, dropout, both backward modes (deterministic
and atomic dQ), tensor-descriptor loads, the autotune pruning, bad input, registration, torch.compile,
CUDA-graph capture. On CPU the kernels run in Triton's interpreter (conftest sets it), in fp32 and fp16."""

import importlib
import math

import pytest
import torch
from _tolerance import assert_matches_reference, compare

from tritongpt.kernels import reference
from tritongpt.kernels.attention import attention

attn_mod = importlib.import_module("tritongpt.kernels.attention")

ON_GPU = torch.cuda.is_available()
DEVICE = "cuda" if ON_GPU else "cpu"


def qkv(b, h, tq, tk, d, dtype=torch.float32, device=DEVICE):
    q = torch.randn(b, h, tq, d, device=device).to(dtype)
    k = torch.randn(b, h, tk, d, device=device).to(dtype)
    v = torch.randn(b, h, tk, d, device=device).to(dtype)
    return q, k, v


def check(q, k, v, causal, first_row=0, **kw):
    """The rule on the output and dq, dk, dv. Rows before `first_row` are left out of the output (with causal
    and Tq > Tk they see no key: the reference gives NaN there), but the kernel still computes them."""
    return assert_matches_reference(
        lambda q, k, v: attention(q, k, v, causal=causal, **kw)[:, :, first_row:],
        lambda q, k, v: reference.attention(q[:, :, first_row:], k, v, causal=causal, **kw),
        {"q": q, "k": k, "v": v},
        ("q", "k", "v"),
    )


# (B, H, Tq, Tk, D, causal): T = 1, primes and odd tails, D = 16 / 64 / 80, causal and not, Tq < Tk.
SHAPES = [
    (1, 1, 1, 1, 16, True),
    (2, 3, 17, 17, 64, True),
    (1, 2, 97, 97, 80, True),
    (1, 2, 130, 130, 16, False),
    (2, 1, 20, 45, 64, True),  # a query block continuing a cached prefix: bottom-right aligned mask
    (1, 2, 1, 37, 32, True),  # one decode step
]
DTYPES = [torch.float32, torch.float16]


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "fp16"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s[:5])) + ("-causal" if s[5] else ""))
def test_matches_reference(shape, dtype, poison_outputs):
    b, h, tq, tk, d, causal = shape
    check(*qkv(b, h, tq, tk, d, dtype), causal)


@pytest.fixture
def fast_backward():
    """attention's non-deterministic backward (dQ by atomics in the dK/dV kernel) for this test."""
    attn_mod.set_deterministic(False)
    yield
    attn_mod.set_deterministic(True)


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "fp16"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s[:5])) + ("-causal" if s[5] else ""))
def test_fast_backward_matches_reference(shape, dtype, fast_backward, poison_outputs):
    """dQ accumulated with fp32 atomics is judged by the same rule as the deterministic one (not bit-identity)."""
    assert not attn_mod.is_deterministic()
    b, h, tq, tk, d, causal = shape
    check(*qkv(b, h, tq, tk, d, dtype), causal)


@pytest.mark.parametrize("diag", [-18, 0, 17])
def test_fast_backward_with_unequal_blocks(diag, fast_backward, monkeypatch, poison_outputs):
    """Several query blocks add into one dQ row block from several key programs; rows past Tq and keys past Tk
    must add nothing."""
    monkeypatch.setitem(attn_mod._INTERPRETER_BLOCKS, "BLOCK_M", 16)
    monkeypatch.setitem(attn_mod._INTERPRETER_BLOCKS, "BLOCK_N", 32)
    q, k, v = qkv(1, 2, 37, 37 + diag, 16)
    check(q, k, v, causal=True, first_row=max(-diag, 0))


def test_fast_backward_with_dropout_matches_the_deterministic_one(fast_backward):
    q, k, v = qkv(1, 2, 37, 37, 32)
    fast = run_with_seed(5, q, k, v, causal=True, dropout_p=0.3)
    attn_mod.set_deterministic(True)
    slow = run_with_seed(5, q, k, v, causal=True, dropout_p=0.3)
    assert torch.equal(fast[0], slow[0])  # same forward, same mask
    for a, b in zip(fast[1:], slow[1:], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_deterministic_setting(monkeypatch):
    assert attn_mod.is_deterministic()  # the default
    attn_mod.set_deterministic(False)
    try:
        assert not attn_mod.is_deterministic()
        monkeypatch.setattr(torch, "are_deterministic_algorithms_enabled", lambda: True)
        assert attn_mod.is_deterministic()  # torch.use_deterministic_algorithms(True) wins
    finally:
        attn_mod.set_deterministic(True)
    with pytest.raises(TypeError, match="set_deterministic takes True or False"):
        attn_mod.set_deterministic("no")


@pytest.mark.parametrize("value,expected", [("0", False), ("off", False), ("1", True), ("", True), (None, True)])
def test_environment_switch(value, expected, monkeypatch):
    if value is None:
        monkeypatch.delenv("TRITONGPT_ATTENTION_DETERMINISTIC", raising=False)
    else:
        monkeypatch.setenv("TRITONGPT_ATTENTION_DETERMINISTIC", value)
    assert attn_mod._env_flag("TRITONGPT_ATTENTION_DETERMINISTIC", True) is expected


def test_environment_switch_warns_on_garbage_and_keeps_the_default(monkeypatch):
    monkeypatch.setenv("TRITONGPT_ATTENTION_DETERMINISTIC", "banana")
    with pytest.warns(UserWarning, match="TRITONGPT_ATTENTION_DETERMINISTIC='banana' is not 0 or 1; using 1"):
        assert attn_mod._env_flag("TRITONGPT_ATTENTION_DETERMINISTIC", True) is True


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "fp16"])
@pytest.mark.parametrize("shape", [(1, 2, 97, 97, 80, True), (2, 1, 20, 45, 64, True), (1, 2, 33, 70, 16, False)])
def test_tensor_descriptor_loads_match_reference(shape, dtype, monkeypatch, poison_outputs):
    """The forward's K/V loads through tensor descriptors (the TMA variant), run by the interpreter: tails past Tk
    and columns past the head dim (D = 80 in a 128-wide block) must arrive as zeros."""
    monkeypatch.setattr(attn_mod, "_KV_TMA_ONLY", True)  # on a GPU: the TMA configs alone, where sm_90+
    b, h, tq, tk, d, causal = shape
    check(*qkv(b, h, tq, tk, d, dtype), causal)


def test_tensor_descriptor_switch_falls_back_where_strides_are_unaligned(monkeypatch, poison_outputs):
    """Descriptors need 16-byte aligned strides (fp32 D = 17: 68 bytes). The interpreter's switch, like the GPU's
    prune, uses them only where `_tma_ok`; it used to assert in the interpreter (found by `gpt verify --fuzz`)."""
    monkeypatch.setattr(attn_mod, "_KV_TMA_ONLY", True)
    check(*qkv(1, 2, 9, 9, 17), causal=True)


@pytest.mark.skipif(not attn_mod._HAS_TMA, reason="this Triton has no device-side tensor descriptors")
@pytest.mark.parametrize("env, only, expected", [(False, False, {False}), (True, False, {False, True}),
                                                  (False, True, {True}), (True, True, {True})])  # fmt: skip
def test_prune_keeps_tma_configs_only_when_asked(env, only, expected, monkeypatch):
    """The forward's list always holds the TMA configs; by default the prune drops every one of them (the GPU's
    behaviour without TRITONGPT_ATTENTION_TMA=1 is the pointer loads alone), the env switch adds them to the
    tuning, `_KV_TMA_ONLY` keeps nothing else. The backward never takes them, nor do unaligned K/V."""
    monkeypatch.setattr(attn_mod, "_KV_TMA", env)
    monkeypatch.setattr(attn_mod, "_KV_TMA_ONLY", only)
    assert {c.kwargs["KV_TMA"] for c in attn_mod._FWD_CONFIGS} == {False, True}
    meta = {"BLOCK_D": 64, "DROPOUT": False}
    q, k, v = qkv(1, 2, 64, 64, 64, torch.float16, device="cpu")
    kept = attn_mod._pruner("fwd")(attn_mod._FWD_CONFIGS, {"Q": q, "K": k, "V": v}, **meta)
    assert kept and {c.kwargs["KV_TMA"] for c in kept} == expected
    q, k, v = qkv(1, 2, 64, 64, 17, torch.float16, device="cpu")  # 34-byte rows: no descriptors
    kept = attn_mod._pruner("fwd")(attn_mod._FWD_CONFIGS, {"Q": q, "K": k, "V": v}, **{**meta, "BLOCK_D": 32})
    assert kept and {c.kwargs["KV_TMA"] for c in kept} == {False}
    kept = attn_mod._pruner("dkdv")(attn_mod._DKDV_CONFIGS, {"Q": q, "K": k, "V": v}, **meta)
    assert kept and all("KV_TMA" not in c.kwargs for c in kept)


# Tk - Tq: the split points of the causal loops depend on it modulo the block sizes; these residues hit every
# off-by-one in the loop bounds (a row seeing exactly the last key of a block, or the first of the next).
DIAGS = [-18, -1, 0, 1, 14, 17, 30, 33]


@pytest.mark.parametrize("blocks", [(16, 32), (32, 16)], ids=["16x32", "32x16"])
@pytest.mark.parametrize("diag", DIAGS)
def test_unequal_blocks_cover_every_diagonal_split(blocks, diag, monkeypatch, poison_outputs):
    """Small, unequal blocks: several diagonal blocks per row/column block, full blocks on both sides."""
    if ON_GPU:
        pytest.skip("the interpreter's fixed block config; the GPU autotunes over unequal blocks itself")
    monkeypatch.setitem(attn_mod._INTERPRETER_BLOCKS, "BLOCK_M", blocks[0])
    monkeypatch.setitem(attn_mod._INTERPRETER_BLOCKS, "BLOCK_N", blocks[1])
    tq = 37
    q, k, v = qkv(1, 1, tq, tq + diag, 16)
    check(q, k, v, causal=True, first_row=max(-diag, 0))  # Tq > Tk: see test_rows_without_keys_are_zero


def test_model_layout_non_contiguous_views(poison_outputs):
    """q, k, v as the model makes them: (B, T, 3, nh, hs) split and transposed to (B, nh, T, hs)."""
    x = torch.randn(2, 33, 3, 2, 64, device=DEVICE)
    q, k, v = (t.transpose(1, 2) for t in x.unbind(2))
    assert not q.is_contiguous() and q.stride(-1) == 1
    check(q, k, v, causal=True)


def test_strided_last_dim_is_copied_and_correct(poison_outputs):
    q, k, v = qkv(1, 2, 19, 19, 32)
    q_t = q.transpose(-1, -2).contiguous().transpose(-1, -2)  # same values, last stride != 1
    assert q_t.stride(-1) != 1
    check(q_t, k, v, causal=True)


def test_no_copy_of_unit_stride_inputs():
    x = torch.randn(2, 9, 3, 2, 16, device=DEVICE)
    q = x.unbind(2)[0].transpose(1, 2)
    assert attn_mod._unit_last_stride(q) is q


def test_non_contiguous_upstream_gradient():
    q, k, v = (t.requires_grad_() for t in qkv(1, 2, 21, 21, 32))
    g = torch.randn(1, 21, 2, 32, device=DEVICE).transpose(1, 2)  # (B, H, T, D) view of (B, T, H, D)
    grads = torch.autograd.grad(attention(q, k, v), (q, k, v), g)
    ref = torch.autograd.grad(reference.attention(q, k, v), (q, k, v), g.contiguous())
    for a, r in zip(grads, ref, strict=True):
        torch.testing.assert_close(a, r, rtol=1e-4, atol=1e-5)


def test_rows_without_keys_are_zero():
    """Causal with Tq > Tk: the first Tq - Tk queries see no key; they output 0 and pass no gradient."""
    tq, tk = 40, 25
    q, k, v = (t.requires_grad_() for t in qkv(1, 2, tq, tk, 32))
    out = attention(q, k, v, causal=True)
    g = torch.randn_like(out)
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), g)
    assert torch.equal(out[:, :, : tq - tk], torch.zeros_like(out[:, :, : tq - tk]))
    assert torch.equal(dq[:, :, : tq - tk], torch.zeros_like(dq[:, :, : tq - tk]))
    tail = q[:, :, tq - tk :]  # the rest is plain causal attention with Tq == Tk
    ref = reference.attention(tail, k, v, causal=True)
    rdq, rdk, rdv = torch.autograd.grad(ref, (q, k, v), g[:, :, tq - tk :])
    torch.testing.assert_close(out[:, :, tq - tk :], ref, rtol=1e-5, atol=1e-6)
    for a, r in ((dq, rdq), (dk, rdk), (dv, rdv)):
        torch.testing.assert_close(a, r, rtol=1e-4, atol=1e-6)


def test_backward_twice_is_bit_identical():
    q, k, v = (t.requires_grad_() for t in qkv(1, 2, 97, 97, 64))
    g = torch.randn(1, 2, 97, 64, device=DEVICE)
    first = torch.autograd.grad(attention(q, k, v), (q, k, v), g)
    second = torch.autograd.grad(attention(q, k, v), (q, k, v), g)
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)


def test_no_grad_and_inputs_without_grad():
    q, k, v = qkv(1, 1, 9, 9, 16)
    with torch.no_grad():
        out = attention(q, k, v)
    assert not out.requires_grad
    torch.testing.assert_close(out, reference.attention(q, k, v), rtol=1e-5, atol=1e-6)


# --- dropout ---------------------------------------------------------------------------------------------


def run_with_seed(seed, q, k, v, **kw):
    """Forward and dq, dk, dv with torch's generator at `seed` (the kernel's Philox seed is drawn from it)."""
    q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
    torch.manual_seed(seed)
    out = attention(q, k, v, **kw)
    g = torch.ones_like(out) + 0.1 * torch.arange(out.shape[-1], device=out.device, dtype=out.dtype)
    return (out.detach(), *torch.autograd.grad(out, (q, k, v), g))


def kernel_mask(seed, b, h, tq, tk, p):
    """The keep-mask the kernel draws after torch.manual_seed(seed)."""
    return attn_mod.dropout_keep_mask(seed, b, h, tq, tk, p, DEVICE)


def test_dropout_p0_is_the_no_dropout_path_bitwise():
    q, k, v = qkv(1, 2, 37, 37, 32)
    plain = run_with_seed(0, q, k, v, causal=True)
    zero = run_with_seed(1, q, k, v, causal=True, dropout_p=0.0)
    for a, b in zip(plain, zero, strict=True):
        assert torch.equal(a, b)


def test_dropout_same_seed_same_output_and_grads():
    q, k, v = qkv(1, 2, 37, 37, 32)
    first = run_with_seed(7, q, k, v, causal=True, dropout_p=0.3)
    again = run_with_seed(7, q, k, v, causal=True, dropout_p=0.3)
    other = run_with_seed(8, q, k, v, causal=True, dropout_p=0.3)
    for a, b in zip(first, again, strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(first[0], other[0])


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_dropout_mask_read_back_from_the_kernel(p):
    """q = 0 makes every probability 1/Tk; v = identity (Tk = D) then makes out[i, j] = keep[i, j] / (Tk (1 - p)):
    the kernel's own mask. It must be the mask `attention_dropout_mask` reports, keep about 1 - p, and differ
    between heads and batches."""
    b, h, t = 2, 2, 64
    q = torch.zeros(b, h, t, t, device=DEVICE)
    v = torch.eye(t, device=DEVICE).expand(b, h, t, t)
    torch.manual_seed(3)
    out = attention(q, q, v, causal=False, dropout_p=p)
    kept = out * t * (1 - p)
    assert torch.allclose(kept, kept.round(), atol=1e-4)
    mask = kernel_mask(3, b, h, t, t, p)
    assert torch.equal(kept.round().bool(), mask)
    n = mask.numel()
    sigma = math.sqrt(p * (1 - p) / n)
    assert abs(mask.float().mean().item() - (1 - p)) < 5 * sigma
    assert not torch.equal(mask[0, 0], mask[0, 1]) and not torch.equal(mask[0, 0], mask[1, 0])


@pytest.mark.parametrize("tq,tk", [(37, 37), (21, 50)])
def test_dropout_matches_reference_with_the_kernels_mask(tq, tk, monkeypatch):
    """Forward and all gradients against the reference whose dropout applies the kernel's own mask."""
    p, seed = 0.25, 11
    mask = kernel_mask(seed, 1, 2, tq, tk, p)
    monkeypatch.setattr(torch.nn.functional, "dropout", lambda att, p, training: att * mask.to(att.dtype) / (1 - p))

    def kernel(q, k, v):
        torch.manual_seed(seed)
        return attention(q, k, v, causal=True, dropout_p=p)

    assert_matches_reference(
        kernel,
        lambda q, k, v: reference.attention(q, k, v, causal=True, dropout_p=p),
        dict(zip("qkv", qkv(1, 2, tq, tk, 32), strict=True)),
        ("q", "k", "v"),
    )


# --- special values, empty input, bad input ---------------------------------------------------------------


def test_empty_batch_or_heads():
    for shape in ((0, 2, 5, 16), (2, 0, 5, 16), (1, 1, 0, 16)):
        q, k, v = (torch.randn(shape, device=DEVICE).requires_grad_() for _ in range(3))
        out = attention(q, k, v)
        assert out.shape == shape
        out.sum().backward()
        assert q.grad.shape == k.grad.shape == v.grad.shape == shape


def test_nan_and_inf_propagate_like_the_reference():
    q, k, v = qkv(1, 2, 33, 33, 16)
    q[0, 0, 5, 3] = float("nan")
    k[0, 1, 7, 2] = float("inf")
    out = attention(q, k, v, causal=True)
    ref = reference.attention(q.double(), k.double(), v.double(), causal=True)
    c = compare("out", out, reference.attention(q, k, v, causal=True), ref, 2.0)
    assert c.ok, c
    assert torch.isnan(out[0, 0, 5]).all() and torch.isfinite(out[0, 0, :5]).all()


def test_nan_in_v_stays_where_the_reference_has_it():
    q, k, v = qkv(1, 1, 33, 33, 16)
    v[0, 0, 20, 0] = float("nan")
    out = attention(q, k, v, causal=True)
    ref = reference.attention(q, k, v, causal=True)
    assert torch.isnan(out[0, 0, 20:, 0]).all()  # rows i >= 20 see key 20
    assert torch.isfinite(out[torch.isfinite(ref)]).all()


def test_fp32_dot_precision_follows_torch():
    assert attn_mod._input_precision(torch.float32) == "ieee"
    old = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("high")
        assert attn_mod._input_precision(torch.float32) == "tf32"
    finally:
        torch.set_float32_matmul_precision(old)


def t(*shape, dtype=torch.float32, device=DEVICE):
    return torch.randn(*shape, device=device).to(dtype)


@pytest.mark.parametrize(
    "args,kwargs,error,match",
    [
        ((t(2, 5, 16), t(2, 5, 16), t(2, 5, 16)), {}, ValueError, "q must be 4-D"),
        ((t(1, 2, 5, 16), t(1, 3, 5, 16), t(1, 3, 5, 16)), {}, ValueError, "agree in B, H and D"),
        ((t(1, 2, 5, 16), t(1, 2, 5, 32), t(1, 2, 5, 32)), {}, ValueError, "agree in B, H and D"),
        ((t(1, 2, 5, 16), t(1, 2, 5, 16), t(1, 2, 6, 16)), {}, ValueError, "k and v must have the same shape"),
        ((t(1, 2, 5, 8), t(1, 2, 5, 8), t(1, 2, 5, 8)), {}, ValueError, "head dim 8"),
        ((t(1, 1, 5, 256), t(1, 1, 5, 256), t(1, 1, 5, 256)), {}, ValueError, "head dim 256"),
        ((t(1, 2, 5, 16), t(1, 2, 5, 16, dtype=torch.float16), t(1, 2, 5, 16)), {}, TypeError, "share a dtype"),
        ((t(1, 2, 5, 16, dtype=torch.float64),) * 3, {}, TypeError, "float64"),
        ((torch.ones(1, 2, 5, 16, dtype=torch.int32),) * 3, {}, TypeError, "int32"),
        (("q", t(1, 2, 5, 16), t(1, 2, 5, 16)), {}, TypeError, "q must be a torch.Tensor"),
        ((t(1, 2, 5, 16),) * 3, {"dropout_p": 1.0}, ValueError, "dropout_p"),
        ((t(1, 2, 5, 16),) * 3, {"dropout_p": -0.1}, ValueError, "dropout_p"),
        ((t(1, 2, 5, 16), t(1, 2, 5, 16, device="meta"), t(1, 2, 5, 16)), {}, ValueError, "different devices"),
        ((t(1, 2, 5, 16),) * 3, {"scale": float("nan")}, ValueError, "scale must be a finite number, got nan"),
        ((t(1, 2, 5, 16),) * 3, {"scale": float("inf")}, ValueError, "scale must be a finite number, got inf"),
        ((t(1, 2, 5, 16),) * 3, {"scale": -float("inf")}, ValueError, "scale must be a finite number, got -inf"),
        ((t(1, 2, 5, 16),) * 3, {"scale": "0.1"}, TypeError, "scale must be a float or None, got str"),
        ((t(1, 2, 5, 16),) * 3, {"dropout_p": float("nan")}, ValueError, "dropout_p"),
    ],
    ids=[
        "3d", "heads", "headdim-mismatch", "kv-shape", "d8", "d256", "mixed-dtype", "fp64", "int",
        "not-tensor", "p1", "p-negative", "mixed-devices", "scale-nan", "scale-inf", "scale-neg-inf", "scale-str",
        "p-nan",
    ],
)  # fmt: skip
def test_bad_input_raises_naming_the_problem(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        attention(*args, **kwargs)


@pytest.mark.parametrize("scale", [-0.3, 0.0, 0.5], ids=["negative", "zero", "large"])
def test_any_finite_scale_matches_reference(scale, poison_outputs):
    """The kernels take the row max before scaling, which needs scale >= 0: a negative scale runs as
    attention(-q, k, v, -scale); scale 0 gives uniform attention over the visible keys. (0.5 is 2.8x the default
    1/sqrt(32); far larger scaled scores exceed the rule in the backward, see the module's Limits.)"""
    check(*qkv(1, 2, 37, 37, 32), causal=True, scale=scale)


def test_registered_op_passes_opcheck():
    """Schema, fake (meta) implementation and the autograd registered on the forward op, as torch.library
    checks them."""
    q, k, v = (x.requires_grad_() for x in qkv(1, 2, 9, 9, 16))
    tests = ("test_schema", "test_autograd_registration", "test_faketensor")
    for deterministic in (True, False):
        args = (q, k, v, True, 0.0, 0.25, None, deterministic)
        torch.library.opcheck(torch.ops.tritongpt.attention_fwd, args, test_utils=tests)


def test_cpu_tensors_without_the_interpreter_are_refused(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    q = torch.randn(1, 1, 4, 16)
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        attention(q, q, q)


# --- torch.compile ------------------------------------------------------------------------------------------


def model_attention(x, dropout_p=0.0):
    q, k, v = (t.transpose(1, 2) for t in x.unbind(2))  # (B, T, 3, nh, hs) -> 3 x (B, nh, T, hs)
    return attention(q, k, v, causal=True, dropout_p=dropout_p).transpose(1, 2)


def test_no_graph_break_with_or_without_dropout():
    x = torch.randn(1, 9, 3, 2, 16, device=DEVICE)
    for p in (0.0, 0.2):
        explained = torch._dynamo.explain(model_attention)(x, p)
        assert explained.graph_break_count == 0 and explained.graph_count == 1, explained.break_reasons


def test_compiled_matches_eager():
    """fullgraph compile through AOTAutograd: the op and its backward run inside the compiled graph (on a GPU
    Inductor compiles the Triton kernels themselves: test_gpu_inductor_compile_matches_eager)."""
    torch._dynamo.reset()
    x = torch.randn(2, 21, 3, 2, 16, device=DEVICE)
    xe, xc = x.clone().requires_grad_(), x.clone().requires_grad_()
    eager = model_attention(xe)
    compiled = torch.compile(model_attention, fullgraph=True, backend="aot_eager")(xc)
    assert torch.equal(eager, compiled)
    eager.square().sum().backward()
    compiled.square().sum().backward()
    assert torch.equal(xe.grad, xc.grad)


# --- GPU only ------------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize(
    "shape", [(2, 3, 1025, 1025, 64, True), (1, 2, 257, 1023, 80, True), (2, 2, 97, 97, 128, False)]
)
def test_gpu_matches_reference(shape, dtype, poison_outputs):
    b, h, tq, tk, d, causal = shape
    check(*qkv(b, h, tq, tk, d, dtype), causal)


@pytest.mark.gpu
def test_gpu_inductor_compile_matches_eager():
    torch._dynamo.reset()
    x = torch.randn(2, 128, 3, 4, 64, device="cuda", dtype=torch.bfloat16)
    xe, xc = x.clone().requires_grad_(), x.clone().requires_grad_()
    eager = model_attention(xe)
    compiled = torch.compile(model_attention, fullgraph=True)(xc)
    torch.testing.assert_close(compiled, eager)
    eager.float().square().sum().backward()
    compiled.float().square().sum().backward()
    torch.testing.assert_close(xc.grad, xe.grad)


class _Recorder:
    def __init__(self, kernel, log):
        self.kernel, self.log = kernel, log

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.log.append(kwargs)


def _fake_autotuned(configs, prune=None):
    """A stand-in for an autotuned kernel: what `_launch` reads of triton.autotune's object."""
    import types

    return types.SimpleNamespace(
        fn=types.SimpleNamespace(__name__="_k"), configs=configs, best_config=None, keys=attn_mod._KEY,
        arg_names=["Q", "K", "V"], early_config_prune=prune or (lambda configs, named_args, **meta: configs),
    )  # fmt: skip


def test_capture_reuses_the_config_tuned_for_the_same_sequence_bucket(monkeypatch):
    """The config remembered for CUDA-graph capture is keyed by the whole autotune key, T_BUCKET included: a
    capture at T = 3000 must not reuse what was tuned at T = 100. Host logic only: the kernel is faked."""
    launched = []
    kernel = _fake_autotuned(["cfg-first"])
    monkeypatch.setattr(attn_mod, "_INTERPRET", False)
    monkeypatch.setattr(attn_mod, "_attn_fwd", kernel)
    monkeypatch.setattr(attn_mod, "launcher", lambda k: _Recorder(k, launched))
    monkeypatch.setattr(attn_mod, "_CHOSEN", {})
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    for t, cfg in ((100, "cfg-small"), (3000, "cfg-large")):
        kernel.best_config = cfg
        attn_mod.attention_fwd(*qkv(1, 1, t, t, 16, device="cpu"), True, 0.0, 0.25, None, True)
    assert len(launched) == 2
    assert sorted(attn_mod._CHOSEN.values()) == ["cfg-large", "cfg-small"]


@pytest.mark.parametrize("capturing, autotune", [(True, True), (False, False)], ids=["capture", "autotune-off"])
def test_capture_of_an_untuned_key_takes_the_first_config_the_prune_keeps(monkeypatch, capturing, autotune):
    """Never benchmark inside a capture, nor with TRITONGPT_ATTENTION_AUTOTUNE=0: an untuned key launches the
    plain kernel with the first config that survives pruning (the first listed may not fit this launch)."""
    import triton

    launched = []
    configs = [triton.Config({"BLOCK_M": 128, "BLOCK_N": 128}, num_warps=8, num_stages=3),
               triton.Config({"BLOCK_M": 64, "BLOCK_N": 64}, num_warps=4, num_stages=2)]  # fmt: skip
    kernel = _fake_autotuned(configs, prune=lambda configs, named_args, **meta: configs[1:])
    monkeypatch.setattr(attn_mod, "_INTERPRET", False)
    monkeypatch.setattr(attn_mod, "_attn_fwd", kernel)
    monkeypatch.setattr(attn_mod, "launcher", lambda k: _Recorder(k, launched))
    monkeypatch.setattr(attn_mod, "_CHOSEN", {})
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: capturing)
    monkeypatch.setattr(attn_mod, "_AUTOTUNE", autotune)
    attn_mod.attention_fwd(*qkv(1, 1, 40, 40, 16, device="cpu"), True, 0.0, 0.25, None, True)
    assert launched[0]["BLOCK_M"] == 64 and launched[0]["num_warps"] == 4 and launched[0]["num_stages"] == 2
    assert attn_mod._CHOSEN == {}  # nothing was tuned


@pytest.mark.gpu
@pytest.mark.parametrize("deterministic", [True, False], ids=["deterministic", "atomic-dq"])
@pytest.mark.parametrize("warm", [True, False], ids=["tuned-before", "first-call-in-capture"])
def test_gpu_cuda_graph_capture_of_forward_and_backward(warm, deterministic):
    """Forward and backward captured in one CUDA graph and replayed give the reference's results; the capture
    never benchmarks configs (a tuned key reuses its config, an unseen key takes the first that fits)."""
    d = 64 if warm else 48  # 48: a key no other test has tuned
    q, k, v = (x.requires_grad_() for x in qkv(1, 2, 300, 300, d, torch.float16))
    g = torch.randn(1, 2, 300, d, device="cuda", dtype=torch.float16)
    hi = [x.detach().float().requires_grad_() for x in (q, k, v)]
    ref = reference.attention(*hi)
    expected = (ref.detach(), *torch.autograd.grad(ref, hi, g.float()))
    attn_mod.set_deterministic(deterministic)
    try:
        if warm:  # tune every kernel of this key outside the capture
            torch.autograd.grad(attention(q, k, v), (q, k, v), g)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.stream(stream), torch.cuda.graph(graph, stream=stream):
            out = attention(q, k, v)
            grads = torch.autograd.grad(out, (q, k, v), g)
        graph.replay()
        torch.cuda.synchronize()
    finally:
        attn_mod.set_deterministic(True)
    for got, want in zip((out, *grads), expected, strict=True):
        torch.testing.assert_close(got.float(), want, rtol=2e-2, atol=2e-2)
