"""The one progress line that `gpt prepare`, `gpt train` and `gpt eval` show, and its number formats.

    line = ProgressLine(stream=sys.stderr)
    line.update(f"step 10/100 {bar(0.1)} ...", force=step % 10 == 0)   # redrawn in place on a terminal
    line.print("step 10: val loss 1.62")                                # a permanent line above it
    line.close()

On a terminal the line is redrawn in place (at most every `min_interval` seconds, and always when forced);
elsewhere (a log file, a pipe) only forced updates are printed, one line each, so logs stay short. A reader
that goes away (`gpt prepare ... | head`) turns the line off instead of raising BrokenPipeError.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


class ProgressLine:
    """A status line redrawn in place on a terminal; elsewhere printed only on forced updates."""

    def __init__(self, enabled: bool = True, stream: TextIO | None = None, min_interval: float = 0.1) -> None:
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stdout
        self.tty = _isatty(self.stream)
        self.min_interval = min_interval
        self.open = False  # a redrawn line is on screen without its newline
        self._last = -float("inf")

    def update(self, text: str, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if self.tty:
            if force or now - self._last >= self.min_interval:
                self._write("\r" + text + "\x1b[K")
                self.open, self._last = True, now
        elif force:
            self._write(text + "\n")

    def print(self, text: str) -> None:
        """A permanent line (e.g. an evaluation result), printed above the progress line."""
        if not self.enabled:
            return
        self._end_line()
        self._write(text + "\n")

    def close(self) -> None:
        if self.enabled:
            self._end_line()

    def _end_line(self) -> None:
        if self.open:
            self._write("\n")
            self.open = False

    def _write(self, s: str) -> None:
        try:
            self.stream.write(s)
            self.stream.flush()
        except (BrokenPipeError, ValueError):  # reader gone, or stream closed: stop drawing, keep working
            self.enabled = False


class Meter:
    """A progress line for work of a known size: label, bar, percent, amount, rate and time left.

    `update(n)` adds n units; the line is redrawn on a terminal and printed at every 10% elsewhere.
    Amounts show as `done * scale` in `unit` (e.g. bytes with scale 1e-6 and unit "MB"). `skip(n)` counts
    work done before this run (a resumed job): it fills the bar but not the rate or the time left.
    """

    def __init__(
        self, total: float, label: str, unit: str = "", enabled: bool = True, scale: float = 1.0, stream=None
    ) -> None:
        self.total, self.label, self.unit, self.scale = total, label, unit, scale
        self.line = ProgressLine(enabled, stream if stream is not None else sys.stderr)
        self.t0 = time.perf_counter()
        self.done = 0.0
        self.skipped = 0.0
        self._decile = -1

    @property
    def elapsed(self) -> float:
        """Seconds since the meter started."""
        return time.perf_counter() - self.t0

    def skip(self, n: float) -> None:
        self.done += n
        self.skipped += n

    def update(self, n: float, extra: str = "") -> None:
        self.done += n
        if not self.line.enabled:
            return
        elapsed = self.elapsed
        frac = self.done / self.total if self.total else 1.0
        decile = int(min(frac, 1.0) * 10)
        now = self.done - self.skipped  # this run's share
        rate = now * self.scale / max(elapsed, 1e-9)
        text = (
            f"{self.label} {bar(frac, 30)} {100 * frac:5.1f}% "
            f"{self.done * self.scale:,.1f}/{self.total * self.scale:,.1f} {self.unit} "
            f"({rate:,.1f} {self.unit}/s, {fmt_eta(now, self.total - self.skipped, elapsed)} left){extra}"
        )
        self.line.update(text, force=decile != self._decile)
        self._decile = decile

    def close(self) -> None:
        self.line.close()


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def bar(frac: float, width: int = 20) -> str:
    """`[#####.....]` filled to `frac` (clamped to [0, 1])."""
    filled = int(width * min(max(frac, 0.0), 1.0))
    return "[" + "#" * filled + "." * (width - filled) + "]"


def fmt_time(seconds: float) -> str:
    """m:ss, or h:mm:ss from an hour up."""
    s = int(max(seconds, 0))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def fmt_rate(r: float) -> str:
    """1.23M, 45.6K or 789."""
    return f"{r / 1e6:.2f}M" if r >= 1e6 else f"{r / 1e3:.1f}K" if r >= 1e3 else f"{r:.0f}"


def eta(done: float, total: float, elapsed: float) -> float:
    """Seconds left at the rate so far (0 when nothing is left; inf before any progress)."""
    if done >= total:
        return 0.0
    return (total - done) * elapsed / done if done > 0 else float("inf")


def fmt_eta(done: float, total: float, elapsed: float) -> str:
    left = eta(done, total, elapsed)
    return fmt_time(left) if left != float("inf") else "?"
