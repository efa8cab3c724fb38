"""GELU and bias_gelu kernels against the reference: forward and every gradient, odd shapes, extreme values,
non-contiguous inputs, bad input, empty batches, determinism, torch.compile.

On CPU these run through Triton's interpreter (conftest.py sets it), fp32 and fp16; bf16 needs a GPU.
"""

import pytest
import torch
from _tolerance import assert_compiled_matches_eager, assert_matches_reference, check_op

from tritongpt.kernels import _common, reference
from tritongpt.kernels.gelu import bias_gelu, gelu

SHAPES = [(1, 1), (1, 1, 1023), (3, 7, 257), (4, 768), (2, 1000), (2, 3000)]
DTYPES = [
    pytest.param(torch.float32, id="fp32"),
    pytest.param(torch.float16, id="fp16"),
    pytest.param(torch.bfloat16, id="bf16", marks=pytest.mark.gpu),
]


@pytest.fixture(autouse=True)
def _poison(poison_outputs):
    """Every kernel output in this file starts as NaN."""


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_gelu_matches_reference(shape, dtype, device):
    inputs = {"x": (3 * torch.randn(shape)).to(device, dtype)}
    assert_matches_reference(gelu, reference.gelu, inputs, ("x",))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_bias_gelu_matches_reference(shape, dtype, device):
    inputs = {"x": (3 * torch.randn(shape)).to(device, dtype), "bias": torch.randn(shape[-1]).to(device, dtype)}
    comparisons = assert_matches_reference(bias_gelu, reference.bias_gelu, inputs, ("x", "bias"))
    assert [c.name for c in comparisons] == ["out", "dx", "dbias"]


def test_scalar_and_1d(device):
    assert_matches_reference(gelu, reference.gelu, {"x": torch.tensor(0.7, device=device)}, ("x",))
    assert_matches_reference(gelu, reference.gelu, {"x": torch.randn(1025, device=device)}, ("x",))


@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning", "ignore:invalid value:RuntimeWarning")
def test_extreme_values(device):
    """Large |x| saturates without NaN (tanh is built from exp(-2|u|), which cannot overflow); gradients stay
    finite where the fp64 reference is; NaN and inf propagate as in the reference."""
    big = torch.tensor([-1e30, -1e4, -100.0, -12.0, -1e-8, 0.0, 1e-8, 12.0, 100.0, 1e4, 1e30], device=device)
    comparisons = check_op(gelu, reference.gelu, {"x": big}, ("x",))
    assert all(c.ok for c in comparisons), comparisons
    x = big.clone().requires_grad_()
    gelu(x).backward(torch.ones_like(x))
    assert x.grad.isfinite().all()
    special = torch.tensor([float("nan"), float("inf"), float("-inf"), 1.0], device=device)
    torch.testing.assert_close(gelu(special), reference.gelu(special), equal_nan=True)


def test_non_contiguous_inputs(device):
    x = (3 * torch.randn(3, 257, 7, device=device)).transpose(1, 2)  # strided last dim: copied
    sliced = (3 * torch.randn(3, 7, 300, device=device))[..., :257]  # row stride 300: passed as a stride
    bias = torch.randn(514, device=device)[::2]  # a strided bias
    for t in (x, sliced):
        assert_matches_reference(bias_gelu, reference.bias_gelu, {"x": t, "bias": bias}, ("x", "bias"))
        assert_matches_reference(gelu, reference.gelu, {"x": t}, ("x",))


def test_empty_batch(device):
    x = torch.randn(0, 5, 64, device=device, requires_grad=True)
    bias = torch.randn(64, device=device, requires_grad=True)
    y = bias_gelu(x, bias)
    assert y.shape == x.shape
    y.sum().backward()
    assert x.grad.shape == x.shape and (bias.grad == 0).all()
    assert gelu(torch.empty(0, device=device)).shape == (0,)


def test_backward_is_deterministic(device):
    x = torch.randn(64, 257, device=device, requires_grad=True)
    bias = torch.randn(257, device=device, requires_grad=True)
    dy = torch.randn(64, 257, device=device)
    g1 = torch.autograd.grad(bias_gelu(x, bias), (x, bias), dy)
    g2 = torch.autograd.grad(bias_gelu(x, bias), (x, bias), dy)
    assert all(torch.equal(a, b) for a, b in zip(g1, g2, strict=True))


def test_bad_input_is_rejected(device, monkeypatch):
    x, bias = torch.randn(2, 8), torch.randn(8)
    with pytest.raises(TypeError, match="x has dtype torch.float64"):
        gelu(x.double())
    with pytest.raises(TypeError, match="int64"):
        bias_gelu(x, bias.long())
    with pytest.raises(ValueError, match="different devices"):
        bias_gelu(x, bias.to("meta"))
    with pytest.raises(ValueError, match=r"bias has shape \(7,\)"):
        bias_gelu(x.to(device), bias[:7].to(device))
    # Non-tensors get our TypeError naming the argument, not the op dispatcher's RuntimeError (found by the fuzzer).
    with pytest.raises(TypeError, match="bias_gelu: bias must be a torch.Tensor, got list"):
        bias_gelu(x, bias.tolist())
    with pytest.raises(TypeError, match="gelu: x must be a torch.Tensor, got float"):
        gelu(1.0)
    monkeypatch.setattr(_common, "interpreter_enabled", lambda: False)
    with pytest.raises(ValueError, match="CPU tensors.*TRITON_INTERPRET=1"):
        gelu(x)


def test_registered_ops_pass_opcheck(device):
    x = torch.randn(3, 5, 33, device=device, requires_grad=True)
    bias = torch.randn(33, device=device, requires_grad=True)
    tests = ("test_schema", "test_autograd_registration", "test_faketensor")
    torch.library.opcheck(torch.ops.tritongpt.gelu, (x,), test_utils=tests)
    torch.library.opcheck(torch.ops.tritongpt.bias_gelu, (x, bias), test_utils=tests)


def _compiled_matches_eager(backend, device):
    """A small graph of the ops, compiled with `backend`, against eager."""

    def mlp(h, bias):
        return gelu(bias_gelu(h, bias) * 0.5)

    args = [torch.randn(2, 3, 64, device=device), torch.randn(64, device=device)]
    dy = torch.randn(2, 3, 64, device=device)
    assert_compiled_matches_eager(mlp, args, dy, backend)


def test_torch_compile_traces_without_graph_break(device):
    """Dynamo and AOTAutograd through the registered ops (Inductor's C++ build is too slow for CPU CI)."""
    _compiled_matches_eager("aot_eager", device)


@pytest.mark.gpu
def test_torch_compile_inductor_matches_eager():
    _compiled_matches_eager("inductor", "cuda")
