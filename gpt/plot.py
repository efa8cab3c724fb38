"""The loss curve of a run (train and val loss against step) as a PNG, from its `metrics.jsonl`.

Drawn with matplotlib when it is installed; otherwise with a small built-in rasteriser (axes, grid lines,
the two curves; no text labels), so a run always leaves a picture behind.

    from gpt.plot import write_loss_png
    write_loss_png("runs/demo/metrics.jsonl", "runs/demo/loss.png")
"""

from __future__ import annotations

import json
import math
import struct
import zlib
from pathlib import Path

TRAIN_RGB = (31, 119, 180)
VAL_RGB = (255, 127, 14)


def read_curves(metrics_path: str | Path) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    """(train [(step, loss)], val [(step, val_loss)]) from a metrics.jsonl, non-finite values dropped."""
    train, val = [], []
    path = Path(metrics_path)
    if not path.is_file():
        return train, val
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a crash
        kind = rec.get("kind")
        if kind == "train" and _finite(rec.get("loss")):
            train.append((rec["step"], rec["loss"]))
        elif kind == "eval" and _finite(rec.get("val_loss")):
            val.append((rec["step"], rec["val_loss"]))
    return train, val


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def write_loss_png(metrics_path: str | Path, png_path: str | Path, title: str = "") -> Path | None:
    """Draw the curves; returns the PNG's path, or None when there is nothing to draw yet."""
    train, val = read_curves(metrics_path)
    if not train and not val:
        return None
    png_path = Path(png_path)
    tmp = png_path.with_name(f".{png_path.name}.tmp")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        tmp.write_bytes(_raster_png(train, val))
    else:
        fig, ax = plt.subplots(figsize=(8, 5), dpi=100)
        if train:
            ax.plot(*zip(*train, strict=True), color=[c / 255 for c in TRAIN_RGB], lw=1, label="train")
        if val:
            ax.plot(*zip(*val, strict=True), "o-", color=[c / 255 for c in VAL_RGB], ms=3, label="val")
        ax.set_xlabel("step")
        ax.set_ylabel("loss (nats/token)")
        ax.set_title(title or "loss")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(tmp, format="png")
        plt.close(fig)
    tmp.replace(png_path)
    return png_path


def _raster_png(train, val, width: int = 800, height: int = 500) -> bytes:
    """A plain RGB picture of the curves: white background, grey axes and grid, blue train, orange val."""
    pix = bytearray(b"\xff" * (width * height * 3))
    left, right, top, bottom = 50, width - 20, 20, height - 40
    pts = train + val
    x0, x1 = min(p[0] for p in pts), max(p[0] for p in pts)
    y0, y1 = min(p[1] for p in pts), max(p[1] for p in pts)
    x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1)

    def put(x: int, y: int, rgb) -> None:
        if 0 <= x < width and 0 <= y < height:
            i = 3 * (y * width + x)
            pix[i : i + 3] = bytes(rgb)

    def line(xa, ya, xb, yb, rgb, thick=1) -> None:
        n = max(abs(xb - xa), abs(yb - ya), 1)
        for k in range(n + 1):
            x, y = round(xa + (xb - xa) * k / n), round(ya + (yb - ya) * k / n)
            for dx in range(thick):
                for dy in range(thick):
                    put(x + dx, y + dy, rgb)

    def to_px(step, loss):
        return (
            left + (right - left) * (step - x0) / (x1 - x0),
            bottom - (bottom - top) * (loss - y0) / (y1 - y0),
        )

    for k in range(1, 5):  # horizontal grid at quarters of the loss range
        y = round(top + (bottom - top) * k / 5)
        line(left, y, right, y, (225, 225, 225))
    line(left, bottom, right, bottom, (90, 90, 90))
    line(left, top, left, bottom, (90, 90, 90))
    for curve, rgb, thick in ((train, TRAIN_RGB, 1), (val, VAL_RGB, 2)):
        for (sa, la), (sb, lb) in zip(curve, curve[1:], strict=False):
            (xa, ya), (xb, yb) = to_px(sa, la), to_px(sb, lb)
            line(round(xa), round(ya), round(xb), round(yb), rgb, thick)
        if len(curve) == 1:
            x, y = to_px(*curve[0])
            line(round(x) - 2, round(y), round(x) + 2, round(y), rgb, 3)
    rows = b"".join(b"\x00" + bytes(pix[3 * width * r : 3 * width * (r + 1)]) for r in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows, 6)) + chunk(b"IEND", b"")
