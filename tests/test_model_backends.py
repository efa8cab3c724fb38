"""The GPT on each backend against the reference backend, from the same weights: logits, loss and
every gradient under the project's tolerance rule, and 30-step training runs whose loss curves must agree.
On CPU the Triton kernels run in Triton's interpreter."""

import copy

import pytest
import torch
from _tolerance import GRAD_FACTOR, OUTPUT_FACTOR, assert_rule, compare

from tritongpt.config import GPTConfig
from tritongpt.model import GPT

ON_GPU = torch.cuda.is_available()
DEVICE = "cuda" if ON_GPU else "cpu"


def tiny(**kw) -> GPTConfig:
    base = dict(vocab_size=37, context_length=24, emb_dim=32, n_heads=2, n_layers=2, backend="reference")
    return GPTConfig(**{**base, **kw})


def twin_models(backend: str = "triton", **kw) -> tuple[GPT, GPT]:
    ref = GPT(tiny(**kw)).to(DEVICE)
    other = copy.deepcopy(ref)
    other.set_backend(backend)
    return ref, other


def forward_backward(model: GPT, idx, tgt):
    """(logits, loss, gradients): loss and gradients of a training step, logits of an evaluation pass (training
    on the triton backend takes the loss from the fused head, without logits)."""
    logits, loss = model(idx, tgt)
    assert (logits is None) == (model.config.backend == "triton")
    loss.backward()
    grads = {name: p.grad for name, p in model.named_parameters()}
    with torch.no_grad():
        logits = model.eval()(idx)[0]
    model.train()
    return logits, loss.detach(), grads


PADDED = dict(vocab_size=48, real_vocab_size=37)  # 11 padding rows in the embedding and the head


@pytest.mark.parametrize("backend", ["native", "triton"])
@pytest.mark.parametrize("norm, vocab", [("pre", {}), ("post", PADDED)], ids=["pre", "post-padded"])
def test_logits_loss_and_every_gradient_follow_the_rule(backend, norm, vocab):
    """Each backend's logits, loss and gradients against the reference computed in fp64: error at most 2x (3x for
    gradients) the fp32 reference's own error, plus the floor. A padded vocabulary's padding rows get no
    gradient (never looked up, outside the loss's softmax)."""
    ref, other = twin_models(backend, norm_placement=norm, drop_rate=0.0, **vocab)
    hi = copy.deepcopy(ref).double()
    idx = torch.randint(0, 37, (2, 19), device=DEVICE)
    tgt = torch.randint(0, 37, (2, 19), device=DEVICE)
    logits_r, loss_r, grads_r = forward_backward(ref, idx, tgt)
    logits_o, loss_o, grads_o = forward_backward(other, idx, tgt)
    logits_h, loss_h, grads_h = forward_backward(hi, idx, tgt)
    comparisons = [
        compare("logits", logits_o, logits_r, logits_h, OUTPUT_FACTOR),
        compare("loss", loss_o, loss_r, loss_h, OUTPUT_FACTOR),
    ]
    comparisons += [compare(f"d{n}", grads_o[n], grads_r[n], grads_h[n], GRAD_FACTOR) for n in grads_r]
    assert len(comparisons) == 2 + len(list(ref.parameters()))
    assert_rule(comparisons)
    assert logits_o.shape == (2, 19, 37)
    padding = grads_o["transformer.wte.weight"][37:]  # the tied head's padding rows
    assert torch.equal(padding, torch.zeros_like(padding))


@pytest.mark.parametrize("norm", ["pre", "post"])
def test_autocast_layer_norm_feeds_matmuls_narrow_and_keeps_the_residual_stream(norm):
    """Under autocast the Triton LayerNorm writes the autocast dtype where its output feeds a matmul (pre-norm:
    the attention and MLP inputs) but the residual stream, which a post-norm LayerNorm produces, stays fp32 as
    on the reference backend; the loss agrees with the reference's under the same autocast."""
    dtype = torch.bfloat16 if ON_GPU else torch.float16
    ref, tri = twin_models("triton", norm_placement=norm, drop_rate=0.0)
    seen = {}
    tri.transformer.h[1].attn.register_forward_pre_hook(lambda m, args: seen.update(attn_in=args[0].dtype))
    tri.transformer.h[0].register_forward_hook(lambda m, args, out: seen.update(block_out=out.dtype))
    idx = torch.randint(0, 37, (2, 19), device=DEVICE)
    with torch.autocast(DEVICE, dtype=dtype):
        _, loss_r = ref(idx, idx)
        _, loss_t = tri(idx, idx)
    assert seen["block_out"] == torch.float32
    assert seen["attn_in"] == (dtype if norm == "pre" else torch.float32)
    assert loss_t.item() == pytest.approx(loss_r.item(), rel=1e-2)


def train_curve(model: GPT, data: torch.Tensor, steps: int) -> list[float]:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    losses = []
    for step in range(steps):
        batch = data[step % len(data)]
        _, loss = model(batch[:, :-1], batch[:, 1:])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("backend", ["native", "triton"])
def test_thirty_step_training_curves_agree(backend):
    """Training with a padded vocabulary (the triton backend: the fused head) follows the reference."""
    ref, other = twin_models(backend, n_layers=1, **PADDED)
    data = torch.randint(0, 37, (3, 2, 9), device=DEVICE)
    curve_r = train_curve(ref, data, 30)
    curve_o = train_curve(other, data, 30)
    assert curve_r[-1] < curve_r[0] - 1.0  # it learned (memorised) something
    for step, (a, b) in enumerate(zip(curve_o, curve_r, strict=True)):
        assert a == pytest.approx(b, rel=2e-5), f"step {step}: {backend} {a} vs reference {b}"


@pytest.mark.gpu
@pytest.mark.skipif(not ON_GPU, reason="bf16 training on the triton backend needs a CUDA GPU")
def test_bf16_training_curves_agree_on_gpu():
    ref, tri = twin_models(emb_dim=128, n_heads=2, n_layers=4, context_length=128)
    data = torch.randint(0, 37, (5, 8, 129), device=DEVICE)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        curve_r = train_curve(ref, data, 30)
        curve_t = train_curve(tri, data, 30)
    for step, (a, b) in enumerate(zip(curve_t, curve_r, strict=True)):
        assert abs(a - b) <= 1e-2 * abs(b), f"step {step}: triton {a} vs reference {b}"


@pytest.mark.gpu
@pytest.mark.skipif(not ON_GPU, reason="torch.compile of Triton kernels needs a CUDA GPU")
def test_compiled_triton_model_matches_eager():
    _, tri = twin_models(vocab_size=64, real_vocab_size=37)
    idx = torch.randint(0, 37, (2, 19), device=DEVICE)
    compiled = torch.compile(tri, fullgraph=True)
    eager_logits, eager_loss = tri.eval()(idx, idx)
    logits, loss = compiled(idx, idx)
    torch.testing.assert_close(logits, eager_logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(loss, eager_loss, rtol=1e-5, atol=1e-5)
    tri.train()
    eager_none, eager_loss = tri(idx, idx)  # training: the fused head, no logits
    none, loss = compiled(idx, idx)
    assert eager_none is None and none is None
    torch.testing.assert_close(loss, eager_loss, rtol=1e-5, atol=1e-5)
    loss.backward()
    assert all(p.grad is not None for p in tri.parameters())


@pytest.mark.slow
def test_compiled_native_model_is_one_graph_and_matches_eager():
    """The nanoGPT-style baseline (`native` + torch.compile) traces as one graph: choosing the implementation in
    the forward pass must not import a module (nor register the Triton ops) inside the traced code."""
    _, nat = twin_models("native", vocab_size=64, real_vocab_size=37)
    idx = torch.randint(0, 37, (2, 19), device=DEVICE)
    compiled = torch.compile(nat, fullgraph=True)
    nat.train()
    eager_logits, eager_loss = nat(idx, idx)
    logits, loss = compiled(idx, idx)
    torch.testing.assert_close(logits, eager_logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(loss, eager_loss, rtol=1e-5, atol=1e-5)
    loss.backward()
    assert all(p.grad is not None for p in nat.parameters())
