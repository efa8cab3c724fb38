"""The `gpt` command: dispatch, `gpt info`, and `python -m tritongpt`."""

import subprocess
import sys

import pytest

from tritongpt.cli import main


def test_info_prints_gpt2_counts(capsys):
    assert main(["info", "--config", "gpt2-124m"]) == 0
    assert "124,439,808" in capsys.readouterr().out
    assert main(["info", "--config", "gpt2-124m-untied"]) == 0
    out = capsys.readouterr().out
    assert "163,009,536" in out and "621.83 MB (fp32)" in out


def test_info_forward_pass_on_demo(capsys):
    assert main(["info", "--config", "demo", "--forward"]) == 0
    assert "forward" in capsys.readouterr().out


def test_info_bad_config_is_a_clear_error(capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        main(["info", "--config", "nope"])
    assert e.value.code == 2
    assert "no preset named 'nope'" in capsys.readouterr().err


def test_unknown_command_and_help(capsys):
    assert main(["frobnicate"]) == 2
    assert "unknown command" in capsys.readouterr().err
    assert main([]) == 0
    assert "commands:" in capsys.readouterr().out


def test_python_dash_m_tritongpt():
    out = subprocess.run(
        [sys.executable, "-m", "tritongpt", "info", "--config", "gpt2-124m"], capture_output=True, text=True, check=True
    ).stdout
    assert "124,439,808" in out


@pytest.mark.parametrize(
    "module, extra",
    [("tritongpt.info", []), ("tritongpt.train", ["--config", "demo"]), ("tritongpt.prepare", [])],
)
def test_set_parses_the_same_in_every_command(module, extra):
    """One or more pairs per --set, and --set may repeat: the same parser in info, train and prepare."""
    import importlib

    parser = importlib.import_module(module).build_parser()
    args = parser.parse_args([*extra, "--set", "model.n_layers=2", "train.lr=1e-3", "--set", "data.dir=x"])
    assert args.set == ["model.n_layers=2", "train.lr=1e-3", "data.dir=x"]


def test_info_takes_several_pairs_per_set(capsys):
    assert (
        main(["info", "--config", "demo", "--set", "model.n_layers=2", "model.emb_dim=64", "--set", "model.n_heads=2"])
        == 0
    )
    out = capsys.readouterr().out
    assert "n_layers        2" in out and "emb_dim         64" in out and "n_heads         2" in out


@pytest.mark.parametrize("backend", ["reference", "native", "triton", "auto"])
def test_info_names_the_backend(backend, capsys):
    assert main(["info", "--config", "demo", "--set", f"model.backend={backend!r}".replace("'", '"')]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("backend "))
    assert line.split()[1] == f"{backend}:" and len(line) > 30
