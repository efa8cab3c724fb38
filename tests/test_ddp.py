"""DDP on CPU: 2 gloo processes under torchrun (2 windows x 2 micro-batches each, `no_sync` on the first)
give the same losses and weights as one process with one batch of the same 8 windows; the ranks split the
HellaSwag examples and all-reduce the counts; `gpt eval --eval-batches` gives the DDP run's logged val loss."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tritongpt.checkpoint import checkpoint_path, load_checkpoint
from tritongpt.config import DataConfig
from tritongpt.eval import main as eval_main
from tritongpt.files import folder_lock
from tritongpt.prepare import prepare
from tritongpt.train import main

TEXT = "".join(f"LINE {i}: the quick brown fox {i % 7} jumps over the lazy dog {i % 5}.\n" for i in range(300))


def write_config(path: Path, data_dir: Path) -> Path:
    path.write_text(
        f"""
[model]
vocab_size = 64
context_length = 16
emb_dim = 32
n_heads = 2
n_layers = 2
backend = "reference"
[data]
dir = "{data_dir.as_posix()}"
[train]
device = "cpu"
max_steps = 6
lr = 3e-3
min_lr = 3e-4
warmup_steps = 2
eval_interval = 3
eval_batches = 4
sample_tokens = 0
final_sample_tokens = 0
log_interval = 1
plot = false
num_threads = 1
""",
        encoding="utf-8",
    )
    return path


def records(run_dir: Path, kind: str, key: str) -> dict[int, float]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r[key] for r in map(json.loads, lines) if r["kind"] == kind}


def torchrun(cfg: Path, out: Path, *sets: str) -> subprocess.CompletedProcess:
    """`gpt train` as 2 gloo processes under torchrun."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += ["-m", "tritongpt.train", "--config", str(cfg), "--out", str(out), "--set", *sets]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture
def ddp_config(tmp_path) -> Path:
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    (tmp_path / "text.txt").write_text(TEXT, encoding="utf-8")
    data = tmp_path / "data"
    prepare(DataConfig(dir=str(data), inputs=[str(tmp_path / "text.txt")]), quiet=True)
    return write_config(tmp_path / "ddp.toml", data)


def test_a_run_folder_in_use_stops_every_rank(tmp_path, ddp_config):
    """Rank 0 takes the folder's lock; when another process holds it, every rank stops with a one-line error
    (rank 1 does not wait in a collective for a rank 0 that has gone)."""
    out = tmp_path / "run"
    out.mkdir()
    with folder_lock(out, "gpt train"):
        proc = torchrun(ddp_config, out, "train.batch_size=2")
    errors = [line for line in proc.stderr.splitlines() if line.startswith("gpt train: error: ")]
    assert proc.returncode != 0 and len(errors) == 2, proc.stderr[-3000:]
    assert any(f"{out} is in use by gpt train (pid {os.getpid()}, since " in e for e in errors), errors
    assert f"gpt train: error: rank 0 could not take {out} (see its message)" in errors, errors
    assert sorted(os.listdir(out)) == [], "nothing written into a folder another process holds"


def test_two_gloo_processes_match_one(tmp_path, ddp_config):
    cfg, data = ddp_config, tmp_path / "data"
    hellaswag = tmp_path / "hellaswag.jsonl"
    endings = [" jumps.", " over.", " the dog.", " lazy."]
    hellaswag.write_text(
        "".join(
            json.dumps({"ctx": f"LINE {i}: the quick", "endings": endings, "label": i % 4}) + "\n" for i in range(5)
        )
    )
    with_hellaswag = f"train.hellaswag='{hellaswag.as_posix()}'"

    proc = torchrun(cfg, tmp_path / "ddp", "train.batch_size=2", "train.grad_accum=2", with_hellaswag)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "2 processes" in proc.stdout  # rank 0 logs, once
    assert proc.stdout.count("model ") == 1

    # the same 16 validation windows: 4 batches x 2 ranks x 2 windows == 2 batches x 8 windows
    argv = ["--config", str(cfg), "--out", str(tmp_path / "single"), "--set", "train.batch_size=8"]
    argv += ["train.eval_batches=2", with_hellaswag]
    assert main(argv) == 0

    ddp, single = tmp_path / "ddp", tmp_path / "single"
    a, b = records(ddp, "train", "loss"), records(single, "train", "loss")
    assert list(a) == list(range(1, 7))
    for step in a:
        assert a[step] == pytest.approx(b[step], rel=1e-5, abs=1e-6), step
    va, vb = records(ddp, "eval", "val_loss"), records(single, "eval", "val_loss")
    assert list(va) == [3, 6] and va == pytest.approx(vb, rel=1e-5)
    wa = load_checkpoint(checkpoint_path(ddp, 6))
    wb = load_checkpoint(checkpoint_path(single, 6))
    assert wa["sampler"]["world_size"] == 2 and len(wa["rng_ranks"]) == 2
    # AdamW divides by sqrt(v): where a gradient is near 0, rounding differences of the all-reduce order come
    # back lr-sized. So: every weight within 1e-4 (a step moves a weight up to lr = 3e-3), and all but a few
    # within 1e-5 + 1e-4 relative.
    for k, v in wa["model"].items():
        diff = (v - wb["model"][k]).abs()
        assert diff.max() <= 1e-4, k
        assert (diff > 1e-5 + 1e-4 * v.abs()).sum() <= max(1, v.numel() // 1000), k

    # HellaSwag: 3 examples on rank 0, 2 on rank 1, the counts all-reduced
    assert records(ddp, "eval", "hellaswag_n") == records(single, "eval", "hellaswag_n") == {3: 5, 6: 5}
    for acc in records(ddp, "eval", "hellaswag_acc_norm").values():
        assert acc * 5 == pytest.approx(round(acc * 5))
    # `gpt eval --eval-batches` on the DDP run's checkpoint: its 4 batches x 2 ranks x 2 windows, as logged
    out = tmp_path / "eval.json"
    argv = ["--checkpoint", str(ddp), "--data", str(data), "--eval-batches", "4", "--json", str(out), "--quiet"]
    assert eval_main([*argv, "--device", "cpu"]) == 0
    val = json.loads(out.read_text())["val"]
    assert val["batch_size"] == 4 and val["loss"] == pytest.approx(va[6], rel=1e-6)
