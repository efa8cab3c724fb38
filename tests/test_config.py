"""Presets load, and the strict loader names the bad key and the file."""

import typing

import pytest

from tritongpt.config import ConfigError, GPTConfig, list_presets, load_model_config, parse_overrides


@pytest.mark.parametrize("name", list_presets())
def test_every_preset_loads(name):
    assert isinstance(load_model_config(name), GPTConfig)


def test_gpt2_presets_have_openai_shapes():
    shapes = {"gpt2-124m": (768, 12, 12), "gpt2-355m": (1024, 16, 24), "gpt2-774m": (1280, 20, 36)}
    shapes["gpt2-1558m"] = (1600, 25, 48)
    for name, (d, h, n) in shapes.items():
        c = load_model_config(name)
        assert (c.emb_dim, c.n_heads, c.n_layers) == (d, h, n)
        assert (c.vocab_size, c.context_length, c.tie_weights, c.qkv_bias) == (50257, 1024, True, True)
    untied = load_model_config("gpt2-124m-untied")
    assert (untied.tie_weights, untied.qkv_bias) == (False, False)


def test_unknown_key_is_named_with_file(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text("[model]\nemb_dims = 64\n")
    with pytest.raises(ConfigError, match=r"emb_dims.*bad\.toml"):
        load_model_config(p)


def test_wrong_type_is_named_with_file(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text('[model]\nn_layers = "four"\n')
    with pytest.raises(ConfigError, match=r"n_layers.*bad\.toml.*expected int"):
        load_model_config(p)
    p.write_text('[model]\nnorm_placement = "middle"\n')
    with pytest.raises(ConfigError, match=r"norm_placement.*'pre', 'post'"):
        load_model_config(p)
    p.write_text("[model]\nqkv_bias = 1\n")
    with pytest.raises(ConfigError, match="qkv_bias"):
        load_model_config(p)


def test_unknown_table_and_preset(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text("[modle]\nn_layers = 2\n")
    with pytest.raises(ConfigError, match=r"\[modle\].*bad\.toml"):
        load_model_config(p)
    with pytest.raises(ConfigError, match="no preset named 'gpt2-125m'"):
        load_model_config("gpt2-125m")


def test_extends_and_overrides(tmp_path):
    p = tmp_path / "small.toml"
    p.write_text('extends = "gpt2-124m"\n[model]\nn_layers = 2\n')
    c = load_model_config(p, ["model.drop_rate=0.1", "model.backend=reference"])
    assert (c.n_layers, c.emb_dim, c.drop_rate, c.backend) == (2, 768, 0.1, "reference")
    with pytest.raises(ConfigError, match="n_layer"):
        load_model_config(p, ["model.n_layer=3"])
    with pytest.raises(ConfigError, match="TABLE.KEY=VALUE"):
        parse_overrides(["n_layers"])


def test_int_accepted_for_float_and_construction_checks(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("[model]\ndrop_rate = 0\nln_eps = 1\n")
    c = load_model_config(p)
    assert isinstance(c.drop_rate, float) and isinstance(c.ln_eps, float)
    with pytest.raises(ConfigError, match="divisible"):
        GPTConfig(emb_dim=100, n_heads=3)
    with pytest.raises(ConfigError, match="backend"):
        GPTConfig(backend="cuda")
    with pytest.raises(ConfigError, match="drop_rate"):
        GPTConfig(drop_rate=1.5)


def test_errors_after_overrides_still_name_the_file(tmp_path):
    p = tmp_path / "small.toml"
    p.write_text('[model]\nn_layers = "two"\n')
    with pytest.raises(ConfigError, match=r"n_layers.*small\.toml with --set"):
        load_model_config(p, ["model.drop_rate=0.1"])


def test_backend_names_are_the_implementations():
    """One name per implementation: `torch` (the reference's old backend name) in a preset or `--set` is an
    error naming `reference`; a checkpoint that stored it still loads, as `reference` (tests/test_checkpoint.py)."""
    from tritongpt.kernels import IMPLEMENTATIONS

    assert typing.get_args(typing.get_type_hints(GPTConfig)["backend"]) == ("auto", *IMPLEMENTATIONS)
    with pytest.raises(ConfigError, match=r"backend.*'reference'.*got 'torch'"):
        load_model_config("demo", ["model.backend=torch"])


def test_torch_backend_in_a_preset_is_a_one_line_error(tmp_path, capsys):
    from tritongpt.cli import main

    p = tmp_path / "old.toml"
    p.write_text('extends = "demo"\n[model]\nbackend = "torch"\n')
    with pytest.raises(SystemExit) as e:
        main(["info", "--config", str(p)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("gpt info: error: ") and "'reference'" in err
