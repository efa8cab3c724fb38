"""`gpt info`: a preset's shape, parameter counts and sizes, and a forward pass to prove it runs.

gpt info --config gpt2-124m
gpt info --config demo --set model.n_layers=2 --forward
"""

from __future__ import annotations

import argparse
import time

import torch

from gpt.config import ConfigError, add_set_argument, load_model_config


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="gpt info", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--config", default="gpt2-124m", help="preset name (configs/NAME.toml) or path to a TOML file")
    add_set_argument(ap, "model")
    ap.add_argument("--forward", action="store_true", help="also run one forward pass on random tokens")
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)

    from gpt.model import GPT

    try:
        cfg = load_model_config(args.config, args.set)
    except ConfigError as e:
        ap.exit(2, f"gpt info: {e}\n")
    with torch.device("meta"):  # counts without allocating: GPT-2 XL needs no 6 GB here
        model = GPT(cfg)
    print(f"config        {args.config}")
    for k, v in vars(cfg).items():
        print(f"  {k:<16}{v}")
    print(f"parameters    {model.num_params():,}")
    print(f"  without position embedding  {model.num_params(non_embedding=True):,}")
    print(
        f"size          {model.size_mb(torch.float32):,.2f} MB (fp32)   {model.size_mb(torch.bfloat16):,.2f} MB (bf16)"
    )
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
