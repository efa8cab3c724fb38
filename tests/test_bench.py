"""`gpt bench --quick` on tiny CPU shapes: the CSV schema, merging, plots, summary; the FLOP/byte counts.

The compile provider runs on one op and one mode only: inductor's first CPU compile alone takes ~10 s here.
"""

import csv
import math
import os

import pytest
import torch

from bench import harness, ops, report, train_step
from bench.cli import main

CPU_ONLY = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU quick path; on a GPU it runs full size")
METRICS = {"ms", "ms_p20", "ms_p80", "GB/s", "TFLOP/s", "frac_ceiling", "speedup_vs_eager", "speedup_vs_torch",
           "speedup_vs_torch-compile", "peak_mem_MB", "tokens/s", "mfu"}  # fmt: skip


def _rows(path):
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == report.COLUMNS
        return list(reader)


@CPU_ONLY
def test_quick_run_writes_csv_plots_and_summary(tmp_path):
    out = tmp_path / "res"
    args = ["--quick", "--ops", "layer_norm", "attention", "train_step", "--providers", "eager", "torch"]
    assert main(args + ["--out", str(out)]) == 0
    rows = _rows(out / "results.csv")
    for r in rows:
        assert r["op"] in ops.OPS + ("train_step", "ceiling"), r
        assert r["metric"] in METRICS, r
        assert math.isfinite(float(r["value"])), r
        assert r["gpu"] and r["torch"] == torch.__version__ and r["date"], r
    ops_seen = {(r["op"], r["provider"], r["mode"]) for r in rows}
    for op in ("layer_norm", "attention"):
        for mode in ops.MODES:
            assert {(op, "eager", mode), (op, "torch", mode)} <= ops_seen
    assert ("train_step", "torch", "fwd+bwd+opt") in ops_seen
    assert {r["mode"] for r in rows if r["op"] == "ceiling"} == {"copy", "matmul"}
    metrics = {r["metric"] for r in rows if r["op"] == "attention" and r["provider"] == "torch"}
    assert {"ms", "ms_p20", "ms_p80", "TFLOP/s", "frac_ceiling", "speedup_vs_eager"} <= metrics

    summary = (out / "summary.md").read_text()
    for heading in ("## Ceilings", "## layer_norm", "## attention", "## Training step", "## Against the anchors"):
        assert heading in summary
    pytest.importorskip("matplotlib")
    for op in ("layer_norm", "attention", "train_step"):
        assert (out / f"{op}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # A second run with other ops merges into the same CSV; compile on one op and mode keeps CI short.
    assert (
        main(["--quick", "--ops", "gelu", "--modes", "fwd", "--providers", "eager", "compile", "--out", str(out)]) == 0
    )
    merged = _rows(out / "results.csv")
    assert {r["op"] for r in merged} >= {"layer_norm", "attention", "train_step", "gelu"}
    assert any(r["op"] == "gelu" and r["provider"] == "compile" and r["metric"] == "GB/s" for r in merged)
    assert (out / "gelu.png").exists() and "## gelu" in (out / "summary.md").read_text()


@CPU_ONLY
def test_triton_provider_needs_gpu_or_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ops.Unavailable, match="--interpret"):
        ops.provider_fn("layer_norm", "triton", torch.device("cpu"))


@CPU_ONLY
@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="kernels were imported without the interpreter")
def test_interpret_runs_triton_on_tiny_shapes(tmp_path):
    out = tmp_path / "res"
    argv = ["--quick", "--interpret", "--ops", "gelu", "--modes", "fwd+bwd", "--providers", "triton", "eager"]
    assert main(argv + ["--out", str(out)]) == 0
    rows = [r for r in _rows(out / "results.csv") if r["op"] == "gelu"]
    assert {r["provider"] for r in rows} == {"triton", "eager"}
    assert any(r["metric"] == "speedup_vs_eager" and r["provider"] == "triton" for r in rows)


def test_report_only_needs_results(tmp_path, capsys):
    assert main(["--report-only", "--out", str(tmp_path)]) == 2
    assert "results.csv" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------
# Counts against ../shared/ANCHORS.md


def test_attention_flops_follow_the_anchor_formula():
    s = {"B": 2, "H": 3, "T": 1024, "D": 64}
    fwd = 4 * 2 * 3 * 1024**2 * 64 / 2  # causal halves
    assert ops.attention_flops(s, "fwd") == fwd
    assert ops.attention_flops(s, "bwd") == 2.5 * fwd
    assert ops.attention_flops(s, "fwd+bwd") == 3.5 * fwd


def test_layer_norm_bytes():
    s, es = {"rows": 10, "width": 8}, 2
    fwd = 2 * 10 * 8 * es + 2 * 8 * es + 2 * 10 * 4
    bwd = 3 * 10 * 8 * es + 8 * es + 2 * 10 * 4 + 2 * 8 * es
    spec = ops.SPECS["layer_norm"]
    assert spec.work(s, es, "fwd") == fwd and spec.work(s, es, "bwd") == bwd
    assert spec.rate(s, es, "fwd", 1.0) == pytest.approx(fwd / 1e-3 / 1e9)
    assert ops.SPECS["gelu"].work(s, 4, "fwd+bwd") == 5 * 10 * 8 * 4


def test_rotation_and_shapes():
    assert harness.rotation_count(10 * 2**20, 50 * 2**20) == 10
    assert harness.rotation_count(2**30, 50 * 2**20) == 1
    assert harness.rotation_count(100, 0) == 1
    assert report.shape_dims("4096x768") == {"rows": 4096, "width": 768}
    assert report.shape_dims("B8xH32xT2048xD64") == {"B": 8, "H": 32, "T": 2048, "D": 64}
    assert report.shape_dims("gpt2-124m B8xT1024") == {"B": 8, "T": 1024}
    t = harness.cpu_bench(lambda: sum(range(100)), warmup_ms=1, rep_ms=2)
    assert t.p20_ms <= t.median_ms <= t.p80_ms and t.reps >= 5


@pytest.mark.parametrize("provider, backend", [("eager", "torch"), ("torch", "native"), ("triton", "triton")])
def test_train_step_providers_build_the_model_on_their_backend(provider, backend):
    """The baseline is the model itself on backend "native", not a patched copy."""
    model, gpt = train_step.build(train_step.quick_config(), provider, torch.device("cpu"))
    assert model is gpt and gpt.config.backend == backend and gpt.ops.backend == backend


def test_decode_bench_writes_the_long_csv(tmp_path, monkeypatch, capsys):
    """`python -m bench.decode` on a tiny model: a table, and rows in the shared long format."""
    import bench.decode
    from bench.report import COLUMNS, read_csv

    cfg = tmp_path / "tiny.toml"
    cfg.write_text("[model]\nvocab_size = 50\ncontext_length = 16\nemb_dim = 32\nn_heads = 2\nn_layers = 1\n")
    monkeypatch.setattr(bench.decode, "RESULTS_DIR", tmp_path / "results")
    argv = ["--config", str(cfg), "--device", "cpu", "--steps", "2", "--lengths", "8", "16", "--backend", "torch"]
    assert bench.decode.main(argv) == 0
    assert "cache tok/s" in capsys.readouterr().out
    (csv_path,) = (tmp_path / "results").glob("*/decode.csv")
    rows = read_csv(csv_path)
    assert list(rows[0]) == list(COLUMNS)
    assert {r["metric"] for r in rows} == {"tokens/s", "prefill_ms", "speedup_vs_no-cache"}
    assert {r["shape"] for r in rows} == {f"{cfg} B1xT8", f"{cfg} B1xT16"}
    assert all(r["value"] > 0 for r in rows)
