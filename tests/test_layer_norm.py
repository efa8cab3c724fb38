"""LayerNorm and add_layer_norm kernels against the reference: forward and every gradient, odd shapes,
non-contiguous inputs, bad input, NaN, empty batches, determinism, torch.compile.

On CPU these run through Triton's interpreter (conftest.py sets it), fp32 and fp16; bf16 needs a GPU.
"""

import pytest
import torch
from _tolerance import assert_compiled_matches_eager, assert_matches_reference, check_op

from tritongpt.kernels import _common, reference
from tritongpt.kernels.layer_norm import add_layer_norm, layer_norm

SHAPES = [(1, 1), (1, 1, 1023), (3, 7, 257), (4, 768), (2, 1000)]
DTYPES = [
    pytest.param(torch.float32, id="fp32"),
    pytest.param(torch.float16, id="fp16"),
    pytest.param(torch.bfloat16, id="bf16", marks=pytest.mark.gpu),
]


@pytest.fixture(autouse=True)
def _poison(poison_outputs):
    """Every kernel output in this file starts as NaN."""


def _inputs(shape, dtype, device, residual=False, bias=True):
    c = shape[-1]
    inputs = {
        "x": torch.randn(shape),
        "weight": 1 + 0.5 * torch.randn(c),
        "bias": torch.randn(c) if bias else None,
    }
    if residual:
        inputs["residual"] = torch.randn(shape)
    return {k: (v.to(device, dtype) if v is not None else None) for k, v in inputs.items()}


def _grads(inputs):
    return tuple(k for k, v in inputs.items() if isinstance(v, torch.Tensor))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_layer_norm_matches_reference(shape, dtype, device):
    inputs = _inputs(shape, dtype, device)
    assert_matches_reference(layer_norm, reference.layer_norm, inputs, _grads(inputs))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_add_layer_norm_matches_reference(shape, dtype, device):
    inputs = _inputs(shape, dtype, device, residual=True)
    comparisons = assert_matches_reference(add_layer_norm, reference.add_layer_norm, inputs, _grads(inputs))
    assert [c.name for c in comparisons] == ["out", "out1", "dx", "dweight", "dbias", "dresidual"]


@pytest.mark.parametrize("op", ["layer_norm", "add_layer_norm"])
def test_without_bias(op, device):
    inputs = _inputs((3, 7, 257), torch.float32, device, residual=op == "add_layer_norm", bias=False)
    kernel = layer_norm if op == "layer_norm" else add_layer_norm
    assert_matches_reference(kernel, getattr(reference, op), inputs, _grads(inputs))


def test_non_contiguous_inputs(device):
    """A transposed x (strided last dim: copied), a sliced residual (row stride 300: passed as a stride), a
    strided weight (copied: it is one small vector)."""
    x = torch.randn(3, 257, 7, device=device).transpose(1, 2)
    residual = torch.randn(3, 7, 300, device=device)[..., :257]
    assert x.stride(-1) != 1 and residual.stride(1) == 300
    inputs = {"x": x, "residual": residual, "weight": torch.randn(257, device=device), "bias": None}
    assert_matches_reference(add_layer_norm, reference.add_layer_norm, inputs, ("x", "residual", "weight"))
    weight = torch.randn(514, device=device)[::2]  # a strided weight
    inputs = {"x": residual, "weight": weight, "bias": torch.randn(257, device=device)}
    assert_matches_reference(layer_norm, reference.layer_norm, inputs, ("x", "weight", "bias"))


def test_sliced_rows_are_not_copied(device, monkeypatch):
    """A view with a unit last stride reaches the kernel as a row stride, never as a copy."""
    x = torch.randn(4, 300, device=device)[:, :257]
    monkeypatch.setattr(torch.Tensor, "contiguous", lambda self, *a, **k: pytest.fail("copied the input"))
    y = layer_norm(x, torch.ones(257, device=device), None)
    torch.testing.assert_close(y, reference.layer_norm(x, torch.ones(257, device=device), None))


def test_nan_propagates_like_the_reference(device):
    x = torch.randn(4, 257, device=device)
    x[1, 3] = float("nan")
    inputs = {"x": x, "weight": torch.randn(257, device=device), "bias": torch.randn(257, device=device)}
    comparisons = check_op(layer_norm, reference.layer_norm, inputs, ("x", "weight", "bias"))
    assert all(c.ok for c in comparisons), comparisons
    y = layer_norm(x, inputs["weight"], inputs["bias"])
    assert y[1].isnan().all() and y[[0, 2, 3]].isfinite().all()


@pytest.mark.parametrize("op", ["layer_norm", "add_layer_norm"])
@pytest.mark.parametrize("shape", [(1, 4), (2, 32), (3, 257)], ids=lambda s: "x".join(map(str, s)))
def test_rows_far_from_zero_mean(op, shape, device):
    """Rows at 300 +- 1 (found by `gpt verify --fuzz`): the saved fp32 mean is off by up to half an ulp of 300,
    which biases xhat; dx was ~4x the reference's error until the backward subtracted mean(xhat), as the
    reference's autograd does."""
    inputs = _inputs(shape, torch.float32, device, residual=op == "add_layer_norm")
    inputs["x"] = inputs["x"] + 300.0
    kernel = layer_norm if op == "layer_norm" else add_layer_norm
    assert_matches_reference(kernel, getattr(reference, op), inputs, _grads(inputs))


@pytest.mark.parametrize("op", ["layer_norm", "add_layer_norm"])
@pytest.mark.parametrize(
    "shape,mean,std", [((1, 31), 10.0, 1e-3), ((1, 2047), 300.0, 1.0), ((3, 581), 10.0, 1e-3), ((4, 768), 300.0, 1.0)]
)
def test_rows_whose_mean_is_far_larger_than_their_spread(op, shape, mean, std, device):
    """mean >> std (found by `gpt verify --fuzz`): the fp32 sum of the row left the mean off by about an ulp,
    an error of ulp(mean) / std in y, up to 5x the reference's; the forward now corrects the mean by mean(x -
    mean) once (the corrected two-pass), and gets constant rows exactly."""
    inputs = _inputs(shape, torch.float32, device, residual=op == "add_layer_norm")
    inputs["x"] = mean + std * inputs["x"]
    if op == "add_layer_norm":
        inputs["residual"] = std * inputs["residual"]
    kernel = layer_norm if op == "layer_norm" else add_layer_norm
    assert_matches_reference(kernel, getattr(reference, op), inputs, _grads(inputs))
    constant = torch.randn(shape[0], 1, device=device).expand(shape).contiguous()  # rows of one value each
    y = layer_norm(constant, inputs["weight"], inputs["bias"])
    torch.testing.assert_close(y, inputs["bias"].expand(shape), rtol=0, atol=0)  # was ~1e-5 off


def test_one_row_of_the_widest_kind(device):
    """A 50k-wide row at 300 +- 30 (found by `gpt verify --fuzz`): the interpreter ran the backward's triple
    reduction element by element, a sequential fp32 sum with 55x the reference's error in dx (and slow)."""
    inputs = _inputs((1, 49957), torch.float32, device, bias=False)
    inputs["x"] = 300 + 30 * inputs["x"]
    assert_matches_reference(layer_norm, reference.layer_norm, inputs, _grads(inputs))


def test_empty_batch(device):
    x = torch.randn(0, 7, 768, device=device, requires_grad=True)
    w = torch.randn(768, device=device, requires_grad=True)
    b = torch.randn(768, device=device, requires_grad=True)
    y = layer_norm(x, w, b)
    assert y.shape == (0, 7, 768)
    y.sum().backward()
    assert x.grad.shape == x.shape and (w.grad == 0).all() and (b.grad == 0).all()
    y, s = add_layer_norm(x, x, w, b)
    assert y.shape == s.shape == (0, 7, 768)


def test_no_grad_and_inputs_without_grad(device):
    x = torch.randn(5, 257, device=device)
    w, b = torch.randn(257, device=device), torch.randn(257, device=device)
    with torch.no_grad():
        y = layer_norm(x, w, b)
    assert not y.requires_grad
    torch.testing.assert_close(y, reference.layer_norm(x, w, b))
    x.requires_grad_()
    layer_norm(x, w, b).sum().backward()
    assert x.grad is not None and w.grad is None


def test_backward_is_deterministic(device):
    """64 rows over several programs: the fp32 partial rows are summed in a fixed order."""
    x = torch.randn(64, 257, device=device, requires_grad=True)
    r = torch.randn(64, 257, device=device, requires_grad=True)
    w = torch.randn(257, device=device, requires_grad=True)
    b = torch.randn(257, device=device, requires_grad=True)
    dy, ds = torch.randn(64, 257, device=device), torch.randn(64, 257, device=device)
    grads = []
    for _ in range(2):
        y, s = add_layer_norm(x, r, w, b)
        grads.append(torch.autograd.grad((y, s), (x, r, w, b), (dy, ds)))
    for g1, g2 in zip(*grads, strict=True):
        assert torch.equal(g1, g2)


def test_bad_input_is_rejected(device, monkeypatch):
    x, w, b = torch.randn(2, 8), torch.randn(8), torch.randn(8)
    with pytest.raises(TypeError, match="x has dtype torch.float64"):
        layer_norm(x.double(), w, b)
    with pytest.raises(TypeError, match="int32"):
        layer_norm(x.to(torch.int32), w, b)
    with pytest.raises(ValueError, match="different devices"):
        layer_norm(x, w.to("meta"), b)
    with pytest.raises(ValueError, match=r"weight has shape \(7,\)"):
        layer_norm(x.to(device), w[:7].to(device), b.to(device))
    with pytest.raises(ValueError, match=r"bias has shape \(9,\)"):
        layer_norm(x.to(device), w.to(device), torch.randn(9, device=device))
    with pytest.raises(ValueError, match="residual has shape"):
        add_layer_norm(x.to(device), x[:1].to(device), w.to(device), b.to(device))
    with pytest.raises(ValueError, match="width 65537"):
        layer_norm(torch.empty(1, 65537, device=device), torch.empty(65537, device=device), None)
    # Non-tensors get our TypeError naming the argument, not the op dispatcher's RuntimeError (found by the fuzzer).
    with pytest.raises(TypeError, match="layer_norm: weight must be a torch.Tensor, got list"):
        layer_norm(x, w.tolist(), b)
    with pytest.raises(TypeError, match="add_layer_norm: residual must be a torch.Tensor, got list"):
        add_layer_norm(x, x.tolist(), w, b)
    monkeypatch.setattr(_common, "interpreter_enabled", lambda: False)
    with pytest.raises(ValueError, match="CPU tensors.*TRITON_INTERPRET=1"):
        layer_norm(x, w, b)


@pytest.mark.parametrize("eps", [0.0, -1e-5, float("nan"), float("inf"), "1e-5", True])
def test_eps_must_be_positive_and_finite(eps, device):
    """eps <= 0 divides by zero on a constant row; NaN/inf make every output non-finite: refused by name."""
    x, w = torch.randn(2, 8, device=device), torch.randn(8, device=device)
    with pytest.raises(ValueError, match=r"layer_norm: eps must be a positive finite number, got"):
        layer_norm(x, w, None, eps)
    with pytest.raises(ValueError, match=r"add_layer_norm: eps must be a positive finite number, got"):
        add_layer_norm(x, x, w, None, eps)
    with pytest.raises(ValueError, match="eps must be a positive finite number"):  # the registered op too
        torch.ops.tritongpt.layer_norm(x, w, None, -1.0, None)


def _autocast_dtype(device):
    return torch.bfloat16 if device == "cuda" else torch.float16


def test_autocast_writes_the_normalised_output_in_the_autocast_dtype(device):
    """Under autocast the output (it feeds a matmul) is written in autocast's dtype straight from the fp32
    statistics: the reference's fp32 output rounded once. add_layer_norm's sum keeps the promoted dtype.
    Gradients reach the fp32 inputs in fp32."""
    dtype = _autocast_dtype(device)
    x = torch.randn(3, 7, 257, device=device, requires_grad=True)
    r = torch.randn(3, 7, 257, device=device, requires_grad=True)
    w = (1 + 0.5 * torch.randn(257, device=device)).requires_grad_()
    b = torch.randn(257, device=device, requires_grad=True)
    with torch.autocast(device, dtype=dtype):
        y = layer_norm(x, w, b)
        y2, s = add_layer_norm(x, r, w, b)
    assert y.dtype == y2.dtype == dtype and s.dtype == torch.float32
    ref = reference.layer_norm(x, w, b)
    ref2, ref_s = reference.add_layer_norm(x, r, w, b)
    torch.testing.assert_close(y, ref.to(dtype))
    torch.testing.assert_close(y2, ref2.to(dtype))
    torch.testing.assert_close(s, ref_s)
    dy = torch.randn_like(ref)
    grads = torch.autograd.grad((y, y2), (x, r, w, b), (dy.to(dtype), dy.to(dtype)))
    expected = torch.autograd.grad((ref, ref2), (x, r, w, b), (dy.to(dtype).float(), dy.to(dtype).float()))
    for got, want in zip(grads, expected, strict=True):
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_autocast_off_keeps_the_input_dtype(device):
    x = torch.randn(4, 64, device=device)
    w = torch.randn(64, device=device)
    with torch.autocast(device, dtype=_autocast_dtype(device), enabled=False):
        assert layer_norm(x, w, None).dtype == torch.float32


def test_registered_ops_pass_opcheck(device):
    """Schema, fake (meta) implementation and autograd registration, as torch.library checks them."""
    x = torch.randn(3, 5, 33, device=device, requires_grad=True)
    r = torch.randn(3, 5, 33, device=device, requires_grad=True)
    w = torch.randn(33, device=device, requires_grad=True)
    b = torch.randn(33, device=device, requires_grad=True)
    tests = ("test_schema", "test_autograd_registration", "test_faketensor")
    for out_dtype in (None, torch.float16):
        torch.library.opcheck(torch.ops.tritongpt.layer_norm, (x, w, b, 1e-5, out_dtype), test_utils=tests)
        torch.library.opcheck(torch.ops.tritongpt.add_layer_norm, (x, r, w, None, 1e-5, out_dtype), test_utils=tests)


def _compiled_matches_eager(backend, device):
    """A small graph of the ops, compiled with `backend`, against eager."""

    def block(x, residual, w, b):
        y, s = add_layer_norm(x, residual, w, b)
        return layer_norm(torch.tanh(y), w, None) + s

    args = [torch.randn(2, 3, 64, device=device), torch.randn(2, 3, 64, device=device)]
    args += [torch.randn(64, device=device), torch.randn(64, device=device)]
    dy = torch.randn(2, 3, 64, device=device)
    assert_compiled_matches_eager(block, args, dy, backend)


def test_torch_compile_traces_without_graph_break(device):
    """Dynamo and AOTAutograd through the registered ops (Inductor's C++ build is too slow for CPU CI)."""
    _compiled_matches_eager("aot_eager", device)


@pytest.mark.gpu
def test_torch_compile_inductor_matches_eager():
    _compiled_matches_eager("inductor", "cuda")
