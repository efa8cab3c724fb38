"""Results: the long-format CSV, one PNG per op drawn from it, and the Markdown summary.

    rows = read_csv(out / "results.csv")      # ValueError naming the file when it is not one of ours
    write_plots(rows, out)                    # <op>.png: GB/s or TFLOP/s, and speedup over native, against size
    write_summary(rows, out / "summary.md")

The CSV has one measurement per line: op, provider, mode, shape, dtype, method, metric, value, gpu, torch,
triton, date. `method` is the timer (`tritongpt.bench.harness`): do_bench, cudagraph (CUDA-graph replays: no host
dispatch) or perf_counter (CPU). Metrics: ms, ms_p20, ms_p80 (timing quantiles), GB/s or TFLOP/s (derived),
frac_ceiling (of the copy or matmul ceiling measured in the same run), peak_mem_MB; for train_step also
tokens/s and mfu. Ceilings are rows of op "ceiling" (mode "copy" or "matmul"). Ratios between providers
are not stored: the summary and plots compute them from the ms of one method.

Where a case has a cudagraph row for every provider compared, comparisons use it; otherwise the do_bench
(or perf_counter) figures. The summary quotes published figures from `tritongpt.bench.anchors`, never a file outside
the repository.
"""

from __future__ import annotations

import csv
import math
import re
from collections import defaultdict
from pathlib import Path

from tritongpt.bench import anchors
from tritongpt.files import atomic_write, write_csv_atomic, write_text_atomic
from tritongpt.kernels import OPS

COLUMNS = ("op", "provider", "mode", "shape", "dtype", "method", "metric", "value", "gpu", "torch", "triton", "date")
OPTIONAL = {"method": ""}  # columns older files lack, with the value they read as
KEY = ("op", "provider", "mode", "shape", "dtype", "method", "metric", "gpu")  # a later run replaces rows with this key
PROVIDER_ORDER = (
    "triton",
    "triton+compile",
    "compile",
    "native+compile",
    "native",
    "reference",
    "sdpa-flash",
    "sdpa-cudnn",
    "sdpa-efficient",
    "sdpa-math",
)
SDPA = ("sdpa-flash", "sdpa-cudnn", "sdpa-efficient", "sdpa-math")
TRAIN_BASELINE = "native+compile"
COLORS = {
    "triton": "C3",
    "reference": "C7",
    "native": "C0",
    "compile": "C2",
    "triton+compile": "C1",
    "native+compile": "C2",
    "sdpa-flash": "C4",
    "sdpa-cudnn": "C5",
    "sdpa-efficient": "C6",
    "sdpa-math": "C8",
}
MODES_ORDER = ("fwd", "bwd", "fwd+bwd", "fwd+bwd+opt")
PRIMARY_METHODS = ("do_bench", "perf_counter", "")  # the per-call timers, in order of preference


# ---------------------------------------------------------------------------------------------------------
# CSV


def with_env(rows: list[dict], env) -> list[dict]:
    return [dict(r, gpu=env.gpu, torch=env.torch, triton=env.triton, date=env.date) for r in rows]


def ceiling_rows(ceilings: dict) -> list[dict]:
    rows = []
    for c in ceilings.values():
        base = dict(op="ceiling", provider="native", mode=c.name, shape=c.shape, dtype=c.dtype, method=c.timing.method)
        rows += [dict(base, metric="ms", value=c.timing.median_ms), dict(base, metric=c.unit, value=c.value)]
    return rows


def read_csv(path: Path) -> list[dict]:
    """The rows of a results CSV; ValueError naming `path` (and the line) when it is not one."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = [c for c in COLUMNS if c not in OPTIONAL and c not in (reader.fieldnames or ())]
            if missing:
                raise ValueError(f"{path}: not a gpt bench results CSV (no column {', '.join(missing)})")
            rows = []
            for r in reader:
                try:
                    r["value"] = float(r["value"])
                except (TypeError, ValueError):
                    raise ValueError(f"{path}:{reader.line_num}: value {r['value']!r} is not a number") from None
                if None in r or any(r[c] is None for c in COLUMNS if c not in OPTIONAL):
                    raise ValueError(f"{path}:{reader.line_num}: not {len(COLUMNS)} comma-separated fields")
                for c, default in OPTIONAL.items():
                    r[c] = r.get(c) or default
                rows.append(r)
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a gpt bench results CSV (not UTF-8 text)") from None
    except csv.Error as e:
        raise ValueError(f"{path}: not a gpt bench results CSV ({e})") from None
    return rows


def write_csv(rows: list[dict], path: Path, merge: bool = True) -> list[dict]:
    """Write `rows` to `path`; with `merge`, rows already there survive unless a new row has their KEY.

    The file is replaced atomically (written beside it, then renamed): a run killed mid-write leaves the
    previous file whole.
    """
    old = read_csv(path) if merge and path.exists() else []
    rows = [{**OPTIONAL, **r} for r in rows]
    new_keys = {tuple(r[k] for k in KEY) for r in rows}
    merged = [r for r in old if tuple(r[k] for k in KEY) not in new_keys] + rows
    path.parent.mkdir(parents=True, exist_ok=True)
    write_csv_atomic(path, COLUMNS, ({k: (f"{r[k]:.6g}" if k == "value" else r[k]) for k in COLUMNS} for r in merged))
    return merged


# ---------------------------------------------------------------------------------------------------------
# Shapes back to numbers, and the index the tables and plots read


def shape_dims(shape: str) -> dict[str, float]:
    """'4096x768' -> {rows, width}; 'B8xH12xT2048xD64xP0.1' -> {B, H, T, D, P}; 'gpt2-124m:B8xT1024' -> {B, T}."""
    m = re.fullmatch(r"(\d+)x(\d+)", shape)
    if m:
        return {"rows": int(m[1]), "width": int(m[2])}
    tail = re.split(r"[ :]", shape)[-1]
    return {k: (float(v) if "." in v else int(v)) for k, v in re.findall(r"([A-Z])(\d+(?:\.\d+)?)", tail)}


def _index(rows: list[dict]) -> dict:
    """{(op, mode, shape, dtype, provider): {method: {metric: value}}}."""
    out: dict = defaultdict(lambda: defaultdict(dict))
    for r in rows:
        out[r["op"], r["mode"], r["shape"], r["dtype"], r["provider"]][r["method"]][r["metric"]] = r["value"]
    return out


def _compare(idx: dict, case: tuple, providers) -> tuple[str, dict[str, dict]]:
    """(method, {provider: metrics}) for one (op, mode, shape, dtype): cudagraph where every provider that
    has a time has one, else each provider's per-call timer."""
    entries = {p: idx[(*case, p)] for p in providers if (*case, p) in idx}
    timed = {p: e for p, e in entries.items() if any("ms" in m for m in e.values())}
    if timed and all("ms" in e.get("cudagraph", {}) for e in timed.values()):
        return "cudagraph", {p: e["cudagraph"] for p, e in timed.items()}
    picked = {}
    for p, e in timed.items():
        method = next((m for m in PRIMARY_METHODS if "ms" in e.get(m, {})), None)
        if method is not None:
            picked[p] = e[method]
    methods = {next(m for m in PRIMARY_METHODS if "ms" in timed[p].get(m, {})) for p in picked}
    return "/".join(sorted(methods)) or "–", picked


def _memory(idx: dict, case: tuple, provider: str) -> float | None:
    return next((m["peak_mem_MB"] for m in idx.get((*case, provider), {}).values() if "peak_mem_MB" in m), None)


def _providers(present) -> list[str]:
    known = [p for p in PROVIDER_ORDER if p in present]
    return known + sorted(p for p in present if p not in known)


def _unit(metrics: dict) -> str | None:
    return next((u for u in ("TFLOP/s", "GB/s", "tokens/s") if u in metrics), None)


def _ratio(num: dict | None, den: dict | None) -> float | None:
    """num's ms over den's ms: how many times faster `den` is."""
    if not num or not den or not num.get("ms") or not den.get("ms"):
        return None
    return num["ms"] / den["ms"]


def _case_order(case: tuple):
    """Sort key of an (op, mode, shape, dtype): by shape (head dim, dropout, length, size), dtype, then mode."""
    d = shape_dims(case[2])
    mode = MODES_ORDER.index(case[1]) if case[1] in MODES_ORDER else len(MODES_ORDER)
    return (*(d.get(k, 0) for k in ("D", "P", "T", "rows", "width", "N", "B")), case[3], mode)


# ---------------------------------------------------------------------------------------------------------
# Plots


def write_plots(rows: list[dict], out_dir: Path, log=print) -> list[Path]:
    """One PNG per op: top row the derived rate per mode, bottom row the speedup over the native baseline."""
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
    for op in [o for o in (*OPS, "train_step") if any(k[0] == o for k in idx)]:
        modes = [m for m in MODES_ORDER if any(k[0] == op and k[1] == m for k in idx)]
        base = TRAIN_BASELINE if op == "train_step" else "native"
        fig, axes = plt.subplots(2, len(modes), figsize=(5 * len(modes), 7.5), squeeze=False)
        for j, mode in enumerate(modes):
            top, bottom = axes[0][j], axes[1][j]
            series: dict = defaultdict(list)
            unit, xlabel = None, ""
            for case in sorted({k[:4] for k in idx if k[0] == op and k[1] == mode}):
                _, picked = _compare(idx, case, _providers({k[4] for k in idx if k[:4] == case}))
                x, s, xlabel = _x_and_series(op, case[2], case[3])
                for provider, metrics in picked.items():
                    unit = unit or _unit(metrics)
                    series[provider, s].append((x, metrics.get(unit, math.nan), _ratio(picked.get(base), metrics)))
            for (provider, s), pts in sorted(series.items(), key=lambda kv: (_rank(kv[0][0]), kv[0][1])):
                pts.sort()
                style = "none" if "p=" in s else ("--" if "128" in s else "-")  # dropout: one point, a cross
                kw = dict(
                    marker="x" if "p=" in s else "o",
                    linestyle=style,
                    color=COLORS.get(provider),
                    label=f"{provider} {s}".strip(),
                )
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
                if op in ("attention", "train_step"):
                    ax.set_xscale("log", base=2)
                else:  # a few widths (or one LM-head size): linear, a tick at each
                    ax.set_xticks(sorted({x for pts in series.values() for x, _, _ in pts}))
                ax.set_xlabel(xlabel)
                ax.grid(True, alpha=0.3)
        fig.suptitle(f"{op} on {gpu}")
        handles, labels = axes[0][0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="center right", fontsize=7)  # one legend beside the plots
        fig.tight_layout(rect=(0, 0, 0.82, 1))
        path = out_dir / f"{op}.png"
        try:
            atomic_write(path, lambda f, fig=fig: fig.savefig(f, format="png", dpi=110))
        finally:
            plt.close(fig)
        paths.append(path)
    return paths


def _x_and_series(op: str, shape: str, dtype: str) -> tuple[float, str, str]:
    """(x value, series label, x-axis label) for one shape of `op`."""
    d = shape_dims(shape)
    if op == "attention":
        return d["T"], f"D={d['D']}" + (f" p={d['P']:g}" if d.get("P") else ""), "sequence length T"
    if op == "train_step":
        return d["B"], "", "micro-batch size"
    if op == "linear_cross_entropy":
        return d["V"], f"N={d['N']} C={d['C']}", "vocabulary V"
    return d["width"], dtype, f"row width ({d['rows']} rows)"


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
    meta = next((r for r in rows if r["op"] != "decode"), None) or next(iter(rows), None)
    lines = ["# Benchmark summary", ""]
    if meta:
        lines += [f"GPU **{meta['gpu']}**, torch {meta['torch']}, Triton {meta['triton']}, {meta['date']}.", ""]
    if command:
        lines += [f"Command: `{command}`", ""]
    lines += [
        "Times are medians in ms (p20/p80 in `results.csv`). `method` says which timer they come from: "
        "`cudagraph` (CUDA-graph replays, GPU time only; used where every provider of the row has one), "
        "`do_bench` (CUDA events around each call, host dispatch included when the GPU waits for it) or "
        "`perf_counter` (CPU). Rates: effective GB/s from the minimum bytes moved (row-wise ops), TFLOP/s from "
        "4·B·H·T²·D/2 causal FLOPs (attention; backward 2.5×) or 2·N·C·V (LM head; backward 2×). "
        "“of ceiling” divides by the ceiling below; “× X” is X's time over the lead provider's.",
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
                    f"| {label} | {c['shape']} | {c['dtype']} | {_fmt(c['value'])} {c['metric']} | "
                    f"{anchors.CEILINGS[name]} |"
                )
        lines.append("")
    for op in [o for o in OPS if any(k[0] == o for k in idx)]:
        lines += _op_table(op, idx)
        if op == "attention":
            lines += _sdpa_table(idx)
    if any(k[0] == "train_step" for k in idx):
        lines += _train_table(idx)
    lines += _anchor_notes(idx, ceilings, meta)
    if notes:
        lines += ["## Skipped or failed", ""] + [f"- {n}" for n in notes] + [""]
    text = "\n".join(lines)
    write_text_atomic(path, text)
    return text


def _op_table(op: str, idx: dict) -> list[str]:
    keys = [k for k in idx if k[0] == op]
    providers = [p for p in _providers({k[4] for k in keys}) if p not in SDPA]  # SDPA: a table of its own
    if not providers:
        return []
    lead = next((p for p in ("triton", "compile", "native") if p in providers), providers[0])
    units = {_unit(m) for k in keys for m in idx[k].values()} - {None}
    unit = next(iter(sorted(units)), "rate")
    head = ["shape", "dtype", "mode", "method"] + [f"{p} ms" for p in providers]
    head += [f"{lead} {unit}", "of ceiling"] + [
        f"× {p}" for p in ("reference", "native") if p in providers and p != lead
    ]
    memory = any(_memory(idx, k[:4], p) is not None for k in keys for p in providers)
    if memory:
        head += [f"{p} MB" for p in providers]
    lines = [
        f"## {op}",
        "",
        f"Derived columns are for `{lead}`.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for case in sorted({k[:4] for k in keys}, key=_case_order):
        method, m = _compare(idx, case, providers)
        if not m:
            continue
        le = m.get(lead, {})
        cells = [case[2], case[3], case[1], method] + [_fmt(m.get(p, {}).get("ms")) for p in providers]
        cells += [_fmt(le.get(unit)), _fmt(le.get("frac_ceiling"), "pct")]
        cells += [_fmt(_ratio(m.get(p), le), "x") for p in ("reference", "native") if p in providers and p != lead]
        if memory:
            cells += [_fmt(_memory(idx, case, p)) for p in providers]
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


def sdpa_comparison(idx: dict) -> list[dict]:
    """Per attention (mode, shape, dtype): each SDPA backend's ms, the best one and triton's speedup over it."""
    out = []
    for case in sorted({k[:4] for k in idx if k[0] == "attention"}, key=_case_order):
        present = [p for p in SDPA if (*case, p) in idx] + (["triton"] if (*case, "triton") in idx else [])
        method, m = _compare(idx, case, present)
        sdpa = {p: m[p]["ms"] for p in SDPA if p in m}
        if not sdpa:
            continue
        best = min(sdpa, key=sdpa.get)
        out.append(
            dict(
                mode=case[1],
                shape=case[2],
                dtype=case[3],
                method=method,
                sdpa=sdpa,
                best=best,
                triton_ms=m.get("triton", {}).get("ms"),
                speedup=_ratio(m.get(best), m.get("triton")),
            )
        )
    return out


def _sdpa_table(idx: dict) -> list[str]:
    comparison = sdpa_comparison(idx)
    if not comparison:
        return []
    head = ["shape", "mode", "method"] + [f"{p} ms" for p in SDPA] + ["best SDPA", "triton ms", "triton × best SDPA"]
    lines = [
        "### attention against every SDPA backend",
        "",
        "Each backend pinned with `torch.nn.attention.sdpa_kernel`; “–” where it did not run (the reason is under "
        "“Skipped or failed”). “triton × best SDPA” > 1: our kernel is that many times faster than the fastest.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for c in comparison:
        cells = [c["shape"], c["mode"], c["method"]] + [_fmt(c["sdpa"].get(p)) for p in SDPA]
        cells += [f"`{c['best']}`", _fmt(c["triton_ms"]), _fmt(c["speedup"], "x")]
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


def _train_table(idx: dict) -> list[str]:
    cases = sorted({k[:4] for k in idx if k[0] == "train_step"}, key=_case_order)
    head = [
        "shape",
        "dtype",
        "provider",
        "ms/step",
        "tokens/s",
        "MFU",
        "of matmul ceiling",
        "peak MB",
        f"× {TRAIN_BASELINE}",
    ]
    lines = [
        "## Training step (forward + backward + AdamW)",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for case in cases:
        _, m = _compare(idx, case, _providers({k[4] for k in idx if k[:4] == case}))
        for provider, e in sorted(m.items(), key=lambda kv: _rank(kv[0])):
            lines.append(
                f"| {case[2]} | {case[3]} | {provider} | {_fmt(e.get('ms'))} | {_fmt(e.get('tokens/s'))} | "
                f"{_fmt(e.get('mfu'), 'pct')} | {_fmt(e.get('frac_ceiling'), 'pct')} | "
                f"{_fmt(_memory(idx, case, provider))} | {_fmt(_ratio(m.get(TRAIN_BASELINE), e), 'x')} |"
            )
    return lines + [""]


def _anchor_notes(idx: dict, ceilings: dict, meta: dict | None) -> list[str]:
    """Where we stand against SDPA, torch native and the published figures of `tritongpt.bench.anchors`."""
    out = []
    gpu = meta["gpu"] if meta else ""
    if gpu and "H100" not in gpu and "H200" not in gpu:
        out.append(f"- The anchors are H100 figures; this run is on {gpu}, so compare shapes of curves, not levels.")

    def rate(mode, pred, provider):
        vals = []
        for case in {k[:4] for k in idx if k[0] == "attention" and k[1] == mode and pred(shape_dims(k[2]))}:
            _, m = _compare(idx, case, [provider])
            if provider in m and m[provider].get("TFLOP/s") is not None:
                vals.append(m[provider]["TFLOP/s"])
        return max(vals) if vals else None

    target = lambda d: d.get("T") == 1024 and d.get("D") == 64 and not d.get("P")  # noqa: E731
    fwd = {p: rate("fwd", target, p) for p in ("triton", *SDPA, "native")}
    fwd = {p: v for p, v in fwd.items() if v is not None}
    if fwd:
        ours = ", ".join(f"{p} {_fmt(v)}" for p, v in fwd.items())
        ref = ", ".join(f"{k} {v}" for k, v in anchors.ATTENTION_FWD_T1K_D64.items())
        out.append(f"- Attention fwd, D=64, T=1k, causal: {ours} TFLOP/s. FlashAttention-3 paper (H100): {ref}.")
    for t, ref in anchors.FA2_FWD_BWD_D64.items():
        v = {
            p: rate("fwd+bwd", lambda d, t=t: d.get("T") == t and d.get("D") == 64 and not d.get("P"), p)
            for p in ("triton", *SDPA)
        }
        v = {p: x for p, x in v.items() if x is not None}
        if v:
            ours = ", ".join(f"{p} {_fmt(x)}" for p, x in v.items())
            out.append(f"- Attention fwd+bwd, D=64, T={t}: {ours} TFLOP/s; FlashAttention-2 on H100: {ref:.0f}.")
    for c in sdpa_comparison(idx):
        if c["speedup"] is not None and shape_dims(c["shape"]).get("T") == 1024 and c["mode"] == "fwd+bwd":
            out.append(
                f"- Attention {c['shape']} fwd+bwd: the best SDPA backend is `{c['best']}`; triton is "
                f"{_fmt(c['speedup'], 'x')} its speed."
            )
    for mode in ("fwd", "bwd"):
        ratios = []
        for case in {k[:4] for k in idx if k[0] == "layer_norm" and k[1] == mode}:
            if shape_dims(case[2]).get("width") in (768, 1024):
                _, m = _compare(idx, case, ["triton", "native"])
                if (r := _ratio(m.get("native"), m.get("triton"))) is not None:
                    ratios.append(r)
        if ratios:
            out.append(
                f"- LayerNorm {mode} at widths 768/1024: triton {min(ratios):.2f}–{max(ratios):.2f}× torch native "
                f"({anchors.LAYER_NORM_VS_TORCH[mode]})."
            )
    for ceiling_name, ops in (
        ("copy", ("layer_norm", "add_layer_norm", "bias_gelu", "gelu")),
        ("matmul", ("attention", "linear_cross_entropy")),
    ):
        for op in ops:
            fr = [m.get("frac_ceiling") for k, e in idx.items() if k[0] == op and k[4] == "triton" for m in e.values()]
            fr = [v for v in fr if v is not None]
            if fr and ceiling_name in ceilings:
                out.append(f"- {op}: triton reaches at best {max(fr):.0%} of the measured {ceiling_name} ceiling.")
    tr = []
    for case in {k[:4] for k in idx if k[0] == "train_step"}:
        _, m = _compare(idx, case, _providers({k[4] for k in idx if k[:4] == case}))
        tr += [(case[2], p, e.get("tokens/s"), e.get("mfu")) for p, e in m.items()]
    if tr:
        best = max(tr, key=lambda r: r[2] or 0)
        mfu = f", MFU {best[3]:.1%}" if best[3] is not None else ""
        out.append(f"- Training: best {best[1]} at {best[0]}: {_fmt(best[2])} tokens/s{mfu}. Anchors: {anchors.TRAIN}.")
    return (["## Against the anchors (`tritongpt/bench/anchors.py`)", ""] + out + [""]) if out else []
