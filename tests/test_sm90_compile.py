"""Ahead-of-time compile of every Triton kernel for an H100 (sm_90), on a machine without a GPU.

    .venv/bin/python -m pytest tests/test_sm90_compile.py      # the test (runs by default, marked `slow`)
    .venv/bin/python tests/test_sm90_compile.py --table         # rewrite tritongpt/kernels/SM90_COMPILE.md's section
                                                                # for this Triton version (pruned configs too)

Triton's interpreter (what the other kernel tests run on a CPU) never lowers a kernel to PTX, so it misses
what only the compiler shows: a non-constexpr value where a constexpr is needed, a shared-memory or register
budget blown by one config, and whether the code is what we meant (tensor-core `wgmma`, `cp.async` prefetch,
no Philox left when dropout is off). This test runs the real host functions (`attention_fwd`,
`attention_bwd`, `attention_dropout_mask`, `layer_norm_fwd`, ..., so each launch is exactly what a GPU run
builds) on small CPU tensors with `JITFunction.run` and `Autotuner.run` replaced by a hook that records the
launch instead; an autotuned launch records the configs its `prune_configs_by` hook keeps, as the autotuner
would benchmark them. Each recorded launch is turned into an ASTSource signature, constexprs and divisibility
attributes with Triton's own launch binder (`create_function_from_signature`, the code `JITFunction.run`
uses, so `int == 1` and 16-alignment specialise as they would on the GPU) and compiled with
`triton.compile(..., target=GPUTarget("cuda", 90, 32))` down to a cubin; Triton wheels ship ptxas. Registers
and local (stack/spill) bytes per thread come from the cubin via the bundled `cuobjdump -res-usage` (Triton's
`n_spills` is the same CU_FUNC_ATTRIBUTE_LOCAL_SIZE_BYTES), shared memory from the compiled metadata, the
instruction checks from the PTX.

The compile runs in two subprocesses (2 CI cores) with TRITON_INTERPRET removed from their environment:
conftest.py turns the interpreter on before `kernels` is imported, and Triton picks interpreter or compiler
when a kernel is defined, so the compiled JITFunctions exist only in a fresh interpreter. There the kernel
modules are imported first (compiled kernels, autotuners), then the host checks are told the interpreter is
on so that they accept CPU tensors.

Triton 3.6 vs 3.9: `ASTSource(fn, signature, constexprs, attrs)` and `triton.compile` are the same in both
(signature {name: "*fp16" | "i32" | "fp32" | "constexpr"}, constexprs and attrs keyed by (arg index,));
`JITFunction._pack_args` differs (3.9 skips constexpr entries when collecting attributes), so this file
builds the three dicts itself from the binder's specialisation, skipping constexprs, which is right for both.

What the test compiles (attention compiles are the cost, 3-30 s each without Triton's cache; the row-wise
kernels are cheap), by mode (`_scenarios`):
- "ci", the default: attention fwd, dK/dV (deterministic and with atomic dQ) and dQ, the first config the
  prune keeps (the CUDA-graph capture fallback), for fp16 and bf16 in two classes: head dim 64 without
  dropout (GPT-2's) and head dim 128 with dropout (the register worst case); the forward's tensor-descriptor
  (TMA) variant, fp16, head dim 64; preprocess for the three dtypes (fp32 only there: with IEEE `tl.dot`
  ptxas takes 30-60 s per kernel at head dim 128) and the dropout-mask kernel;
- "all" (TRITONGPT_SM90_ALL=1 for the test; the default of `--table`): every config the prune keeps in every
  class (head dim 64 and 128, with and without dropout) for fp16 and bf16, the non-causal path, and the TMA
  variants at head dim 64 and 128: the evidence that no listed config spills (~150 compiles, ~10 minutes on 2
  cores; tritongpt/kernels/SM90_COMPILE.md holds its results for Triton 3.6 and 3.9);
- "full" (script only): every dtype x head dim 64/80/128 x causal x dropout;
- in every mode: LayerNorm fwd (with/without residual, with/without bias) and bwd (with/without dsum) at widths
  768 and 65536 (BLOCK 65536, 32 warps) in fp16, bf16 and fp32; GELU fwd/bwd with/without bias in the three
  dtypes; the cross-entropy kernel of linear_cross_entropy at V = 50304 (4096-column blocks) with and without
  the gradient sweep, in the three dtypes.
`--table` also compiles the configs the prune drops (marked "pruned": the evidence for the lists).

Checks: no compile error; shared memory within the H100's 227 KB per block (an autotuned config over it only
if another config of the launch fits: Triton's autotuner drops configs that raise OutOfResources); no fp16/bf16
attention config the prune keeps spills registers at head dim 64 or 128; the attention forward and both
backward kernels use `wgmma`; the LayerNorm and bias-GELU backward loops prefetch with `cp.async`; Philox
appears exactly in the kernels compiled with dropout (dropout_p = 0 carries none of its cost); the atomic dQ
mode, and only it, uses global atomics; the TMA variant loads with `cp.async.bulk.tensor`.
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
TABLE_PATH = REPO / "tritongpt" / "kernels" / "SM90_COMPILE.md"
H100_SMEM_PER_BLOCK = 227 * 1024  # opt-in dynamic shared memory per block on sm_90
N_WORKERS = 2
DTYPES = ("float16", "bfloat16", "float32")
ATTENTION_MAIN = ("_attn_fwd_kernel", "_attn_bwd_dkdv_kernel", "_attn_bwd_dq_kernel")

# ---------------------------------------------------------------------------------------------------------
# Scenarios: which host-function calls to record, and which autotune configs to compile for each.


def _attention(dtype, d, causal, dropout, configs="all", tma=False) -> dict:
    return {"op": "attention", "dtype": dtype, "head_dim": d, "causal": causal, "dropout": dropout,
            "configs": configs, "tma": tma}  # fmt: skip


# Launch classes of the attention config lists (tritongpt.kernels.attention._REGISTER_SAFE): head dim 64 or 128,
# dropout.
CLASSES = [(d, dropout) for d in (64, 128) for dropout in (False, True)]
CI_CLASSES = [(64, False), (128, True)]  # GPT-2's (lightest) and the register worst case


def _scenarios(mode: str) -> list[dict]:
    """One dict per host-function call; `configs` is "all", "first" or "none" (autotuned kernels only).

    mode "ci": fp16 and bf16 in `CI_CLASSES`, the first config the prune keeps per kernel (the CUDA-graph capture
    fallback), and the TMA variant's first config; "all": every class in both dtypes, every kept config, plus
    the non-causal path and the TMA variants at head dim 64 and 128; "full": every dtype x head dim 64/80/128 x
    causal x dropout. The row-wise kernels are compiled in every mode."""
    out = []
    if mode == "full":
        for dtype in DTYPES:
            for d in (64, 80, 128):
                for causal in (True, False):
                    for dropout in (True, False):
                        out.append(_attention(dtype, d, causal, dropout))
    else:
        configs = "first" if mode == "ci" else "all"
        for dtype in ("float16", "bfloat16"):
            for d, dropout in CI_CLASSES if mode == "ci" else CLASSES:
                out.append(_attention(dtype, d, True, dropout, configs))
        if mode == "all":
            out.append(_attention("float16", 64, False, False, "first"))
        out += [_attention("float32", 128, True, True, "none"), _attention("float32", 64, False, False, "none")]
    out += [_attention("float16", d, True, False, "first" if mode == "ci" else "all", tma=True)
            for d in ((64,) if mode == "ci" else (64, 128))]  # fmt: skip
    out.append({"op": "attention_dropout_mask", "dtype": "float32", "configs": "all"})
    for dtype in DTYPES:
        for width in (768, 65536):
            for residual, bias in ((False, False), (False, True), (True, False), (True, True)):
                if mode == "full" or dtype == "float16" or (residual, bias) == (True, True):
                    out.append({"op": "layer_norm", "dtype": dtype, "width": width, "residual": residual,
                                "bias": bias, "configs": "all"})  # fmt: skip
        for bias in (False, True):
            out.append({"op": "gelu", "dtype": dtype, "width": 3072, "bias": bias, "configs": "all"})
        for grad in (True, False):
            out.append({"op": "linear_cross_entropy", "dtype": dtype, "vocab": 50304, "grad": grad, "configs": "all"})
    return out


def _run_scenario(sc: dict, attention, gelu, layer_norm, lce) -> None:
    """Call the real host functions for one scenario (their kernel launches are intercepted)."""
    import torch

    dtype = getattr(torch, sc["dtype"])
    if sc["op"] == "attention":
        b, h, t, d = 2, 4, 256, sc["head_dim"]
        q, k, v = (torch.zeros(b, h, t, d, dtype=dtype) for _ in range(3))
        seed = torch.zeros(1, dtype=torch.int64) if sc["dropout"] else None
        p = 0.1 if sc["dropout"] else 0.0
        out, lse = attention.attention_fwd(q, k, v, sc["causal"], p, d**-0.5, seed, True)
        if not sc["tma"]:
            for deterministic in (True, False):
                attention.attention_bwd(torch.zeros_like(out), q, k, v, out, lse, sc["causal"], p, d**-0.5, seed,
                                        deterministic)  # fmt: skip
    elif sc["op"] == "attention_dropout_mask":
        attention.attention_dropout_mask(torch.zeros(1, dtype=torch.int64), 2, 4, 256, 256, 0.1)
    elif sc["op"] == "layer_norm":
        x = torch.zeros(4, sc["width"], dtype=dtype)
        w = torch.ones(sc["width"], dtype=dtype)
        bias = torch.zeros_like(w) if sc["bias"] else None
        if sc["residual"]:
            y, s, mean, rstd = layer_norm.add_layer_norm_fwd(x, torch.zeros_like(x), w, bias, 1e-5, None)
            layer_norm.layer_norm_bwd(torch.zeros_like(y), s, w, mean, rstd, torch.zeros_like(s))
        else:
            y, mean, rstd = layer_norm.layer_norm_fwd(x, w, bias, 1e-5, None)
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


def _record_launches(scenarios: list[dict], with_pruned: bool) -> list[dict]:
    """Run the scenarios with kernel launches replaced by recording; one job per (launch, config)."""
    assert os.environ.get("TRITON_INTERPRET", "0") in ("", "0"), "the worker needs Triton's compiler"
    import importlib

    import torch
    from triton.runtime.autotuner import Autotuner
    from triton.runtime.jit import JITFunction

    import tritongpt.kernels._common

    # Import the op modules while the interpreter flag is off: their kernels are then compiled JITFunctions and
    # autotuners. (tritongpt/kernels/__init__.py is lazy; import the modules by path.)
    names = ("attention", "gelu", "layer_norm", "linear_cross_entropy")
    modules = [importlib.import_module(f"tritongpt.kernels.{m}") for m in names]

    launches: list[tuple[dict, object, list | None, list | None, tuple, dict]] = []
    current: dict = {}

    def jit_run(self, *args, grid, warmup, **kwargs):
        launches.append((current["sc"], self, None, None, args, kwargs))

    def autotune_run(self, *args, grid=None, warmup=False, **kwargs):
        self.nargs = dict(zip(self.arg_names, args, strict=False))
        kept = self.prune_configs(kwargs)  # what the autotuner would benchmark (needs self.nargs)
        self.nargs = None
        launches.append((current["sc"], self.fn, list(self.configs), kept, args, kwargs))

    # Host checks accept CPU tensors only with the interpreter flag on; the kernels are compiled ones either
    # way, and the launches land in the hooks above.
    tritongpt.kernels._common.interpreter_enabled = lambda: True
    torch.cuda.is_current_stream_capturing = lambda: False  # asked by attention's launcher; no CUDA here
    JITFunction.run, Autotuner.run = jit_run, autotune_run
    for sc in scenarios:
        current["sc"] = sc
        _run_scenario(sc, *modules)

    jobs, seen = [], set()
    for sc, fn, configs, kept, args, kwargs in launches:
        if configs is None:
            picked = [None]
        else:
            if sc["op"] == "attention":  # TMA scenarios compile the TMA variants, the others the pointer ones
                configs = [c for c in configs if bool(c.kwargs.get("KV_TMA")) == sc["tma"]]
                kept = [c for c in kept if c in configs]
            picked = {"none": [], "first": kept[:1], "all": configs if with_pruned else kept}[sc["configs"]]
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
                         "n_configs": None if configs is None else len(configs),
                         "pruned": config is not None and config not in kept})  # fmt: skip
    return jobs


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


# Philox4x32's round multipliers 0xD2511F53 and 0xCD9E8D57 as PTX writes them (decimal, signed or unsigned, or
# hex): present in a kernel exactly when it draws random numbers.
_PHILOX = re.compile(
    r"(?<![\w.])(-766435501|3528531795|-845247145|3449720151|0[xX][dD]2511[fF]53|0[xX][cC][dD]9[eE]8[dD]57)(?!\w)"
)


def ptx_features(ptx: str) -> dict[str, bool]:
    """Which instructions the PTX uses: tensor-core `wgmma`, `cp.async` prefetch into shared memory, TMA bulk
    tensor copies, Philox (dropout's random numbers), global atomics."""
    return {
        "wgmma": "wgmma.mma_async" in ptx,
        "cp_async": re.search(r"cp\.async\.(ca|cg)\.shared", ptx) is not None,
        "tma": "cp.async.bulk.tensor" in ptx,
        "philox": _PHILOX.search(ptx) is not None,
        "atomics": re.search(r"\b(red|atom)(\.[a-z]+)*\.global", ptx) is not None,
    }


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
        "pruned": job["pruned"],
        "group": _group_label(job["fn"].__name__, sc, kw),
        "head_dim": sc.get("head_dim"),
        "dropout": bool(kw.get("DROPOUT", False)),
        "atomic_dq": bool(kw.get("ATOMIC_DQ", False)),
        "kv_tma": bool(kw.get("KV_TMA", False)),
        "width": sc.get("width"),
    }
    start = time.perf_counter()
    try:
        src, options = _ast_source(job["fn"], job["args"], kw, backend)
        compiled = triton.compile(src, target=target, options=options)
        row["regs"], row["local"] = _resource_usage(compiled.asm["cubin"])
        row["shared"] = compiled.metadata.shared
        row["num_warps"] = compiled.metadata.num_warps
        row.update(ptx_features(compiled.asm["ptx"]))
    except Exception as e:  # reported per kernel by the test, not fatal to the others
        row["error"] = f"{type(e).__name__}: {e}"[-3000:]
    row["seconds"] = round(time.perf_counter() - start, 2)
    return row


_META_SKIP = {"HEAD_DIM", "BLOCK_D", "CAUSAL", "DROPOUT", "INPUT_PRECISION", "HAS_RESIDUAL", "HAS_BIAS",
              "HAS_DSUM", "ATOMIC_DQ", "KV_TMA", "NUM_STAGES", "ROWS", "COMPUTE_GRAD", "debug"}  # fmt: skip


def _config_label(sc: dict, kw: dict) -> str:
    parts = []
    if sc["op"] == "attention":
        parts.append(f"D={sc['head_dim']}")
        flags = (("causal", sc["causal"]), ("dropout", sc["dropout"]), ("atomic-dQ", kw.get("ATOMIC_DQ")),
                 ("TMA", kw.get("KV_TMA")))  # fmt: skip
        parts += [name for name, on in flags if on]
        if kw.get("INPUT_PRECISION") == "ieee":
            parts.append("ieee")
    elif sc["op"] in ("layer_norm", "gelu"):
        parts.append(f"C={sc['width']}")
        for flag in ("HAS_RESIDUAL", "HAS_BIAS", "HAS_DSUM"):
            if kw.get(flag):
                parts.append(flag[4:].lower())
    elif sc["op"] == "linear_cross_entropy":
        parts.append(f"V={sc['vocab']}" + (" grad" if kw.get("COMPUTE_GRAD") else ""))
    blocks = "x".join(str(v) for k, v in kw.items() if (k.startswith("BLOCK") and k not in _META_SKIP) or k == "ROWS")
    stages = kw.get("NUM_STAGES", kw.get("num_stages", 3))
    parts.append(f"{blocks} w{kw.get('num_warps', 4)} s{stages}")
    return " ".join(parts)


def _group_label(name: str, sc: dict, kw: dict) -> str:
    """Configs of one autotuned launch share a group (the autotuner picks among them)."""
    launch = {k: v for k, v in kw.items() if not k.startswith("BLOCK") or k in _META_SKIP}
    launch.pop("num_warps", None)
    launch.pop("num_stages", None)
    launch.pop("KV_TMA", None)
    return f"{name}|{sc['dtype']}|{sorted(launch.items())}"


def _worker(shard: int, n_shards: int, mode: str, with_pruned: bool, out_path: str) -> None:
    """Compile this shard's jobs (attention first, longest first, dealt round-robin) and write JSON rows."""
    jobs = _record_launches(_scenarios(mode), with_pruned)
    jobs.sort(key=lambda j: (not j["fn"].__name__.startswith("_attn"), not j["sc"].get("dropout", False)))
    rows = [_compile_job(job) for job in jobs[shard::n_shards]]
    Path(out_path).write_text(json.dumps(rows))


# ---------------------------------------------------------------------------------------------------------
# Driver side: start the workers, merge, check, tabulate.


def compile_all(
    mode: str = "ci", with_pruned: bool = False, n_workers: int = N_WORKERS, cold: bool = False
) -> tuple[list[dict], float]:
    """Compile the kernels in `n_workers` fresh subprocesses; (rows, wall seconds). `cold`: with an empty Triton
    cache, so the compile times are real ones (the tables record them)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton 3.9 warns when unset; 1 is the default it keeps
    env["TRITONGPT_ATTENTION_TMA"] = "1"  # the prune keeps the forward's TMA configs (TMA scenarios compile them)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        if cold:
            env["TRITON_CACHE_DIR"] = os.path.join(tmp, "triton-cache")
        procs = []
        for shard in range(n_workers):
            out = os.path.join(tmp, f"rows{shard}.json")
            cmd = [sys.executable, __file__, "--worker", str(shard), str(n_workers), out, "--mode", mode]
            cmd += ["--pruned"] if with_pruned else []
            procs.append((subprocess.Popen(cmd, env=env, cwd=REPO, stderr=subprocess.PIPE, text=True), out))
        rows = []
        for proc, out in procs:
            _, err = proc.communicate()
            if proc.returncode != 0:
                raise RuntimeError(f"compile worker failed (exit {proc.returncode}):\n{err[-5000:]}")
            rows += json.loads(Path(out).read_text())
    order = {name: i for i, name in enumerate(_KERNEL_ORDER)}
    rows.sort(key=lambda r: (order.get(r["kernel"], 99), DTYPES.index(r["dtype"]), r["pruned"], r["config"]))
    return rows, time.perf_counter() - start


_KERNEL_ORDER = [
    "_attn_fwd_kernel", "_attn_bwd_preprocess_kernel", "_attn_bwd_dkdv_kernel", "_attn_bwd_dq_kernel",
    "_attn_dropout_mask_kernel", "_layer_norm_fwd_kernel", "_layer_norm_bwd_kernel", "_bias_gelu_fwd_kernel",
    "_bias_gelu_bwd_kernel", "_cross_entropy_fwd_kernel",
]  # fmt: skip


def problems(rows: list[dict]) -> list[str]:
    """Everything the compiled code must not show (see the module docstring); one line per finding."""
    found = [f"{r['kernel']} {r['dtype']} {r['config']}: {r['error']}" for r in rows if "error" in r]
    ok = [r for r in rows if "error" not in r]
    kept = [r for r in ok if not r["pruned"]]
    fits: dict[str, bool] = {}
    for r in kept:
        fits[r["group"]] = fits.get(r["group"], False) or r["shared"] <= H100_SMEM_PER_BLOCK
    for r in kept:
        what = f"{r['kernel']} {r['dtype']} {r['config']}"
        if r["shared"] > H100_SMEM_PER_BLOCK:
            over = f"{what}: {r['shared']} B shared > {H100_SMEM_PER_BLOCK} B"
            if not r["autotuned"]:
                found.append(over)
            elif not fits[r["group"]]:
                found.append(over + " (no compiled config of this launch fits)")
        half = r["dtype"] in ("float16", "bfloat16")
        if r["kernel"] in ATTENTION_MAIN and half:
            if r["head_dim"] in (64, 128) and r["local"]:
                found.append(f"{what}: spills {r['local']} B per thread (the prune keeps it)")
            if not r["wgmma"]:
                found.append(f"{what}: no wgmma (tensor cores unused)")
        if r["kernel"].startswith("_attn") and r["kernel"] != "_attn_bwd_preprocess_kernel":
            if r["philox"] != (r["dropout"] or r["kernel"] == "_attn_dropout_mask_kernel"):
                found.append(f"{what}: Philox {'present' if r['philox'] else 'absent'} with dropout {r['dropout']}")
            if r["atomics"] != r["atomic_dq"]:
                found.append(f"{what}: global atomics {'present' if r['atomics'] else 'absent'}")
            if r["kv_tma"] and not r["tma"]:
                found.append(f"{what}: the TMA variant has no cp.async.bulk.tensor")
        pipelined = r["kernel"] == "_bias_gelu_bwd_kernel" or (
            r["kernel"] == "_layer_norm_bwd_kernel" and r["width"] <= 4096
        )
        if pipelined and not r["cp_async"]:
            found.append(f"{what}: the row loop does not prefetch with cp.async")
    return found


_FEATURES = (("wgmma", "wgmma"), ("cp_async", "cp.async"), ("tma", "TMA"), ("philox", "Philox"), ("atomics", "atomics"))


def format_table(rows: list[dict]) -> str:
    head = "| kernel | dtype | config | regs | local B (spills) | shared B | PTX uses | compile s |\n"
    head += "|---|---|---|---:|---:|---:|---|---:|"
    lines = [head]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['kernel']} | {r['dtype']} | {r['config']} | ERROR | | | | {r['seconds']} |")
            continue
        over = " (> 227 KB)" if r["shared"] > H100_SMEM_PER_BLOCK else ""
        cfg = r["config"] + (f" [{r['config_index']}/{r['n_configs']}]" if r["autotuned"] else "")
        cfg += " pruned" if r["pruned"] else ""
        uses = ", ".join(label for key, label in _FEATURES if r[key])
        lines.append(
            f"| {r['kernel']} | {r['dtype']} | {cfg} | {r['regs']} | {r['local']} | {r['shared']}{over} | {uses} "
            f"| {r['seconds']} |"
        )
    return "\n".join(lines)


def _triton_version() -> str:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    code = "import triton; print(triton.__version__)"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True).stdout.strip()


@pytest.mark.slow
def test_sm90_compile():
    """Every kernel compiles for sm_90, fits the H100, and the compiled code shows what it was written for.
    TRITONGPT_SM90_ALL=1 checks every config the prune keeps in every class (what `--table` records)."""
    mode = "all" if os.environ.get("TRITONGPT_SM90_ALL", "") not in ("", "0") else "ci"
    rows, seconds = compile_all(mode)
    print(f"\nTriton {_triton_version()}, sm_90, {len(rows)} kernels in {seconds:.1f} s\n{format_table(rows)}")
    found = problems(rows)
    assert not found, "sm_90 compile problems:\n" + "\n".join(found)
    assert {r["kernel"] for r in rows} == set(_KERNEL_ORDER)
    compiled = {(r["kernel"], r["dtype"], r["head_dim"], r["dropout"], r["atomic_dq"], r["kv_tma"]) for r in rows}
    for dtype in ("float16", "bfloat16"):  # the checks above had something to check
        for d, dropout in CI_CLASSES if mode == "ci" else CLASSES:
            assert ("_attn_fwd_kernel", dtype, d, dropout, False, False) in compiled
            assert ("_attn_bwd_dkdv_kernel", dtype, d, dropout, False, False) in compiled
            assert ("_attn_bwd_dq_kernel", dtype, d, dropout, False, False) in compiled
        assert ("_attn_bwd_dkdv_kernel", dtype, 64, False, True, False) in compiled  # the atomic-dQ mode
    import triton.language as tl

    if hasattr(tl, "make_tensor_descriptor"):
        assert ("_attn_fwd_kernel", "float16", 64, False, False, True) in compiled


# ---------------------------------------------------------------------------------------------------------
# Script mode: --table rewrites this Triton version's section of tritongpt/kernels/SM90_COMPILE.md.


def _write_table(mode: str) -> None:
    rows, seconds = compile_all(mode, with_pruned=True, cold=True)
    version = _triton_version()
    section = (
        f"## Triton {version}\n\n"
        f'{datetime.date.today().isoformat()}, target sm_90 (`GPUTarget("cuda", 90, 32)`), '
        f"mode {mode!r} (see the docstring) with the configs the prune drops: {len(rows)} compiles in "
        f"{seconds:.0f} s on {N_WORKERS} processes, Triton's cache empty. regs: registers per thread; local B: "
        f"local memory per thread (spills and stack; Triton's `n_spills`); shared B: shared memory per block (H100: "
        f"{H100_SMEM_PER_BLOCK} "
        f"B). [i/n]: autotune config i of n; pruned: dropped by the attention prune before benchmarking (compiled "
        f"here only as evidence). PTX uses: tensor-core wgmma, cp.async prefetch, TMA bulk copies, Philox random "
        f"numbers, global atomics.\n\n{format_table(rows)}\n"
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
    parser.add_argument("--table", action="store_true", help="write tritongpt/kernels/SM90_COMPILE.md's section")
    modes = "ci: the test's subset (default); all: every config of every class (default with --table); full: more"
    parser.add_argument("--mode", choices=("ci", "all", "full"), default=None, help=modes)
    parser.add_argument("--pruned", action="store_true", help="also compile the configs the prune drops")
    parser.add_argument("--worker", nargs=3, metavar=("SHARD", "N_SHARDS", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    mode = args.mode or ("all" if args.table else "ci")
    if args.worker:
        shard, n_shards, out = args.worker
        _worker(int(shard), int(n_shards), mode, args.pruned, out)
    elif args.table:
        _write_table(mode)
    else:
        rows, seconds = compile_all(mode, args.pruned)
        print(format_table(rows))
        print("\n".join(problems(rows)) or f"all {len(rows)} compiled in {seconds:.1f} s")


if __name__ == "__main__":
    main()
