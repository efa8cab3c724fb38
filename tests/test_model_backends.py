"""The GPT on the triton backend against the torch (reference) backend: logits, loss, every gradient, and
a 30-step training run whose loss curves must agree. On CPU the kernels run in Triton's interpreter."""

import pytest
import torch

from gpt.config import GPTConfig
from gpt.model import GPT

ON_GPU = torch.cuda.is_available()
DEVICE = "cuda" if ON_GPU else "cpu"


def tiny(**kw) -> GPTConfig:
    base = dict(vocab_size=37, context_length=24, emb_dim=32, n_heads=2, n_layers=2, backend="torch")
    return GPTConfig(**{**base, **kw})


def twin_models(**kw) -> tuple[GPT, GPT]:
    ref = GPT(tiny(**kw)).to(DEVICE)
    tri = GPT(tiny(**kw)).to(DEVICE)
    tri.load_state_dict(ref.state_dict())
    tri.set_backend("triton")
    return ref, tri


@pytest.mark.parametrize("norm", ["pre", "post"])
def test_logits_loss_and_every_gradient_match(norm):
    ref, tri = twin_models(norm_placement=norm)
    idx = torch.randint(0, 37, (2, 19), device=DEVICE)
    tgt = torch.randint(0, 37, (2, 19), device=DEVICE)
    logits_r, loss_r = ref(idx, tgt)
    logits_t, loss_t = tri(idx, tgt)
    torch.testing.assert_close(logits_t, logits_r, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(loss_t, loss_r, rtol=1e-6, atol=1e-6)
    loss_r.backward()
    loss_t.backward()
    grads_r = dict(ref.named_parameters())
    for name, p in tri.named_parameters():
        torch.testing.assert_close(
            p.grad, grads_r[name].grad, rtol=1e-4, atol=1e-6, msg=lambda m, name=name: f"{name}: {m}"
        )


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


def test_thirty_step_training_curves_agree():
    ref, tri = twin_models(n_layers=1)
    data = torch.randint(0, 37, (3, 2, 9), device=DEVICE)
    curve_r = train_curve(ref, data, 30)
    curve_t = train_curve(tri, data, 30)
    assert curve_r[-1] < curve_r[0] - 1.0  # it learned (memorised) something
    for step, (a, b) in enumerate(zip(curve_t, curve_r, strict=True)):
        assert a == pytest.approx(b, rel=2e-5), f"step {step}: triton {a} vs torch {b}"


@pytest.mark.gpu
@pytest.mark.skipif(not ON_GPU, reason="bf16 training on the triton backend needs a CUDA GPU")
def test_bf16_training_curves_agree_on_gpu():
    ref, tri = twin_models(emb_dim=128, n_heads=2, n_layers=4, context_length=128)
    data = torch.randint(0, 37, (5, 8, 129), device=DEVICE)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        curve_r = train_curve(ref, data, 30)
        curve_t = train_curve(tri, data, 30)
    for step, (a, b) in enumerate(zip(curve_t, curve_r, strict=True)):
        assert abs(a - b) <= 1e-2 * abs(b), f"step {step}: triton {a} vs torch {b}"


@pytest.mark.gpu
@pytest.mark.skipif(not ON_GPU, reason="torch.compile of Triton kernels needs a CUDA GPU")
def test_compiled_triton_model_matches_eager():
    _, tri = twin_models()
    idx = torch.randint(0, 37, (2, 19), device=DEVICE)
    eager_logits, eager_loss = tri(idx, idx)
    compiled = torch.compile(tri, fullgraph=True)
    logits, loss = compiled(idx, idx)
    torch.testing.assert_close(logits, eager_logits, rtol=1e-5, atol=1e-5)
    loss.backward()
    assert all(p.grad is not None for p in tri.parameters())
