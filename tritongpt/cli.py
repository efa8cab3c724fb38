"""The `gpt` command: one console script, one subcommand per job.

    gpt info --config gpt2-124m              parameter counts and sizes of a preset
    gpt prepare --corpus shakespeare ...     tokenize a corpus into train / val token shards
    gpt train --config demo                  train (resumable checkpoints, metrics, samples)
    gpt generate --checkpoint PATH ...       sample text (greedy, temperature, top-k, top-p)
    gpt eval --hf PATH --hellaswag FILE      HellaSwag accuracy and held-out loss (--data DIR)
    gpt export --checkpoint PATH --hf OUT    write a checkpoint in the Hugging Face GPT-2 layout
    gpt verify [--quick]                     Triton kernels against the reference, as a table
    gpt bench [--quick]                      kernels against eager, native and compiled PyTorch

Each subcommand lives in its own module with a `main(argv=None)`; it is imported only when run, so that
e.g. `gpt verify --quick` can switch on Triton's interpreter before any kernel is defined.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable

from tritongpt.files import GuardedStdout, StdoutError, silence_stdout

COMMANDS = {
    "info": ("tritongpt.info", "parameter counts and sizes of a model preset"),
    "prepare": ("tritongpt.prepare", "tokenize a corpus into train/val token files"),
    "train": ("tritongpt.train", "train a model from a preset"),
    "generate": ("tritongpt.generate", "generate text from a checkpoint or a Hugging Face GPT-2 folder"),
    "eval": ("tritongpt.eval", "HellaSwag accuracy and held-out loss / perplexity of a model"),
    "export": ("tritongpt.export", "export a checkpoint to the Hugging Face GPT-2 layout"),
    "verify": ("tritongpt.verify", "check every Triton kernel against the reference"),
    "bench": ("tritongpt.bench.cli", "benchmark the kernels against PyTorch"),
}


def positive(text: str) -> int:
    """An argparse type shared by the commands: a whole number >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def usage() -> str:
    lines = ["usage: gpt COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<10} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "`gpt COMMAND --help` for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run one command. Whatever it does, the process ends with a one-line message, never a traceback, for
    Ctrl-C (exit 130, at any point, start-up included), for a reader that went away (`gpt generate | head`:
    output stops quietly, exit 141 as for SIGPIPE) and for a standard output that cannot take the output (a
    full disk, `> /dev/full`: `gpt CMD: error: standard output: no space left on the device`, exit 2). A
    closed standard output or error reads as /dev/null."""
    argv = list(sys.argv[1:] if argv is None else argv)
    name = argv[0] if argv else ""
    if name and name not in COMMANDS and name not in ("-h", "--help", "help"):
        print(f"gpt: error: unknown command {name!r}; commands: {', '.join(COMMANDS)} (gpt --help)", file=sys.stderr)
        return 2
    if name in COMMANDS:
        return run_guarded(f"gpt {name}", lambda: importlib.import_module(COMMANDS[name][0]).main(argv[1:]))
    return run_guarded("gpt", lambda: print(usage()))


def run_guarded(prog: str, command: Callable[[], int | None]) -> int:
    """`command()`'s exit status under `main`'s rules for Ctrl-C, a reader gone and a standard output that
    cannot take the output; also the entry of the `python -m tritongpt.bench.*` tools."""
    _reopen_closed_outputs()
    stdout = sys.stdout = GuardedStdout(sys.stdout)
    try:
        code = command() or 0
        sys.stdout.flush()  # a reader gone by now, or a full disk, shows here rather than at exit
        if stdout.error is not None and code == 0:  # a command that went on after its output failed
            raise stdout.error
        return code
    except KeyboardInterrupt:
        print(f"\n{prog}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        silence_stdout()
        return 141
    except StdoutError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    finally:
        if sys.stdout is stdout:
            sys.stdout = stdout.stream


def _reopen_closed_outputs() -> None:
    """`gpt ... >&-`: Python then has no sys.stdout; point it (and the descriptor, so that no file opened later
    takes its number and receives output) at /dev/null."""
    for fd, name in ((1, "stdout"), (2, "stderr")):
        if getattr(sys, name) is None:
            try:
                os.fstat(fd)
            except OSError:
                devnull = os.open(os.devnull, os.O_WRONLY)
                if devnull != fd:
                    os.dup2(devnull, fd)
                    os.close(devnull)
            setattr(sys, name, open(fd, "w", closefd=False))  # noqa: SIM115 - lives as long as the process


if __name__ == "__main__":
    sys.exit(main())
