"""The op seam: `kernels.implementation(name)` returns one of three modules with the same functions and
signatures, and `native` follows the reference's semantics where torch's differ."""

import inspect

import pytest
import torch
from _tolerance import assert_matches_reference

from tritongpt import kernels

reference = kernels.implementation("reference")
native = kernels.implementation("native")


def test_three_modules_one_signature_each():
    modules = {name: kernels.implementation(name) for name in kernels.IMPLEMENTATIONS}
    assert [m.__name__ for m in modules.values()] == [
        "tritongpt.kernels.reference",
        "tritongpt.kernels.native",
        "tritongpt.kernels.triton_ops",
    ]
    for op in kernels.OPS:
        signatures = {name: inspect.signature(getattr(m, op)) for name, m in modules.items()}
        params = {name: [(p.name, p.default) for p in sig.parameters.values()] for name, sig in signatures.items()}
        assert params["native"] == params["reference"] == params["triton"], op
    sig = inspect.signature(reference.attention)
    assert str(sig).startswith("(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = True")


@pytest.mark.parametrize("name", ["", "torch", "Triton", None, 3])
def test_unknown_implementation_is_named(name):
    with pytest.raises(ValueError, match="unknown implementation .*reference, native, triton"):
        kernels.implementation(name)


def test_kernels_package_does_not_shadow_its_op_modules():
    from tritongpt.kernels import attention, gelu, layer_norm, linear_cross_entropy

    for module in (attention, gelu, layer_norm, linear_cross_entropy):
        assert inspect.ismodule(module)


def _qkv(tq, tk, d=16, dtype=torch.float32):
    g = torch.Generator().manual_seed(tq * 100 + tk)
    q = torch.randn(2, 3, tq, d, generator=g, dtype=dtype)
    k, v = (torch.randn(2, 3, tk, d, generator=g, dtype=dtype) for _ in range(2))
    return {"q": q, "k": k, "v": v, "causal": True}


@pytest.mark.parametrize("tq, tk", [(1, 9), (4, 9), (9, 9), (1, 1)])
def test_native_attention_is_bottom_right_causal_like_the_reference(tq, tk):
    """Tq <= Tk: the KV-cache case (new queries after a cached prefix), where SDPA's is_causal would be wrong."""
    assert_matches_reference(native.attention, reference.attention, _qkv(tq, tk), ("q", "k", "v"))


def test_native_attention_rows_without_keys_are_zero():
    """Tq > Tk: the first Tq - Tk rows see no key; like our kernel, native gives 0 there (the reference NaN)
    and the rows that see keys match the reference, gradients included."""
    x = _qkv(7, 3)
    q, k, v = (x[n].clone().requires_grad_() for n in "qkv")
    out = native.attention(q, k, v)
    assert torch.equal(out[:, :, :4], torch.zeros_like(out[:, :, :4]))
    ref = reference.attention(q, k, v)
    assert ref[:, :, :4].isnan().all()
    torch.testing.assert_close(out[:, :, 4:], ref[:, :, 4:])
    out.sum().backward()
    assert torch.isfinite(q.grad).all() and torch.equal(q.grad[:, :, :4], torch.zeros_like(q.grad[:, :, :4]))


def test_native_attention_dropout_statistics():
    """Dropout on the probabilities: E[output] is unchanged, and about p of the weights are dropped."""
    torch.manual_seed(0)
    p = 0.25
    tk = 64
    q = torch.zeros(1, 1, 4096, 16)  # uniform attention over the visible keys
    k = torch.randn(1, 1, tk, 16)
    v = torch.ones(1, 1, tk, 16)  # each output = (sum of kept weights) / (1 - p)
    out = native.attention(q, k, v, causal=False, dropout_p=p)
    kept_mass = out[0, 0, :, 0]  # per row: (1 / tk) * (#kept) / (1 - p)
    assert kept_mass.mean().item() == pytest.approx(1.0, abs=0.01)
    kept_fraction = (kept_mass * (1 - p)).mean().item()
    assert kept_fraction == pytest.approx(1 - p, abs=0.01)
    exact = native.attention(q, k, v, causal=False, dropout_p=0.0)
    torch.testing.assert_close(exact, torch.ones_like(exact))


@pytest.mark.parametrize("op", ["layer_norm", "add_layer_norm", "gelu", "bias_gelu"])
def test_native_rowwise_ops_match_the_reference(op):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 7, 257, generator=g)
    inputs = {"x": x}
    if op in ("layer_norm", "add_layer_norm"):
        inputs |= {"weight": 1 + 0.5 * torch.randn(257, generator=g), "bias": torch.randn(257, generator=g)}
        if op == "add_layer_norm":
            inputs = {
                "x": x,
                "residual": torch.randn(3, 7, 257, generator=g),
                **{k: inputs[k] for k in ("weight", "bias")},
            }
    elif op == "bias_gelu":
        inputs["bias"] = torch.randn(257, generator=g)
    assert_matches_reference(getattr(native, op), getattr(reference, op), inputs, tuple(inputs))
