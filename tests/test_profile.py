"""`python -m tritongpt.bench.profile`: the step table (torch.profiler) on tiny CPU models, one kernel call in
Triton's interpreter, the ncu command line, and the parser of ncu's CSV.

`data/ncu_details_sample.csv` is hand-made, not captured from a GPU: written from ncu's documented
`--csv --page details` layout (one quoted row per launch, section and metric: "ID", "Process ID", ...,
"Section Name", "Metric Name", "Metric Unit", "Metric Value", then the rule columns; `==PROF==` lines before
the table; thousands separators; "n/a"), with the section and metric names of Nsight Compute's SpeedOfLight,
MemoryWorkloadAnalysis, LaunchStats, Occupancy and WarpStateStats sections and the stall metrics that
`--metrics regex:smsp__average_warps_issue_stalled_...` adds. Its numbers are invented (plausible for an H100),
so what the test checks is the parsing, not a measurement.
"""

import csv
import json
import shlex
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch.autograd import DeviceType

from tritongpt.bench import profile
from tritongpt.bench.profile import main

DATA = Path(__file__).resolve().parent / "data"
CPU_ONLY = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU path; a GPU profiles full size")


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"{profile.PROG}: error: "), err
    assert "\n" not in err and "Traceback" not in err, err
    return err


def _ops(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == profile.OPS_COLUMNS
        return list(reader)


# ---------------------------------------------------------------------------------------------------------
# step


@CPU_ONLY
def test_step_profile_of_the_native_model_shares_out_the_step(tmp_path, capsys):
    out = tmp_path / "prof"
    assert main(["step", "--backend", "native", "--small", "--steps", "2", "--trace", "--out", str(out)]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("profile step native tiny:B4xT64 fp32: ") and "ms/step" in line and str(out) in line
    rows = _ops(out / "ops.csv")
    host = [r for r in rows if r["clock"] == "host"]
    assert rows and not [r for r in rows if r["kind"] == "device"]  # no GPU: host rows only
    step_ms = float(rows[0]["step_ms"])
    assert step_ms > 0 and {r["steps"] for r in rows} == {"2"} and {r["backend"] for r in rows} == {"native"}
    assert all(r["gpu"] and r["torch"] == torch.__version__ and r["triton"] and r["date"] for r in rows)
    total = sum(float(r["pct_of_step"]) for r in host)
    assert 90 <= total <= 100.5, total  # self times partition the step's host time
    by_cat = {}
    for r in host:
        by_cat[r["category"]] = by_cat.get(r["category"], 0.0) + float(r["self_ms"])
    assert {"matmul", "attention", "layer norm", "GELU", "loss", "optimizer"} <= set(by_cat), by_cat
    mm = [r for r in host if r["name"] == "aten::mm"]
    assert mm and mm[0]["category"] == "matmul" and float(mm[0]["calls_per_step"]) > 0
    # the optimizer's elementwise ops are optimizer time, by the op that encloses them
    assert any(r["name"] == "aten::lerp_" and r["category"] == "optimizer" for r in host)
    md = (out / "ops.md").read_text()
    assert "| 1 | `" in md and "## By category" in md and "| matmul |" in md and "| 31 |" not in md
    assert "native" in md and "tiny:B4xT64" in md
    assert "traceEvents" in json.loads((out / "trace.json").read_text())


@CPU_ONLY
def test_step_profile_shows_the_triton_ops_in_the_interpreter(tmp_path, capsys):
    out = tmp_path / "prof"
    argv = ["step", "--backend", "triton", "--small", "--interpret", "--steps", "1", "--batch-size", "1",
            "--seq-len", "8", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    rows = _ops(out / "ops.csv")
    ours = {r["name"]: r["category"] for r in rows if r["name"].startswith("tritongpt::")}
    assert ours.get("tritongpt::layer_norm_bwd") == "layer norm", ours
    assert ours.get("tritongpt::attention_bwd") == "attention", ours
    assert any(c == "loss" for n, c in ours.items() if "linear_cross_entropy" in n), ours
    assert "micro:B1xT8" in capsys.readouterr().out


def test_step_refuses_an_output_folder_that_is_not_new_or_empty(tmp_path, capsys):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["step", "--backend", "native", "--small", "--out", str(out)]) == 2
    assert "not empty" in _error_line(capsys)
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and (out / "keep.txt").read_text() == "mine"
    (tmp_path / "file").write_text("x")
    assert main(["step", "--backend", "native", "--small", "--out", str(tmp_path / "file")]) == 2
    assert "is a file" in _error_line(capsys)
    assert main(["step", "--backend", "native", "--small", "--seq-len", "4096", "--out", str(tmp_path / "n")]) == 2
    assert "context length" in _error_line(capsys) and not (tmp_path / "n").exists()


@pytest.mark.parametrize(
    "name, cat",
    [
        ("_attn_fwd_kernel", "attention"), ("_attn_bwd_dkdv_kernel", "attention"),
        ("pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<64, 128, 128, 4, false, false, cutlass::bfloat16_t>>",
         "attention"),
        ("cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_6_64x64x64_4x1x1_kernel0_0", "attention"),
        ("fmha_cutlassF_bf16_aligned_64x64_rf_sm80(PyTorchMemEffAttention::AttentionKernel<...>::Params)", "attention"),
        ("aten::_scaled_dot_product_flash_attention_for_cpu", "attention"),
        ("_layer_norm_fwd_kernel", "layer norm"), ("triton_per_fused_add_native_layer_norm_3", "layer norm"),
        ("void at::native::(anonymous namespace)::GammaBetaBackwardCUDAKernel_32x32<float, float>(long, long)",
         "layer norm"),
        ("_bias_gelu_fwd_kernel", "GELU"),
        ("void at::native::vectorized_elementwise_kernel<4, at::native::GeluCUDAKernelImpl(at::TensorIteratorBase&)>",
         "GELU"),
        ("_cross_entropy_fwd_kernel", "loss"), ("triton_red_fused__log_softmax_nll_loss_forward_5", "loss"),
        ("void at::native::(anonymous namespace)::cunn_SoftMaxForward<4, float, float, LogSoftMaxForwardEpilogue>",
         "loss"),
        ("void at::native::(anonymous namespace)::multi_tensor_apply_kernel<FusedAdamMathFunctor<float, 4>>",
         "optimizer"),
        ("aten::_fused_adamw_", "optimizer"),
        ("nvjet_tst_128x256_64x4_1x2_h_bz_coopA_NNT", "matmul"),
        ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64_warpgroupsize1x1x1_execute_segment_k_off",
         "matmul"),
        ("aten::mm", "matmul"), ("aten::addmm", "matmul"), ("aten::linear", "matmul"),
        ("triton_tem_fused_addmm_0", "matmul"),
        ("aten::add", "other"), ("Memcpy DtoD (Device -> Device)", "other"), ("aten::embedding", "other"),
        ("void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<float>>", "other"),
    ],
)  # fmt: skip
def test_category_rule(name, cat):
    assert profile.category(name) == cat


def _event(id_, name, device=False, self_us=0.0, total_us=0.0, parent=None, link=0, annotation=False):
    return SimpleNamespace(
        id=id_, name=name, device_type=DeviceType.CUDA if device else DeviceType.CPU, cpu_parent=parent,
        self_cpu_time_total=0.0 if device else self_us, cpu_time_total=0.0 if device else total_us,
        self_device_time_total=self_us if device else 0.0, linked_correlation_id=link, is_user_annotation=annotation,
    )  # fmt: skip


def test_device_rows_take_the_category_of_their_launching_op_and_rank_on_the_device_clock():
    """The GPU path without a GPU: events shaped as torch.profiler's (kernels linked to their op by id)."""
    step = _event(1, "ProfilerStep#3", self_us=100.0, total_us=10_000.0, annotation=True)
    opt = _event(2, "Optimizer.step#AdamW.step", self_us=50.0, total_us=400.0, parent=step, annotation=True)
    mul = _event(3, "aten::mul_", self_us=20.0, total_us=20.0, parent=opt)
    ln = _event(4, "aten::native_layer_norm", self_us=30.0, total_us=30.0, parent=step)
    events = [
        step, opt, mul, ln,
        _event(10, "void at::native::vectorized_elementwise_kernel<4, AUnaryFunctor<float, float, float>>", True,
               1_000.0, link=3),
        _event(11, "void at::native::vectorized_elementwise_kernel<4, AUnaryFunctor<float, float, float>>", True,
               500.0, link=4),
        _event(12, "_attn_fwd_kernel", True, 3_000.0, link=4),  # its own name wins over its launcher's
        _event(13, "Memset (Device)", True, 10.0, link=99),  # no launching op known: its own name decides
        _event(14, "ProfilerStep#3", True, 9_000.0, annotation=True),  # a device-side span: overlaps the kernels
    ]  # fmt: skip
    assert profile.step_ms_of(events, n_steps=1) == 10.0
    rows = profile.step_rows(events, n_steps=1, step_ms=10.0)
    dev = profile.ranked(rows, on_device=True)
    assert [(r["name"][:10], r["category"], r["self_ms"]) for r in dev] == [
        ("_attn_fwd_", "attention", 3.0), ("void at::n", "optimizer", 1.0), ("void at::n", "layer norm", 0.5),
        ("Memset (De", "other", 0.01),
    ]  # fmt: skip
    assert sum(r["pct_of_step"] for r in dev) == pytest.approx(45.1)
    assert [r["name"] for r in profile.ranked(rows, on_device=False)][0] == "ProfilerStep*"
    for e in events:  # a torch whose events do not say which op launched a kernel: each name decides alone
        del e.linked_correlation_id
    unlinked = profile.ranked(profile.step_rows(events, n_steps=1, step_ms=10.0), on_device=True)
    assert [(r["category"], r["self_ms"]) for r in unlinked] == [("attention", 3.0), ("other", 1.5), ("other", 0.01)]
    meta = dict(
        backend="triton+compile", shape="gpt2-124m:B16xT1024", dtype="bf16-autocast", gpu="NVIDIA H100", torch="2.13",
        triton="3.6", date="2026-12-07", command="profile step", step_ms=10.0, steps=1,
    )  # fmt: skip
    md = profile.ops_markdown([{**r, **meta} for r in rows], meta, on_device=True, top=30)
    assert "busy 45.1% of the step" in md and "| (device idle) | 5.490 | 54.9 |" in md
    assert "| 1 | `_attn_fwd_kernel` | attention | 1 | 3.000 | 30.0 |" in md
    assert "| attention | 3.000 | 30.0 |" in md and "aten::mul_" not in md  # device clock: no host rows


# ---------------------------------------------------------------------------------------------------------
# kernel and the ncu command


@pytest.mark.parametrize(
    "argv, what",
    [
        (["--op", "layer_norm", "--shape", "16x64"], "layer_norm fwd 16x64 fp32 triton"),
        (["--op", "attention", "--mode", "bwd", "--shape", "(1, 2, 32, 16)"], "attention bwd B1xH2xT32xD16 fp32"),
        (["--op", "bias_gelu", "--mode", "fwd+bwd", "--shape", "8x256"], "bias_gelu fwd+bwd 8x256"),
        (["--op", "layer_norm", "--provider", "native", "--shape", "16x64"], "layer_norm fwd 16x64 fp32 native"),
    ],
)  # fmt: skip
def test_kernel_runs_one_call_in_the_interpreter(argv, what, capsys):
    assert main(["kernel", "--interpret", "--warmup", "1", *argv]) == 0
    out = capsys.readouterr().out
    assert f"profile kernel {what}" in out and "one call" in out, out


def test_kernel_refuses_a_bad_shape(capsys):
    assert main(["kernel", "--interpret", "--op", "attention", "--shape", "16x12x1024"]) == 2
    assert "attention takes B,H,T,D" in _error_line(capsys)
    assert main(["kernel", "--interpret", "--op", "layer_norm", "--shape", "0x768"]) == 2
    assert "ROWSxWIDTH" in _error_line(capsys)


def test_ncu_command_profiles_our_kernels_in_the_region_and_its_kernel_part_runs(tmp_path, capsys):
    out = tmp_path / "ncu"
    argv = ["ncu", "--op", "layer_norm", "--shape", "16x64", "--dtype", "fp32", "--mode", "bwd", "--out", str(out)]
    assert main([*argv, "--print-command"]) == 0
    cmd = shlex.split(capsys.readouterr().out.strip())
    assert not out.exists()  # printed, not run
    assert cmd[0] == "ncu" and cmd[cmd.index("--profile-from-start") + 1] == "off"
    assert cmd[cmd.index("--clock-control") + 1] == "none"
    assert cmd[cmd.index("--kernel-name") + 1] == "regex:_layer_norm_bwd_kernel"
    assert [cmd[i + 1] for i, a in enumerate(cmd) if a == "--section"] == list(profile.NCU_SECTIONS)
    assert cmd[cmd.index("--metrics") + 1] == r"regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio"
    assert cmd[cmd.index("--page") + 1] == "details" and "--csv" in cmd
    assert cmd[cmd.index("--log-file") + 1] == str(out / "ncu.csv")
    tail = cmd[cmd.index(sys.executable) :]
    assert tail[1:4] == ["-m", "tritongpt.bench.profile", "kernel"]
    assert main([*tail[3:], "--interpret", "--warmup", "1"]) == 0  # what ncu would run, here in the interpreter
    assert "layer_norm bwd 16x64 fp32 triton" in capsys.readouterr().out
    assert profile.kernel_regex("attention", "fwd+bwd") == "_attn_fwd_kernel|_attn_bwd_"


def test_ncu_runs_the_command_and_writes_its_report(tmp_path, capsys):
    """A stand-in for ncu that writes the sample CSV where --log-file says: the whole chain but the GPU."""
    fake = tmp_path / "fake-ncu"
    fake.write_text(
        f"#!{sys.executable}\nimport shutil, sys\n"
        f"shutil.copy({str(DATA / 'ncu_details_sample.csv')!r}, sys.argv[sys.argv.index('--log-file') + 1])\n"
    )
    fake.chmod(0o755)
    out = tmp_path / "ncu"
    assert main(["ncu", "--op", "attention", "--out", str(out), "--ncu", str(fake)]) == 0
    md = (out / "ncu.md").read_text()
    assert "--kernel-name regex:_attn_fwd_kernel" in md and "| 1 | `_attn_fwd_kernel` | 98.32 |" in md
    assert sorted(p.name for p in out.iterdir()) == ["ncu.csv", "ncu.md"]
    assert "wrote" in capsys.readouterr().out
    assert main(["ncu", "--op", "attention", "--out", str(tmp_path / "n2"), "--ncu", str(tmp_path / "none")]) == 2
    assert "no such program" in _error_line(capsys)


# ---------------------------------------------------------------------------------------------------------
# ncu-report


def test_ncu_report_parses_the_documented_csv_layout(tmp_path, capsys):
    launches = profile.parse_ncu_csv((DATA / "ncu_details_sample.csv").read_text())
    assert [(k.id, k.name) for k in launches] == [("0", "_layer_norm_fwd_kernel"), ("1", "_attn_fwd_kernel")]
    ln, attn = launches
    sol, occ = "GPU Speed Of Light Throughput", "Occupancy"
    assert ln.duration_us() == pytest.approx(20.58) and attn.duration_us() == pytest.approx(98.32)
    assert ln.get(sol, "DRAM Throughput") == pytest.approx(72.93) and ln.dram_gbs() == pytest.approx(2440)
    assert attn.dram_gbs() == pytest.approx(205.4)  # Gbyte/s, where the other launch says Tbyte/s
    assert ln.get(occ, "Achieved Occupancy") == pytest.approx(23.41) and ln.get(occ, "Theoretical Occupancy") == 25
    assert ln.get("Launch Statistics", "Registers Per Thread") == 127
    assert ln.get(sol, "Elapsed Cycles") == 32731  # thousands separator
    assert attn.get("Memory Workload Analysis", "L1/TEX Hit Rate") is None  # n/a
    assert [r for r, _ in ln.stalls()[:3]] == ["long_scoreboard", "wait", "short_scoreboard"]
    assert "selected" not in dict(ln.stalls()) and ln.stalls()[0][1] == pytest.approx(18.93)
    assert [(r, s) for r, _, s in ln.rules] == [("AchievedOccupancy", 6.36), ("TheoreticalOccupancy", 27.07),
                                                 ("CPIStall", 66.11)]  # fmt: skip
    assert attn.rules == [("TheoreticalOccupancy", attn.rules[0][1], None)]  # "n/a" speedup; INF rules left out

    out = tmp_path / "rep"
    assert main(["ncu-report", str(DATA / "ncu_details_sample.csv"), "--out", str(out)]) == 0
    md = (out / "ncu.md").read_text()
    assert "| 0 | `_layer_norm_fwd_kernel` | 20.58 | 72.9 | 2440 | 35.1 | 23.4 / 25.0 | 127 | 128 | 528 |" in md
    assert "long_scoreboard 18.9 (69%)" in md and "CPIStall (est. 66%)" in md
    printed = capsys.readouterr().out
    assert "ncu 0 _layer_norm_fwd_kernel: 20.58 us, DRAM 72.9% of peak, occupancy 23.4%, top stall long_scoreboard" in (
        printed
    )


@pytest.mark.parametrize(
    "value, unit, base, want",
    [(1.5, "usecond", "second", 1.5e-6), (1.5, "us", "second", 1.5e-6), (2.0, "msecond", "second", 2e-3),
     (900.0, "ns", "second", 9e-7), (2.4, "Tbyte/second", "byte/second", 2.4e12),
     (205.4, "Gbyte/s", "byte/second", 2.054e11), (7.0, "byte/s", "byte/second", 7.0), (1.0, "%", "second", None)],
)  # fmt: skip
def test_ncu_units_old_and_new_spellings(value, unit, base, want):
    got = profile._scaled(value, unit, base)
    assert got == (None if want is None else pytest.approx(want))


def test_ncu_report_refuses_what_is_not_an_ncu_table(tmp_path, capsys):
    bad = tmp_path / "log.txt"
    bad.write_text("==PROF== Connected to process 1\n==ERROR== The application returned an error code (1).\n")
    assert main(["ncu-report", str(bad), "--out", str(tmp_path / "a")]) == 2
    assert "--page details" in _error_line(capsys)
    empty = tmp_path / "empty.csv"
    empty.write_text((DATA / "ncu_details_sample.csv").read_text().split('"0",')[0])  # the header, no launch
    assert main(["ncu-report", str(empty), "--out", str(tmp_path / "b")]) == 1
    assert "holds no profiled kernel" in capsys.readouterr().err
    assert main(["ncu-report", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "c")]) == 2
    assert "no such file" in _error_line(capsys)


def test_the_module_keeps_gpt_s_output_rules(tmp_path):
    """`python -m tritongpt.bench.profile` through `tritongpt.cli.run_guarded`: a full standard output is one line
    and exit 2, a reader gone is exit 141 and nothing on standard error; the report is written either way."""
    import subprocess

    cmd = [sys.executable, "-m", "tritongpt.bench.profile", "ncu-report", str(DATA / "ncu_details_sample.csv")]
    with open("/dev/full", "w") as full:
        r = subprocess.run([*cmd, "--out", str(tmp_path / "a")], stdout=full, stderr=subprocess.PIPE, text=True)
    assert r.returncode == 2, r.stderr
    assert r.stderr == f"{profile.PROG}: error: standard output: no space left on the device\n", r.stderr
    p = subprocess.Popen([*cmd, "--out", str(tmp_path / "b")], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.close()  # the reader goes away before the first line
    assert p.wait(timeout=60) == 141 and p.stderr.read() == b""
    assert (tmp_path / "b" / "ncu.md").is_file()
