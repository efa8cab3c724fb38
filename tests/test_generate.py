"""Generation: sampling semantics, the KV cache against re-encoding, the sliding window, and `gpt generate`."""

import io
import sys

import pytest
import torch

from tritongpt.checkpoint import model_payload, save_checkpoint
from tritongpt.config import GPTConfig
from tritongpt.generate import TextStream, generate, generate_stream, main, sample_next, top_k_filter, top_p_filter
from tritongpt.model import GPT, KVCache
from tritongpt.tokenizer import CharTokenizer, GPT2Tokenizer

ON_GPU = torch.cuda.is_available()
DEVICE = "cuda" if ON_GPU else "cpu"


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_model(seed: int = 0, **kw) -> GPT:
    base = dict(vocab_size=61, context_length=64, emb_dim=64, n_heads=4, n_layers=2, backend="reference")
    torch.manual_seed(seed)
    model = GPT(GPTConfig(**{**base, **kw})).to(DEVICE).eval()
    with torch.no_grad():  # larger weights than GPT-2's init: peaked, well-separated logits, no argmax ties
        for p in model.parameters():
            p.mul_(4.0)
    return model


# ---------------------------------------------------------------------------------------------------------
# Sampling


def test_top_k_keeps_exactly_the_k_most_likely():
    logits = torch.tensor([[1.0, 5.0, 3.0, 4.0, 2.0]])
    kept = torch.isfinite(top_k_filter(logits, 3))
    assert kept.tolist() == [[False, True, True, True, False]]
    assert torch.equal(top_k_filter(logits, 99), logits)  # above the vocabulary: clamped, all kept
    gen = torch.Generator().manual_seed(0)
    draws = torch.stack([sample_next(logits, 1.0, top_k=2, generator=gen) for _ in range(300)])
    assert set(draws.flatten().tolist()) == {1, 3}


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = torch.tensor([[0.05, 0.5, 0.15, 0.3]])
    logits = probs.log()
    for p, expected in [
        (0.3, {1}),
        (0.7, {1, 3}),
        (0.79, {1, 3}),
        (0.81, {1, 2, 3}),
        (0.9, {1, 2, 3}),
        (1.0, {0, 1, 2, 3}),
    ]:
        kept = torch.isfinite(top_p_filter(logits, p))[0].nonzero().flatten().tolist()
        assert set(kept) == expected, p
    gen = torch.Generator().manual_seed(0)
    draws = torch.stack([sample_next(logits, 1.0, top_p=0.7, generator=gen) for _ in range(300)])
    assert set(draws.flatten().tolist()) == {1, 3}


def test_top_k_and_top_p_combine():
    logits = torch.tensor([[0.05, 0.5, 0.15, 0.3]]).log()
    # top-k 3 renormalises {1, 3, 2} to 0.526, 0.316, 0.158: top-p 0.8 then needs 1 and 3 only
    filtered = top_p_filter(top_k_filter(logits, 3), 0.8)
    assert torch.isfinite(filtered)[0].nonzero().flatten().tolist() == [1, 3]


def test_temperature_scales_the_distribution():
    logits = torch.tensor([[0.0, 1.0, 2.0]])
    gen = torch.Generator().manual_seed(0)
    for t in (0.5, 2.0):
        draws = sample_next(logits.expand(20000, 3), t, generator=gen)
        freq = torch.bincount(draws, minlength=3).float() / draws.numel()
        torch.testing.assert_close(freq, torch.softmax(logits[0] / t, -1), atol=0.015, rtol=0)


def test_temperature_to_zero_is_greedy():
    logits = torch.randn(64, 1000, generator=torch.Generator().manual_seed(1))
    greedy = logits.argmax(-1)
    assert torch.equal(sample_next(logits, 0.0), greedy)
    gen = torch.Generator().manual_seed(0)
    assert torch.equal(sample_next(logits, 1e-4, generator=gen), greedy)
    assert torch.equal(sample_next(logits, 1e-4, top_k=5, top_p=0.9, generator=gen), greedy)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(temperature=-0.1), "temperature must be a finite number >= 0"),
        (dict(temperature=float("nan")), "temperature must be a finite number >= 0"),
        (dict(temperature=float("inf")), "temperature must be a finite number >= 0"),
        (dict(top_k=0), "top_k must be >= 1"),
        (dict(top_p=0.0), r"top_p must be in \(0, 1\]"),
        (dict(top_p=1.5), r"top_p must be in \(0, 1\]"),
    ],
)
def test_bad_sampling_arguments_are_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        sample_next(torch.zeros(1, 5), **kwargs)
    with pytest.raises(ValueError, match=message):
        generate(tiny_model(), torch.zeros(1, 1, dtype=torch.long, device=DEVICE), 1, **kwargs)


# ---------------------------------------------------------------------------------------------------------
# The KV cache


def test_cached_steps_give_the_full_forward_logits():
    model = tiny_model()
    seq = torch.randint(0, 61, (2, 40), device=DEVICE)
    with torch.no_grad():
        full = model(seq)[0]
        cache = KVCache(model.config, 2, DEVICE)
        tol = dict(rtol=1e-5, atol=1e-4)  # logits of size ~10: fp32 rounding of differently shaped matmuls
        torch.testing.assert_close(model(seq[:, :7], kv_cache=cache)[0][:, 0], full[:, 6], **tol)
        for pos in range(7, 40):
            step = model(seq[:, pos : pos + 1], kv_cache=cache, start_pos=pos)[0]
            torch.testing.assert_close(step[:, 0], full[:, pos], **tol)


def test_cache_arguments_are_checked():
    model = tiny_model()
    idx = torch.zeros(1, 4, dtype=torch.long, device=DEVICE)
    with pytest.raises(ValueError, match="needs a kv_cache"):
        model(idx, start_pos=3)
    with pytest.raises(ValueError, match="sequence length 66 exceeds the context length 64"):
        model(idx, kv_cache=KVCache(model.config, 1, DEVICE), start_pos=62)


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_greedy_with_and_without_cache_agree_for_50_steps(backend):
    """Cached greedy decoding against re-encoding the whole sequence at every step.

    Under Triton's interpreter 50 re-encodings cost a minute, so there the uncached side is one forward over
    the final sequence: greedy without the cache picks each token as the argmax of the uncached logits at the
    position before it, so if those argmaxes reproduce every cached token, uncached greedy produces the same
    50 tokens (by induction over the steps).
    """
    interpreted = backend == "triton" and not ON_GPU
    model = tiny_model(n_layers=1 if interpreted else 2)
    model.set_backend(backend)
    prompt = torch.randint(0, 61, (1 if interpreted else 2, 5), device=DEVICE)
    cached = generate(model, prompt, 50, temperature=0.0)
    assert cached.shape == (prompt.shape[0], 55)
    assert len(set(cached[0, 5:].tolist())) > 3  # a real sequence, not one token repeated
    with torch.no_grad():
        assert torch.equal(model(cached[:, :-1])[0][:, 4:].argmax(-1), cached[:, 5:])
    if not interpreted:
        assert torch.equal(cached, generate(model, prompt, 50, temperature=0.0, use_cache=False))


def test_sliding_window_matches_re_encoding_the_last_context_tokens():
    model = tiny_model(context_length=12)
    prompt = torch.randint(0, 61, (2, 9), device=DEVICE)
    out = generate(model, prompt, 30, temperature=0.0)  # the window slides after 3 tokens
    assert torch.equal(out, generate(model, prompt, 30, temperature=0.0, use_cache=False))
    with torch.no_grad():  # spelled out: each token is the argmax after the last 12 tokens at positions 0..11
        for t in range(9, 39):
            window = out[:, max(0, t - 12) : t]
            assert torch.equal(model(window)[0][:, -1].argmax(-1), out[:, t]), t


def test_prompt_longer_than_the_context_keeps_its_end():
    model = tiny_model(context_length=12)
    prompt = torch.randint(0, 61, (1, 20), device=DEVICE)
    out = generate(model, prompt, 5, temperature=0.0)
    assert torch.equal(out[:, :20], prompt)
    assert torch.equal(out[:, 20:], generate(model, prompt[:, -12:], 5, temperature=0.0)[:, 12:])


def test_seeded_sampling_is_reproducible():
    model = tiny_model()
    prompt = torch.randint(0, 61, (3, 4), device=DEVICE)

    def sample(seed):
        gen = torch.Generator(device=DEVICE).manual_seed(seed)
        return model.generate(prompt, 40, temperature=1.0, top_k=20, top_p=0.95, generator=gen)

    assert torch.equal(sample(7), sample(7))
    assert not torch.equal(sample(7), sample(8))


def test_generation_stops_at_eos():
    model = tiny_model()
    prompt = torch.randint(0, 61, (1, 4), device=DEVICE)
    free = generate(model, prompt, 20, temperature=0.0)
    eos = int(free[0, 7])  # the 4th new token
    first = (free[0, 4:] == eos).nonzero()[0].item()
    out = generate(model, prompt, 20, temperature=0.0, eos_id=eos)
    assert torch.equal(out, free[:, : 4 + first + 1])  # ends with the eos token itself
    # a batch runs until every row is done; finished rows are padded with eos
    both = generate(model, torch.cat([prompt, prompt.flip(1)]), 20, temperature=0.0, eos_id=eos)
    row0 = both[0, 4:]
    assert (row0[first:] == eos).all()


def test_sampling_stays_inside_a_smaller_tokenizer_vocabulary():
    model = tiny_model()
    prompt = torch.randint(0, 61, (4, 3), device=DEVICE)
    out = generate(model, prompt, 30, temperature=3.0, vocab_size=7)
    assert out[:, 3:].max() < 7


def test_a_padded_vocabulary_is_never_sampled():
    """The padding rows get no logits: not sampled at a high temperature, nor when their weights would win
    the argmax (rows of +-50 x a real row: one of the two has the largest logit almost everywhere)."""
    model = tiny_model(vocab_size=64, real_vocab_size=50, tie_weights=False)
    with torch.no_grad():
        model.lm_head.weight[50:52] = torch.stack([50 * model.lm_head.weight[0], -50 * model.lm_head.weight[0]])
    prompt = torch.randint(0, 50, (4, 3), device=DEVICE)
    assert model.eval()(prompt)[0].shape == (4, 3, 50)
    for temperature in (3.0, 0.0):
        for use_cache in (True, False):
            out = generate(model, prompt, 30, temperature=temperature, use_cache=use_cache)
            assert out[:, 3:].max() < 50
    model.config.real_vocab_size = 0  # the control: the same weights as an unpadded head pick the padding rows
    assert (generate(model, prompt, 30, temperature=0.0)[:, 3:] >= 50).float().mean() > 0.8


def test_generate_leaves_training_mode_as_it_was():
    model = tiny_model().train()
    generate(model, torch.zeros(1, 2, dtype=torch.long, device=DEVICE), 2)
    assert model.training
    assert list(generate_stream(model, torch.zeros(1, 2, dtype=torch.long, device=DEVICE), 0)) == []


# ---------------------------------------------------------------------------------------------------------
# Streaming text and `gpt generate`


def test_text_stream_holds_back_partial_utf8():
    tok = GPT2Tokenizer()
    text = "naïve 🎉 café 日本語"
    ids = tok.encode(text)
    stream = TextStream(tok)
    pieces = [stream.push(i) for i in ids] + [stream.flush()]
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)  # never printed half a character


@pytest.fixture
def char_checkpoint(tmp_path):
    tok = CharTokenizer.from_text("abcdefgh ijklmnop\n")
    model = tiny_model(vocab_size=tok.vocab_size, context_length=16).cpu()
    return save_checkpoint(tmp_path / "char.pt", model_payload(model, tok)), tok


def run_cli(argv, capsys, stdin: str | None = None, monkeypatch=None):
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    code = main(argv + ["--device", "cpu"])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_generates_greedy_text_and_seeds_reproduce(char_checkpoint, capsys):
    path, _ = char_checkpoint
    code, out, _ = run_cli(["--checkpoint", str(path), "--prompt", "abc", "--max-new-tokens", "10", "--greedy"], capsys)
    assert code == 0 and out.startswith("abc") and len(out) == 3 + 10 + 1
    args = ["--checkpoint", str(path), "--prompt", "abc", "--max-new-tokens", "30", "--seed", "3", "--top-k", "5"]
    first = run_cli(args + ["--num-samples", "2"], capsys)[1]
    assert first == run_cli(args + ["--num-samples", "2"], capsys)[1]
    assert first.count("---------------") == 1


def test_cli_reads_the_prompt_from_stdin_and_crops_long_prompts(char_checkpoint, capsys, monkeypatch):
    path, _ = char_checkpoint
    argv = ["--checkpoint", str(path), "--prompt", "-", "--max-new-tokens", "3", "--greedy"]
    code, out, err = run_cli(argv, capsys, stdin="abcdefghabcdefghabcd", monkeypatch=monkeypatch)
    assert code == 0
    assert "the prompt is 20 tokens, the context 16: keeping its last 16 tokens" in err
    assert out.startswith("efghabcdefghabcd")


def test_cli_names_an_unknown_prompt_character(char_checkpoint, capsys):
    path, _ = char_checkpoint
    with pytest.raises(SystemExit) as e:
        run_cli(["--checkpoint", str(path), "--prompt", "abcZ"], capsys)
    assert e.value.code == 2
    assert "'Z'" in capsys.readouterr().err


def test_cli_missing_or_foreign_checkpoint_exits_2(tmp_path, capsys):
    for path, message in [
        (tmp_path / "nope.pt", "does not exist"),
        (tmp_path / "foreign.pt", "not a tritongpt checkpoint"),
        (tmp_path / "junk.pt", "not a readable tritongpt checkpoint"),
    ]:
        if path.name == "foreign.pt":
            torch.save({"state_dict": {}}, path)
        if path.name == "junk.pt":
            path.write_bytes(b"\x00garbage" * 10)
        with pytest.raises(SystemExit) as e:
            run_cli(["--checkpoint", str(path), "--prompt", "a"], capsys)
        assert e.value.code == 2
        assert message in capsys.readouterr().err


def test_cli_bad_sampling_arguments_exit_2(char_checkpoint, capsys):
    path, _ = char_checkpoint
    for bad in (["--temperature", "-1"], ["--top-p", "0"], ["--top-k", "0"]):
        with pytest.raises(SystemExit) as e:
            run_cli(["--checkpoint", str(path), "--prompt", "a", *bad], capsys)
        assert e.value.code == 2


def test_cli_stream_ends_at_endoftext(tmp_path, capsys):
    """A BPE model rigged to always predict <|endoftext|> prints the prompt and nothing after it."""
    tok = GPT2Tokenizer()
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, context_length=16, emb_dim=8, n_heads=2, n_layers=1))
    with torch.no_grad():  # ln_f outputs a constant vector aligned with eot's (tied) embedding
        model.transformer.ln_f.weight.zero_()
        model.transformer.wte.weight[tok.eot_id] = 10.0  # logit 800 against ~0: eot even when sampling
        model.transformer.ln_f.bias.copy_(model.transformer.wte.weight[tok.eot_id])
    path = save_checkpoint(tmp_path / "bpe.pt", model_payload(model, tok))
    code, out, _ = run_cli(["--checkpoint", str(path), "--prompt", "Hello", "--max-new-tokens", "20"], capsys)
    assert code == 0 and out == "Hello\n"


def test_cli_checkpoint_may_be_a_run_folder(tmp_path, capsys):
    """A run folder means its newest readable ckpt-NNNNNNNN.pt; a truncated newer one is passed over."""
    from tritongpt.checkpoint import checkpoint_path

    tok = CharTokenizer.from_text("abcdefgh ijklmnop\n")
    model = tiny_model(vocab_size=tok.vocab_size, context_length=16).cpu()
    save_checkpoint(checkpoint_path(tmp_path, 10), model_payload(model, tok))
    checkpoint_path(tmp_path, 20).write_bytes(b"PK\x03\x04 truncated")
    argv = ["--checkpoint", str(tmp_path), "--prompt", "abc", "--max-new-tokens", "5", "--greedy"]
    code, out, _ = run_cli(argv, capsys)
    assert code == 0 and out.startswith("abc") and len(out) == 3 + 5 + 1
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SystemExit) as e:
        run_cli(["--checkpoint", str(empty), "--prompt", "a"], capsys)
    assert e.value.code == 2 and "holds no readable checkpoint" in capsys.readouterr().err


def test_cached_generation_under_autocast_hands_attention_one_dtype():
    """Under autocast the q/k/v projection runs in the autocast dtype; a cache kept in the weights' fp32 gave
    the Triton attention fp16 queries with fp32 cached keys (TypeError: q, k, v must share a dtype)."""
    model = tiny_model(n_layers=1)
    model.set_backend("triton")
    prompt = torch.randint(0, 61, (1, 5), device=DEVICE)
    with torch.autocast(DEVICE, dtype=torch.float16):
        out = generate(model, prompt, 3, temperature=0.0)
    assert out.shape == (1, 8)
