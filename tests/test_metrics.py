"""A training run's metrics.jsonl, progress line and plot (`tritongpt.metrics.MetricsLog`), without a training run."""

import json
import math

import pytest
import torch

import tritongpt.metrics
from tritongpt.metrics import MetricsLog


def strict_records(path):
    """The records of a metrics.jsonl, parsed by a strict JSON parser (bare NaN and Infinity refused)."""

    def refuse(name):
        raise ValueError(f"not strict JSON: {name}")

    return [json.loads(line, parse_constant=refuse) for line in path.read_text(encoding="utf-8").splitlines()]


def step_result(step, loss=2.5, dt=0.5):
    return {"step": step, "loss": loss, "lr": 1e-3, "grad_norm": 0.7, "skipped": False, "dt": dt}


class Clock:
    """time.perf_counter for the metrics module, moved by hand."""

    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock(monkeypatch):
    c = Clock()
    monkeypatch.setattr(tritongpt.metrics.time, "perf_counter", c)
    return c


def test_records_are_strict_json_with_null_for_non_finite_numbers(tmp_path):
    log = MetricsLog(tmp_path / "run", tokens_per_step=8, max_steps=10)
    log.record({"kind": "eval", "step": 3, "val_loss": math.nan, "extra": [math.inf, 1.5], "nested": {"x": -math.inf}})
    log.skipped(step_result(4, loss=math.nan), in_a_row=2)
    assert strict_records(tmp_path / "run" / "metrics.jsonl") == [
        {"kind": "eval", "step": 3, "val_loss": None, "extra": [None, 1.5], "nested": {"x": None}},
        {"kind": "skip", "step": 4, "loss": None, "grad_norm": 0.7, "in_a_row": 2},
    ]


def test_a_train_record_every_log_interval_and_at_the_last_step(tmp_path, clock):
    log = MetricsLog(tmp_path, tokens_per_step=100, max_steps=7, log_interval=3, flops_per_token=6.0, peak_flops=1200.0)
    log.start(0)
    for step in range(1, 8):
        clock.now += 0.5  # 200 tokens/s
        log.step(step_result(step))
    recs = strict_records(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in recs] == [3, 6, 7] and all(r["kind"] == "train" for r in recs)
    assert [r["tokens"] for r in recs] == [300, 600, 700]
    assert [r["time_s"] for r in recs] == [1.5, 3.0, 3.5]
    for r in recs:  # the rate since the previous record, and MFU = rate * FLOPs per token / peak
        assert r["tokens_per_s"] == pytest.approx(200.0) and r["mfu"] == pytest.approx(200.0 * 6.0 / 1200.0)
        assert (r["loss"], r["lr"], r["grad_norm"]) == (2.5, 1e-3, 0.7) and "peak_mem_gib" not in r  # CPU: no peak


def test_without_a_peak_mfu_is_null_and_the_window_restarts_at_start(tmp_path, clock):
    log = MetricsLog(tmp_path, tokens_per_step=100, max_steps=4, log_interval=2, world_size=2)
    log.start(2)  # a resumed run: the window and the time start again
    clock.now += 10.0
    log.step(step_result(3))
    clock.now += 10.0
    log.step(step_result(4))
    (rec,) = strict_records(tmp_path / "metrics.jsonl")
    assert rec["step"] == 4 and rec["tokens_per_s"] == pytest.approx(10.0) and rec["mfu"] is None
    assert log.overall() == "0:20 (10 tokens/s overall)"


def test_truncate_drops_later_steps_and_broken_lines(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = [json.dumps({"kind": "train", "step": s}) for s in (1, 2, 3, 4)]
    path.write_text("\n".join([*lines[:2], '{"kind": "eval", "step": 2}', "[1, 2]", *lines[2:], '{"kind": "tr']) + "\n")
    MetricsLog(tmp_path, 1, 10).truncate(2)
    assert strict_records(path) == [
        {"kind": "train", "step": 1},
        {"kind": "train", "step": 2},
        {"kind": "eval", "step": 2},
    ]


def test_only_the_enabled_rank_writes_or_says_anything(tmp_path, capsys):
    other = MetricsLog(tmp_path, tokens_per_step=1, max_steps=2, log_interval=1, enabled=False)
    other.record({"kind": "eval", "step": 1})
    other.step(step_result(1))
    other.log("hello")
    other.plot()
    other.truncate(0)
    assert list(tmp_path.iterdir()) == [] and capsys.readouterr().out == ""


def test_the_progress_line_and_permanent_lines(tmp_path, capsys, clock):
    log = MetricsLog(tmp_path, tokens_per_step=1000, max_steps=20, log_interval=5, flops_per_token=1.0, peak_flops=1e4)
    log.start(0)
    for step in range(1, 6):
        clock.now += 1.0
        log.step(step_result(step))
    log.log("step 5: val loss 1.2345")
    out = capsys.readouterr().out.splitlines()  # not a terminal: only the forced (recorded) steps print a line
    assert len(out) == 2 and out[1] == "step 5: val loss 1.2345"
    line = out[0]
    assert line.startswith("step 5/20 [#####...............]") and "loss 2.5000" in line and "lr 1.00e-03" in line
    assert "1.0K tok/s" in line and "MFU 10.0%" in line and "0:05 elapsed, 0:15 left" in line
    quiet = MetricsLog(tmp_path / "q", tokens_per_step=1, max_steps=2, log_interval=1, verbose=False)
    quiet.step(step_result(1))
    quiet.log("nothing")
    assert capsys.readouterr().out == "" and (tmp_path / "q" / "metrics.jsonl").is_file()


def test_peak_memory_only_on_a_gpu(tmp_path):
    assert MetricsLog(tmp_path, 1, 1, device=torch.device("cpu")).memory() == {}
    assert MetricsLog(tmp_path, 1, 1).memory() == {}


def test_the_plot_is_drawn_and_a_failure_is_only_a_warning(tmp_path, capsys):
    log = MetricsLog(tmp_path / "run", tokens_per_step=1, max_steps=2, log_interval=1)
    log.step(step_result(1))
    log.step(step_result(2, loss=2.0))
    log.plot()
    assert (tmp_path / "run" / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (tmp_path / "run" / "loss.png").unlink()
    (tmp_path / "run" / "loss.png").mkdir()  # a folder in the way: the write fails
    log.plot()
    assert "warning: loss.png not written" in capsys.readouterr().out
    off = MetricsLog(tmp_path / "off", tokens_per_step=1, max_steps=1, log_interval=1, plot=False)
    off.step(step_result(1))
    off.plot()
    assert not (tmp_path / "off" / "loss.png").exists()
