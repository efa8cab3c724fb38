"""The `gpt` command: one console script, one subcommand per job.

    gpt info --config gpt2-124m              parameter counts and sizes of a preset
    gpt prepare --corpus shakespeare ...     tokenize a corpus into train / val token shards
    gpt train --config demo                  train (resumable checkpoints, metrics, samples)
    gpt generate --checkpoint PATH ...       sample text (greedy, temperature, top-k, top-p)
    gpt export --checkpoint PATH --hf OUT    write a checkpoint in the Hugging Face GPT-2 layout
    gpt verify [--quick]                     Triton kernels against the reference, as a table
    gpt bench [--quick]                      kernels against eager, native and compiled PyTorch

Each subcommand lives in its own module with a `main(argv=None)`; it is imported only when run, so that
e.g. `gpt verify --quick` can switch on Triton's interpreter before any kernel is defined.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "info": ("gpt.info", "parameter counts and sizes of a model preset"),
    "prepare": ("gpt.prepare", "tokenize a corpus into train/val token files"),
    "train": ("gpt.train", "train a model from a preset"),
    "generate": ("gpt.generate", "generate text from a checkpoint or a Hugging Face GPT-2 folder"),
    "export": ("gpt.export", "export a checkpoint to the Hugging Face GPT-2 layout"),
    "verify": ("gpt.verify", "check every Triton kernel against the reference"),
    "bench": ("bench.cli", "benchmark the kernels against PyTorch"),
}


def usage() -> str:
    lines = ["usage: gpt COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<10} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "`gpt COMMAND --help` for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"gpt: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return module.main(rest) or 0


if __name__ == "__main__":
    sys.exit(main())
