"""What a training run reports: `metrics.jsonl`, the progress line, and `loss.png`.

    metrics = MetricsLog("runs/demo", tokens_per_step=8192, max_steps=1000, log_interval=10)
    metrics.start(step=0)
    metrics.step(s)                                    # after each optimizer step (a train_step result)
    metrics.record({"kind": "eval", "step": 250, "val_loss": 1.62})
    metrics.log("step 250: val loss 1.62")             # a permanent line above the progress line
    metrics.plot()                                     # loss.png from metrics.jsonl

`metrics.jsonl` holds one record per line, strict JSON (a non-finite number is written as `null`): `train`
every `log_interval` steps and at the last step (loss, lr, gradient norm, the tokens/s and MFU of the steps
since the previous record, tokens, time, peak GPU memory), `skip` for a step whose update was skipped, `eval`
for an evaluation. A resumed run first drops the records of the steps it will redo (`truncate`).

Only rank 0 writes (`enabled`); elsewhere every method does nothing. MFU is against the dense bf16 peak of
`tritongpt.flops` (None on the CPU and on GPUs not in its table).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from tritongpt.files import atomic_write, name_os_errors, os_error_message, parse_json, strict_json
from tritongpt.flops import mfu
from tritongpt.progress import ProgressLine, bar, fmt_rate, fmt_time


class MetricsLog:
    """metrics.jsonl, the progress line and loss.png of one run folder (see the module docstring)."""

    def __init__(
        self,
        run_dir: str | Path,
        tokens_per_step: int,
        max_steps: int,
        log_interval: int = 10,
        flops_per_token: float = 0.0,
        peak_flops: float | None = None,
        world_size: int = 1,
        device: torch.device | None = None,
        plot: bool = True,
        enabled: bool = True,
        verbose: bool = True,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / "metrics.jsonl"
        self.tokens_per_step, self.max_steps, self.log_interval = tokens_per_step, max_steps, log_interval
        self.flops_per_token, self.peak_flops, self.world_size = flops_per_token, peak_flops, world_size
        self.device = device
        self.plot_enabled, self.enabled = plot, enabled
        self.progress = ProgressLine(verbose and enabled, sys.stdout)
        self.start(0)

    def start(self, step: int) -> None:
        """Start the clocks: the run's time, and the tokens/s window, from optimizer step `step`."""
        self.step0, self.tokens = step, 0
        self.t_start = self.window_t = time.perf_counter()
        self.window_tokens = 0

    @property
    def elapsed(self) -> float:
        """Seconds since `start`."""
        return time.perf_counter() - self.t_start

    def log(self, text: str) -> None:
        self.progress.print(text)

    def record(self, rec: dict[str, Any]) -> None:
        """Append one record to metrics.jsonl as strict JSON: a non-finite number is written as null. An OSError
        names the file."""
        if not self.enabled:
            return
        line = json.dumps(strict_json(rec), allow_nan=False)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        new = not self.path.exists()
        try:
            with name_os_errors(self.path), open(self.path, "a", encoding="utf-8") as f:
                f.write(line + "\n")
        except OSError:
            if new:  # no empty metrics.jsonl left to pass for an earlier run
                self.path.unlink(missing_ok=True)
            raise

    def truncate(self, step: int) -> None:
        """Drop the records of steps after `step` (a resumed run redoes them), and lines that are not JSON
        objects (cut short by a crash). A record whose step is not a number (edited by hand) is kept."""
        if not self.enabled or not self.path.is_file():
            return
        keep = []
        for line in self.path.read_text(encoding="utf-8", errors="surrogateescape").splitlines():
            try:
                rec = parse_json(line)
            except json.JSONDecodeError:
                continue
            if not isinstance(rec, dict):
                continue
            at = rec.get("step", 0)
            if not isinstance(at, (int, float)) or isinstance(at, bool) or at <= step:
                keep.append(line)
        text = "".join(k + "\n" for k in keep).encode("utf-8", errors="surrogateescape")
        atomic_write(self.path, lambda f: f.write(text))

    def step(self, s: dict[str, Any]) -> None:
        """After optimizer step s["step"] (loss, lr, grad_norm, dt: its seconds): a `train` record every
        log_interval steps and at the last, then the progress line (forced on the steps that are recorded)."""
        self.tokens += self.tokens_per_step
        self.window_tokens += self.tokens_per_step
        step, elapsed = s["step"], self.elapsed
        due = step % self.log_interval == 0 or step == self.max_steps
        if due:  # the rate since the previous record
            now = time.perf_counter()
            tps = self.window_tokens / max(now - self.window_t, 1e-9)
            self.window_t, self.window_tokens = now, 0
        else:  # the rate of this step alone, for the line
            tps = self.tokens_per_step / max(s["dt"], 1e-9)
        step_mfu = mfu(tps, self.flops_per_token, self.peak_flops, self.world_size)
        if due:
            self.record(
                {
                    "kind": "train",
                    "step": step,
                    "loss": s["loss"],
                    "lr": s["lr"],
                    "grad_norm": s["grad_norm"],
                    "tokens_per_s": tps,
                    "mfu": step_mfu,
                    "tokens": step * self.tokens_per_step,
                    "time_s": elapsed,
                    **self.memory(),
                }
            )
        self.show(s, tps, step_mfu, elapsed)

    def skipped(self, s: dict[str, Any], in_a_row: int) -> None:
        """Optimizer step s["step"] had a non-finite loss or gradient norm and its update was skipped."""
        self.record(
            {"kind": "skip", "step": s["step"], "loss": s["loss"], "grad_norm": s["grad_norm"], "in_a_row": in_a_row}
        )
        self.log(
            f"step {s['step']}: non-finite loss {s['loss']} / grad norm {s['grad_norm']}: "
            f"update skipped ({in_a_row} in a row)"
        )

    def show(self, s: dict[str, Any], tokens_per_s: float, step_mfu: float | None, elapsed: float) -> None:
        """The progress line: step, bar, loss, lr, tokens/s, MFU, time elapsed and left."""
        step = s["step"]
        left = (self.max_steps - step) * elapsed / max(step - self.step0, 1)
        parts = [
            f"step {step}/{self.max_steps} {bar(step / max(self.max_steps, 1))}",
            f"loss {s['loss']:.4f}",
            f"lr {s['lr']:.2e}",
            f"{fmt_rate(tokens_per_s)} tok/s",
        ]
        if step_mfu is not None:
            parts.append(f"MFU {100 * step_mfu:.1f}%")
        parts.append(f"{fmt_time(elapsed)} elapsed, {fmt_time(left)} left")
        self.progress.update(" | ".join(parts), force=step % self.log_interval == 0)

    def memory(self) -> dict[str, float]:
        """{"peak_mem_gib": ...} on a GPU (the most allocated so far), {} elsewhere."""
        if self.device is None or self.device.type != "cuda":
            return {}
        return {"peak_mem_gib": torch.cuda.max_memory_allocated(self.device) / 2**30}

    def overall(self) -> str:
        """The run's time and tokens/s since `start`, for the last line."""
        total = self.elapsed
        return f"{fmt_time(total)} ({self.tokens / max(total, 1e-9):,.0f} tokens/s overall)"

    def plot(self) -> None:
        """loss.png from metrics.jsonl; a plot that cannot be written is a warning, never the end of the run."""
        if not (self.plot_enabled and self.enabled):
            return
        from tritongpt.plot import write_loss_png

        try:
            write_loss_png(self.path, self.run_dir / "loss.png", title=str(self.run_dir))
        except OSError as e:
            self.log(f"warning: loss.png not written: {os_error_message(e)}")
