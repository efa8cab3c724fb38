"""End-to-end: one GPT training step (forward, backward, AdamW) per backend and micro-batch size.

Backends (the model's `GPTConfig.backend`, optionally under torch.compile):
    native+compile    torch's fused ops (backend "native": F.layer_norm, F.gelu, SDPA), compiled with static
                      shapes as nanoGPT compiles: the baseline
    triton+compile    our kernels (backend "triton"), compiled the same way
    triton            our kernels, eager
    native            torch's fused ops, eager
    reference         the from-scratch reference layers (backend "reference"), eager

The order is the order of a run, the headline comparison first. A compiled model is built once per backend
with `dynamic=False`: each micro-batch size compiles its own graph. On CUDA every step runs under bf16
autocast with TF32 matmuls and fused AdamW, as nanoGPT trains. Reported: ms per step, tokens/s, MFU (FLOPs
per token and the GPU's datasheet bf16 peak, both from `tritongpt.flops`; none where the card is not in its
table), the same rate as a fraction of the matmul ceiling measured on this card, and peak memory (weights,
gradients and optimizer state included).
"""

from __future__ import annotations

import contextlib
import math
import time
from typing import NamedTuple

import torch

from tritongpt import flops
from tritongpt.bench import harness
from tritongpt.config import GPTConfig, load_model_config
from tritongpt.model import GPT

TRAIN_PROVIDERS = ("native+compile", "triton+compile", "triton", "native", "reference")
BASELINE = "native+compile"


def build(cfg: GPTConfig, provider: str, device: torch.device):
    """(model to call, the GPT underneath) for `provider`."""
    if provider not in TRAIN_PROVIDERS:
        raise ValueError(f"unknown train provider {provider!r}; choose from {', '.join(TRAIN_PROVIDERS)}")
    base, _, compiled = provider.partition("+")
    model = GPT(GPTConfig(**{**vars(cfg), "backend": base})).to(device)
    model.train()
    if compiled:
        torch._dynamo.reset()
        return torch.compile(model, dynamic=False), model
    return model, model


def quick_config() -> GPTConfig:
    """A tiny GPT for CPU runs: the harness, not the numbers, is what a CPU run checks."""
    return GPTConfig(vocab_size=512, context_length=64, emb_dim=64, n_heads=2, n_layers=2)


def default_setup(scale: str) -> tuple[GPTConfig, str, int, tuple[int, ...]]:
    """(config, its name, sequence length, micro-batch sizes) at scale "gpu", "quick" or "interpret"."""
    if scale == "gpu":
        return load_model_config("gpt2-124m"), "gpt2-124m", 1024, (16,)
    if scale == "interpret":  # Triton's interpreter takes seconds per step even for this
        return GPTConfig(vocab_size=64, context_length=16, emb_dim=32, n_heads=2, n_layers=1), "micro", 16, (2,)
    return quick_config(), "tiny", 64, (4,)


def shape_label(cfg_name: str, bsz: int, seq_len: int) -> str:
    return f"{cfg_name}:B{bsz}xT{seq_len}"


class TrainCase(NamedTuple):
    provider: str
    batch: int
    dtype: str  # "bf16-autocast" (the GPU suite, as nanoGPT trains) or "fp32" (the CPU scales)
    line: str  # as `gpt bench --plan` prints it


def plan_lines(cfg_name: str, seq_len: int, batch_sizes, providers, scale: str) -> list[TrainCase]:
    """Every training-step case, in run order."""
    dtype = "bf16-autocast" if scale == "gpu" else "fp32"
    return [
        TrainCase(p, b, dtype, f"train_step fwd+bwd+opt {shape_label(cfg_name, b, seq_len)} {dtype} {p}")
        for p in TRAIN_PROVIDERS
        if p in providers
        for b in batch_sizes
    ]


@contextlib.contextmanager
def tf32(enabled: bool):
    """TF32 matmuls for the duration (nanoGPT's setting), restored afterwards."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    if enabled:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def run_train(
    cfg: GPTConfig,
    cfg_name: str,
    seq_len: int,
    cases: list[TrainCase],
    env: harness.Env,
    ceilings: dict,
    tally,
    deadline: float = math.inf,
    emit=lambda rows: None,
    log=print,
) -> None:
    """Time `cases` (from `plan_lines`, maybe filtered) in order; `emit` gets each provider's rows."""
    device = env.device
    cuda = device.type == "cuda"
    peak = flops.peak_bf16_flops(env.gpu) if cuda else None
    if cuda and peak is None:
        tally.notes.append(f"train_step: no datasheet peak for {env.gpu!r} in tritongpt.flops; MFU left out")
    matmul = ceilings.get("matmul")
    providers = list(dict.fromkeys(c.provider for c in cases))
    with tf32(cuda):
        for n, provider in enumerate(providers):
            mine = [c for c in cases if c.provider == provider]
            if time.monotonic() > deadline:
                rest = sum(1 for c in cases if c.provider in providers[n:])
                tally.skip(rest, f"train_step `{provider}` and later: {rest} cases skipped, time budget spent")
                log(f"  train_step: time budget spent, {rest} cases skipped")
                return
            if provider.startswith("triton") and not cuda:
                from tritongpt.kernels._common import interpreter_enabled

                if not interpreter_enabled():
                    why = "no CUDA GPU here; pass --interpret to run the kernels in Triton's CPU interpreter"
                    tally.skip(len(mine), f"train_step `{provider}`: skipped: {why}")
                    log(f"  train_step {provider}: skipped ({why})")
                    continue
            harness.free_memory(device)
            rows = _run_provider(cfg, cfg_name, provider, mine, seq_len, env, peak, matmul, tally, deadline, log)
            emit(rows)
            harness.free_memory(device)


def _run_provider(cfg, cfg_name, provider, cases, seq_len, env, peak, matmul, tally, deadline, log) -> list[dict]:
    device = env.device
    rows: list[dict] = []
    try:
        model, gpt = build(cfg, provider, device)  # one model per provider, compiled once per batch size
    except Exception as e:
        tally.fail(len(cases), f"train_step `{provider}`: failed to build the model ({harness.why_failed(e)})")
        log(f"  train_step {provider}: FAILED ({harness.why_failed(e)})")
        return rows
    opt = make_optimizer(gpt)
    fpt = flops.flops_per_token(gpt, seq_len)
    for i, case in enumerate(cases):
        label = shape_label(cfg_name, case.batch, seq_len)
        if time.monotonic() > deadline:
            tally.skip(
                len(cases) - i, f"train_step {label} `{provider}`: {len(cases) - i} cases skipped, time budget spent"
            )
            break
        try:
            step = make_step(model, opt, cfg.vocab_size, case.batch, seq_len, device, case.dtype == "bf16-autocast")
            t, mem = _time_step(step, device)
        except Exception as e:  # one failing provider must not end the suite
            tally.fail(1, f"train_step {label} `{provider}`: failed ({harness.why_failed(e)})")
            log(f"  train_step {label} {provider}: FAILED ({harness.why_failed(e)})")
            opt.zero_grad(set_to_none=True)
            harness.free_memory(device)
            continue
        tally.measured += 1
        tps = case.batch * seq_len / (t.median_ms * 1e-3)
        out = {"ms": t.median_ms, "ms_p20": t.p20_ms, "ms_p80": t.p80_ms, "tokens/s": tps}
        if peak is not None:
            out["mfu"] = flops.mfu(tps, fpt, peak)
        if matmul is not None:
            out["frac_ceiling"] = tps * fpt / (matmul.value * 1e12)
        if mem is not None:
            out["peak_mem_MB"] = mem
        rows += [
            dict(op="train_step", provider=provider, mode="fwd+bwd+opt", shape=label, dtype=case.dtype, method=t.method,
                 metric=k, value=v)
            for k, v in out.items()
        ]  # fmt: skip
        mfu = f", MFU {out['mfu']:.1%}" if "mfu" in out else ""
        log(f"  train_step {label} {provider}: {t.median_ms:.1f} ms/step, {tps:,.0f} tokens/s{mfu}")
    del model, gpt, opt
    return rows


def make_optimizer(gpt: GPT) -> torch.optim.AdamW:
    """nanoGPT's AdamW (fused on CUDA): the optimizer every timed or profiled step runs."""
    cuda = next(gpt.parameters()).is_cuda
    return torch.optim.AdamW(gpt.parameters(), lr=6e-4, weight_decay=0.1, betas=(0.9, 0.95), fused=cuda or None)


def make_step(model, opt, vocab_size: int, bsz: int, seq_len: int, device: torch.device, bf16_autocast: bool):
    """One training step as a no-argument callable: forward (under bf16 autocast if asked) and loss on a fixed
    random micro-batch of `bsz` x `seq_len` tokens, backward, optimizer step, gradients set to None."""
    g = torch.Generator(device=device).manual_seed(0)
    idx = torch.randint(vocab_size, (bsz, seq_len), device=device, generator=g)
    targets = torch.randint(vocab_size, (bsz, seq_len), device=device, generator=g)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16_autocast else contextlib.nullcontext()

    def step() -> None:
        with autocast:
            _, loss = model(idx, targets)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def warm_up(step, device: torch.device) -> None:
    """Run `step` until compiled, autotuned and with its optimizer state created; return when the device is idle."""
    for _ in range(3 if device.type == "cuda" else 2):
        step()
    harness.synchronize(device)


def _time_step(step, device: torch.device):
    """(Timing, peak MiB) of `step` (from `make_step`), warmed up first."""
    cuda = device.type == "cuda"
    harness.free_memory(device)
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    warm_up(step, device)
    t = harness.bench_fn(step, device, warmup_ms=0.0, rep_ms=1000.0 if cuda else 0.0, min_reps=10 if cuda else 3)
    mem = torch.cuda.max_memory_allocated(device) / 2**20 if cuda else None
    return t, mem
