"""`gpt eval`: HellaSwag accuracy and held-out loss of a checkpoint or a Hugging Face GPT-2 folder.

    gpt eval --hf ~/models/gpt2 --hellaswag hellaswag_val.jsonl        # OpenAI's 124M: acc_norm about 0.295
    gpt eval --checkpoint runs/gpt2-124m --hellaswag hellaswag_val.jsonl --limit 500 --json runs/gpt2-124m/eval.json
    gpt eval --checkpoint runs/demo --data data/shakespeare-char        # loss over the whole val split
    gpt eval --hf ~/models/gpt2 --data data/fineweb10B --max-tokens 10000000
    gpt eval --checkpoint runs/demo --data data/shakespeare-char --eval-batches 20   # the run's own val_loss

--hellaswag FILE scores the official `hellaswag_val.jsonl` (see `tritongpt.hellaswag` for the definitions of acc
and acc_norm, and the README for where to get the file). --data DIR reads the val split of a prepared folder
and reports the mean cross-entropy per token, the perplexity exp(loss), and bits per byte: the nats of the
tokens that stand for text divided by ln 2 and by their UTF-8 bytes (end-of-text tokens are no text and left
out). The split is cut into consecutive windows of the model's context (stride = context: every token but
a shard's first is predicted once, with up to a context's worth of tokens before it); `--max-tokens`
stops after that many predicted tokens. `--eval-batches N` instead draws the N random evaluation batches
`gpt train` draws (same seed and batch size, by default those of the checkpoint's run), so the loss is the
`val_loss` the run logged, give or take rounding.

A summary goes to standard output (a reader that goes away ends the command quietly, exit 141, unless the
figures also go to --json), a progress line to standard error; `--json FILE` also writes the figures,
the model, device and date (an existing FILE is kept unless --force; the file is replaced atomically).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import importlib.metadata
import json
import math
import platform
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from tritongpt.backend import BACKENDS, resolve_device
from tritongpt.cli import positive
from tritongpt.config import TrainConfig
from tritongpt.data import DataError
from tritongpt.files import OutputError, atomic_write, check_output_dir, os_error_message, silence_stdout, strict_json
from tritongpt.progress import Meter

PROG = "gpt eval"


class EvalError(ValueError):
    """A problem with the command's inputs or outputs; the message says what and where."""


# ---------------------------------------------------------------------------------------------------------
# Held-out loss


def split_windows(shards: list[np.ndarray], context_length: int, max_tokens: int = 0) -> Iterator[np.ndarray]:
    """Consecutive windows of up to context_length + 1 tokens over each shard, overlapping by one token, so
    every token after a shard's first is a target exactly once; stops after `max_tokens` targets (0: all)."""
    budget = max_tokens if max_tokens > 0 else math.inf
    for tokens in shards:
        for start in range(0, len(tokens) - 1, context_length):
            n = int(min(context_length, len(tokens) - 1 - start, budget))
            yield np.asarray(tokens[start : start + n + 1], dtype=np.int64)
            budget -= n
            if budget <= 0:
                return


def split_targets(shards: list[np.ndarray], max_tokens: int = 0) -> int:
    """How many targets `split_windows` yields."""
    total = sum(max(len(t) - 1, 0) for t in shards)
    return min(total, max_tokens) if max_tokens > 0 else total


def pad_windows(windows: Iterator[np.ndarray], batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(x, y) batches of `batch_size` windows, (B, T) int64: y is x shifted left; a short window is padded
    with token 0 in x and -1 (ignored) in y, which the causal mask keeps from changing the real positions."""
    batch: list[np.ndarray] = []
    for w in windows:
        batch.append(w)
        if len(batch) == batch_size:
            yield _pad(batch)
            batch = []
    if batch:
        yield _pad(batch)


def _pad(windows: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    T = max(len(w) for w in windows) - 1
    x = torch.zeros(len(windows), T, dtype=torch.long)
    y = torch.full((len(windows), T), -1, dtype=torch.long)
    for i, w in enumerate(windows):
        t = torch.from_numpy(w)
        x[i, : len(w) - 1] = t[:-1]
        y[i, : len(w) - 1] = t[1:]
    return x, y


def trainer_windows(
    tokens: list[np.ndarray],
    context_length: int,
    eval_batches: int,
    batch_size: int,
    seed: int,
    name: str = "the val split",
) -> tuple[torch.Tensor, torch.Tensor]:
    """All windows of the `eval_batches` validation batches `gpt train` draws (WindowSampler.fixed_batches
    with the run's seed and global batch size), as one (x, y) pair of (eval_batches * batch_size, T)."""
    from tritongpt.data import WindowSampler

    sampler = WindowSampler(tokens, context_length, batch_size, seed, name=name)
    batches = sampler.fixed_batches(eval_batches)
    return torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])


@dataclass
class LossResult:
    nats: float  # summed cross-entropy of every target
    tokens: int  # targets
    text_nats: float  # summed cross-entropy of the targets that stand for text (bytes > 0)
    bytes: int | None  # UTF-8 bytes of those targets; None when the tokenizer cannot say

    @property
    def loss(self) -> float:
        return self.nats / self.tokens

    @property
    def ppl(self) -> float:
        return math.exp(self.loss) if self.loss < 700 else math.inf

    @property
    def bpb(self) -> float | None:
        return self.text_nats / (math.log(2) * self.bytes) if self.bytes else None

    def to_dict(self) -> dict[str, Any]:
        return {"loss": self.loss, "ppl": self.ppl, "bpb": self.bpb, "tokens": self.tokens, "bytes": self.bytes}

    def summary(self) -> str:
        text = f"loss {self.loss:.4f}, ppl {self.ppl:.2f}"
        if self.bpb is not None:
            text += f", {self.bpb:.4f} bits/byte"
        return text


@torch.no_grad()
def evaluate_loss(
    model: torch.nn.Module,
    batches,
    byte_lengths: list[int] | None = None,
    autocast=None,
    vocab_size: int | None = None,
    progress: Meter | None = None,
    name: str = "the data",
) -> LossResult:
    """Cross-entropy of the model on (x, y) batches (y = -1: not a target), summed in fp64.

    The loss is the trainer's (`F.cross_entropy` of the model's fp32 logits). `byte_lengths[id]` gives the
    UTF-8 bytes of each token for bits per byte. A token id >= `vocab_size` is a DataError naming `name`."""
    device = next(model.parameters()).device
    table = torch.tensor(byte_lengths, dtype=torch.long) if byte_lengths is not None else None
    sums = torch.zeros(3, dtype=torch.float64)  # nats, text nats, bytes
    tokens = 0
    was_training = model.training
    model.eval()
    try:
        for x, y in batches:
            top = int(max(x.max(), y.max()))
            if vocab_size is not None and top >= vocab_size:
                raise DataError(f"{name} holds token id {top}, outside the model's {vocab_size}-token vocabulary")
            with autocast() if autocast is not None else contextlib.nullcontext():
                logits = model(x.to(device))[0]
            losses = F.cross_entropy(
                logits.flatten(0, 1).float(), y.flatten().to(device), ignore_index=-1, reduction="none"
            )
            losses = losses.double().cpu().view_as(y)
            n = int((y != -1).sum())
            sums[0] += losses.sum()
            if table is not None:
                nbytes = torch.where(y != -1, table[y.clamp(min=0, max=len(table) - 1)], 0)
                sums[1] += losses[nbytes > 0].sum()
                sums[2] += nbytes.sum()
            tokens += n
            if progress is not None:
                progress.update(n)
    finally:
        model.train(was_training)
    if tokens == 0:
        raise DataError(f"{name} holds no tokens to evaluate (a split needs at least 2 tokens)")
    return LossResult(float(sums[0]), tokens, float(sums[1]), int(sums[2]) if table is not None else None)


# ---------------------------------------------------------------------------------------------------------
# Inputs and outputs


def load_model(args) -> tuple[torch.nn.Module, Any, dict[str, Any]]:
    """(model in eval mode, tokenizer or None, a description for the report) from --checkpoint or --hf, by
    `tritongpt.checkpoint.load_model`'s rule for --backend."""
    from tritongpt.checkpoint import CheckpointError
    from tritongpt.checkpoint import load_model as load
    from tritongpt.config import ConfigError
    from tritongpt.hf import HFError
    from tritongpt.tokenizer import TokenizerError

    try:
        model, tok, info = load(args.checkpoint, args.hf, args.device, args.backend, note=_note)
    except (CheckpointError, HFError, ConfigError, TokenizerError) as e:
        raise EvalError(str(e)) from None
    if tok is not None and tok.vocab_size > model.config.vocab_size:
        raise EvalError(
            f"{info['path']}: the {tok.name} tokenizer has {tok.vocab_size} tokens, the model only "
            f"{model.config.vocab_size}"
        )
    return model.eval(), tok, info


def _note(message: str) -> None:
    print(f"{PROG}: note: {message}", file=sys.stderr)


def check_output(path: Path, force: bool) -> None:
    """Refuse, before any work, a --json FILE that exists (without --force), is a folder, or cannot be written."""
    if path.is_dir():
        raise EvalError(f"--json {path} is a folder")
    if path.exists() and not path.is_file():
        raise EvalError(f"--json {path} is not a regular file")
    if path.exists() and not force:
        raise EvalError(f"--json {path} exists; pass --force to replace it")
    try:
        check_output_dir(path.parent, "--json")
    except OutputError as e:
        raise EvalError(str(e)) from None


def write_json(path: Path, obj: dict[str, Any]) -> None:
    """Strict JSON (a non-finite number as null), whole or not at all (`tritongpt.files.atomic_write`)."""
    data = (json.dumps(strict_json(obj), indent=1, allow_nan=False) + "\n").encode("utf-8")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda f: f.write(data))
    except OSError as e:
        raise EvalError(f"cannot write --json {os_error_message(e)}") from None


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "torch": torch.__version__}
    try:
        out["triton"] = importlib.metadata.version("triton")
    except importlib.metadata.PackageNotFoundError:
        pass
    return out


class Output:
    """Standard output for the summary. A closed stdout reads as /dev/null. A reader that goes away
    (`gpt eval ... | head -1`) stops the command quietly (BrokenPipeError, exit 141 as for SIGPIPE), unless the
    figures also go to --json: then the work goes on and only the summary is lost."""

    def __init__(self, keep_going: bool) -> None:
        self.keep_going = keep_going
        self.alive = sys.stdout is not None and not getattr(sys.stdout, "closed", False)

    def say(self, text: str) -> None:
        if not self.alive:
            return
        try:
            sys.stdout.write(text + "\n")
            sys.stdout.flush()
        except (BrokenPipeError, ValueError, OSError):
            self.alive = False
            silence_stdout()
            if not self.keep_going:
                raise BrokenPipeError("standard output closed") from None


# ---------------------------------------------------------------------------------------------------------
# `gpt eval`


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", metavar="PATH", help="a tritongpt checkpoint file, or a run folder (its newest)")
    src.add_argument("--hf", metavar="PATH", help="a local Hugging Face GPT-2 folder (config.json + weights)")
    hs = ap.add_argument_group("HellaSwag")
    hs.add_argument("--hellaswag", metavar="FILE", help="hellaswag_val.jsonl (ctx, endings, label per line)")
    hs.add_argument("--limit", type=positive, metavar="N", help="only the first N examples")
    val = ap.add_argument_group("held-out loss")
    val.add_argument("--data", metavar="DIR", help="a prepared data folder: loss over its val split")
    val.add_argument("--max-tokens", type=positive, metavar="N", help="stop after N predicted tokens")
    val.add_argument(
        "--eval-batches", type=positive, metavar="N", help="the N random evaluation batches `gpt train` draws"
    )
    val.add_argument(
        "--eval-batch-size", type=positive, metavar="B", help="windows per such batch (default: the run's global one)"
    )
    val.add_argument("--seed", type=int, help="seed of those batches (default: the run's train.seed)")
    ap.add_argument("--batch-size", type=positive, default=16, help="sequences per forward pass (default 16)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--backend", choices=BACKENDS, default=None, help="layer implementation (default: the model's)")
    ap.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16"),
        default="auto",
        help="auto: bf16 autocast on a GPU that has it, fp32 elsewhere",
    )
    ap.add_argument("--json", metavar="FILE", help="also write the figures, model, device and date as JSON")
    ap.add_argument("--force", action="store_true", help="replace an existing --json FILE")
    ap.add_argument("--quiet", action="store_true", help="no progress line")
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.hellaswag is None and args.data is None:
        ap.error("nothing to evaluate: pass --hellaswag FILE and/or --data DIR")
    if args.limit and args.hellaswag is None:
        ap.error("--limit goes with --hellaswag")
    if (args.max_tokens or args.eval_batches) and args.data is None:
        ap.error("--max-tokens and --eval-batches go with --data")
    if args.max_tokens and args.eval_batches:
        ap.error("--max-tokens (consecutive windows) and --eval-batches (the trainer's batches) exclude each other")
    if (args.eval_batch_size or args.seed is not None) and not args.eval_batches:
        ap.error("--eval-batch-size and --seed go with --eval-batches")
    if args.seed is not None and not 0 <= args.seed < 2**32:
        ap.error(f"--seed must be in [0, 2**32), got {args.seed}")
    try:
        return run(args)
    except (EvalError, DataError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader went away: nothing left to say
        silence_stdout()
        return 141
    except torch.OutOfMemoryError:
        print(
            f"{PROG}: error: out of memory on {args.device} with --batch-size {args.batch_size}; lower it",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print(f"\n{PROG}: interrupted", file=sys.stderr)
        return 130


def run(args) -> int:
    from tritongpt.hellaswag import evaluate_hellaswag, load_hellaswag

    json_path = Path(args.json) if args.json is not None else None
    if json_path is not None:
        check_output(json_path, args.force)
    out = Output(keep_going=json_path is not None)
    try:
        device = resolve_device(args.device)
    except ValueError as e:
        raise EvalError(f"--device {e}") from None
    args.device = device
    model, tok, info = load_model(args)
    precision = args.precision
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    autocast = None
    if precision == "bf16":
        autocast = lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16)  # noqa: E731

    # every input is read and checked before the first forward pass
    val = prepare_val(args, model, tok, info) if args.data is not None else None
    if val is not None and tok is None:
        tok = val["tokenizer"]
    hellaswag = None
    if args.hellaswag is not None:
        if tok is None:
            raise EvalError(f"{info['path']} has no tokenizer record, so HellaSwag's text cannot be encoded")
        hellaswag = load_hellaswag(args.hellaswag, tok, model.config.context_length, args.limit or 0)

    cfg = model.config
    step = f", step {info['step']}" if info.get("step") is not None else ""
    backend = cfg.backend + (f" ({'triton' if device.type == 'cuda' else 'native'})" if cfg.backend == "auto" else "")
    out.say(
        f"model      {info['path']}: {_count(model.num_params())} parameters{step}, backend {backend}, "
        f"{device} ({precision})"
    )
    report: dict[str, Any] = {}
    if val is not None:
        total = val["targets"]
        meter = Meter(total, "val", "K tokens", enabled=not args.quiet, scale=1e-3)
        try:
            result = evaluate_loss(
                model,
                val["batches"],
                val["byte_lengths"],
                autocast,
                val["vocab_size"],
                meter,
                name=f"the val split of {args.data}",
            )
        finally:
            meter.close()
        out.say(f"val        {args.data}: {result.summary()} ({val['what']})")
        report["val"] = {**result.to_dict(), "data": str(args.data), "split": "val", **val["record"]}
    if hellaswag is not None:
        result = evaluate_hellaswag(model, hellaswag, args.batch_size, autocast, progress=not args.quiet)
        out.say(f"hellaswag  {args.hellaswag}: {result.summary()}")
        report["hellaswag"] = {**result.to_dict(), "file": str(args.hellaswag), "limit": args.limit}

    if json_path is not None:
        report["model"] = {
            "source": info["kind"],
            "path": info["path"],
            "step": info.get("step"),
            "parameters": model.num_params(),
            "config": dataclasses.asdict(cfg),
        }
        report["device"] = (
            torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
        )
        report["precision"] = precision
        report["date"] = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        report["versions"] = _versions()
        write_json(json_path, report)
        out.say(f"wrote      {json_path}")
    return 0


def prepare_val(args, model, tok, info) -> dict[str, Any]:
    """The val split's batches and what goes with them, checked against the model's tokenizer."""
    from tritongpt.data import open_split, read_data_tokenizer

    if Path(args.data).exists() and not Path(args.data).is_dir():
        raise DataError(f"--data {args.data} is not a folder; expected a prepared data folder (gpt prepare --out DIR)")
    _, data_tok = read_data_tokenizer(args.data)
    if tok is not None and tok.to_dict() != data_tok.to_dict():
        raise EvalError(
            f"{args.data} was tokenized with a different tokenizer ({_describe(data_tok)}) than the model's "
            f"({_describe(tok)}); prepare the data with the model's tokenizer"
        )
    shards = open_split(args.data, "val")
    T = model.config.context_length
    vocab = min(model.config.vocab_size, data_tok.vocab_size)
    byte_lengths = getattr(data_tok, "token_byte_lengths", None)
    out = {"tokenizer": data_tok, "vocab_size": vocab, "byte_lengths": byte_lengths() if byte_lengths else None}
    if args.eval_batches:
        train_cfg = info.get("train_config") or {}
        seed = args.seed if args.seed is not None else train_cfg.get("seed", TrainConfig.seed)
        size = args.eval_batch_size or train_cfg.get("batch_size", TrainConfig.batch_size) * info.get("world_size", 1)
        x, y = trainer_windows(shards, T, args.eval_batches, size, seed, f"the val split of {args.data}")
        out["batches"] = zip(x.split(args.batch_size), y.split(args.batch_size), strict=True)
        out["targets"] = y.numel()
        out["what"] = (
            f"{args.eval_batches} batches of {size} random windows of {T} tokens, seed {seed}, as gpt train draws them"
        )
        out["record"] = {"windows": "trainer", "eval_batches": args.eval_batches, "batch_size": size, "seed": seed}
    else:
        out["batches"] = pad_windows(split_windows(shards, T, args.max_tokens or 0), args.batch_size)
        out["targets"] = split_targets(shards, args.max_tokens or 0)
        if out["targets"] == 0:
            raise DataError(f"the val split of {args.data} holds no tokens to evaluate (it needs at least 2)")
        out["what"] = f"{'the first ' if args.max_tokens else ''}{out['targets']:,} tokens, in windows of {T}"
        out["record"] = {"windows": "consecutive", "context": T, "max_tokens": args.max_tokens}
    return out


def _count(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 100_000 else f"{n:,}"


def _describe(tok) -> str:
    return f"{tok.name}, {tok.vocab_size:,} tokens"


if __name__ == "__main__":
    sys.exit(main())
