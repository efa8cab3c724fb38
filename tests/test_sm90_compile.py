"""Ahead-of-time compile of every Triton kernel for an H100 (sm_90), on a machine without a GPU.

    .venv/bin/python -m pytest tests/test_sm90_compile.py      # the test (runs by default, marked `slow`)
    .venv/bin/python tests/test_sm90_compile.py --table         # rewrite kernels/SM90_COMPILE.md's section
                                                                # for this Triton version

Triton's interpreter (what the other kernel tests run on a CPU) never lowers a kernel to PTX, so it misses
what only the compiler rejects: a non-constexpr value where a constexpr is needed, a shared-memory or
register budget blown by one config. This test runs the real host functions (`attention_fwd`,
`attention_bwd`, `attention_dropout_mask`, `layer_norm_fwd`, ..., so each launch is exactly what a GPU run
builds) on small CPU tensors with `JITFunction.run` and `Autotuner.run` replaced by a hook that records the
launch instead. Each recorded launch is turned into an ASTSource signature, constexprs and divisibility
attributes with Triton's own launch binder (`create_function_from_signature`, the code `JITFunction.run`
uses, so `int == 1` and 16-alignment specialise as they would on the GPU) and compiled with
`triton.compile(..., target=GPUTarget("cuda", 90, 32))` down to a cubin; Triton wheels ship ptxas. Registers
and local (stack/spill) bytes per thread come from the cubin via the bundled `cuobjdump -res-usage` (Triton's
`n_spills` is the same CU_FUNC_ATTRIBUTE_LOCAL_SIZE_BYTES), shared memory from the compiled metadata.

The compile runs in two subprocesses (2 CI cores) with TRITON_INTERPRET removed from their environment:
conftest.py turns the interpreter on before `kernels` is imported, and Triton picks interpreter or compiler
when a kernel is defined, so the compiled JITFunctions exist only in a fresh interpreter.

Triton 3.6 vs 3.9: `ASTSource(fn, signature, constexprs, attrs)` and `triton.compile` are the same in both
(signature {name: "*fp16" | "i32" | "fp32" | "constexpr"}, constexprs and attrs keyed by (arg index,));
`JITFunction._pack_args` differs (3.9 skips constexpr entries when collecting attributes), so this file
builds the three dicts itself from the binder's specialisation, skipping constexprs, which is right for both.

Subset (a full grid is ~400 attention compiles of 2-6 s each; the budget is ~60 s on 2 cores). Attention
compiles are the cost, the row-wise kernels are cheap:
- attention fwd, dK/dV, dQ at their largest autotune config (most shared memory and registers) for fp16 and
  bf16 at head dim 128, causal, dropout on (the worst case), and fp16 at head dim 64 with neither causal nor
  dropout (the code both constexprs compile out). Left to `--full`: head dim 80 (BLOCK_D 128 like 128, only
  the mask differs), the other configs, and fp32: with IEEE `tl.dot` (no tensor cores) ptxas takes 30-60 s
  per kernel at head dim 128 (32 registers, 10-16 KB of local memory per thread), and the largest fp32
  configs need 290-390 KB of shared memory (the autotuner drops them; config 0 fits);
- preprocess for the three dtypes (head dims 64 and 128) and the dropout-mask kernel;
- LayerNorm fwd (with/without residual, with/without bias) and bwd (with/without dsum) at widths 768 and
  65536 (BLOCK 65536, 32 warps) in fp16, bf16 and fp32; GELU fwd/bwd with/without bias in the three dtypes;
  the cross-entropy kernel of linear_cross_entropy at V = 50304 (4096-column blocks) with and without the
  gradient sweep, in the three dtypes.
`--full` (script mode only) compiles every config of every combination instead.

A config whose shared memory exceeds the H100's 227 KB per block fails the test unless it belongs to an
autotuned kernel and another config of the same launch fits: Triton's autotuner drops configs that raise
OutOfResources while benchmarking. The first config, which the CUDA-graph capture path falls back to, must
always fit.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TABLE_PATH = REPO / "kernels" / "SM90_COMPILE.md"
H100_SMEM_PER_BLOCK = 227 * 1024  # opt-in dynamic shared memory per block on sm_90
N_WORKERS = 2
DTYPES = ("float16", "bfloat16", "float32")

# ---------------------------------------------------------------------------------------------------------
# Scenarios: which host-function calls to record, and which autotune configs to compile for each.


def _scenarios(full: bool) -> list[dict]:
    """One dict per host-function call; `configs` is "largest" or "all" (autotuned kernels only)."""
    out = []
    attn = []
    if full:
        for dtype in DTYPES:
            for d in (64, 80, 128):
                for causal in (True, False):
                    for dropout in (True, False):
                        attn.append((dtype, d, causal, dropout, "all"))
    else:
        attn += [(dtype, 128, True, True, "largest") for dtype in ("float16", "bfloat16")]
        attn += [("float16", 64, False, False, "largest")]
        attn += [("float32", 128, True, True, "none"), ("float32", 64, False, False, "none")]  # preprocess only
    for dtype, d, causal, dropout, configs in attn:
        out.append({"op": "attention", "dtype": dtype, "head_dim": d, "causal": causal, "dropout": dropout,
                    "configs": configs})  # fmt: skip
    out.append({"op": "attention_dropout_mask", "dtype": "float32", "configs": "all"})
    for dtype in DTYPES:
        for width in (768, 65536):
            for residual, bias in ((False, False), (False, True), (True, False), (True, True)):
                if full or dtype == "float16" or (residual, bias) == (True, True):
                    out.append({"op": "layer_norm", "dtype": dtype, "width": width, "residual": residual,
                                "bias": bias, "configs": "all"})  # fmt: skip
        for bias in (False, True):
            out.append({"op": "gelu", "dtype": dtype, "width": 3072, "bias": bias, "configs": "all"})
        for grad in (True, False):
            out.append({"op": "linear_cross_entropy", "dtype": dtype, "vocab": 50304, "grad": grad, "configs": "all"})
    return out


def _run_scenario(sc: dict) -> None:
    """Call the real host functions for one scenario (their kernel launches are intercepted)."""
    import importlib

    import torch

    # kernels/__init__.py re-exports functions named like the modules, so import the modules by path.
    attention, gelu, layer_norm, lce = (
        importlib.import_module(f"kernels.{m}") for m in ("attention", "gelu", "layer_norm", "linear_cross_entropy")
    )

    dtype = getattr(torch, sc["dtype"])
    if sc["op"] == "attention":
        b, h, t, d = 2, 4, 256, sc["head_dim"]
        q, k, v = (torch.zeros(b, h, t, d, dtype=dtype) for _ in range(3))
        seed = torch.zeros(1, dtype=torch.int64) if sc["dropout"] else None
        p = 0.1 if sc["dropout"] else 0.0
        out, lse = attention.attention_fwd(q, k, v, sc["causal"], p, d**-0.5, seed)
        attention.attention_bwd(torch.zeros_like(out), q, k, v, out, lse, sc["causal"], p, d**-0.5, seed)
    elif sc["op"] == "attention_dropout_mask":
        attention.attention_dropout_mask(torch.zeros(1, dtype=torch.int64), 2, 4, 256, 256, 0.1)
    elif sc["op"] == "layer_norm":
        x = torch.zeros(4, sc["width"], dtype=dtype)
        w = torch.ones(sc["width"], dtype=dtype)
        bias = torch.zeros_like(w) if sc["bias"] else None
        if sc["residual"]:
            y, s, mean, rstd = layer_norm.add_layer_norm_fwd(x, torch.zeros_like(x), w, bias, 1e-5)
            layer_norm.layer_norm_bwd(torch.zeros_like(y), s, w, mean, rstd, torch.zeros_like(s))
        else:
            y, mean, rstd = layer_norm.layer_norm_fwd(x, w, bias, 1e-5)
            layer_norm.layer_norm_bwd(torch.zeros_like(y), x, w, mean, rstd, None)
    elif sc["op"] == "gelu":
        x = torch.zeros(4, sc["width"], dtype=dtype)
        if sc["bias"]:
            gelu.bias_gelu_fwd(x, torch.zeros(sc["width"], dtype=dtype))
            gelu.bias_gelu_bwd(torch.zeros_like(x), x, torch.zeros(sc["width"], dtype=dtype))
        else:
            gelu.gelu_fwd(x)
            gelu.gelu_bwd(torch.zeros_like(x), x)
    elif sc["op"] == "linear_cross_entropy":
        x, w = torch.zeros(4, 64, dtype=dtype), torch.zeros(sc["vocab"], 64, dtype=dtype)
        lce.linear_cross_entropy_fwd(x, w, torch.zeros(4, dtype=torch.int64), -1, 50257, sc["grad"])
    else:
        raise ValueError(sc["op"])


# ---------------------------------------------------------------------------------------------------------
# Worker side (a fresh interpreter without TRITON_INTERPRET): record launches, compile, measure.


def _record_launches(scenarios: list[dict]) -> list[dict]:
    """Run the scenarios with kernel launches replaced by recording; one job per (launch, config)."""
    assert os.environ.get("TRITON_INTERPRET", "0") in ("", "0"), "the worker needs Triton's compiler"
    import torch
    from triton.runtime.autotuner import Autotuner
    from triton.runtime.jit import JITFunction

    import kernels._common

    launches: list[tuple[dict, object, list | None, tuple, dict]] = []
    current: dict = {}

    def jit_run(self, *args, grid, warmup, **kwargs):
        launches.append((current["sc"], self, None, args, kwargs))

    def autotune_run(self, *args, grid=None, warmup=False, **kwargs):
        launches.append((current["sc"], self.fn, list(self.configs), args, kwargs))

    # Host checks accept CPU tensors only with the interpreter flag on; the kernels are compiled ones either
    # way (the flag was off when `kernels` was imported), and the launches land in the hooks above.
    kernels._common.interpreter_enabled = lambda: True
    torch.cuda.is_current_stream_capturing = lambda: False  # asked by attention's launcher; no CUDA here
    JITFunction.run, Autotuner.run = jit_run, autotune_run
    for sc in scenarios:
        current["sc"] = sc
        _run_scenario(sc)

    jobs, seen = [], set()
    for sc, fn, configs, args, kwargs in launches:
        if configs is None:
            picked = [None]
        elif sc["configs"] == "none":
            picked = []
        elif sc["configs"] == "largest":
            picked = [max(configs, key=_config_size)]
        elif sc["configs"] == "first":
            picked = configs[:1]
        else:
            picked = configs
        for config in picked:
            kw = dict(kwargs)
            if config is not None:
                kw.update(config.kwargs, num_warps=config.num_warps, num_stages=config.num_stages)
            key = (fn.__name__, _describe(args, kw))
            if key in seen:
                continue
            seen.add(key)
            jobs.append({"sc": sc, "fn": fn, "args": args, "kwargs": kw, "autotuned": configs is not None,
                         "config_index": None if config is None else configs.index(config),
                         "n_configs": None if configs is None else len(configs)})  # fmt: skip
    return jobs


def _config_size(config) -> tuple:
    """Order configs by tile area, then pipeline stages, then warps: the largest stresses smem and registers."""
    area = 1
    for name, value in config.kwargs.items():
        if name.startswith("BLOCK"):
            area *= value
    return (area, config.num_stages, config.num_warps)


def _describe(args: tuple, kwargs: dict) -> str:
    """A hashable summary of a launch: tensor dtypes and scalar values, in order, then the keyword arguments."""
    parts = [str(a.dtype) if hasattr(a, "dtype") else repr(a) for a in args]
    return ",".join(parts) + "|" + ",".join(f"{k}={v!r}" for k, v in sorted(kwargs.items()))


def _ast_source(fn, args: tuple, kwargs: dict, backend):
    """(ASTSource, options) for launching `fn(*args, **kwargs)`, specialised as Triton's launcher would."""
    from triton.compiler import ASTSource
    from triton.runtime.jit import create_function_from_signature

    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound, specialization, options = binder(*args, **kwargs)
    signature, constexprs, attrs = {}, {}, {}
    for i, (param, (ty, spec)) in enumerate(zip(fn.params, specialization, strict=True)):
        signature[param.name] = ty
        if ty == "constexpr":
            constexprs[(i,)] = bound[param.name]
        elif isinstance(spec, str):
            attrs[(i,)] = backend.parse_attr(spec)
    return ASTSource(fn, signature, constexprs, attrs), options


def _resource_usage(cubin: bytes) -> tuple[int | None, int | None]:
    """(registers, local bytes per thread) of the cubin's kernel from the cuobjdump bundled with Triton."""
    import triton

    cuobjdump = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    if not cuobjdump.exists():
        return None, None
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([str(cuobjdump), "-res-usage", f.name], capture_output=True, text=True).stdout
    m = re.search(r"REG:(\d+) STACK:(\d+) SHARED:\d+ LOCAL:(\d+)", text)
    if m is None:
        return None, None
    return int(m.group(1)), int(m.group(2)) + int(m.group(3))


def _compile_job(job: dict) -> dict:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend

    target = GPUTarget("cuda", 90, 32)
    backend = make_backend(target)
    sc, kw = job["sc"], job["kwargs"]
    row = {
        "kernel": job["fn"].__name__,
        "dtype": sc["dtype"],
        "config": _config_label(sc, kw),
        "autotuned": job["autotuned"],
        "config_index": job["config_index"],
        "n_configs": job["n_configs"],
        "group": _group_label(job["fn"].__name__, sc, kw),
    }
    start = time.perf_counter()
    try:
        src, options = _ast_source(job["fn"], job["args"], kw, backend)
        compiled = triton.compile(src, target=target, options=options)
        row["regs"], row["local"] = _resource_usage(compiled.asm["cubin"])
        row["shared"] = compiled.metadata.shared
        row["num_warps"] = compiled.metadata.num_warps
    except Exception as e:  # reported per kernel by the test, not fatal to the others
        row["error"] = f"{type(e).__name__}: {e}"[-3000:]
    row["seconds"] = round(time.perf_counter() - start, 2)
    return row


_META_SKIP = {"HEAD_DIM", "BLOCK_D", "CAUSAL", "DROPOUT", "INPUT_PRECISION", "HAS_RESIDUAL", "HAS_BIAS",
              "HAS_DSUM", "COMPUTE_GRAD", "debug"}  # fmt: skip


def _config_label(sc: dict, kw: dict) -> str:
    parts = []
    if sc["op"] == "attention":
        parts.append(f"D={sc['head_dim']}")
        parts += [name for name, on in (("causal", sc["causal"]), ("dropout", sc["dropout"])) if on]
        if kw.get("INPUT_PRECISION") == "ieee":
            parts.append("ieee")
    elif sc["op"] in ("layer_norm", "gelu"):
        parts.append(f"C={sc['width']}")
        for flag in ("HAS_RESIDUAL", "HAS_BIAS", "HAS_DSUM"):
            if kw.get(flag):
                parts.append(flag[4:].lower())
    elif sc["op"] == "linear_cross_entropy":
        parts.append(f"V={sc['vocab']}" + (" grad" if kw.get("COMPUTE_GRAD") else ""))
    blocks = "x".join(str(v) for k, v in kw.items() if k.startswith("BLOCK") and k not in _META_SKIP)
    parts.append(f"{blocks} w{kw.get('num_warps', 4)} s{kw.get('num_stages', 3)}")
    return " ".join(parts)


def _group_label(name: str, sc: dict, kw: dict) -> str:
    """Configs of one autotuned launch share a group (the autotuner picks among them)."""
    launch = {k: v for k, v in kw.items() if not k.startswith("BLOCK") or k in _META_SKIP}
    launch.pop("num_warps", None)
    launch.pop("num_stages", None)
    return f"{name}|{sc['dtype']}|{sorted(launch.items())}"


def _worker(shard: int, n_shards: int, full: bool, out_path: str) -> None:
    """Compile this shard's jobs (attention first, longest first, dealt round-robin) and write JSON rows."""
    jobs = _record_launches(_scenarios(full))
    jobs.sort(key=lambda j: (not j["fn"].__name__.startswith("_attn"), not j["sc"].get("dropout", False)))
    rows = [_compile_job(job) for job in jobs[shard::n_shards]]
    Path(out_path).write_text(json.dumps(rows))


# ---------------------------------------------------------------------------------------------------------
# Driver side: start the workers, merge, check, tabulate.


def compile_all(full: bool = False, n_workers: int = N_WORKERS) -> tuple[list[dict], float]:
    """Compile the kernels in `n_workers` fresh subprocesses; (rows, wall seconds)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton 3.9 warns when unset; 1 is the default it keeps
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        procs = []
        for shard in range(n_workers):
            out = os.path.join(tmp, f"rows{shard}.json")
            cmd = [sys.executable, __file__, "--worker", str(shard), str(n_workers), out] + (["--full"] if full else [])
            procs.append((subprocess.Popen(cmd, env=env, cwd=REPO, stderr=subprocess.PIPE, text=True), out))
        rows = []
        for proc, out in procs:
            _, err = proc.communicate()
            if proc.returncode != 0:
                raise RuntimeError(f"compile worker failed (exit {proc.returncode}):\n{err[-5000:]}")
            rows += json.loads(Path(out).read_text())
    order = {name: i for i, name in enumerate(_KERNEL_ORDER)}
    rows.sort(key=lambda r: (order.get(r["kernel"], 99), DTYPES.index(r["dtype"]), r["config"]))
    return rows, time.perf_counter() - start


_KERNEL_ORDER = [
    "_attn_fwd_kernel", "_attn_bwd_preprocess_kernel", "_attn_bwd_dkdv_kernel", "_attn_bwd_dq_kernel",
    "_attn_dropout_mask_kernel", "_layer_norm_fwd_kernel", "_layer_norm_bwd_kernel", "_bias_gelu_fwd_kernel",
    "_bias_gelu_bwd_kernel", "_cross_entropy_fwd_kernel",
]  # fmt: skip


def problems(rows: list[dict]) -> list[str]:
    """Compile errors, and configs over the shared-memory budget that nothing catches (see module docstring)."""
    found = [f"{r['kernel']} {r['dtype']} {r['config']}: {r['error']}" for r in rows if "error" in r]
    fits: dict[str, bool] = {}
    for r in rows:
        if "error" not in r:
            fits[r["group"]] = fits.get(r["group"], False) or r["shared"] <= H100_SMEM_PER_BLOCK
    for r in rows:
        if "error" in r or r["shared"] <= H100_SMEM_PER_BLOCK:
            continue
        what = f"{r['kernel']} {r['dtype']} {r['config']}: {r['shared']} B shared > {H100_SMEM_PER_BLOCK} B"
        if not r["autotuned"]:
            found.append(what)
        elif r["config_index"] == 0:
            found.append(what + " (config 0, the CUDA-graph capture fallback)")
        elif not fits[r["group"]]:
            found.append(what + " (no compiled config of this launch fits)")
    return found


def format_table(rows: list[dict]) -> str:
    head = "| kernel | dtype | config | regs | local B (spills) | shared B | compile s |\n"
    head += "|---|---|---|---:|---:|---:|---:|"
    lines = [head]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['kernel']} | {r['dtype']} | {r['config']} | ERROR | | | {r['seconds']} |")
            continue
        over = " (> 227 KB)" if r["shared"] > H100_SMEM_PER_BLOCK else ""
        cfg = r["config"] + (f" [{r['config_index']}/{r['n_configs']}]" if r["autotuned"] else "")
        lines.append(
            f"| {r['kernel']} | {r['dtype']} | {cfg} | {r['regs']} | {r['local']} | {r['shared']}{over} "
            f"| {r['seconds']} |"
        )
    return "\n".join(lines)


def _triton_version() -> str:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    code = "import triton; print(triton.__version__)"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True).stdout.strip()


@pytest.mark.slow
def test_sm90_compile():
    """Every kernel compiles for sm_90 and fits the H100's shared memory (with the autotuner's help)."""
    rows, seconds = compile_all()
    print(f"\nTriton {_triton_version()}, sm_90, {len(rows)} kernels in {seconds:.1f} s\n{format_table(rows)}")
    found = problems(rows)
    assert not found, "sm_90 compile problems:\n" + "\n".join(found)
    assert {r["kernel"] for r in rows} == set(_KERNEL_ORDER)


# ---------------------------------------------------------------------------------------------------------
# Script mode: --table rewrites this Triton version's section of kernels/SM90_COMPILE.md.


def _write_table(full: bool) -> None:
    rows, seconds = compile_all(full)
    version = _triton_version()
    section = (
        f"## Triton {version}\n\n"
        f'{datetime.date.today().isoformat()}, target sm_90 (`GPUTarget("cuda", 90, 32)`), '
        f"{'full grid' if full else 'test subset'}: {len(rows)} compiles in {seconds:.0f} s on {N_WORKERS} "
        f"processes. regs: registers per thread; local B: local memory per thread (spills and stack; Triton's "
        f"`n_spills`); shared B: shared memory per block (H100: {H100_SMEM_PER_BLOCK} B). [i/n]: autotune config "
        f"i of n.\n\n{format_table(rows)}\n"
    )
    found = problems(rows)
    if found:
        section += "\nProblems:\n\n" + "\n".join(f"- {p}" for p in found) + "\n"
    header = (
        "# Triton kernels compiled for the H100 (sm_90)\n\n"
        "Generated by `python tests/test_sm90_compile.py --table` (one section per Triton version, each "
        "rewritten by a run under that version); see that file's docstring for how and which configs.\n"
    )
    old = TABLE_PATH.read_text() if TABLE_PATH.exists() else header
    sections = {m.group(1): m.group(0) for m in re.finditer(r"^## Triton (\S+)\n.*?(?=^## |\Z)", old, re.M | re.S)}
    sections[version] = section
    body = "\n".join(s.rstrip("\n") + "\n" for _, s in sorted(sections.items()))
    TABLE_PATH.write_text(header + "\n" + body)
    print(f"{TABLE_PATH}: Triton {version}, {len(rows)} kernels, {seconds:.1f} s, {len(found)} problems")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", action="store_true", help="write kernels/SM90_COMPILE.md's section")
    parser.add_argument("--full", action="store_true", help="every config of every combination (slow)")
    parser.add_argument("--worker", nargs=3, metavar=("SHARD", "N_SHARDS", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        shard, n_shards, out = args.worker
        _worker(int(shard), int(n_shards), args.full, out)
    elif args.table:
        _write_table(args.full)
    else:
        rows, seconds = compile_all(args.full)
        print(format_table(rows))
        print("\n".join(problems(rows)) or f"all {len(rows)} compiled in {seconds:.1f} s")


if __name__ == "__main__":
    main()
