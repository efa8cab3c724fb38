"""linear_cross_entropy (the LM head and its loss, chunked, without the logits) against the reference: loss and
the gradients of x and weight under the tolerance rule, on row counts that are not a multiple of the chunk and
vocabularies that are not a multiple of the kernel's block; ignored rows, all rows ignored, logits ~100, a
padded head; the chunk size; bad input; torch.compile; autocast.

On CPU these run through Triton's interpreter (conftest.py sets it), fp32 and fp16; bf16 needs a GPU.
"""

import math

import pytest
import torch
from _tolerance import DTYPES, GRAD_FACTOR, OUTPUT_FACTOR, assert_matches_reference, assert_rule, compare

import tritongpt.kernels.linear_cross_entropy as lce
from tritongpt import kernels
from tritongpt.kernels.linear_cross_entropy import chunk_rows, linear_cross_entropy, linear_cross_entropy_fwd

reference = kernels.implementation("reference")
native = kernels.implementation("native")

pytestmark = pytest.mark.usefixtures("poison_outputs")  # every kernel output in this file starts as NaN


@pytest.fixture
def small_blocks(monkeypatch):
    """Chunks of 4 rows and kernel blocks of 32 columns, so small shapes cross both boundaries with a tail."""
    monkeypatch.setattr(lce, "CHUNK_ROWS", 4)
    monkeypatch.setattr(lce, "BLOCK_COLS", 32)


def _inputs(n, c, v, dtype, device, n_classes=None, scale=1.0, ignore_every=0, seed=0):
    g = torch.Generator().manual_seed(seed)
    targets = torch.randint(0, n_classes or v, (n,), generator=g)
    if ignore_every:
        targets[::ignore_every] = -1
    return {
        "x": (torch.randn(n, c, generator=g) * scale).to(device, dtype),
        "weight": (torch.randn(v, c, generator=g) * scale).to(device, dtype),
        "targets": targets.to(device),
        "ignore_index": -1,
        "n_classes": n_classes,
    }


def _run(fn, inputs, upstream=1.0):
    """(loss, dx, dweight) of fn on leaf copies of the inputs."""
    x = inputs["x"].clone().requires_grad_()
    w = inputs["weight"].clone().requires_grad_()
    loss = fn(x, w, inputs["targets"], inputs["ignore_index"], inputs["n_classes"])
    (loss * upstream).backward()
    return loss.detach(), x.grad, w.grad


# (N, C, V): N = 13 rows in chunks of 4 (a tail of 1), V = 100 columns in blocks of 32 (a tail of 4); one row;
# a vocabulary narrower than one block.
SHAPES = [(13, 32, 100), (1, 16, 37), (8, 24, 20)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_matches_reference(shape, dtype, device, small_blocks):
    inputs = _inputs(*shape, dtype, device, ignore_every=5)
    comparisons = assert_matches_reference(
        linear_cross_entropy, reference.linear_cross_entropy, inputs, ("x", "weight")
    )
    assert [c.name for c in comparisons] == ["out", "dx", "dweight"]


@pytest.mark.parametrize("dtype", DTYPES)
def test_vocabulary_wider_than_the_default_block(dtype, device):
    """The default 4096-column block, V = 5000: one full block and a tail of 904, a single chunk."""
    inputs = _inputs(7, 16, 5000, dtype, device, ignore_every=3)
    assert_matches_reference(linear_cross_entropy, reference.linear_cross_entropy, inputs, ("x", "weight"))


@pytest.mark.parametrize("dtype", DTYPES)
def test_large_logits_do_not_overflow(dtype, device, small_blocks):
    """|x . w| ~ 100 (exp(100) overflows fp32, and fp16's 65504 is far below): finite, and within the rule."""
    inputs = _inputs(13, 64, 100, dtype, device, scale=3.5)
    z = inputs["x"].double() @ inputs["weight"].double().T
    assert z.abs().max() > 100
    comparisons = assert_matches_reference(
        linear_cross_entropy, reference.linear_cross_entropy, inputs, ("x", "weight")
    )
    loss, dx, dw = _run(linear_cross_entropy, inputs)
    assert all(torch.isfinite(t).all() for t in (loss, dx, dw)) and loss > 10
    assert comparisons[0].ok


@pytest.mark.parametrize("dtype", DTYPES)
def test_padded_head(dtype, device, small_blocks):
    """n_classes < V: the softmax is over the first n_classes columns only; the padding rows of the weight get
    exactly zero gradient, and the result equals the unpadded head's."""
    inputs = _inputs(13, 32, 100, dtype, device, n_classes=77, ignore_every=4)
    assert_matches_reference(linear_cross_entropy, reference.linear_cross_entropy, inputs, ("x", "weight"))
    loss, dx, dw = _run(linear_cross_entropy, inputs)
    assert torch.equal(dw[77:], torch.zeros_like(dw[77:]))
    unpadded = dict(inputs, weight=inputs["weight"][:77], n_classes=None)
    loss_u, dx_u, dw_u = _run(linear_cross_entropy, unpadded)
    torch.testing.assert_close(loss, loss_u, rtol=0, atol=0)
    torch.testing.assert_close(dx, dx_u, rtol=0, atol=0)
    torch.testing.assert_close(dw[:77], dw_u, rtol=0, atol=0)


@pytest.mark.parametrize("ignore_index", [-1, 3])
def test_ignored_rows_contribute_nothing(ignore_index, device, small_blocks):
    """The loss is the mean over the other rows, and ignored rows get zero dx; any ignore_index works."""
    inputs = _inputs(13, 32, 100, torch.float32, device, seed=1)
    t = inputs["targets"]
    t[::3] = ignore_index
    inputs["ignore_index"] = ignore_index
    assert_matches_reference(linear_cross_entropy, reference.linear_cross_entropy, inputs, ("x", "weight"))
    loss, dx, _ = _run(linear_cross_entropy, inputs)
    keep = t != ignore_index
    kept = dict(inputs, x=inputs["x"][keep], targets=t[keep])
    torch.testing.assert_close(loss, _run(linear_cross_entropy, kept)[0])
    assert torch.equal(dx[~keep], torch.zeros_like(dx[~keep]))


@pytest.mark.parametrize("dtype", DTYPES)
def test_all_rows_ignored_gives_zero_not_nan(dtype, device, small_blocks):
    inputs = _inputs(9, 16, 40, dtype, device)
    inputs["targets"].fill_(-1)
    for fn in (linear_cross_entropy, reference.linear_cross_entropy, native.linear_cross_entropy):
        loss, dx, dw = _run(fn, inputs)
        assert loss.item() == 0.0 and loss.dtype == torch.float32
        assert torch.equal(dx, torch.zeros_like(dx)) and torch.equal(dw, torch.zeros_like(dw))


def test_empty_batch(device):
    inputs = _inputs(0, 16, 40, torch.float32, device)
    loss, dx, dw = _run(linear_cross_entropy, inputs)
    assert loss.item() == 0.0 and dx.shape == (0, 16) and torch.equal(dw, torch.zeros_like(dw))


@pytest.mark.parametrize("chunk", [1, 3, 13, 1000])
def test_chunk_size_does_not_change_the_result(chunk, device, monkeypatch):
    """Any chunk size gives the one-chunk result, up to the matmuls' summation order (which BLAS picks by shape)."""
    inputs = _inputs(13, 32, 100, torch.float32, device, ignore_every=4)
    monkeypatch.setattr(lce, "CHUNK_ROWS", None)
    loss_1, dx_1, dw_1 = _run(linear_cross_entropy, inputs)
    monkeypatch.setattr(lce, "CHUNK_ROWS", chunk)
    loss, dx, dw = _run(linear_cross_entropy, inputs)
    torch.testing.assert_close(loss, loss_1, rtol=1e-6, atol=0)
    torch.testing.assert_close(dx, dx_1, rtol=0, atol=1e-6)  # a few ulps of the O(1) partial sums
    torch.testing.assert_close(dw, dw_1, rtol=0, atol=1e-6)


def test_chunk_rows_policy(monkeypatch):
    cpu = torch.device("cpu")
    # 256 MiB of bf16 logits at GPT-2's padded vocabulary: 2668 rows fit, the power of two below is 2048
    assert chunk_rows(16 * 1024, 50304, torch.bfloat16, cpu) == 2048
    assert chunk_rows(16 * 1024, 50304, torch.float32, cpu) == 1024
    assert chunk_rows(16 * 1024, 50304, torch.float16, cpu) == lce.FP16_MAX_CHUNK_ROWS == 1024
    assert chunk_rows(100, 50304, torch.bfloat16, cpu) == 100  # fits in one chunk
    assert chunk_rows(5, 10**9, torch.float32, cpu) == 1  # one row is over budget: still one row at a time
    assert chunk_rows(0, 50304, torch.float32, cpu) == 1
    monkeypatch.setattr(lce, "CHUNK_ROWS", 300)
    assert chunk_rows(16 * 1024, 50304, torch.bfloat16, cpu) == 300
    assert chunk_rows(7, 50304, torch.bfloat16, cpu) == 7
    for bad in (0, -2, 1.5, True, "64"):
        monkeypatch.setattr(lce, "CHUNK_ROWS", bad)
        with pytest.raises(ValueError, match="CHUNK_ROWS must be a positive int"):
            chunk_rows(10, 10, torch.float32, cpu)


def test_no_gradient_work_without_grad(device):
    """Under no_grad (or with inputs that need no gradient) the forward computes the loss only."""
    inputs = _inputs(13, 32, 100, torch.float32, device, ignore_every=4)
    args = (inputs["x"], inputs["weight"], inputs["targets"])
    with torch.no_grad():
        loss = linear_cross_entropy(*args)
    loss_only, dx, dw = linear_cross_entropy_fwd(*args, -1, 100, False)
    assert dx.numel() == 0 and dw.numel() == 0
    full, dx, dw = linear_cross_entropy_fwd(*args, -1, 100, True)
    assert torch.equal(loss, loss_only) and torch.equal(loss, full) and dx.shape == (13, 32)
    torch.testing.assert_close(loss, reference.linear_cross_entropy(*args))
    assert not linear_cross_entropy(*args).requires_grad


def test_leading_dimensions_are_rows(device, small_blocks):
    inputs = _inputs(12, 16, 50, torch.float32, device, ignore_every=5)
    x3, t3 = inputs["x"].view(3, 4, 16), inputs["targets"].view(3, 4)
    for fn in (linear_cross_entropy, reference.linear_cross_entropy, native.linear_cross_entropy):
        torch.testing.assert_close(fn(x3, inputs["weight"], t3), fn(inputs["x"], inputs["weight"], inputs["targets"]))


def test_strided_inputs(device, small_blocks):
    """Every stride works without a copy of x or weight: a column-strided x, a transposed-layout weight, targets
    taken every other element."""
    inputs = _inputs(13, 64, 100, torch.float32, device, ignore_every=4)
    g = torch.Generator().manual_seed(3)
    strided = dict(
        inputs,
        x=inputs["x"][:, ::2],
        weight=inputs["weight"][:, ::2].T.contiguous().T,
        targets=torch.stack([inputs["targets"], torch.randint(0, 100, (13,), generator=g).to(device)], 1)[:, 0],
    )
    assert not strided["x"].is_contiguous() and strided["weight"].stride() == (1, 100)
    assert strided["targets"].stride() == (2,)
    assert_matches_reference(linear_cross_entropy, reference.linear_cross_entropy, strided, ("x", "weight"))


def test_native_matches_reference():
    inputs = _inputs(13, 32, 100, torch.float32, "cpu", n_classes=90, ignore_every=4)
    assert_matches_reference(native.linear_cross_entropy, reference.linear_cross_entropy, inputs, ("x", "weight"))


def test_targets_out_of_range_give_nan_not_garbage(device, small_blocks):
    """The kernel cannot raise without a host sync: a target outside [0, n_classes) makes the loss and that
    row's gradients NaN, so training skips the step instead of learning from a wrong index."""
    inputs = _inputs(13, 32, 100, torch.float32, device, n_classes=90)
    for bad in (90, 99, 100, -2):
        inputs["targets"][5] = bad
        loss, dx, dw = _run(linear_cross_entropy, inputs)
        assert math.isnan(loss.item()) and dx[5].isnan().all() and dw.isnan().any()
        assert torch.isfinite(dx[torch.arange(13) != 5]).all()


def test_bad_input_is_named(device):
    x, w = torch.randn(4, 8, device=device), torch.randn(10, 8, device=device)
    t = torch.zeros(4, dtype=torch.long, device=device)
    with pytest.raises(TypeError, match="targets has dtype torch.float32"):
        linear_cross_entropy(x, w, t.float())
    with pytest.raises(TypeError, match="targets must be a torch.Tensor"):
        linear_cross_entropy(x, w, [0, 1, 2, 3])
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        linear_cross_entropy(x.tolist(), w, t)
    with pytest.raises(ValueError, match=r"targets has shape \(3,\); expected \(4,\)"):
        linear_cross_entropy(x, w, t[:3])
    with pytest.raises(ValueError, match=r"x has shape \(4, 8\) and weight \(10, 9\)"):
        linear_cross_entropy(x, torch.randn(10, 9, device=device), t)
    with pytest.raises(ValueError, match="n_classes is 11"):
        linear_cross_entropy(x, w, t, n_classes=11)
    with pytest.raises(ValueError, match="n_classes is 0"):
        linear_cross_entropy(x, w, t, n_classes=0)
    with pytest.raises(TypeError, match="x is torch.float16 and weight torch.float32"):
        linear_cross_entropy(x.half(), w, t)
    with pytest.raises(TypeError, match="x has dtype torch.int64"):
        linear_cross_entropy(t[:, None].expand(4, 8), w, t)


def test_registered_op_passes_opcheck(device):
    """Schema, fake (meta) implementation and autograd registration, as torch.library checks them."""
    inputs = _inputs(13, 32, 100, torch.float32, device, ignore_every=4)
    x, w = inputs["x"].requires_grad_(), inputs["weight"].requires_grad_()
    tests = ("test_schema", "test_autograd_registration", "test_faketensor")
    torch.library.opcheck(torch.ops.tritongpt.linear_cross_entropy, (x, w, inputs["targets"], -1, 90, True),
                          test_utils=tests)  # fmt: skip


def _compiled_matches_eager(backend, device):
    def head(x, w, t):
        return linear_cross_entropy(torch.tanh(x), w, t, n_classes=90) * 2.0

    inputs = _inputs(13, 32, 100, torch.float32, device, ignore_every=4)
    results = []
    for fn in (head, torch.compile(head, backend=backend, fullgraph=True)):
        x, w = inputs["x"].clone().requires_grad_(), inputs["weight"].clone().requires_grad_()
        loss = fn(x, w, inputs["targets"])
        results.append((loss, *torch.autograd.grad(loss, (x, w))))
    for eager, compiled in zip(*results, strict=True):
        torch.testing.assert_close(compiled, eager, rtol=1e-6, atol=1e-7)


def test_torch_compile_traces_without_graph_break(device, small_blocks):
    """Dynamo and AOTAutograd through the registered op (Inductor's C++ build is too slow for CPU CI)."""
    _compiled_matches_eager("aot_eager", device)


@pytest.mark.gpu
def test_torch_compile_inductor_matches_eager(small_blocks):
    """On a GPU the op is a triton_op: Inductor traces the host function (chunk loop, matmuls, kernel launches)."""
    _compiled_matches_eager("inductor", "cuda")


def test_autocast_runs_the_matmuls_in_the_autocast_dtype(device, small_blocks):
    """Under autocast (fp16 here, bf16 on a GPU) x is cast as nn.Linear would cast it, and the gradients come
    back in the fp32 dtypes of x and weight. Judged by the rule against the fp64 reference on the fp16-rounded
    inputs, with the reference run under the same autocast setting the budget."""
    inputs = _inputs(13, 32, 100, torch.float32, device, ignore_every=4)
    device_type = torch.device(device).type
    with torch.autocast(device_type, dtype=torch.float16):
        ours = _run(linear_cross_entropy, inputs)
        ref = _run(reference.linear_cross_entropy, inputs)
    assert all(t.dtype == torch.float32 for t in ours)
    rounded = {k: (v.half().double() if k in ("x", "weight") else v) for k, v in inputs.items()}
    hi = _run(reference.linear_cross_entropy, rounded)
    factors = (OUTPUT_FACTOR, GRAD_FACTOR, GRAD_FACTOR)
    names = ("loss", "dx", "dweight")
    assert_rule([compare(*args) for args in zip(names, ours, ref, hi, factors, strict=True)])
    loss_16 = _run(linear_cross_entropy, dict(inputs, x=inputs["x"].half(), weight=inputs["weight"].half()))[0]
    assert ours[0].item() == loss_16.item()  # the same fp16 matmuls as fp16 inputs
