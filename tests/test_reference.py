"""The reference ops (tritongpt.kernels.reference) against torch's own implementations, forward and gradients."""

import pytest
import torch
import torch.nn.functional as F

from tritongpt.kernels import reference as ref

# dtype and tolerance travel together: fp64 agrees to rounding, fp32 to a few ulps of the values involved.
DTYPES = [(torch.float64, 1e-12), (torch.float32, 2e-5)]


def grads(fn, inputs, dy):
    """Output and the gradients of <fn(*inputs), dy> with respect to each input."""
    inputs = [t.detach().clone().requires_grad_(True) for t in inputs]
    out = fn(*inputs)
    gs = torch.autograd.grad(out, inputs, dy)
    return out.detach(), gs


def assert_close(a, b, tol):
    torch.testing.assert_close(a, b, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype,tol", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1, 80), (3, 97, 80), (2, 1, 768), (5, 1000)])
def test_layer_norm_matches_torch(shape, dtype, tol):
    x = torch.randn(shape, dtype=dtype) * 3 + 1
    w = torch.randn(shape[-1], dtype=dtype)
    b = torch.randn(shape[-1], dtype=dtype)
    dy = torch.randn(shape, dtype=dtype)
    out, g = grads(lambda x, w, b: ref.layer_norm(x, w, b, 1e-5), [x, w, b], dy)
    out_t, g_t = grads(lambda x, w, b: F.layer_norm(x, (shape[-1],), w, b, 1e-5), [x, w, b], dy)
    assert_close(out, out_t, tol)
    for a, e in zip(g, g_t, strict=True):
        assert_close(a, e, tol * 10)


@pytest.mark.parametrize("dtype,tol", DTYPES)
def test_add_layer_norm_is_add_then_norm(dtype, tol):
    x, r = torch.randn(2, 97, 80, dtype=dtype), torch.randn(2, 97, 80, dtype=dtype)
    w, b = torch.randn(80, dtype=dtype), torch.randn(80, dtype=dtype)
    y, s = ref.add_layer_norm(x, r, w, b, 1e-5)
    assert torch.equal(s, x + r)
    assert_close(y, F.layer_norm(x + r, (80,), w, b, 1e-5), tol)


@pytest.mark.parametrize("dtype,tol", DTYPES)
@pytest.mark.parametrize("shape", [(1,), (97,), (3, 97, 80)])
def test_gelu_matches_torch(shape, dtype, tol):
    x = torch.randn(shape, dtype=dtype) * 4
    dy = torch.randn(shape, dtype=dtype)
    out, (g,) = grads(ref.gelu, [x], dy)
    out_t, (g_t,) = grads(lambda x: F.gelu(x, approximate="tanh"), [x], dy)
    assert_close(out, out_t, tol)
    assert_close(g, g_t, tol)


def test_bias_gelu_is_gelu_of_sum():
    x, b = torch.randn(4, 7, 80, dtype=torch.float64), torch.randn(80, dtype=torch.float64)
    assert_close(ref.bias_gelu(x, b), F.gelu(x + b, approximate="tanh"), 1e-12)


@pytest.mark.parametrize("dtype,tol", DTYPES)
@pytest.mark.parametrize("B,H,T,D", [(1, 1, 1, 80), (2, 3, 97, 80), (1, 2, 17, 64)])
@pytest.mark.parametrize("causal", [True, False])
def test_attention_matches_sdpa(B, H, T, D, causal, dtype, tol):
    q, k, v = (torch.randn(B, H, T, D, dtype=dtype) for _ in range(3))
    dy = torch.randn(B, H, T, D, dtype=dtype)
    out, g = grads(lambda q, k, v: ref.attention(q, k, v, causal=causal), [q, k, v], dy)
    out_t, g_t = grads(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=causal), [q, k, v], dy)
    assert_close(out, out_t, tol)
    for a, e in zip(g, g_t, strict=True):
        assert_close(a, e, tol * 10)


def test_attention_causal_with_cached_prefix_is_bottom_right_aligned():
    """Tq < Tk: the last Tq rows of full causal attention, as a KV-cache decode step needs."""
    q, k, v = (torch.randn(2, 3, 11, 16, dtype=torch.float64) for _ in range(3))
    full = ref.attention(q, k, v, causal=True)
    tail = ref.attention(q[:, :, -4:], k, v, causal=True)
    assert_close(tail, full[:, :, -4:], 1e-12)


def test_attention_scale_and_dropout():
    q, k, v = (torch.randn(1, 2, 9, 16, dtype=torch.float64) for _ in range(3))
    assert_close(
        ref.attention(q, k, v, scale=0.5), F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=0.5), 1e-12
    )
    torch.manual_seed(0)
    a = ref.attention(q, k, v, dropout_p=0.5)
    torch.manual_seed(0)
    b = ref.attention(q, k, v, dropout_p=0.5)
    assert torch.equal(a, b)
    assert not torch.allclose(a, ref.attention(q, k, v))
