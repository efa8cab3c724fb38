"""Results: the long-format CSV, one PNG per op drawn from it, and the Markdown summary.

    rows = read_csv(out / "results.csv")
    write_plots(rows, out)            # <op>.png: GB/s or TFLOP/s, and speedup over torch, against size
    write_summary(rows, out / "summary.md")

The CSV has one measurement per line: op, provider, mode, shape, dtype, metric, value, gpu, torch, triton,
date. Metrics: ms, ms_p20, ms_p80 (timing quantiles), GB/s or TFLOP/s (derived), frac_ceiling (of the
copy or matmul ceiling measured in the same run), speedup_vs_eager, speedup_vs_torch, peak_mem_MB; for
train_step also tokens/s and mfu. Ceilings are rows of op "ceiling" (mode "copy" or "matmul").
"""

from __future__ import annotations

import csv
import math
import re
from collections import defaultdict
from pathlib import Path

COLUMNS = ("op", "provider", "mode", "shape", "dtype", "metric", "value", "gpu", "torch", "triton", "date")
KEY = ("op", "provider", "mode", "shape", "dtype", "metric", "gpu")  # a later run replaces rows with this key
PROVIDER_ORDER = ("triton", "compile", "torch", "eager", "triton-compile", "torch-compile")
COLORS = {"triton": "C3", "eager": "C7", "torch": "C0", "compile": "C2", "triton-compile": "C1", "torch-compile": "C2"}

# Figures from ../shared/ANCHORS.md (H100 SXM), quoted beside ours in the summary.
ANCHORS = {
    "copy": "H100 ≈3.0 TB/s, H200 ≈4.3 TB/s measured (datasheet 3.35 / 4.8 TB/s)",
    "matmul": "8192³ bf16 ≈790–800 TFLOP/s measured on H100/H200 (datasheet 989)",
    "attn_fwd_1k": "H100, D=64, T=1k, causal fwd: FA3 265, FA2 229, Triton 291, cuDNN 288 TFLOP/s",
    "attn_fwdbwd": {512: 141.0, 1024: 192.0},  # FlashAttention-2 fwd+bwd, D=64, H100
    "train": "40% MFU on one H100 ≈ 460K tokens/s, 50% ≈ 580K; llm.c ≈ 468K tokens/s per H100 (8×H100)",
}


# ---------------------------------------------------------------------------------------------------------
# CSV


def with_env(rows: list[dict], env) -> list[dict]:
    return [dict(r, gpu=env.gpu, torch=env.torch, triton=env.triton, date=env.date) for r in rows]


def ceiling_rows(ceilings: dict) -> list[dict]:
    rows = []
    for c in ceilings.values():
        base = dict(op="ceiling", provider="torch", mode=c.name, shape=c.shape, dtype=c.dtype)
        rows += [dict(base, metric="ms", value=c.timing.median_ms), dict(base, metric=c.unit, value=c.value)]
    return rows


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        r["value"] = float(r["value"])
    return rows


def write_csv(rows: list[dict], path: Path, merge: bool = True) -> list[dict]:
    """Write `rows` to `path`; with `merge`, rows already there survive unless a new row has their KEY."""
    old = read_csv(path) if merge and path.exists() else []
    new_keys = {tuple(r[k] for k in KEY) for r in rows}
    merged = [r for r in old if tuple(r[k] for k in KEY) not in new_keys] + rows
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        for r in merged:
            w.writerow({k: (f"{r[k]:.6g}" if k == "value" else r[k]) for k in COLUMNS})
    return merged


# ---------------------------------------------------------------------------------------------------------
# Shapes back to numbers, for plots and tables


def shape_dims(shape: str) -> dict[str, int]:
    """'4096x768' -> {rows, width}; 'B8xH32xT2048xD64' -> {B, H, T, D}; 'gpt2-124m B8xT1024' -> {B, T}."""
    m = re.fullmatch(r"(\d+)x(\d+)", shape)
    if m:
        return {"rows": int(m[1]), "width": int(m[2])}
    return {k: int(v) for k, v in re.findall(r"([A-Z])(\d+)", shape.split(" ")[-1])}


def _x_and_series(op: str, shape: str) -> tuple[float, str, str]:
    """(x value, series label, x-axis label) for one shape of `op`."""
    d = shape_dims(shape)
    if op == "attention":
        return d["T"], f"D={d['D']}", "sequence length T"
    if op == "train_step":
        return d["B"], "", "micro-batch size"
    return d["rows"] * d["width"], "", "elements (rows × width)"


def _index(rows: list[dict]) -> dict:
    """{(op, mode, shape, provider): {metric: value}}."""
    out: dict = defaultdict(dict)
    for r in rows:
        out[r["op"], r["mode"], r["shape"], r["provider"]][r["metric"]] = r["value"]
    return out


def _providers(present) -> list[str]:
    known = [p for p in PROVIDER_ORDER if p in present]
    return known + sorted(p for p in present if p not in known)


def _unit(metrics: dict) -> str | None:
    for u in ("TFLOP/s", "GB/s", "tokens/s"):
        if u in metrics:
            return u
    return None


# ---------------------------------------------------------------------------------------------------------
# Plots


def write_plots(rows: list[dict], out_dir: Path, log=print) -> list[Path]:
    """One PNG per op: top row the derived rate per mode, bottom row the speedup over torch native."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("  plots skipped: matplotlib is not installed (`pip install matplotlib`, then `gpt bench --report-only`)")
        return []
    idx = _index(rows)
    ceilings = {r["mode"]: r["value"] for r in rows if r["op"] == "ceiling" and r["metric"] in ("GB/s", "TFLOP/s")}
    gpu = next((r["gpu"] for r in rows), "")
    paths = []
    for op in sorted({r["op"] for r in rows} - {"ceiling"}):
        modes = [m for m in ("fwd", "bwd", "fwd+bwd", "fwd+bwd+opt") if any(k[0] == op and k[1] == m for k in idx)]
        fig, axes = plt.subplots(2, len(modes), figsize=(5 * len(modes), 7.5), squeeze=False)
        for j, mode in enumerate(modes):
            top, bottom = axes[0][j], axes[1][j]
            series: dict = defaultdict(list)
            unit, xlabel = None, ""
            base = "torch-compile" if op == "train_step" else "torch"
            for (o, m, shape, provider), metrics in idx.items():
                if o != op or m != mode:
                    continue
                unit = unit or _unit(metrics)
                x, s, xlabel = _x_and_series(op, shape)
                series[provider, s].append((x, metrics.get(unit, math.nan), metrics.get(f"speedup_vs_{base}")))
            for (provider, s), pts in sorted(series.items(), key=lambda kv: (_rank(kv[0][0]), kv[0][1])):
                pts.sort()
                style = "--" if s.endswith("128") else "-"
                kw = dict(marker="o", linestyle=style, color=COLORS.get(provider), label=f"{provider} {s}".strip())
                top.plot([p[0] for p in pts], [p[1] for p in pts], **kw)
                sp = [(p[0], p[2]) for p in pts if p[2] is not None]
                if sp and provider != base:
                    bottom.plot([p[0] for p in sp], [p[1] for p in sp], **kw)
            if unit in ("GB/s", "TFLOP/s"):
                ceiling = ceilings.get("copy" if unit == "GB/s" else "matmul")
                if ceiling:
                    top.axhline(ceiling, color="k", linestyle=":", linewidth=1, label="measured ceiling")
            bottom.axhline(1.0, color="k", linewidth=0.8)
            top.set_title(f"{op} {mode}")
            top.set_ylabel(unit or "")
            bottom.set_ylabel(f"speedup over {base}")
            for ax in (top, bottom):
                ax.set_xscale("log", base=2)
                ax.set_xlabel(xlabel)
                ax.grid(True, alpha=0.3)
            top.legend(fontsize=7)
        fig.suptitle(f"{op} on {gpu}")
        fig.tight_layout()
        path = out_dir / f"{op}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def _rank(provider: str) -> int:
    return PROVIDER_ORDER.index(provider) if provider in PROVIDER_ORDER else len(PROVIDER_ORDER)


# ---------------------------------------------------------------------------------------------------------
# Markdown summary


def _fmt(v: float | None, kind: str = "") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if kind == "pct":
        return f"{v:.0%}"
    if kind == "x":
        return f"{v:.2f}×"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.3g}"


def write_summary(rows: list[dict], path: Path, notes: list[str] = (), command: str = "") -> str:
    idx = _index(rows)
    meta = next((r for r in rows), None)
    lines = ["# Benchmark summary", ""]
    if meta:
        lines += [f"GPU **{meta['gpu']}**, torch {meta['torch']}, Triton {meta['triton']}, {meta['date']}.", ""]
    if command:
        lines += [f"Command: `{command}`", ""]
    lines += [
        "Times are medians (p20/p80 in `results.csv`) of `triton.testing.do_bench` on CUDA, a perf_counter "
        "timer on the CPU. Rates: effective GB/s from the minimum bytes moved (row-wise ops), TFLOP/s from "
        "4·B·H·T²·D/2 causal FLOPs (attention; backward 2.5×). “of ceiling” divides by the ceiling below.",
        "",
    ]
    ceilings = {r["mode"]: r for r in rows if r["op"] == "ceiling" and r["metric"] in ("GB/s", "TFLOP/s")}
    if ceilings:
        lines += [
            "## Ceilings measured on this machine",
            "",
            "| ceiling | size | dtype | measured | anchor |",
            "|---|---|---|---|---|",
        ]
        for name, label in (("copy", "device-to-device copy (read + write)"), ("matmul", "matmul")):
            if name in ceilings:
                c = ceilings[name]
                lines.append(
                    f"| {label} | {c['shape']} | {c['dtype']} | {_fmt(c['value'])} {c['metric']} | {ANCHORS[name]} |"
                )
        lines.append("")

    for op in [
        o for o in ("layer_norm", "add_layer_norm", "gelu", "bias_gelu", "attention") if any(k[0] == o for k in idx)
    ]:
        lines += _op_table(op, idx)
    if any(k[0] == "train_step" for k in idx):
        lines += _train_table(idx)
    lines += _anchor_notes(idx, ceilings, meta)
    if notes:
        lines += ["## Skipped or failed", ""] + [f"- {n}" for n in notes] + [""]
    text = "\n".join(lines)
    path.write_text(text, encoding="utf-8")
    return text


def _op_table(op: str, idx: dict) -> list[str]:
    keys = [k for k in idx if k[0] == op]
    providers = _providers({k[3] for k in keys})
    lead = next((p for p in ("triton", "compile", "torch") if p in providers), providers[0])
    unit = _unit(idx[keys[0]]) or "rate"
    shapes = sorted(
        {k[2] for k in keys}, key=lambda s: tuple(shape_dims(s).get(d, 0) for d in ("D", "T", "rows", "width"))
    )
    head = ["shape", "mode"] + [f"{p} ms" for p in providers] + [f"{lead} {unit}", "of ceiling", "× eager", "× torch"]
    if any("peak_mem_MB" in idx[k] for k in keys):
        head += [f"{p} MB" for p in providers]
    lines = [
        f"## {op}",
        "",
        f"Derived columns are for `{lead}`.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for shape in shapes:
        for mode in ("fwd", "bwd", "fwd+bwd"):
            if not any((op, mode, shape, p) in idx for p in providers):
                continue
            m = {p: idx.get((op, mode, shape, p), {}) for p in providers}
            cells = [shape, mode] + [_fmt(m[p].get("ms")) for p in providers]
            le = m[lead]
            cells += [_fmt(le.get(unit)), _fmt(le.get("frac_ceiling"), "pct"), _fmt(le.get("speedup_vs_eager"), "x"),
                      _fmt(le.get("speedup_vs_torch"), "x")]  # fmt: skip
            if len(head) > len(cells):
                cells += [_fmt(m[p].get("peak_mem_MB")) for p in providers]
            lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


def _train_table(idx: dict) -> list[str]:
    keys = sorted(
        (k for k in idx if k[0] == "train_step"), key=lambda k: (shape_dims(k[2]).get("B", 0), _providers([k[3]]))
    )
    head = [
        "shape",
        "provider",
        "ms/step",
        "tokens/s",
        "MFU",
        "of matmul ceiling",
        "peak MB",
        "× eager",
        "× torch-compile",
    ]
    lines = [
        "## Training step (forward + backward + AdamW)",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for k in keys:
        m = idx[k]
        lines.append(
            f"| {k[2]} | {k[3]} | {_fmt(m.get('ms'))} | {_fmt(m.get('tokens/s'))} | {_fmt(m.get('mfu'), 'pct')} | "
            f"{_fmt(m.get('frac_ceiling'), 'pct')} | {_fmt(m.get('peak_mem_MB'))} | "
            f"{_fmt(m.get('speedup_vs_eager'), 'x')} | {_fmt(m.get('speedup_vs_torch-compile'), 'x')} |"
        )
    return lines + [""]


def _anchor_notes(idx: dict, ceilings: dict, meta: dict | None) -> list[str]:
    """Where we stand against SDPA, torch native and ../shared/ANCHORS.md, from whatever rows exist."""
    out = []
    gpu = meta["gpu"] if meta else ""
    if gpu and "H100" not in gpu and "H200" not in gpu:
        out.append(
            f"- The anchors are H100 figures; this run is on {gpu}, so compare shapes of the curves, not levels."
        )

    def get(op, mode, pred, provider, metric):
        vals = [
            m.get(metric)
            for (o, mo, s, p), m in idx.items()
            if o == op and mo == mode and p == provider and pred(shape_dims(s))
        ]
        vals = [v for v in vals if v is not None]
        return max(vals) if vals else None

    t1k = lambda d: d.get("T") == 1024 and d.get("D") == 64  # noqa: E731
    fa = {p: get("attention", "fwd", t1k, p, "TFLOP/s") for p in ("triton", "torch", "compile")}
    if any(v is not None for v in fa.values()):
        ours = ", ".join(f"{p} {_fmt(v)}" for p, v in fa.items() if v is not None)
        out.append(f"- Attention fwd, D=64, T=1k, causal: {ours} TFLOP/s. Anchor: {ANCHORS['attn_fwd_1k']}.")
    for t, ref in ANCHORS["attn_fwdbwd"].items():
        v = {
            p: get("attention", "fwd+bwd", lambda d, t=t: d.get("T") == t and d.get("D") == 64, p, "TFLOP/s")
            for p in ("triton", "torch")
        }
        if any(x is not None for x in v.values()):
            ours = ", ".join(f"{p} {_fmt(x)}" for p, x in v.items() if x is not None)
            out.append(f"- Attention fwd+bwd, D=64, T={t}: {ours} TFLOP/s; FlashAttention-2 on H100: {ref:.0f}.")
    for mode in ("fwd", "bwd"):
        w = lambda d: d.get("width") in (768, 1024)  # noqa: E731
        vals = [(s, m.get("speedup_vs_torch")) for (o, mo, s, p), m in idx.items()
                if o == "layer_norm" and mo == mode and p == "triton" and w(shape_dims(s))]  # fmt: skip
        vals = [(s, v) for s, v in vals if v is not None]
        if vals:
            lo, hi = min(v for _, v in vals), max(v for _, v in vals)
            target = (
                "Liger: 1.25–1.7× torch"
                if mode == "fwd"
                else "Liger at width 1024: ≈0.5× torch; beating torch is the target"
            )
            out.append(f"- LayerNorm {mode} at widths 768/1024: triton {lo:.2f}–{hi:.2f}× torch native ({target}).")
    for ceiling_name, ops in (
        ("copy", ("layer_norm", "add_layer_norm", "gelu", "bias_gelu")),
        ("matmul", ("attention",)),
    ):
        for op in ops:
            fr = [m.get("frac_ceiling") for (o, _, _, p), m in idx.items() if o == op and p == "triton"]
            fr = [v for v in fr if v is not None]
            if fr and ceiling_name in ceilings:
                out.append(f"- {op}: triton reaches at best {max(fr):.0%} of the measured {ceiling_name} ceiling; "
                           f"the rest is headroom ({1 - max(fr):.0%}).")  # fmt: skip
    tr = [(k[2], k[3], m.get("tokens/s"), m.get("mfu")) for k, m in idx.items() if k[0] == "train_step"]
    if tr:
        best = max(tr, key=lambda r: r[2] or 0)
        mfu = f", MFU {best[3]:.1%}" if best[3] is not None else ""
        out.append(
            f"- Training: best {best[1]} at {best[0]}: {_fmt(best[2])} tokens/s{mfu}. Anchor: {ANCHORS['train']}."
        )
    if ceilings:
        c = ", ".join(f"{n} {_fmt(r['value'])} {r['metric']}" for n, r in ceilings.items())
        out.append(f"- Ceilings here: {c} (anchors above).")
    return (["## Against the anchors (../shared/ANCHORS.md)", ""] + out + [""]) if out else []
