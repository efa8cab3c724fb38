"""`gpt export`: write a checkpoint in the Hugging Face GPT-2 layout, for `transformers` and other tools.

    gpt export --checkpoint runs/demo --hf out/demo-hf                  # a run folder: its newest checkpoint
    gpt export --checkpoint runs/demo --hf out/demo-hf --force          # replace that export
    gpt generate --hf out/demo-hf --prompt "ROMEO:"

    from transformers import GPT2LMHeadModel
    model = GPT2LMHeadModel.from_pretrained("out/demo-hf")

Writes config.json and model.safetensors, and the tokenizer (see `tritongpt.hf.to_hf`), into a new or empty folder;
`--force` replaces an earlier export in it (no file of the old export is left beside the new one). The files
appear only once all of them are written: a failure leaves the folder as it was.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="gpt export", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "--checkpoint", required=True, metavar="PATH", help="a tritongpt checkpoint file, or a run folder (its newest)"
    )
    ap.add_argument("--hf", required=True, metavar="OUT", help="folder to write (created if missing; must be empty)")
    ap.add_argument("--force", action="store_true", help="replace an earlier export in OUT")
    args = ap.parse_args(argv)

    from tritongpt.checkpoint import CheckpointError, model_from_checkpoint
    from tritongpt.files import os_error_message
    from tritongpt.hf import HFError, to_hf

    def note(message: str) -> None:
        print(f"gpt export: note: {message}", file=sys.stderr)

    try:
        model, tok, ckpt = model_from_checkpoint(args.checkpoint, "cpu", "reference", note)
        out = to_hf(model, args.hf, tok, force=args.force)
    except (CheckpointError, HFError) as e:
        ap.exit(2, f"gpt export: error: {e}\n")
    except OSError as e:  # the folder cannot take the files: read-only, a full disk, a file in the way
        ap.exit(2, f"gpt export: error: {os_error_message(e)}\n")
    files = ", ".join(sorted(p.name for p in out.iterdir() if not p.name.startswith(".")))
    step = f", step {ckpt['step']}" if isinstance(ckpt.get("step"), int) else ""
    print(f"wrote {out}: {files} ({model.num_params():,} parameters{step})")
    return 0
