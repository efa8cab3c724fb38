"""The `gpt` command: dispatch, `gpt info`, and `python -m gpt`."""

import subprocess
import sys

import pytest

from gpt.cli import main


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


def test_python_dash_m_gpt():
    out = subprocess.run(
        [sys.executable, "-m", "gpt", "info", "--config", "gpt2-124m"], capture_output=True, text=True, check=True
    ).stdout
    assert "124,439,808" in out
