"""The from-scratch GPT: shapes, causality, norm placement, tied/untied counts, dropout, initialisation."""

import math

import pytest
import torch

from tritongpt.config import GPTConfig, load_model_config
from tritongpt.model import GPT, TRAINING_BYTES_PER_PARAM, ModelTooLarge, check_model_fits, param_count


def tiny(**kw) -> GPTConfig:
    base = dict(vocab_size=61, context_length=32, emb_dim=48, n_heads=4, n_layers=2, backend="reference")
    return GPTConfig(**{**base, **kw})


def test_output_shape_and_loss():
    model = GPT(tiny())
    idx = torch.randint(0, 61, (3, 17))
    logits, loss = model(idx, idx)
    assert logits.shape == (3, 17, 61)
    assert loss.ndim == 0 and torch.isfinite(loss)
    logits2, loss2 = model(idx)
    assert loss2 is None and torch.equal(logits, logits2)


def test_padded_vocabulary():
    """vocab_size rows, real_vocab_size tokens: logits and loss over the real ones only (the padding rows stay out
    of the softmax and get no gradient); the loss equals F.cross_entropy over the real logits."""
    model = GPT(tiny(vocab_size=64, real_vocab_size=50, tie_weights=False))
    assert model.lm_head.weight.shape == (64, 48) and model.transformer.wte.weight.shape == (64, 48)
    idx, tgt = torch.randint(0, 50, (3, 17)), torch.randint(0, 50, (3, 17))
    tgt[0, :5] = -1
    logits, loss = model(idx, tgt)
    assert logits.shape == (3, 17, 50)
    expected = torch.nn.functional.cross_entropy(logits.flatten(0, 1), tgt.flatten(), ignore_index=-1)
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert torch.equal(model.lm_head.weight.grad[50:], torch.zeros(14, 48))
    assert torch.equal(model.transformer.wte.weight.grad[50:], torch.zeros(14, 48))
    with pytest.raises(ValueError, match=r"real_vocab_size must be in \[0, vocab_size=64\]"):  # a ConfigError
        tiny(vocab_size=64, real_vocab_size=65)
    with pytest.raises(ValueError, match="real_vocab_size"):
        tiny(real_vocab_size=-1)


def test_all_targets_ignored_gives_a_zero_loss_on_every_backend():
    model = GPT(tiny())
    idx = torch.randint(0, 61, (2, 9))
    for backend in ("reference", "native"):
        model.set_backend(backend)
        _, loss = model(idx, torch.full_like(idx, -1))
        assert loss.item() == 0.0
        loss.backward()
        assert all(torch.equal(p.grad, torch.zeros_like(p.grad)) for p in model.parameters() if p.grad is not None)


def test_initial_loss_is_near_uniform():
    model = GPT(tiny(vocab_size=500, tie_weights=False))
    idx, tgt = torch.randint(0, 500, (4, 32)), torch.randint(0, 500, (4, 32))
    assert abs(model(idx, tgt)[1].item() - math.log(500)) < 0.1


@pytest.mark.parametrize("norm", ["pre", "post"])
def test_causal_future_tokens_never_change_earlier_logits(norm):
    model = GPT(tiny(norm_placement=norm)).double().eval()
    idx = torch.randint(0, 61, (2, 20))
    base = model(idx)[0]
    for t in (0, 7, 19):
        changed = idx.clone()
        changed[:, t:] = (changed[:, t:] + 1) % 61
        out = model(changed)[0]
        assert torch.equal(out[:, :t], base[:, :t])
        assert not torch.allclose(out[:, t], base[:, t])


@pytest.mark.parametrize("norm", ["pre", "post"])
def test_both_norm_placements_train_a_step(norm):
    model = GPT(tiny(norm_placement=norm))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    idx = torch.randint(0, 61, (4, 16))
    before = [p.detach().clone() for p in model.parameters()]
    losses = []
    for _ in range(5):
        _, loss = model(idx, idx.roll(-1, 1))
        opt.zero_grad()
        loss.backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))


def test_pre_and_post_norm_compute_different_functions():
    torch.manual_seed(0)
    pre = GPT(tiny(norm_placement="pre"))
    post = GPT(tiny(norm_placement="post"))
    post.load_state_dict(pre.state_dict())
    idx = torch.randint(0, 61, (1, 8))
    assert not torch.allclose(pre(idx)[0], post(idx)[0])


def test_tied_and_untied_parameter_counts():
    tied, untied = GPT(tiny(tie_weights=True)), GPT(tiny(tie_weights=False))
    assert tied.lm_head.weight is tied.transformer.wte.weight
    assert untied.num_params() - tied.num_params() == 61 * 48
    assert tied.num_params() - tied.num_params(non_embedding=True) == 32 * 48
    assert untied.size_mb(torch.float32) == pytest.approx(untied.num_params() * 4 / 2**20)
    assert untied.size_mb(torch.bfloat16) == pytest.approx(untied.num_params() * 2 / 2**20)


@pytest.mark.parametrize(
    "name,count,mb_fp32",
    [("gpt2-124m", 124_439_808, 474.70), ("gpt2-124m-untied", 163_009_536, 621.83)],
)
def test_gpt2_parameter_counts(name, count, mb_fp32):
    with torch.device("meta"):
        model = GPT(load_model_config(name))
    assert model.num_params() == count
    assert round(model.size_mb(torch.float32), 2) == mb_fp32


def test_qkv_bias_is_optional():
    assert GPT(tiny(qkv_bias=False)).transformer.h[0].attn.c_attn.bias is None
    assert GPT(tiny(qkv_bias=True)).transformer.h[0].attn.c_attn.bias is not None


def test_dropout_active_in_train_mode_only():
    model = GPT(tiny(drop_rate=0.5))
    idx = torch.randint(0, 61, (2, 16))
    model.train()
    assert not torch.equal(model(idx)[0], model(idx)[0])
    model.eval()
    assert torch.equal(model(idx)[0], model(idx)[0])


def test_gpt2_initialisation():
    torch.manual_seed(0)
    cfg = tiny(n_layers=8, emb_dim=256, n_heads=4, vocab_size=1000)
    model = GPT(cfg)
    assert model.transformer.wte.weight.std().item() == pytest.approx(0.02, rel=0.05)
    fc = model.transformer.h[0].mlp.c_fc.weight
    assert fc.std().item() == pytest.approx(0.02, rel=0.05)
    proj = model.transformer.h[0].mlp.c_proj.weight
    assert proj.std().item() == pytest.approx(0.02 / math.sqrt(2 * 8), rel=0.05)
    assert all((p == 0).all() for n, p in model.named_parameters() if n.endswith(".bias") and "ln_" not in n)
    assert all((model.transformer.h[i].ln_1.weight == 1).all() for i in range(8))


def test_sequence_longer_than_context_is_an_error():
    with pytest.raises(ValueError, match="exceeds the context length 32"):
        GPT(tiny())(torch.zeros(1, 33, dtype=torch.long))


def test_unknown_backend_rejected():
    model = GPT(tiny())
    with pytest.raises(ValueError, match="unknown backend"):
        model.set_backend("cuda")


@pytest.mark.parametrize(
    "kw",
    [dict(), dict(tie_weights=False), dict(qkv_bias=False), dict(n_layers=3, emb_dim=48, n_heads=3, vocab_size=7)],
)
def test_param_count_from_the_config_matches_the_built_model(kw):
    cfg = GPTConfig(**{**dict(vocab_size=101, context_length=32, emb_dim=64, n_heads=4, n_layers=2), **kw})
    with torch.device("meta"):
        model = GPT(cfg)
    assert param_count(cfg) == model.num_params()
    assert param_count(cfg, non_embedding=True) == model.num_params(non_embedding=True)


def test_a_model_too_large_for_the_device_is_refused_before_building():
    cfg = GPTConfig(n_layers=100_000)
    with pytest.raises(ModelTooLarge, match=r"n_layers=100000.* 708,826,585,344 parameters.*GiB"):
        check_model_fits(cfg, "cpu", TRAINING_BYTES_PER_PARAM, "training")
    assert check_model_fits(GPTConfig(n_layers=1), "cpu", 4, "a forward pass") == param_count(GPTConfig(n_layers=1))
