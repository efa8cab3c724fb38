"""The curves of a run, from its `metrics.jsonl`, as a PNG: train and val loss against step, and beside them
HellaSwag accuracy when the run evaluates it (`train.hellaswag`). `gpt train` redraws it at every checkpoint
and at the end of a run:

    from tritongpt.plot import write_loss_png
    write_loss_png("runs/demo/metrics.jsonl", "runs/demo/loss.png")
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from tritongpt.files import atomic_write, parse_json

CHANCE = 0.25  # HellaSwag: one of four endings


def _records(metrics_path: str | Path) -> list[dict]:
    path = Path(metrics_path)
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            rec = parse_json(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a crash
        if isinstance(rec, dict) and _finite(rec.get("step")):  # a record edited by hand has no place on the x axis
            out.append(rec)
    return out


def read_curves(metrics_path: str | Path) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    """(train [(step, loss)], val [(step, val_loss)]) from a metrics.jsonl, non-finite values dropped."""
    train, val = [], []
    for rec in _records(metrics_path):
        kind = rec.get("kind")
        if kind == "train" and _finite(rec.get("loss")):
            train.append((rec["step"], rec["loss"]))
        elif kind == "eval" and _finite(rec.get("val_loss")):
            val.append((rec["step"], rec["val_loss"]))
    return train, val


def read_hellaswag(metrics_path: str | Path) -> list[tuple[int, float, float]]:
    """[(step, acc, acc_norm)] of the eval records that carry HellaSwag figures."""
    out = []
    for rec in _records(metrics_path):
        acc, acc_norm = rec.get("hellaswag_acc"), rec.get("hellaswag_acc_norm")
        if rec.get("kind") == "eval" and _finite(acc) and _finite(acc_norm):
            out.append((rec["step"], acc, acc_norm))
    return out


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def loss_figure(metrics_path: str | Path, title: str = ""):
    """The matplotlib Figure (one panel of loss, a second of HellaSwag accuracy when logged), or None when
    there is nothing to draw yet."""
    train, val = read_curves(metrics_path)
    hellaswag = read_hellaswag(metrics_path)
    if not train and not val:
        return None
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    if hellaswag:
        fig, (ax, hx) = plt.subplots(1, 2, figsize=(13, 5), dpi=100)
    else:
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
    if hellaswag:
        steps, acc, acc_norm = zip(*hellaswag, strict=True)
        hx.plot(steps, acc_norm, "o-", color="tab:green", ms=3, label="acc_norm")
        hx.plot(steps, acc, "o--", color="tab:olive", ms=3, lw=1, label="acc")
        hx.axhline(CHANCE, color="gray", lw=1, ls=":", label="chance")
        hx.set_xlabel("step")
        hx.set_ylabel("accuracy")
        hx.set_title("HellaSwag")
        hx.grid(alpha=0.3)
        hx.legend()
    fig.tight_layout()
    return fig


def write_loss_png(metrics_path: str | Path, png_path: str | Path, title: str = "") -> Path | None:
    """Draw the curves; returns the PNG's path, or None when there is nothing to draw yet."""
    fig = loss_figure(metrics_path, title)
    if fig is None:
        return None
    import matplotlib.pyplot as plt

    try:  # whole or not at all: a full disk leaves the previous plot and no temporary file
        return atomic_write(png_path, lambda f: fig.savefig(f, format="png"))
    finally:
        plt.close(fig)
