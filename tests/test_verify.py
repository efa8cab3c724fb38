"""`gpt verify`: the table, the exit status, and that it catches a wrong kernel and an unwritten output; --out's
files (CSV columns, summary, refusal of a used folder, whole files at every point of a run); the variants
(atomic-dQ, TMA, dropout, determinism) running the paths they name and failing where they should; --small,
--dtypes, --budget and --jobs."""

import csv
import itertools
import json
import math
import subprocess

import pytest
import torch

import tritongpt.kernels._common
import tritongpt.kernels.attention as attention_module
import tritongpt.kernels.gelu as gelu_module
from tritongpt import cli, fuzz, kernels, verify

reference = kernels.implementation("reference")
triton_ops = kernels.implementation("triton")


def test_quick_run_passes_and_prints_the_table(capsys):
    assert cli.main(["verify", "--quick", "--ops", "gelu,layer_norm", "--variants", "none"]) == 0
    out = capsys.readouterr().out
    assert verify.HEADER in out
    assert f"{'gelu':<20} {'default':<11} {'3x7x257':<20} fp16  dx " in out
    assert f"{'layer_norm':<20} {'default':<11} {'2x1000':<20} fp32  dweight " in out
    assert "FAIL" not in out and "0 failed: all passed" in out
    assert tritongpt.kernels._common.POISON_OUTPUTS is False  # the debug flag is put back


def test_a_wrong_kernel_fails(monkeypatch, capsys):
    monkeypatch.setattr(triton_ops, "bias_gelu", lambda x, bias: reference.bias_gelu(x, bias) * 1.001)
    assert verify.main(["--quick", "--ops", "bias_gelu", "--variants", "none"]) == 1
    out = capsys.readouterr().out
    assert "FAIL (bound" in out and "FAILED" in out


def test_an_unwritten_output_fails(monkeypatch, capsys):
    """With the launches skipped, the poisoned (NaN) outputs reach the comparison."""

    class _NoLaunch:
        def __getitem__(self, grid):
            return lambda *args, **kwargs: None

    monkeypatch.setattr(gelu_module, "launcher", lambda kernel: _NoLaunch())
    assert verify.main(["--quick", "--ops", "gelu", "--variants", "none"]) == 1
    assert "non-finite values where the reference is finite" in capsys.readouterr().out


def test_a_crashing_kernel_is_a_failed_row(monkeypatch, capsys):
    def crash(x):
        raise RuntimeError("boom")

    monkeypatch.setattr(triton_ops, "gelu", crash)
    assert verify.main(["--quick", "--ops", "gelu", "--variants", "none"]) == 1
    assert "FAIL (RuntimeError: boom)" in capsys.readouterr().out


def test_a_missing_kernel_is_a_failure(monkeypatch, capsys):
    monkeypatch.delattr(triton_ops, "attention")
    assert verify.main(["--quick", "--ops", "attention,gelu", "--variants", "none"]) == 1
    out = capsys.readouterr().out
    assert "not available" in out and "FAILED" in out


def test_native_ops_are_judged_by_the_same_rule(capsys):
    """torch's own ops pass, except F.layer_norm's weight gradient at width 1: there x - mean is exactly 0, and
    torch's fused kernel leaves ~1e-5 of rounding where the answer is 0 (its backward does not form x - mean
    the way its forward did). The table shows it; our kernels get it exact."""
    assert verify.main(["--quick", "--backend", "native", "--ops", "attention,gelu,bias_gelu"]) == 0
    out = capsys.readouterr().out
    assert "native vs reference" in out and "attention" in out and "FAIL" not in out
    assert verify.main(["--quick", "--backend", "native", "--ops", "layer_norm"]) == 1
    failed = [line for line in capsys.readouterr().out.splitlines() if "FAIL (" in line]
    assert failed and all(
        line.split()[:3] == ["layer_norm", "default", "1x1"] and " dweight " in line for line in failed
    )


@pytest.mark.parametrize("ops", ["", ",", " , "])
def test_no_op_is_a_usage_error_not_a_pass(ops):
    with pytest.raises(SystemExit) as e:
        verify.main(["--quick", "--ops", ops])
    assert e.value.code == 2


def test_unknown_op_is_a_usage_error():
    with pytest.raises(SystemExit) as e:
        verify.main(["--quick", "--ops", "softmax"])
    assert e.value.code == 2


def test_rule_uses_the_reference_error_as_budget():
    hi = torch.linspace(-1, 1, 101, dtype=torch.float64)
    ref = (hi + 1e-3).float()
    assert verify.compare("out", (hi + 1.9e-3).float(), ref, hi, factor=2.0).ok
    assert not verify.compare("out", (hi + 2.5e-3).float(), ref, hi, factor=2.0).ok
    nan_out = (hi + 0).float()
    nan_out[3] = float("nan")
    c = verify.compare("out", nan_out, ref, hi, factor=2.0)
    assert not c.ok and "non-finite" in c.note


def test_exact_reference_gets_a_floor_of_the_ops_magnitude():
    """A result that is exactly 0 in any precision (attention's dq at T = 1) sets no error budget; the floor is
    then a few ulps of the op's magnitude, not of the zero itself."""
    hi = torch.zeros(80, dtype=torch.float64)
    ref = hi.float()
    kernel = ref + 1.5e-6  # ~13 ulps of 1, ~3 ulps of 4
    assert not verify.compare("dq", kernel, ref, hi, factor=3.0).ok
    assert verify.compare("dq", kernel, ref, hi, factor=3.0, scale=4.0).ok
    inexact = (hi + 1e-7).float()  # the reference has its own error: the budget comes from it, not from scale
    assert not verify.compare("dq", ref + 2e-6, inexact, hi, factor=3.0, scale=4.0).ok


@pytest.mark.parametrize("seed", [6, 9])
def test_single_key_attention_gradients_pass_for_seeds_that_once_failed(seed):
    assert verify.main(["--quick", "--ops", "attention", "--seed", str(seed), "--variants", "none"]) == 0


# --- --out: the files ----------------------------------------------------------------------------------------


def _read(folder):
    with open(folder / "verify.csv", newline="") as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


def test_out_writes_one_row_per_check_and_a_summary(tmp_path, capsys):
    out = tmp_path / "v"
    argv = ["--quick", "--ops", "gelu", "--variants", "determinism", "--dtypes", "fp16", "--out", str(out)]
    assert verify.main(argv) == 0
    columns, rows = _read(out)
    assert tuple(columns) == verify.CSV_COLUMNS
    assert sorted(p.name for p in out.iterdir()) == ["summary.md", "verify.csv"]  # no temporary or lock file left
    rule = [r for r in rows if r["variant"] == "default"]
    assert [(r["shape"], r["check"]) for r in rule] == [
        (s, c) for s in ("1x1", "3x7x257", "2x1000") for c in ("out", "dx")
    ]
    assert all(r["op"] == "gelu" and r["dtype"] == "fp16" and r["pass"] == "PASS" for r in rows)
    assert all(0 <= float(r["max_err"]) <= float(r["bound"]) and float(r["seconds"]) >= 0 for r in rule)
    repeat = [r for r in rows if r["variant"] == "determinism"]
    assert [(r["shape"], r["check"], r["max_err"]) for r in repeat] == [
        ("3x7x257", c, "0.000e+00") for c in ("out", "dx")
    ]
    assert len({r["gpu"] for r in rows}) == 1 and rows[0]["gpu"].startswith("cpu")
    assert {r["torch"] for r in rows} == {torch.__version__}
    summary = (out / "summary.md").read_text()
    assert "- status: all passed" in summary and "- 8 checks, 0 failed" in summary
    assert "| gelu | default | fp16 | 6 | 0 |" in summary and "| gelu | determinism | fp16 | 2 | 0 |" in summary
    assert summary.rstrip().endswith("None.") and "--out " + str(out) in summary


@pytest.mark.parametrize("existing", ["file", "folder"])
def test_out_refuses_a_used_place_and_changes_nothing(tmp_path, capsys, existing):
    out = tmp_path / "v"
    if existing == "file":
        out.write_text("mine")
    else:
        out.mkdir()
        (out / "notes.txt").write_text("mine")
    assert verify.main(["--quick", "--ops", "gelu", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("gpt verify: error: --out ") and "\n" not in err
    assert ("is a file" if existing == "file" else "is not empty") in err
    assert (out.read_text() if existing == "file" else sorted(p.name for p in out.iterdir())) in ("mine", ["notes.txt"])


def test_an_empty_folder_is_taken(tmp_path):
    (tmp_path / "v").mkdir()
    assert (
        verify.main(
            ["--quick", "--ops", "gelu", "--variants", "none", "--dtypes", "fp32", "--out", str(tmp_path / "v")]
        )
        == 0
    )
    assert len(_read(tmp_path / "v")[1]) == 6


def test_a_folder_another_run_is_writing_is_refused(tmp_path, capsys):
    from tritongpt.files import folder_lock

    out = tmp_path / "v"
    out.mkdir()
    with folder_lock(out, "gpt verify"):
        assert verify.main(["--quick", "--ops", "gelu", "--variants", "none", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"gpt verify: error: {out} is in use by gpt verify (pid ") and "\n" not in err
    assert list(out.iterdir()) == []


def test_failures_are_rows_and_listed_in_the_summary(tmp_path, monkeypatch):
    monkeypatch.setattr(triton_ops, "bias_gelu", lambda x, bias: reference.bias_gelu(x, bias) * 1.001)
    out = tmp_path / "v"
    assert (
        verify.main(["--quick", "--ops", "bias_gelu", "--variants", "none", "--dtypes", "fp32", "--out", str(out)]) == 1
    )
    failed = [r for r in _read(out)[1] if r["pass"] == "FAIL"]
    assert failed and all(float(r["max_err"]) > float(r["bound"]) and "> bound" in r["note"] for r in failed)
    summary = (out / "summary.md").read_text()
    assert "- status: FAILED" in summary and f"{len(failed)} failed" in summary
    assert summary.count("| bias_gelu | default | ") == 1 + len(failed)  # the count row, one row per failure


def test_a_run_stopped_midway_leaves_whole_files_that_say_so(tmp_path, monkeypatch):
    """Both files are rewritten (temporary file, rename) after every case: killed after two cases, they hold those
    two cases' rows and say the run had not ended."""
    real, calls = verify.run_case, itertools.count()

    def killed_at_the_third(*args):
        if next(calls) == 2:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(verify, "run_case", killed_at_the_third)
    out = tmp_path / "v"
    with pytest.raises(KeyboardInterrupt):
        verify.main(["--quick", "--ops", "gelu", "--variants", "none", "--dtypes", "fp32", "--out", str(out)])
    assert [r["shape"] for r in _read(out)[1]] == ["1x1", "1x1", "3x7x257", "3x7x257"]
    assert "- status: INCOMPLETE: the run had not ended" in (out / "summary.md").read_text()
    assert sorted(p.name for p in out.iterdir()) == ["summary.md", "verify.csv"]


def test_budget_stops_starting_cases_and_says_what_was_left(tmp_path, capsys):
    out = tmp_path / "v"
    assert verify.main(["--quick", "--ops", "gelu,bias_gelu", "--budget", "1e-9", "--out", str(out)]) == 1
    assert _read(out)[1] == []
    summary = (out / "summary.md").read_text()
    assert "INCOMPLETE: --budget 1e-09 s reached" in summary
    assert "not run: gelu default, bias_gelu default, gelu determinism, bias_gelu determinism" in summary


# --- the variants -----------------------------------------------------------------------------------------


def test_atomic_dq_and_tma_variants_run_the_paths_they_name(tmp_path, monkeypatch):
    """Each variant's rows come from launches of its own path: the fused dK/dV kernel with atomic dQ, the forward
    loading K/V through tensor descriptors; the default rows from neither."""
    launches, real = [], attention_module._launch

    def spy(kernel, grid, args, meta, dtype, interpreter_meta=None):
        launches.append((meta.get("ATOMIC_DQ", False), (interpreter_meta or {}).get("KV_TMA", False)))
        return real(kernel, grid, args, meta, dtype, interpreter_meta)

    monkeypatch.setattr(attention_module, "_launch", spy)
    out = tmp_path / "v"
    argv = ["--quick", "--ops", "attention", "--variants", "atomic-dq,tma", "--dtypes", "fp32", "--out", str(out)]
    assert verify.main(argv) == 0
    rows = _read(out)[1]
    per_variant = {v: [r for r in rows if r["variant"] == v] for v in ("default", "atomic-dq", "tma")}
    assert [len(x) for x in per_variant.values()] == [16, 8, 8]  # T = 1 and 37 by D = 16, 80; T = 37 for the paths
    assert {r["note"] for r in per_variant["tma"]} == {"K/V by tensor descriptors"}
    # per case: forward, dK/dV, dQ (the deterministic backward) or forward, fused dK/dV (atomic dQ)
    assert (
        launches
        == [(False, False)] * 3 * 4 + [(False, False), (True, False)] * 2 + [(False, True), *[(False, False)] * 2] * 2
    )
    assert attention_module._DETERMINISTIC and not attention_module._KV_TMA_ONLY  # put back


def test_dropout_variant_checks_masks_seeds_and_p0(tmp_path, monkeypatch):
    out = tmp_path / "v"
    argv = ["--quick", "--ops", "attention", "--variants", "dropout", "--dtypes", "fp32", "--out", str(out)]
    assert verify.main(argv) == 0
    rows = [r for r in _read(out)[1] if r["variant"] == "dropout"]
    checks = {
        shape: [r["check"] for r in rows if r["shape"] == shape] for shape in dict.fromkeys(r["shape"] for r in rows)
    }
    assert checks == {"1x2x37x80 p0.1": ["out", "dq", "dk", "dv", "same seed", "kept", "other seed"],
                      "1x2x37x80 p0": ["out", "dq", "dk", "dv", "p=0"]}  # fmt: skip
    kept = next(r for r in rows if r["check"] == "kept")
    assert 0 <= float(kept["max_err"]) <= float(kept["bound"]) < 0.1  # |kept fraction - 0.9| within its bound
    real = attention_module.dropout_keep_mask  # a mask that ignores the seed's last bit: seeds 0 and 1 agree
    monkeypatch.setattr(attention_module, "dropout_keep_mask", lambda seed, *a: real(seed // 2 * 2, *a))
    out2 = tmp_path / "v2"
    assert verify.main([*argv[:-1], str(out2)]) == 1
    assert [r["check"] for r in _read(out2)[1] if r["pass"] == "FAIL"] == ["other seed"]


def test_determinism_variant_fails_a_kernel_that_differs_run_to_run(tmp_path, monkeypatch):
    calls = itertools.count()
    monkeypatch.setattr(triton_ops, "gelu", lambda x: reference.gelu(x) + next(calls) * 2.0**-10)
    out = tmp_path / "v"
    assert (
        verify.main(["--quick", "--ops", "gelu", "--variants", "determinism", "--dtypes", "fp32", "--out", str(out)])
        == 1
    )
    repeat = [r for r in _read(out)[1] if r["variant"] == "determinism"]
    assert [r["check"] for r in repeat] == ["out", "dx"] and repeat[0]["pass"] == "FAIL"
    assert "not bit-identical: 5397 of 5397 elements differ" in repeat[0]["note"]


def test_bit_identical_names_nan_and_differences():
    nan = torch.tensor([1.0, 2.0, float("nan")])
    c = verify._bit_identical("out", nan, nan.clone())  # NaN is never a pass, even in the same place twice
    assert not c.ok and c.err == 0 and c.note == "2 NaN"
    c = verify._bit_identical("out", torch.tensor([1.0, 2.0]), torch.tensor([1.0, 2.5]))
    assert not c.ok and c.err == 0.5 and c.note == "not bit-identical: 1 of 2 elements differ" and math.isnan(c.ratio)
    assert verify._bit_identical("out", torch.ones(2), torch.ones(2)).ok


def test_small_is_one_attention_and_one_layer_norm(capsys):
    assert verify.main(["--small"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.endswith("PASS")]
    assert [line.split()[:4] for line in rows] == [["attention", "default", "1x2x97x64", "fp32"]] * 4 + [
        ["layer_norm", "default", "3x7x257", "fp32"]] * 4  # fmt: skip


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--dtypes", "bf16"], "--dtypes bf16 needs a GPU"),
        (["--dtypes", "fp64"], "unknown dtypes fp64; choose from fp32, fp16, bf16"),
        (["--variants", "fast"], "unknown variants fast"),
        (["--small", "--variants", "tma"], "--small runs its own two cases"),
        (["--fuzz", "2", "--variants", "tma"], "--variants chooses the grid's extra checks"),
        (["--backend", "native", "--variants", "tma"], "--variants check the triton backend's own paths"),
        (["--case", '{"op": "gelu"}', "--out", "x"], "--case runs one case alone, without --out"),
        (["--jobs", "0"], "argument --jobs: must be >= 1, got 0"),
        (["--jobs", "2", "--small"], "--jobs is for the grid"),
        (["--helper", "2/2"], "--helper takes K/N with 0 <= K < N"),
    ],
)
def test_usage_errors_of_the_grid_options(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        verify.main(["--quick", *argv])
    assert e.value.code == 2
    assert message in capsys.readouterr().err.strip().splitlines()[-1]


# --- --jobs: helpers that compile ahead -------------------------------------------------------------------


def test_a_helper_runs_its_share_of_the_cases(capsys):
    """--helper K/N: every N-th case from the K-th (gelu's quick grid in fp32: 1x1, 3x7x257, 2x1000)."""
    assert verify.main(["--quick", "--ops", "gelu", "--variants", "none", "--dtypes", "fp32", "--helper", "1/2"]) == 0
    shapes = {line.split()[2] for line in capsys.readouterr().out.splitlines() if line.endswith("PASS")}
    assert shapes == {"3x7x257"}


def test_jobs_starts_helpers_on_the_same_cases_and_ends_them(tmp_path, monkeypatch):
    started = []

    class FakeHelper:
        def __init__(self, cmd, **kwargs):
            self.cmd, self.kwargs, self.ended = cmd, kwargs, False
            started.append(self)

        def terminate(self):
            self.ended = True

        def wait(self, timeout=None):
            return 0

    monkeypatch.setattr(subprocess, "Popen", FakeHelper)
    out = tmp_path / "v"
    argv = ["--quick", "--ops", "gelu", "--variants", "none", "--dtypes", "fp32", "--jobs", "3", "--out", str(out)]
    assert verify.main(argv) == 0
    assert [h.cmd[h.cmd.index("--helper") + 1] for h in started] == ["0/2", "1/2"] and all(h.ended for h in started)
    cmd = started[0].cmd
    assert cmd[1:4] == ["-m", "tritongpt", "verify"] and "--out" not in cmd and "--jobs" not in cmd
    assert cmd[cmd.index("--ops") + 1] == "gelu" and cmd[cmd.index("--dtypes") + 1] == "fp32"
    assert started[0].kwargs["stdout"] == subprocess.DEVNULL
    assert len(_read(out)[1]) == 6  # this process ran every case itself


# --- --fuzz --out -----------------------------------------------------------------------------------------


def test_fuzz_out_writes_one_replayable_row_per_case(tmp_path):
    out = tmp_path / "f"
    assert verify.main(["--fuzz", "3", "--ops", "gelu", "--dtypes", "fp16", "--out", str(out)]) == 0
    rows = _read(out)[1]
    assert [r["check"].split(":")[0] for r in rows] == ["case 0", "case 1", "case 2"]
    assert {r["variant"] for r in rows} == {"fuzz"} and all(r["pass"] == "PASS" for r in rows)
    for r in rows:
        case = json.loads(r["note"].removeprefix("case "))
        again = fuzz.build("gelu", torch.device("cpu"), given=case, strict=True)
        assert fuzz.failure_kind(fuzz.run_case(again)) == ""
        assert case.get("invalid") or again.draw.case["dtype"] == "fp16"
    assert "- 3 cases, 0 failed" in (out / "summary.md").read_text()
