"""End-to-end: one GPT training step (forward, backward, AdamW) per provider and micro-batch size.

Providers:
    eager            the from-scratch model on the reference ops (backend "torch")
    torch            the same model on torch's native ops (backend "native": F.layer_norm, F.gelu, SDPA)
    torch-compile    that, under torch.compile: the nanoGPT-style baseline
    triton           the model on our kernels (backend "triton")
    triton-compile   that, under torch.compile

A compiled model is built once per provider with the batch dimension marked dynamic, so the micro-batch
sizes share one compile. On CUDA every step runs under bf16 autocast with TF32 matmuls and fused AdamW, as
nanoGPT trains. Reported: ms per step, tokens/s, MFU (FLOPs per token from ANCHORS: 6N + 12*L*H*Q*T,
over the GPU's datasheet bf16 peak from `gpt.flops`; none where the card is not in the table), the
same rate as a fraction of the matmul ceiling measured on this card, and peak memory (weights, gradients
and optimizer state included).
"""

from __future__ import annotations

import contextlib
import math
import time

import torch

from bench import harness
from gpt import flops
from gpt.config import GPTConfig, load_model_config
from gpt.model import GPT

TRAIN_PROVIDERS = ("eager", "torch", "torch-compile", "triton", "triton-compile")


def build(cfg: GPTConfig, provider: str, device: torch.device):
    """(model to call, the GPT underneath) for `provider`."""
    if provider not in TRAIN_PROVIDERS:
        raise ValueError(f"unknown train provider {provider!r}; choose from {', '.join(TRAIN_PROVIDERS)}")
    base = provider.split("-")[0]
    backend = {"eager": "torch", "torch": "native", "triton": "triton"}[base]
    model = GPT(GPTConfig(**{**vars(cfg), "backend": backend})).to(device)
    model.train()
    if provider.endswith("-compile"):
        torch._dynamo.reset()
        return torch.compile(model), model
    return model, model


def quick_config() -> GPTConfig:
    """A tiny GPT for CPU runs: the harness, not the numbers, is what a CPU run checks."""
    return GPTConfig(vocab_size=512, context_length=64, emb_dim=64, n_heads=2, n_layers=2)


def run_train(
    cfg: GPTConfig,
    cfg_name: str,
    seq_len: int,
    batch_sizes: tuple[int, ...],
    providers: tuple[str, ...],
    env: harness.Env,
    ceilings: dict,
    notes: list[str],
    deadline: float = math.inf,
    log=print,
) -> list[dict]:
    device = env.device
    cuda = device.type == "cuda"
    dtype_label = "bf16-autocast" if cuda else "fp32"
    peak = flops.peak_bf16_flops(env.gpu) if cuda else None
    if cuda and peak is None:
        notes.append(f"train_step: no datasheet peak for {env.gpu!r} in gpt.flops; MFU left out")
    matmul = ceilings.get("matmul")
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    rows: list[dict] = []
    tokens_s: dict[tuple[str, int], float] = {}
    for provider in providers:
        if provider.startswith("triton") and not cuda:
            from kernels._common import interpreter_enabled

            if not interpreter_enabled():
                msg = "no CUDA GPU here; pass --interpret to run the kernels in Triton's CPU interpreter"
                log(f"  train_step: provider {provider} skipped: {msg}")
                notes.append(f"train_step: provider `{provider}` skipped: {msg}")
                continue
        if time.monotonic() > deadline:
            notes.append(f"train_step `{provider}`: skipped, time budget spent")
            continue
        harness.free_memory(device)
        model, gpt = build(cfg, provider, device)  # one model per provider: compiled once for every batch size
        opt = torch.optim.AdamW(gpt.parameters(), lr=6e-4, weight_decay=0.1, betas=(0.9, 0.95), fused=cuda or None)
        fpt = flops.flops_per_token(gpt, seq_len)
        for bsz in batch_sizes:
            label = f"{cfg_name} B{bsz}xT{seq_len}"
            if time.monotonic() > deadline:
                notes.append(f"train_step {label} `{provider}`: skipped, time budget spent")
                continue
            try:
                t, mem = _time_step(model, opt, cfg.vocab_size, bsz, seq_len, device)
            except Exception as e:  # one failing provider must not end the suite
                why = "out of memory" if harness.is_oom(e) else f"{type(e).__name__}: {str(e).splitlines()[0]}"
                log(f"  train_step {label} {provider}: FAILED ({why})")
                notes.append(f"train_step {label} `{provider}`: failed ({why[:200]})")
                opt.zero_grad(set_to_none=True)
                harness.free_memory(device)
                continue
            tps = bsz * seq_len / (t.median_ms * 1e-3)
            tokens_s[provider, bsz] = tps
            out = {"ms": t.median_ms, "ms_p20": t.p20_ms, "ms_p80": t.p80_ms, "tokens/s": tps}
            if peak is not None:
                out["mfu"] = flops.mfu(tps, fpt, peak)
            if matmul is not None:
                out["frac_ceiling"] = tps * fpt / (matmul.value * 1e12)
            if mem is not None:
                out["peak_mem_MB"] = mem
            rows += [
                dict(op="train_step", provider=provider, mode="fwd+bwd+opt", shape=label, dtype=dtype_label,
                     metric=k, value=v)
                for k, v in out.items()
            ]  # fmt: skip
            mfu = f", MFU {out['mfu']:.1%}" if "mfu" in out else ""
            log(f"  train_step {label} {provider}: {t.median_ms:.1f} ms/step, {tps:,.0f} tokens/s{mfu}")
        del model, gpt, opt
        harness.free_memory(device)
    for (provider, bsz), tps in tokens_s.items():
        for base in ("eager", "torch-compile"):
            if base != provider and (base, bsz) in tokens_s:
                rows.append(
                    dict(op="train_step", provider=provider, mode="fwd+bwd+opt", shape=f"{cfg_name} B{bsz}xT{seq_len}",
                         dtype=dtype_label, metric=f"speedup_vs_{base}", value=tps / tokens_s[base, bsz])
                )  # fmt: skip
    return rows


def _time_step(model, opt, vocab_size: int, bsz: int, seq_len: int, device: torch.device):
    """(Timing, peak MiB) of forward + backward + optimizer step at micro-batch `bsz`."""
    cuda = device.type == "cuda"
    harness.free_memory(device)
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    g = torch.Generator(device=device).manual_seed(0)
    idx = torch.randint(vocab_size, (bsz, seq_len), device=device, generator=g)
    targets = torch.randint(vocab_size, (bsz, seq_len), device=device, generator=g)
    for t in (idx, targets):  # a compiled model traces the batch dimension symbolically: one compile for all sizes
        torch._dynamo.maybe_mark_dynamic(t, 0)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext()

    def step() -> None:
        with autocast:
            _, loss = model(idx, targets)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(3):  # compile (and recompile once the optimizer state exists), autotune
        step()
    harness.synchronize(device)
    t = harness.bench_fn(step, device, warmup_ms=0.0, rep_ms=1000.0 if cuda else 50.0, min_reps=10 if cuda else 3)
    mem = torch.cuda.max_memory_allocated(device) / 2**20 if cuda else None
    return t, mem


def default_setup(quick: bool) -> tuple[GPTConfig, str, int, tuple[int, ...]]:
    """(config, its name, sequence length, micro-batch sizes) for a full or a quick run."""
    if quick:
        return quick_config(), "tiny", 64, (2, 4)
    return load_model_config("gpt2-124m"), "gpt2-124m", 1024, (8, 16, 32)
