"""The Hugging Face GPT-2 layout: config mapping for the four OpenAI sizes, loading hand-written and
`transformers`-written folders, logits against GPT2LMHeadModel, and the export round trip."""

import json

import pytest
import torch

from tritongpt.checkpoint import model_payload, save_checkpoint
from tritongpt.config import GPTConfig, load_model_config
from tritongpt.export import main as export_main
from tritongpt.generate import main as generate_main
from tritongpt.hf import HFError, config_from_hf, from_hf, load_hf_state_dict, to_hf, tokenizer_for_hf
from tritongpt.model import GPT
from tritongpt.tokenizer import CharTokenizer, GPT2Tokenizer

SMALL = dict(vocab_size=101, n_positions=32, n_embd=64, n_layer=2, n_head=4)


pytestmark = pytest.mark.usefixtures("one_thread")


def hf_config(**kw) -> dict:
    return {"model_type": "gpt2", "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5, **SMALL, **kw}


def our_model(**kw) -> GPT:
    base = dict(vocab_size=101, context_length=32, emb_dim=64, n_heads=4, n_layers=2, backend="reference")
    model = GPT(GPTConfig(**{**base, **kw})).eval()
    with torch.no_grad():  # non-zero biases and LayerNorm parameters, so a mapping slip cannot hide
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.normal_(1.0 if name.endswith("ln_1.weight") or "ln_2.weight" in name else 0.0, 0.1)
    return model


def write_hf_by_hand(model: GPT, folder, fmt: str = "bin", prefix: str = "") -> None:
    """The layout as OpenAI's checkpoints on the Hub have it, written without `transformers`: GPT2Model names
    (optionally under `transformer.`), Conv1D (in, out) weights, causal-mask buffers, no lm_head."""
    cfg = model.config
    sd = {}
    for name, t in model.state_dict().items():
        if name == "lm_head.weight":
            continue
        name = name.removeprefix("transformer.")
        if name.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight")):
            t = t.t()  # nn.Linear (out, in) -> Conv1D (in, out)
        sd[prefix + name] = t.contiguous().clone()
    n = cfg.context_length
    for i in range(cfg.n_layers):
        sd[f"{prefix}h.{i}.attn.bias"] = torch.tril(torch.ones(n, n)).view(1, 1, n, n)
        sd[f"{prefix}h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    folder.mkdir(parents=True, exist_ok=True)
    config = hf_config(
        vocab_size=cfg.vocab_size, n_positions=n, n_embd=cfg.emb_dim, n_layer=cfg.n_layers, n_head=cfg.n_heads
    )
    (folder / "config.json").write_text(json.dumps(config))
    if fmt == "bin":
        torch.save(sd, folder / "pytorch_model.bin")
    else:
        from safetensors.torch import save_file

        save_file(sd, str(folder / "model.safetensors"), metadata={"format": "pt"})


# ---------------------------------------------------------------------------------------------------------
# Without transformers


@pytest.mark.parametrize(
    "preset, hf",
    [
        ("gpt2-124m", dict(n_embd=768, n_layer=12, n_head=12)),
        ("gpt2-355m", dict(n_embd=1024, n_layer=24, n_head=16)),
        ("gpt2-774m", dict(n_embd=1280, n_layer=36, n_head=20)),
        ("gpt2-1558m", dict(n_embd=1600, n_layer=48, n_head=25)),
    ],
)
def test_openai_configs_map_to_our_presets(preset, hf):
    """gpt2, gpt2-medium, gpt2-large, gpt2-xl as their config.json files on the Hub have them."""
    config = {"model_type": "gpt2", "activation_function": "gelu_new", "vocab_size": 50257, "n_positions": 1024}
    cfg = config_from_hf({**config, "n_ctx": 1024, "layer_norm_epsilon": 1e-5, **hf})
    assert cfg == load_model_config(preset)


@pytest.mark.parametrize("fmt, prefix", [("bin", ""), ("safetensors", ""), ("safetensors", "transformer.")])
def test_hand_written_folder_loads_with_the_same_logits(tmp_path, fmt, prefix):
    if fmt == "safetensors":
        pytest.importorskip("safetensors")
    model = our_model()
    write_hf_by_hand(model, tmp_path / "hf", fmt, prefix)
    loaded = GPT.from_hf(tmp_path / "hf", backend="reference")
    assert loaded.lm_head.weight is loaded.transformer.wte.weight  # tied, one Parameter
    assert loaded.num_params() == model.num_params()
    idx = torch.randint(0, 101, (2, 32))
    with torch.no_grad():
        torch.testing.assert_close(loaded(idx)[0], model(idx)[0], rtol=0, atol=0)


@pytest.mark.parametrize("kw", [dict(), dict(tie_weights=False), dict(qkv_bias=False)])
def test_export_then_load_round_trip(tmp_path, kw):
    pytest.importorskip("safetensors")
    model = our_model(**kw)
    to_hf(model, tmp_path / "hf")
    loaded = from_hf(tmp_path / "hf", backend="reference")
    idx = torch.randint(0, 101, (2, 32))
    with torch.no_grad():
        torch.testing.assert_close(loaded(idx)[0], model(idx)[0], rtol=0, atol=0)


def test_bad_folders_are_clear_errors(tmp_path):
    with pytest.raises(HFError, match="is not a folder"):
        from_hf(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(HFError, match="has no config.json"):
        from_hf(tmp_path / "empty")
    folder = tmp_path / "noweights"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(hf_config()))
    with pytest.raises(HFError, match="no model.safetensors or pytorch_model.bin"):
        from_hf(folder)
    for bad, message in [
        (dict(model_type="llama"), "model_type is 'llama'"),
        (dict(activation_function="gelu"), "activation_function 'gelu' is not the tanh GELU"),
        (dict(n_inner=100), "n_inner=100 is not supported"),
        (dict(scale_attn_by_inverse_layer_idx=True), "scale_attn_by_inverse_layer_idx"),
        (dict(n_head=5), "divisible by n_heads"),
    ]:
        with pytest.raises(HFError, match=message):
            config_from_hf(hf_config(**bad))


def test_weights_that_do_not_fit_name_the_tensor(tmp_path):
    model = our_model()
    write_hf_by_hand(model, tmp_path / "hf")
    sd = load_hf_state_dict(tmp_path / "hf")
    del sd["h.1.mlp.c_fc.bias"]
    sd["h.0.attn.c_proj.weight"] = sd["h.0.attn.c_proj.weight"][:, :10]
    torch.save(sd, tmp_path / "hf" / "pytorch_model.bin")
    with pytest.raises(HFError, match=r"h.0.attn.c_proj.weight: shape \(64, 10\)"):
        from_hf(tmp_path / "hf")
    del sd["h.0.attn.c_proj.weight"]
    sd["h.0.extra.weight"] = torch.zeros(1)
    torch.save(sd, tmp_path / "hf" / "pytorch_model.bin")
    with pytest.raises(HFError, match="unknown: h.0.extra.weight; missing: transformer.h.0.attn.c_proj.weight"):
        from_hf(tmp_path / "hf")


@pytest.mark.parametrize("kw", [dict(), dict(tie_weights=False)])
def test_padded_vocabulary_loads_as_zeros_and_exports_back_exactly(tmp_path, kw):
    """GPT-2 weights into a padded head (zero rows after the real vocabulary, outside the loss's softmax, so
    the logits and the loss are the unpadded model's), and `to_hf` drops the rows: the files match."""
    pytest.importorskip("safetensors")
    model = our_model(**kw)
    to_hf(model, tmp_path / "hf")
    padded = from_hf(tmp_path / "hf", backend="reference", vocab_size=128)
    assert (padded.config.vocab_size, padded.config.real_vocab_size, padded.config.real_vocab) == (128, 101, 101)
    for w in (padded.transformer.wte.weight, padded.lm_head.weight):
        assert w.shape == (128, 64) and torch.equal(w[101:], torch.zeros(27, 64))
    idx, tgt = torch.randint(0, 101, (2, 32)), torch.randint(0, 101, (2, 32))
    with torch.no_grad():
        logits, loss = padded(idx, tgt)
        logits_u, loss_u = model(idx, tgt)
    assert logits.shape == (2, 32, 101)
    torch.testing.assert_close(logits, logits_u, rtol=0, atol=0)
    torch.testing.assert_close(loss, loss_u, rtol=0, atol=0)
    to_hf(padded, tmp_path / "back")
    original, back = load_hf_state_dict(tmp_path / "hf"), load_hf_state_dict(tmp_path / "back")
    assert original.keys() == back.keys()
    assert all(torch.equal(original[k], back[k]) for k in original)
    assert (tmp_path / "hf" / "config.json").read_text() == (tmp_path / "back" / "config.json").read_text()
    assert from_hf(tmp_path / "hf", vocab_size=101).config.real_vocab_size == 0  # no padding asked for
    for bad in (100, 0, 101.5, "128"):
        with pytest.raises(HFError, match=f"vocab_size={bad!r} cannot hold the folder's 101 tokens"):
            from_hf(tmp_path / "hf", vocab_size=bad)


def test_export_cli_drops_the_padding(tmp_path, capsys):
    pytest.importorskip("safetensors")
    tok = CharTokenizer.from_text("abcdefgh\n")
    model = our_model(vocab_size=64, real_vocab_size=tok.vocab_size)
    ckpt = save_checkpoint(tmp_path / "c.pt", model_payload(model, tok))
    assert export_main(["--checkpoint", str(ckpt), "--hf", str(tmp_path / "hf")]) == 0
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["vocab_size"] == tok.vocab_size == 9
    wte = load_hf_state_dict(tmp_path / "hf")["transformer.wte.weight"]
    assert torch.equal(wte, model.transformer.wte.weight[:9])
    assert from_hf(tmp_path / "hf").config.vocab_size == 9


def test_export_cli_and_generate_from_the_export(tmp_path, capsys):
    pytest.importorskip("safetensors")
    tok = CharTokenizer.from_text("abcdefgh\n")
    model = our_model(vocab_size=tok.vocab_size)
    ckpt = save_checkpoint(tmp_path / "c.pt", model_payload(model, tok))
    assert export_main(["--checkpoint", str(ckpt), "--hf", str(tmp_path / "hf")]) == 0
    assert "config.json, model.safetensors, tritongpt_tokenizer.json" in capsys.readouterr().out
    assert tokenizer_for_hf(tmp_path / "hf").chars == tok.chars
    argv = ["--prompt", "abc", "--max-new-tokens", "8", "--greedy", "--device", "cpu", "--backend", "reference"]
    assert generate_main(["--hf", str(tmp_path / "hf"), *argv]) == 0
    from_export = capsys.readouterr().out
    assert generate_main(["--checkpoint", str(ckpt), *argv]) == 0
    assert from_export == capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        export_main(["--checkpoint", str(tmp_path / "missing.pt"), "--hf", str(tmp_path / "x")])
    assert e.value.code == 2 and "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        generate_main(["--hf", str(tmp_path / "missing"), "--prompt", "a"])
    assert e.value.code == 2 and "is not a folder" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------
# Against transformers


def hf_model(tmp_path, **kw):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(**{**SMALL, "attn_implementation": "eager", **kw})
    model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # GPT-2's init zeroes biases and sets LayerNorm to identity: perturb everything
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.save_pretrained(tmp_path / "hf")
    return model


@pytest.mark.parametrize("kw", [dict(), dict(tie_word_embeddings=False), dict(activation_function="gelu_pytorch_tanh")])
def test_logits_match_gpt2lmheadmodel(tmp_path, kw):
    theirs = hf_model(tmp_path, **kw)
    ours = GPT.from_hf(tmp_path / "hf", backend="reference")
    assert ours.config.tie_weights == kw.get("tie_word_embeddings", True)
    idx = torch.randint(0, 101, (2, 32))
    with torch.no_grad():
        torch.testing.assert_close(ours(idx)[0], theirs(idx).logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kw", [dict(), dict(tie_weights=False)])
def test_export_loads_in_transformers_with_the_same_logits(tmp_path, kw):
    transformers = pytest.importorskip("transformers")
    model = our_model(**kw)
    to_hf(model, tmp_path / "hf", GPT2Tokenizer() if model.config.vocab_size >= 50257 else None)
    theirs = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf", attn_implementation="eager").eval()
    idx = torch.randint(0, 101, (2, 32))
    with torch.no_grad():
        torch.testing.assert_close(theirs(idx).logits, model(idx)[0], rtol=1e-5, atol=1e-5)


def test_exported_gpt2_tokenizer_files_load_in_transformers(tmp_path):
    transformers = pytest.importorskip("transformers")
    ours = GPT2Tokenizer()
    model = our_model(vocab_size=ours.vocab_size, n_layers=1)
    to_hf(model, tmp_path / "hf", ours)
    theirs = transformers.GPT2Tokenizer.from_pretrained(tmp_path / "hf")
    text = "Hello world, naïve café <|endoftext|> 🎉"
    assert theirs.encode(text) == ours.encode(text)
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["eos_token_id"] == ours.eot_id == 50256
