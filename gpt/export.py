"""`gpt export`: write a checkpoint in the Hugging Face GPT-2 layout, for `transformers` and other tools.

    gpt export --checkpoint out/demo/ckpt.pt --hf out/demo-hf
    gpt generate --hf out/demo-hf --prompt "ROMEO:"

    from transformers import GPT2LMHeadModel
    model = GPT2LMHeadModel.from_pretrained("out/demo-hf")

Writes config.json and model.safetensors, and the tokenizer (see `gpt.hf.to_hf`).
"""

from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="gpt export", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "--checkpoint", required=True, metavar="PATH", help="a tritongpt checkpoint file, or a run folder (its newest)"
    )
    ap.add_argument("--hf", required=True, metavar="OUT", help="folder to write (created if missing)")
    args = ap.parse_args(argv)

    from gpt.checkpoint import CheckpointError, model_from_checkpoint
    from gpt.hf import HFError, to_hf

    try:
        model, tok, _ = model_from_checkpoint(args.checkpoint, "cpu", "torch")
        out = to_hf(model, args.hf, tok)
    except (CheckpointError, HFError) as e:
        ap.exit(2, f"gpt export: {e}\n")
    files = ", ".join(sorted(p.name for p in out.iterdir()))
    print(f"wrote {out}: {files} ({model.num_params():,} parameters)")
    return 0
