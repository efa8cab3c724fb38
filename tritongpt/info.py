"""`gpt info`: a preset's shape, parameter counts and sizes, and a forward pass to prove it runs.

gpt info --config gpt2-124m
gpt info --config demo --set model.n_layers=2 --forward
"""

from __future__ import annotations

import argparse
import time

import torch

from tritongpt.config import add_set_argument, load_model_config

BACKEND_NOTES = {
    "reference": "the from-scratch reference layers (tritongpt.kernels.reference)",
    "native": "torch's fused ops: F.layer_norm, F.gelu, SDPA (tritongpt.kernels.native)",
    "triton": "our Triton kernels (tritongpt.kernels.triton_ops)",
    "auto": "Triton kernels on CUDA tensors, torch's fused ops elsewhere",
}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="gpt info", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--config", default="gpt2-124m", help="preset name (configs/NAME.toml) or path to a TOML file")
    add_set_argument(ap, "model")
    ap.add_argument("--forward", action="store_true", help="also run one forward pass on random tokens")
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)

    from tritongpt.backend import check_backend_runs
    from tritongpt.model import GPT, check_model_fits, param_count

    try:
        cfg = load_model_config(args.config, args.set)
        if args.forward:
            check_model_fits(cfg, "cpu", 4, "a forward pass in fp32")
            check_backend_runs(cfg.backend, "cpu")
    except ValueError as e:  # a ConfigError, or a backend that cannot run here
        ap.exit(2, f"gpt info: error: {e}\n")
    n = param_count(cfg)  # from the config: nothing is built, so any size is counted at once
    print(f"config        {args.config}")
    for k, v in vars(cfg).items():
        print(f"  {k:<16}{v}")
    print(f"backend       {cfg.backend}: {BACKEND_NOTES[cfg.backend]}")
    print(f"parameters    {n:,}")
    print(f"  without position embedding  {param_count(cfg, non_embedding=True):,}")
    print(f"size          {n * 4 / 2**20:,.2f} MB (fp32)   {n * 2 / 2**20:,.2f} MB (bf16)")
    if args.forward:
        model = GPT(cfg).eval()
        T = min(cfg.context_length, 64)
        idx = torch.randint(0, cfg.real_vocab, (2, T))
        t0 = time.perf_counter()
        with torch.no_grad():
            logits, loss = model(idx, torch.randint(0, cfg.real_vocab, (2, T)))
        print(
            f"forward       (2, {T}) tokens -> logits {tuple(logits.shape)}, loss {loss.item():.3f} "
            f"(ln(vocab) = {torch.log(torch.tensor(float(cfg.real_vocab))).item():.3f}), "
            f"{(time.perf_counter() - t0) * 1e3:.0f} ms"
        )
    return 0
