"""scripts/gpu_session.sh, what a lent GPU session runs: every call's plan fits the lease, and the calls of the
first lease (plus the training call) run end to end here through their real commands (`dry-run`: the CPU,
Triton's interpreter, tiny shapes), writing what the device machine would send back."""

import csv
import json
import os
import shlex
import subprocess
from pathlib import Path

import pytest

from tritongpt import kernels

ROOT = Path(__file__).resolve().parents[1]
CALLS = "check headline kernels train-step train attention attention-d128 norms mlp sanitize profile ncu".split()
FIRST_LEASE = {"check": 360, "headline": 360}  # both in one 15-minute lease, the machine's start included


def _script(*args, env=None, timeout=180):
    return subprocess.run(["bash", str(ROOT / "scripts" / "gpu_session.sh"), *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})}, cwd=ROOT)  # fmt: skip


def _bench_cases(line: str) -> int:
    """How many cases one planned `gpt bench` step times on a GPU (its plan line parsed as `gpt bench` would)."""
    from tritongpt.bench import cli

    argv = shlex.split(line.split(" -m tritongpt bench ", 1)[1])
    op_cases, train_cases = cli._cases(cli.build_parser().parse_args(argv), "gpu")
    return len(op_cases) + len(train_cases)


def test_every_call_is_planned_within_its_limit_and_selects_cases():
    r = _script("plan")
    assert r.returncode == 0, r.stdout + r.stderr
    calls = [x.split()[1].rstrip(":") for x in r.stdout.splitlines() if x.startswith("call ")]
    assert calls == CALLS
    totals = [int(x.split()[1]) for x in r.stdout.splitlines() if x.strip().startswith("total ")]
    totals = dict(zip(calls, totals, strict=True))
    assert all(totals[c] <= FIRST_LEASE.get(c, 480) for c in calls), totals
    benches = {c: [x for x in block.splitlines() if " -m tritongpt bench " in x]
               for c, block in zip(calls, r.stdout.split("call ")[1:], strict=True)}  # fmt: skip
    assert all(_bench_cases(line) > 0 for lines in benches.values() for line in lines)
    # triton, sdpa-flash, sdpa-cudnn x fwd, bwd, fwd+bwd at B16xH12xT1024xD64; native+compile, triton+compile
    assert [_bench_cases(line) for line in benches["headline"]] == [9, 2]
    check = r.stdout.split("call check:")[1].split("call ")[0]
    steps = [x.split()[0] for x in check.splitlines() if x.strip() and not x.strip().startswith("total")]
    assert steps == ["setup", "verify", "fuzz", "pytest-gpu", "pytest-model"]
    assert "--out \\$OUT/check/verify" in check and "--out \\$OUT/check/fuzz" in check
    assert "--fuzz 200 --dtypes fp16\\,bf16" in check and check.count("TRITONGPT_ATTENTION_AUTOTUNE=0") == 2
    sanitize = r.stdout.split("call sanitize:")[1]
    assert "--tool racecheck --error-exitcode 1" in sanitize and "PYTORCH_NO_CUDA_MEMORY_CACHING=1" in sanitize
    assert sanitize.count("verify --small") == 3
    profile = r.stdout.split("call profile:")[1].split("call ")[0]
    for backend in ("native", "triton"):
        assert f"step --backend {backend}+compile --config gpt2-124m --batch-size 16 --seq-len 1024" in profile
        assert f"--out \\$OUT/profile/profile-{backend}" in profile
    ncu = r.stdout.split("call ncu:")[1]
    assert "ncu --op layer_norm --shape 16384x768 --dtype bf16 --mode fwd --out \\$OUT/ncu/ncu-layer_norm" in ncu
    assert "ncu --op attention --shape 16\\,12\\,1024\\,64 --dtype bf16" in ncu


def test_a_command_over_its_limit_is_refused_before_anything_runs(tmp_path):
    over = _script("check", "headline", env={"OUT": str(tmp_path / "out")})
    assert over.returncode == 2 and "over the 480 s" in over.stderr and not (tmp_path / "out").exists()
    bad = _script("dry-run", "no-such-call")
    assert bad.returncode == 2 and "unknown call: no-such-call" in bad.stderr


@pytest.mark.slow
def test_dry_run_of_the_first_lease_and_the_training_call(tmp_path):
    """check, headline and train through their real commands on this CPU; each step ok, each call's files where
    the device machine would leave them (within its 8 files, 2 folders down), and a second run into the same
    folder refused instead of mixing results."""
    out = tmp_path / "out"
    r = _script("dry-run", "check", "headline", "train", env={"OUT": str(out)}, timeout=900)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    steps = [line for line in r.stdout.splitlines() if line.startswith("== ") and "(budget" not in line]
    assert len(steps) == 10 and all(line.endswith(" s") and ": ok after " in line for line in steps), steps

    assert "checks, 0 failed: all passed" in (out / "check" / "log.txt").read_text()
    files = sorted(str(p.relative_to(out / "check")) for p in (out / "check").rglob("*") if p.is_file())
    assert files == ["fuzz/summary.md", "fuzz/verify.csv", "log.txt", "verify/summary.md", "verify/verify.csv"]
    with open(out / "check" / "verify" / "verify.csv", newline="") as f:
        checks = list(csv.DictReader(f))
    assert {r["variant"] for r in checks} == {"default", "atomic-dq", "tma", "dropout", "determinism"}
    assert {r["op"] for r in checks} == set(kernels.OPS) and all(r["pass"] == "PASS" for r in checks)
    assert "- status: all passed" in (out / "check" / "verify" / "summary.md").read_text()
    with open(out / "check" / "fuzz" / "verify.csv", newline="") as f:
        cases = list(csv.DictReader(f))
    assert {r["op"] for r in cases} == set(kernels.OPS) and "bf16" not in {r["dtype"] for r in cases}
    with open(out / "headline" / "bench" / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    measured = {(r["op"], r["provider"]) for r in rows if r["metric"] == "ms"}
    assert {("attention", "triton"), ("attention", "sdpa-flash")} <= measured
    assert {(r["op"], r["provider"]) for r in rows if r["op"] == "train_step"} >= {
        ("train_step", "native+compile"),
        ("train_step", "triton+compile"),
    }
    metrics = [json.loads(x) for x in (out / "train" / "train" / "metrics.jsonl").read_text().splitlines()]
    assert max(m["step"] for m in metrics) == 3 and (out / "train" / "train" / "loss.png").stat().st_size > 0
    with open(out / "train" / "decode" / "decode.csv", newline="") as f:
        assert {r["provider"] for r in csv.DictReader(f)} >= {"triton-cache", "native-cache"}

    again = _script("dry-run", "check", env={"OUT": str(out)})
    assert again.returncode == 2 and "exists: give each command a new OUT" in again.stderr


def test_a_failing_step_fails_the_command_and_says_so(tmp_path):
    """Every step's outcome is in the call's log; one that fails (here: no Python where it is looked for) makes
    the whole command exit 1 after the others ran."""
    out = tmp_path / "out"
    r = _script("dry-run", "check", env={"OUT": str(out), "PYTHON": str(tmp_path / "no-python")})
    assert r.returncode == 1 and "with FAILED or KILLED steps" in r.stdout
    log = (out / "check" / "log.txt").read_text()
    assert log.count("FAILED (exit 127)") == 4 and "== verify (budget" in log and "== fuzz (budget" in log
