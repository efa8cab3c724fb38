"""The loss curve of a run (train and val loss against step) as a PNG, from its `metrics.jsonl`.
`gpt train` redraws it at every checkpoint and at the end of a run:

    from gpt.plot import write_loss_png
    write_loss_png("runs/demo/metrics.jsonl", "runs/demo/loss.png")
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from gpt.files import atomic_write


def read_curves(metrics_path: str | Path) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    """(train [(step, loss)], val [(step, val_loss)]) from a metrics.jsonl, non-finite values dropped."""
    train, val = [], []
    path = Path(metrics_path)
    if not path.is_file():
        return train, val
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a crash
        if not isinstance(rec, dict):
            continue
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
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), dpi=100)
    if train:
        ax.plot(*zip(*train, strict=True), color="tab:blue", lw=1, label="train")
    if val:
        ax.plot(*zip(*val, strict=True), "o-", color="tab:orange", ms=3, label="val")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(title or "loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    try:  # whole or not at all: a full disk leaves the previous plot and no temporary file
        return atomic_write(png_path, lambda f: fig.savefig(f, format="png"))
    finally:
        plt.close(fig)
