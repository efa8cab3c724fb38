"""`gpt bench` on tiny CPU shapes, its plan, its errors, the report from a written CSV, and the GPU script's plan.

The CPU runs keep to a few cases each (`--match`): what they check is the harness, not the numbers.
"""

import csv
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tritongpt.bench import cli, harness, ops, report, train_step
from tritongpt.bench.cli import main

ROOT = Path(__file__).resolve().parents[1]
CPU_ONLY = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU quick path; on a GPU it runs full size")
METRICS = {"ms", "ms_p20", "ms_p80", "GB/s", "TFLOP/s", "frac_ceiling", "peak_mem_MB", "tokens/s", "mfu"}


def _rows(path):
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == report.COLUMNS
        return list(reader)


def _error_line(capsys) -> str:
    """The one line a refused command prints: `gpt bench: error: ...`, no traceback."""
    err = capsys.readouterr().err.strip()
    assert err.startswith("gpt bench: error: ") and "\n" not in err and "Traceback" not in err, err
    return err


# ---------------------------------------------------------------------------------------------------------
# The plan: every target case, nothing timed


def test_plan_of_the_gpu_suite_holds_every_target_case(capsys, monkeypatch):
    def no_timing(*a, **k):
        raise AssertionError("--plan must time nothing")

    monkeypatch.setattr(harness, "bench_fn", no_timing)
    monkeypatch.setattr(harness, "measure_ceilings", no_timing)
    assert main(["--plan"]) == 0
    lines = set(capsys.readouterr().out.splitlines())
    want = []
    for mode in ("fwd", "bwd", "fwd+bwd"):
        for p in (
            "triton",
            "reference",
            "native",
            "compile",
            "sdpa-flash",
            "sdpa-cudnn",
            "sdpa-efficient",
            "sdpa-math",
        ):
            want.append(f"attention {mode} B16xH12xT1024xD64 bf16 {p}")  # GPT-2 124M's attention
            want.append(f"attention {mode} B16xH12xT1024xD64xP0.1 bf16 {p}")  # with training's dropout
            for t in (256, 512, 2048, 4096, 8192):
                want.append(f"attention {mode} B{16384 // t}xH12xT{t}xD64 bf16 {p}")
            for t in (256, 512, 1024, 2048, 4096, 8192):
                want.append(f"attention {mode} B{16384 // t}xH16xT{t}xD128 bf16 {p}")
        for p in ("triton", "reference", "native", "compile"):
            for w in (768, 1024, 1280, 1600):
                want.append(f"layer_norm {mode} 16384x{w} fp32 {p}")  # autocast: the fp32 residual stream
                want.append(f"add_layer_norm {mode} 16384x{w} bf16+fp32 {p}")  # bf16 branch + fp32 residual
                want.append(f"gelu {mode} 16384x{4 * w} bf16 {p}")
                want.append(f"bias_gelu {mode} 16384x{4 * w} bf16+fp32 {p}")  # bf16 Linear output, fp32 bias
    for p in ("reference", "native", "compile", "triton"):
        want.append(f"linear_cross_entropy fwd+bwd N16384xC768xV50304 bf16 {p}")
    for p in ("triton", "native", "native+compile", "triton+compile", "reference"):
        want.append(f"train_step fwd+bwd+opt gpt2-124m:B16xT1024 bf16-autocast {p}")
    assert set(want) <= lines, sorted(set(want) - lines)[:10]
    assert {"ceiling copy 536870912 bf16 native", "ceiling matmul 8192x8192x8192 bf16 native"} <= lines


def test_plan_is_filtered_and_refuses_an_empty_selection(capsys):
    assert main(["--plan", "--ops", "attention", "--match", "*xD128* * sdpa-cudnn", "--modes", "fwd"]) == 0
    cases = [x for x in capsys.readouterr().out.splitlines() if not x.startswith("ceiling")]
    assert len(cases) == 6 and all(x.startswith("attention fwd ") and x.endswith(" sdpa-cudnn") for x in cases)
    assert main(["--plan", "--match", "no such case"]) == 2
    assert "no case to time" in _error_line(capsys)


def test_providers_name_the_seam():
    """Per-op providers are the implementations (plus compile and the pinned SDPA backends); the training
    backends are the model's backends, compiled or not."""
    assert ops.PROVIDERS == ("triton", "reference", "native", "compile")
    assert set(ops.SDPA_BACKENDS) == {"sdpa-flash", "sdpa-cudnn", "sdpa-efficient", "sdpa-math"}
    assert set(train_step.TRAIN_PROVIDERS) == {"triton", "native", "native+compile", "triton+compile", "reference"}
    assert (
        cli.PROVIDERS == ops.ALL_PROVIDERS and cli.OPS == ops.OPS and cli.TRAIN_PROVIDERS == train_step.TRAIN_PROVIDERS
    )
    assert cli._train_chosen(["native", "compile"]) == ("native+compile", "native")


@pytest.mark.parametrize(
    "provider, backend, compiled",
    [("reference", "reference", False), ("native", "native", False), ("triton", "triton", False),
     ("native+compile", "native", True), ("triton+compile", "triton", True)],
)  # fmt: skip
def test_train_step_providers_build_the_model_on_their_backend(provider, backend, compiled):
    """The baseline is the model itself on backend "native", not a patched copy."""
    model, gpt = train_step.build(train_step.quick_config(), provider, torch.device("cpu"))
    assert (model is not gpt) == compiled and gpt.config.backend == backend and gpt.ops.backend == backend


# ---------------------------------------------------------------------------------------------------------
# Runs on the CPU


@CPU_ONLY
def test_quick_run_writes_csv_plots_and_summary(tmp_path, capsys):
    out = tmp_path / "res"
    argv = ["--quick", "--ops", "layer_norm", "attention", "train_step", "--providers", "reference", "native",
            "sdpa-math", "sdpa-cudnn", "--match", "layer_norm * 256x128 *", "attention * B2xH2xT64xD64 *",
            "train_step *", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    rows = _rows(out / "results.csv")
    for r in rows:
        assert r["op"] in ops.OPS + ("train_step", "ceiling"), r
        assert r["metric"] in METRICS, r
        assert r["method"] == "perf_counter", r
        assert math.isfinite(float(r["value"])), r
        assert r["gpu"] and r["torch"] == torch.__version__ and r["date"], r
    seen = {(r["op"], r["provider"], r["mode"]) for r in rows}
    for mode in ops.MODES:
        assert {("layer_norm", "reference", mode), ("layer_norm", "native", mode)} <= seen
        assert {("attention", "native", mode), ("attention", "sdpa-math", mode)} <= seen
    assert ("train_step", "native", "fwd+bwd+opt") in seen and ("train_step", "reference", "fwd+bwd+opt") in seen
    assert not any(r["provider"] == "sdpa-cudnn" for r in rows)  # no cuDNN on a CPU: skipped, with the reason
    assert {r["mode"] for r in rows if r["op"] == "ceiling"} == {"copy", "matmul"}
    metrics = {r["metric"] for r in rows if r["op"] == "attention" and r["provider"] == "native"}
    assert {"ms", "ms_p20", "ms_p80", "TFLOP/s", "frac_ceiling"} <= metrics

    summary = (out / "summary.md").read_text()
    for heading in ("## Ceilings", "## layer_norm", "## attention", "### attention against every SDPA backend",
                    "## Training step", "## Against the anchors", "## Skipped or failed"):  # fmt: skip
        assert heading in summary
    assert "`sdpa-cudnn`: skipped: " in summary and "`sdpa-cudnn`: skipped: " in (out / "notes.txt").read_text()
    assert "measured, 3 skipped, 0 failed" in capsys.readouterr().out
    pytest.importorskip("matplotlib")
    for op in ("layer_norm", "attention", "train_step"):
        assert (out / f"{op}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # A second run with another op merges into the same CSV; compile on one case keeps CI short.
    argv = ["--quick", "--ops", "gelu", "--modes", "fwd", "--providers", "compile", "--match", "* 256x512 *"]
    assert main(argv + ["--no-plots", "--out", str(out)]) == 0
    merged = _rows(out / "results.csv")
    assert {r["op"] for r in merged} >= {"layer_norm", "attention", "train_step", "gelu"}
    assert any(r["op"] == "gelu" and r["provider"] == "compile" and r["metric"] == "GB/s" for r in merged)
    assert "## gelu" in (out / "summary.md").read_text() and not (out / "gelu.png").exists()
    assert "`sdpa-cudnn`: skipped" in (out / "notes.txt").read_text()  # notes of other ops survive


@CPU_ONLY
@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="kernels were imported without the interpreter")
def test_interpret_runs_triton_on_tiny_shapes(tmp_path):
    out = tmp_path / "res"
    argv = ["--quick", "--interpret", "--ops", "gelu", "--modes", "fwd+bwd", "--providers", "triton", "reference"]
    assert main(argv + ["--no-plots", "--out", str(out)]) == 0
    rows = [r for r in _rows(out / "results.csv") if r["op"] == "gelu"]
    assert {r["provider"] for r in rows} == {"triton", "reference"}
    assert "× reference" in (out / "summary.md").read_text()


@CPU_ONLY
def test_triton_provider_needs_gpu_or_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ops.Unavailable, match="--interpret"):
        ops.provider_fn("layer_norm", "triton", torch.device("cpu"))


def test_lm_head_is_timed_and_skipped_where_an_implementation_lacks_it(monkeypatch):
    """linear_cross_entropy: timed in TFLOP/s of its matmuls (6 N C V for fwd+bwd); an implementation without
    the op is a skipped case with a note, never a failure."""
    from tritongpt import kernels

    cases = ops.plan("quick", ops=("linear_cross_entropy",), providers=("reference", "native"))
    assert [c.line() for c in cases] == [f"linear_cross_entropy fwd+bwd N256xC64xV1000 fp32 {p}" for p in
                                         ("reference", "native")]  # fmt: skip
    cfg = ops.RunConfig(torch.device("cpu"), 0.0, 0.0, 2)
    rows, tally = [], ops.Tally()
    ops.run_cases(cases, cfg, {}, tally, rows.extend, log=lambda *a: None)
    assert (tally.measured, tally.skipped) == (2, 0)
    for provider in ("reference", "native"):
        (rate,) = [r["value"] for r in rows if r["metric"] == "TFLOP/s" and r["provider"] == provider]
        (ms,) = [r["value"] for r in rows if r["metric"] == "ms" and r["provider"] == provider]
        assert rate == pytest.approx(6 * 256 * 64 * 1000 / (ms * 1e-3) / 1e12)

    monkeypatch.delattr(kernels.implementation("native"), "linear_cross_entropy")
    rows, tally = [], ops.Tally()
    ops.run_cases(cases, cfg, {}, tally, rows.extend, log=lambda *a: None)
    assert (tally.measured, tally.skipped) == (1, 1)
    assert 'kernels.implementation("native") has no linear_cross_entropy yet' in tally.notes[-1]


def test_time_budget_is_checked_before_every_case():
    """A deadline passed in the middle of a shape skips the rest of that shape and every later one, counted."""
    cases = ops.plan("quick", ops=("gelu",), providers=("reference", "native"))
    now = [0.0]

    def clock():  # every look at the clock finds it half a second later
        now[0] += 0.5
        return now[0]

    cfg = ops.RunConfig(torch.device("cpu"), 0.0, 0.0, 2, deadline=1.8, clock=clock)
    tally = ops.Tally()
    ops.run_cases(cases, cfg, {}, tally, log=lambda *a: None)
    assert tally.measured == 2 and tally.measured + tally.skipped == len(cases) == 12
    assert tally.notes == ["gelu 256x512 fp32 and later: 10 cases skipped, time budget spent"]


@CPU_ONLY
def test_nothing_measured_is_a_failure(tmp_path, capsys, monkeypatch):
    from tritongpt import kernels

    for name in kernels.IMPLEMENTATIONS:  # an op no implementation has: every case is skipped
        monkeypatch.delattr(kernels.implementation(name), "linear_cross_entropy", raising=False)
    out = tmp_path / "res"
    assert main(["--quick", "--ops", "linear_cross_entropy", "--no-plots", "--out", str(out)]) == 1
    assert "nothing was measured" in capsys.readouterr().err
    assert "has no linear_cross_entropy yet" in (out / "notes.txt").read_text()


@CPU_ONLY
def test_ctrl_c_keeps_what_was_measured(tmp_path, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(ops, "run_cases", interrupted)
    out = tmp_path / "res"
    assert main(["--quick", "--ops", "gelu", "--out", str(out)]) == 130
    assert "interrupted" in capsys.readouterr().err
    assert {r["op"] for r in _rows(out / "results.csv")} == {"ceiling"} and (out / "summary.md").exists()


# ---------------------------------------------------------------------------------------------------------
# Refusals: one line, exit 2, nothing touched


def _garbage(tmp_path: Path, kind: str) -> Path:
    p = tmp_path / f"{kind}.csv"
    if kind == "text":
        p.write_text("hello,world\n1,2\n")
    elif kind == "binary":
        p.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe")
    elif kind == "header-only":
        p.write_text(",".join(report.COLUMNS) + "\n")
    elif kind == "bad-value":
        p.write_text(",".join(report.COLUMNS) + "\n" + "gelu,native,fwd,1x1,fp32,do_bench,ms,fast,g,t,t,d\n")
    return p


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--merge", "x.csv"], "needs --report-only"),
        (["--time-budget", "-1"], "--time-budget must be a positive"),
        (["--time-budget", "0"], "--time-budget must be a positive"),
        (["--time-budget", "nan"], "--time-budget must be a positive"),
        (["--train-batch-sizes", "16", "0"], "--train-batch-sizes must be positive, got 0"),
        (["--report-only"], "--report-only needs --out"),
        (["--report-only", "--plan", "--out", "x"], "exclude each other"),
    ],
)
def test_bad_arguments_are_one_line_errors(argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    assert message in _error_line(capsys)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kind", ["text", "binary", "header-only", "bad-value", "missing"])
def test_garbage_merge_csv_is_refused(kind, tmp_path, capsys):
    src = _garbage(tmp_path, kind) if kind != "missing" else tmp_path / "missing.csv"
    out = tmp_path / "out"
    assert main(["--report-only", "--merge", str(src), "--out", str(out)]) == 2
    assert str(src) in _error_line(capsys)
    assert not out.exists()


def test_output_folder_is_never_someone_elses(tmp_path, capsys):
    """A file, a non-empty folder that is not a results folder, a results folder with a broken results.csv, a
    path that cannot be created: each refused before anything is measured, every file left as it was."""
    a_file = tmp_path / "file"
    a_file.write_text("mine")
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "thesis.tex").write_text("mine")
    broken = tmp_path / "broken"
    broken.mkdir()
    shutil.copy(_garbage(tmp_path, "text"), broken / "results.csv")
    h100 = tmp_path / "h100"
    report.write_csv(_attention_rows(), h100 / "results.csv")
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    for out, message in ((a_file, "is a file"), (theirs, "is not empty"), (broken, "cannot add results"),
                         (a_file / "sub", "cannot write into"), (h100, "holds results of NVIDIA H100")):  # fmt: skip
        assert main(["--quick", "--ops", "gelu", "--out", str(out)]) == 2
        assert message in _error_line(capsys)
        if out is not h100:
            assert main(["--report-only", "--out", str(out)]) == 2
            capsys.readouterr()
    l40 = [dict(r, gpu="NVIDIA L40") for r in _attention_rows()]
    report.write_csv(l40, tmp_path / "l40" / "results.csv")
    before[tmp_path / "l40" / "results.csv"] = (tmp_path / "l40" / "results.csv").read_bytes()
    for argv in (["--merge", str(tmp_path / "l40" / "results.csv"), "--out", str(h100)],
                 ["--merge", str(h100 / "results.csv"), str(tmp_path / "l40" / "results.csv")]):  # fmt: skip
        assert main(["--report-only", *argv]) == 2
        assert "NVIDIA L40" in _error_line(capsys)
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


# ---------------------------------------------------------------------------------------------------------
# The report, from CSVs written here: SDPA backends, timing methods, merging


def _attention_rows(gpu="NVIDIA H100 80GB HBM3", cudagraph=()):
    """fwd at the target shape: triton 1.0 ms; SDPA flash 1.5, cuDNN 1.2, efficient 2.0, math 5.0 (do_bench);
    the providers in `cudagraph` also get a CUDA-graph time, 0.1 ms faster."""
    rows = []
    times = {
        "triton": 1.0,
        "native": 1.5,
        "sdpa-flash": 1.5,
        "sdpa-cudnn": 1.2,
        "sdpa-efficient": 2.0,
        "sdpa-math": 5.0,
    }
    for provider, ms in times.items():
        base = dict(op="attention", provider=provider, mode="fwd", shape="B16xH12xT1024xD64", dtype="bf16")
        rows.append(dict(base, method="do_bench", metric="ms", value=ms))
        rows.append(dict(base, method="do_bench", metric="TFLOP/s", value=26.0 / ms))
        if provider in cudagraph:
            rows.append(dict(base, method="cudagraph", metric="ms", value=ms - 0.1))
    return [dict(r, gpu=gpu, torch="2.11.0", triton="3.6.0", date="2026-11-23") for r in rows]


def test_summary_names_the_best_sdpa_backend_and_our_ratio(tmp_path, capsys):
    report.write_csv(_attention_rows(), tmp_path / "results.csv")
    assert main(["--report-only", "--out", str(tmp_path), "--no-plots"]) == 0
    summary = (tmp_path / "summary.md").read_text()
    line = next(x for x in summary.splitlines() if x.startswith("| B16xH12xT1024xD64 | fwd | do_bench | 1.5 | 1.2 |"))
    assert line.endswith("| `sdpa-cudnn` | 1 | 1.20× |")
    assert "the best SDPA backend" not in summary  # that anchor line is about fwd+bwd, which this CSV lacks
    comparison = report.sdpa_comparison(report._index(report.read_csv(tmp_path / "results.csv")))
    assert [(c["best"], round(c["speedup"], 2)) for c in comparison] == [("sdpa-cudnn", 1.2)]


def test_comparisons_use_cuda_graph_times_only_where_every_provider_has_one(tmp_path):
    idx = report._index(_attention_rows(cudagraph=("triton", "sdpa-cudnn")))
    case = ("attention", "fwd", "B16xH12xT1024xD64", "bf16")
    assert report._compare(idx, case, ["triton", "sdpa-cudnn"])[0] == "cudagraph"
    method, picked = report._compare(idx, case, ["triton", "sdpa-cudnn", "sdpa-flash"])
    assert method == "do_bench" and picked["triton"]["ms"] == 1.0
    c = report.sdpa_comparison(report._index(_attention_rows(cudagraph=("triton", *report.SDPA))))[0]
    assert c["method"] == "cudagraph" and c["speedup"] == pytest.approx(1.1 / 0.9)


def test_merge_combines_calls_into_the_gpus_folder(tmp_path, monkeypatch, capsys):
    """The GPU script's last step: results of separate calls, and the GPU's decode.csv, into one folder."""
    monkeypatch.setattr(cli, "RESULTS_DIR", tmp_path / "results")
    a, b = tmp_path / "attention", tmp_path / "decode"
    rows = _attention_rows()
    report.write_csv(rows[:6], a / "results.csv")
    (a / "notes.txt").write_text("attention B16xH12xT1024xD64 bf16 `sdpa-flash`: skipped: a reason\n")
    report.write_csv(rows[6:], tmp_path / "rows" / "results.csv")
    decode = [dict(op="decode", provider="triton-cache", mode="decode", shape="gpt2-124m B1xT256", dtype="bfloat16",
                   method="perf_counter", metric="tokens/s", value=900.0, gpu=rows[0]["gpu"], torch="2.11.0",
                   triton="3.6.0", date="2026-11-23")]  # fmt: skip
    report.write_csv(decode, b / "decode.csv")
    argv = ["--report-only", "--no-plots", "--merge", str(a / "results.csv"), str(tmp_path / "rows" / "results.csv"),
            str(b / "decode.csv")]  # fmt: skip
    assert main(argv) == 0
    out = tmp_path / "results" / "nvidia-h100-80gb-hbm3"
    assert len(report.read_csv(out / "results.csv")) == len(rows)
    assert report.read_csv(out / "decode.csv")[0]["value"] == 900.0
    assert "a reason" in (out / "summary.md").read_text() and "a reason" in (out / "notes.txt").read_text()
    assert main(argv) == 0 and len(report.read_csv(out / "results.csv")) == len(rows)  # merging again: no duplicates


def test_csv_from_before_the_method_column_still_reads(tmp_path):
    old = tmp_path / "decode.csv"
    columns = [c for c in report.COLUMNS if c != "method"]
    old.write_text(",".join(columns) + "\ndecode,auto-cache,decode,gpt2-124m B1xT256,float32,tokens/s,11.8,cpu,2,3,d\n")
    (row,) = report.read_csv(old)
    assert row["method"] == "" and row["value"] == 11.8
    report.write_csv([], old)
    assert _rows(old)[0]["method"] == ""


# ---------------------------------------------------------------------------------------------------------
# Work counts


def test_attention_flops_follow_the_formula():
    s = {"B": 2, "H": 3, "T": 1024, "D": 64}
    fwd = 4 * 2 * 3 * 1024**2 * 64 / 2  # causal halves
    assert ops.attention_flops(s, "fwd") == fwd
    assert ops.attention_flops(s, "bwd") == 2.5 * fwd
    assert ops.attention_flops(s, "fwd+bwd") == 3.5 * fwd
    assert ops.linear_cross_entropy_flops({"N": 2, "C": 3, "V": 5}, "fwd+bwd") == 6 * 2 * 3 * 5


def test_bytes_count_each_tensor_in_its_own_dtype():
    s = {"rows": 10, "width": 8}
    n, c = 10, 8
    spec = ops.SPECS["layer_norm"]
    assert spec.work(s, torch.bfloat16, torch.bfloat16, "fwd") == 2 * n * c * 2 + 2 * c * 2 + 2 * n * 4
    assert spec.work(s, torch.bfloat16, torch.bfloat16, "bwd") == 3 * n * c * 2 + c * 2 + 2 * n * 4 + 2 * c * 2
    assert spec.rate(s, "bf16", "fwd", 1.0) == pytest.approx((2 * n * c * 2 + 2 * c * 2 + 2 * n * 4) / 1e-3 / 1e9)
    # add_layer_norm under autocast: x bf16 + residual fp32 -> y, sum fp32; backward writes dx bf16 and dres fp32.
    add = ops.SPECS["add_layer_norm"]
    assert add.work(s, torch.bfloat16, torch.float32, "fwd") == n * c * (2 + 4 + 8) + 2 * c * 4 + 2 * n * 4
    assert add.work(s, torch.bfloat16, torch.float32, "bwd") == 3 * n * c * 4 + n * c * 6 + 3 * c * 4 + 2 * n * 4
    assert add.work(s, torch.float32, torch.float32, "bwd") == 3 * n * c * 4 + n * c * 4 + 3 * c * 4 + 2 * n * 4
    assert ops.SPECS["gelu"].work(s, torch.float32, torch.float32, "fwd+bwd") == 5 * n * c * 4
    assert ops.SPECS["bias_gelu"].work(s, torch.bfloat16, torch.float32, "fwd") == 2 * n * c * 2 + c * 4


def test_inputs_have_the_dtypes_autocast_passes():
    (x, r, w, b, _), _ = ops.make_sets("add_layer_norm", {"rows": 4, "width": 8}, "bf16+fp32", torch.device("cpu"))[0]
    assert (x.dtype, r.dtype, w.dtype, b.dtype) == (torch.bfloat16,) + (torch.float32,) * 3
    (q, k, v), kw = ops.make_sets(
        "attention", {"B": 1, "H": 2, "T": 8, "D": 16, "P": 0.1}, "bf16", torch.device("cpu")
    )[0]
    assert q.dtype == torch.bfloat16 and kw == {"causal": True, "dropout_p": 0.1}


def test_rotation_and_shapes():
    assert harness.rotation_count(10 * 2**20, 50 * 2**20) == 10
    assert harness.rotation_count(2**30, 50 * 2**20) == 1
    assert harness.rotation_count(100, 0) == 1
    assert report.shape_dims("4096x768") == {"rows": 4096, "width": 768}
    assert report.shape_dims("B8xH12xT2048xD64xP0.1") == {"B": 8, "H": 12, "T": 2048, "D": 64, "P": 0.1}
    assert report.shape_dims("gpt2-124m:B8xT1024") == {"B": 8, "T": 1024}
    assert report.shape_dims("gpt2-124m B1xT256") == {"B": 1, "T": 256}
    t = harness.cpu_bench(lambda: sum(range(100)), warmup_ms=1, rep_ms=2)
    assert t.p20_ms <= t.median_ms <= t.p80_ms and t.reps >= 5 and t.method == "perf_counter"


# ---------------------------------------------------------------------------------------------------------
# CUDA: CUDA-graph timing of small cases, every SDPA backend


@pytest.mark.gpu
def test_small_cases_get_cuda_graph_times_in_every_mode():
    """LayerNorm at 16384 x 768 and a small attention (tens of microseconds): every mode of every provider is
    captured and replayed from a CUDA graph, our attention kernels through their capture path."""
    cases = ops.plan("gpu", ops=("layer_norm",), providers=("triton", "native"), match=("* 16384x768 *",))
    small = (("B", 4), ("H", 12), ("T", 256), ("D", 64))
    cases += [ops.Case("attention", m, small, "bf16", p) for p in ("triton", "native") for m in ops.MODES]
    cfg = ops.RunConfig(torch.device("cuda"), warmup_ms=5.0, rep_ms=20.0)
    rows, tally = [], ops.Tally()
    ops.run_cases(cases, cfg, {}, tally, rows.extend, log=lambda *a: None)
    assert tally.measured == len(cases) == 12 and not tally.failed, tally.notes
    graph = {(r["op"], r["provider"], r["mode"]) for r in rows if r["method"] == "cudagraph" and r["metric"] == "ms"}
    assert graph == {(c.op, c.provider, c.mode) for c in cases}, tally.notes


@pytest.mark.gpu
def test_sdpa_backends_run_or_say_why():
    cases = ops.plan("gpu", ops=("attention",), modes=("fwd+bwd",), match=("* B16xH12xT1024xD64 * sdpa-*",))
    cfg = ops.RunConfig(torch.device("cuda"), warmup_ms=5.0, rep_ms=20.0)
    rows, tally = [], ops.Tally()
    ops.run_cases(cases, cfg, {}, tally, rows.extend, log=lambda *a: None)
    ran = {r["provider"] for r in rows}
    assert {"sdpa-flash", "sdpa-math"} <= ran and not tally.failed, tally.notes
    assert len(ran) + tally.skipped == 4


def test_decode_bench_writes_the_long_csv_where_told(tmp_path, capsys):
    """`python -m tritongpt.bench.decode` on a tiny model: a table, and rows in the shared long format, under --out."""
    import tritongpt.bench.decode

    cfg = tmp_path / "tiny.toml"
    cfg.write_text("[model]\nvocab_size = 50\ncontext_length = 16\nemb_dim = 32\nn_heads = 2\nn_layers = 1\n")
    argv = ["--config", str(cfg), "--device", "cpu", "--steps", "2", "--lengths", "8", "16", "--backend", "native"]
    assert tritongpt.bench.decode.main(argv + ["--out", str(tmp_path / "gpu")]) == 0
    assert "cache tok/s" in capsys.readouterr().out
    rows = report.read_csv(tmp_path / "gpu" / "decode.csv")
    assert {r["metric"] for r in rows} == {"tokens/s", "prefill_ms", "speedup_vs_no-cache"}
    assert {r["shape"] for r in rows} == {f"{cfg} B1xT8", f"{cfg} B1xT16"} and {r["method"] for r in rows} == {
        "perf_counter"
    }
    assert all(r["value"] > 0 for r in rows)
    for bad in (["--device", "banana"], ["--steps", "-1"], ["--config", "no-such-preset"]):
        with pytest.raises(SystemExit) as e:
            tritongpt.bench.decode.main(argv + bad)
        assert e.value.code == 2


def test_plan_survives_a_closed_pipe():
    r = subprocess.run(
        f"{sys.executable} -m tritongpt bench --plan | head -1", shell=True, capture_output=True, text=True, cwd=ROOT,
        timeout=120,
    )  # fmt: skip
    assert r.stdout == "ceiling copy 536870912 bf16 native\n" and "Traceback" not in r.stderr, r.stderr
