"""HellaSwag: four-way sentence completion, the benchmark every GPT-2 124M reproduction reports.

    from tritongpt.hellaswag import evaluate_hellaswag, load_hellaswag
    data = load_hellaswag("hellaswag_val.jsonl", tokenizer, context_length=1024)   # --limit: limit=N
    result = evaluate_hellaswag(model, data, batch_size=32)
    result.acc, result.acc_norm, result.n

The file is the official `hellaswag_val.jsonl` (https://github.com/rowanz/hellaswag, `data/`; 10,042
examples): one JSON object per line with `ctx` (a string), `endings` (four strings) and `label` (0-3, the
true ending); other fields are ignored, and so are blank lines.

Scoring, as build-nanogpt and llm.c do it: each candidate is the context's tokens followed by the tokens of
" " + ending; the model's cross-entropy of each ending token given everything before it is summed. `acc`
picks the ending with the lowest sum, `acc_norm` the lowest sum divided by the ending's token count; a tie
goes to the first. Probabilities are over the tokenizer's vocabulary (padded rows of the head are never
text). The four candidates of an example are right-padded into one batch, several examples per forward,
longest first (a batch that does not fit in memory fails at once, not at the end).

Bad input: a malformed line (not JSON, a field missing or of the wrong type, not four endings, a label out
of range) is a `HellaSwagError` naming the file and line. An example this model cannot score is skipped and
counted by reason: an empty ending, text the tokenizer cannot encode (a character a character-level model
never saw), an empty context, or an ending too long for the context. When context + ending is longer than
the context, the context keeps its last tokens, as many for all four candidates (counted as `truncated`).

Reference figures (acc_norm by this definition, all 10,042 examples): OpenAI's GPT-2 124M about 29.5%
(build-nanogpt, llm.c), the GPT-3 paper's 124M model 33.7%; chance is 25%.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F

from tritongpt.data import DataError
from tritongpt.files import parse_json
from tritongpt.progress import Meter
from tritongpt.tokenizer import TokenizerError

N_ENDINGS = 4

# reasons an example is skipped, as they appear in results and metrics
SKIP_REASONS = {
    "empty_ending": "an empty ending",
    "not_encodable": "text the tokenizer cannot encode",
    "empty_context": "an empty context",
    "too_long": "an ending too long for the context",
}


class HellaSwagError(DataError):
    """A HellaSwag file that cannot be read or is malformed; the message names the file (and line)."""


@dataclass(frozen=True)
class Example:
    line: int  # 1-based line number in the file
    ctx: str
    endings: tuple[str, ...]
    label: int


@dataclass(frozen=True)
class EncodedExample:
    line: int
    label: int
    context: list[int]  # the context's tokens, cut from the left where the longest candidate needs it
    endings: list[list[int]]  # tokens of " " + ending, one list per ending
    truncated: bool = False  # the context lost tokens from its start

    @property
    def longest(self) -> int:
        return len(self.context) + max(map(len, self.endings))


@dataclass
class HellaSwagSet:
    """The scorable examples of a file for one tokenizer and context length, and what was left out."""

    path: str
    examples: list[EncodedExample]
    vocab_size: int  # the tokenizer's: scores are over these ids only
    read: int  # examples read from the file (scorable + skipped)
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> count
    truncated: int = 0  # examples whose context was cut to fit


# ---------------------------------------------------------------------------------------------------------
# Reading


def _label(value: Any) -> int | None:
    """An int label; the Hugging Face copy of the data stores it as a string ("3")."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and re.fullmatch(r"\s*-?[0-9]+\s*", value):  # ASCII digits ("²".isdigit() too)
        return int(value)
    return None


def _parse(obj: Any, where: str, line: int) -> Example:
    if not isinstance(obj, dict):
        raise HellaSwagError(f"{where}: expected a JSON object with ctx, endings and label, got {type(obj).__name__}")
    for key in ("ctx", "endings", "label"):
        if key not in obj:
            raise HellaSwagError(f"{where}: no {key!r} field")
    ctx, endings = obj["ctx"], obj["endings"]
    if not isinstance(ctx, str):
        raise HellaSwagError(f"{where}: 'ctx' must be a string, got {type(ctx).__name__}")
    if not isinstance(endings, list) or len(endings) != N_ENDINGS or not all(isinstance(e, str) for e in endings):
        got = f"{len(endings)} items" if isinstance(endings, list) else type(endings).__name__
        if isinstance(endings, list) and len(endings) == N_ENDINGS:
            got = "a non-string item"
        raise HellaSwagError(f"{where}: 'endings' must be a list of {N_ENDINGS} strings, got {got}")
    label = _label(obj["label"])
    if label is None:
        raise HellaSwagError(f"{where}: 'label' must be an integer, got {obj['label']!r}")
    if not 0 <= label < N_ENDINGS:
        raise HellaSwagError(f"{where}: label {label} is out of range (0..{N_ENDINGS - 1})")
    return Example(line, ctx, tuple(endings), label)


def read_examples(path: str | Path, limit: int = 0) -> list[Example]:
    """The examples of a HellaSwag JSONL file, in order (the first `limit` when > 0)."""
    path = Path(path)
    if not path.exists():
        raise HellaSwagError(
            f"HellaSwag file {path} does not exist (download hellaswag_val.jsonl once; see the README)"
        )
    if path.is_dir():
        raise HellaSwagError(f"HellaSwag file {path} is a folder; expected hellaswag_val.jsonl")
    out: list[Example] = []
    try:
        with open(path, "rb") as f:
            for number, raw in enumerate(f, start=1):
                where = f"{path}:{number}"
                try:
                    text = raw.decode("utf-8-sig" if number == 1 else "utf-8")  # a byte-order mark may lead
                except UnicodeDecodeError as e:
                    raise HellaSwagError(f"{where}: not UTF-8 text (byte {e.start + 1} of the line)") from None
                if not text.strip():
                    continue
                try:
                    obj = parse_json(text)
                except json.JSONDecodeError as e:
                    raise HellaSwagError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
                out.append(_parse(obj, where, number))
                if limit and len(out) >= limit:
                    break
    except OSError as e:
        raise HellaSwagError(f"cannot read HellaSwag file {path}: {e.strerror or e}") from None
    if not out:
        raise HellaSwagError(f"HellaSwag file {path} holds no examples")
    return out


# ---------------------------------------------------------------------------------------------------------
# Tokenizing


def encode_example(ex: Example, tokenizer, context_length: int) -> EncodedExample | str:
    """The example's tokens, or the reason (a key of SKIP_REASONS) it cannot be scored."""
    if any(not e.strip() for e in ex.endings):
        return "empty_ending"
    try:
        context = tokenizer.encode(ex.ctx)
        endings = [tokenizer.encode(" " + e) for e in ex.endings]
    except TokenizerError:
        return "not_encodable"
    if not context:
        return "empty_context"
    longest = max(map(len, endings))
    if longest > context_length - 1:  # the first ending token needs at least one context token before it
        return "too_long"
    keep = min(len(context), context_length - longest)
    return EncodedExample(ex.line, ex.label, context[len(context) - keep :], endings, keep < len(context))


def load_hellaswag(path: str | Path, tokenizer, context_length: int, limit: int = 0) -> HellaSwagSet:
    """Read, check and tokenize a HellaSwag file for a model with this tokenizer and context length.

    HellaSwagError when the file is malformed or when none of its examples can be scored by such a model."""
    examples = read_examples(path, limit)
    encoded: list[EncodedExample] = []
    skipped: Counter[str] = Counter()
    truncated = 0
    for ex in examples:
        enc = encode_example(ex, tokenizer, context_length)
        if isinstance(enc, str):
            skipped[enc] += 1
            continue
        truncated += enc.truncated
        encoded.append(enc)
    data = HellaSwagSet(str(path), encoded, tokenizer.vocab_size, len(examples), dict(skipped), truncated)
    if not encoded:
        raise HellaSwagError(
            f"none of the {len(examples)} examples of {path} can be scored by this model "
            f"({describe_skips(data.skipped)}; context {context_length} tokens)"
        )
    return data


def describe_skips(skipped: dict[str, int]) -> str:
    """ "3 with an empty ending, 1 with text the tokenizer cannot encode" (or "none skipped")."""
    parts = [f"{n:,} with {SKIP_REASONS[r]}" for r, n in skipped.items() if n]
    return ", ".join(parts) if parts else "none skipped"


# ---------------------------------------------------------------------------------------------------------
# Scoring


def _batch(examples: list[EncodedExample]) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens (R, L) of the R = 4 * len(examples) candidates, right-padded with 0, and targets (R, L): the
    next token at the positions that predict an ending token, -1 elsewhere."""
    rows = [(ex.context, end) for ex in examples for end in ex.endings]
    L = max(len(c) + len(e) for c, e in rows)
    tokens = torch.zeros(len(rows), L, dtype=torch.long)
    targets = torch.full((len(rows), L), -1, dtype=torch.long)
    for r, (context, ending) in enumerate(rows):
        c, n = len(context), len(ending)
        tokens[r, : c + n] = torch.tensor(context + ending)
        targets[r, c - 1 : c + n - 1] = torch.tensor(ending)  # position t predicts token t + 1
    return tokens, targets


@torch.no_grad()
def score(
    model: torch.nn.Module,
    examples: list[EncodedExample],
    batch_size: int = 32,
    autocast: Callable[[], contextlib.AbstractContextManager] | None = None,
    vocab_size: int | None = None,
    progress: Meter | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(sums, counts), each (n, 4) on the CPU: the summed cross-entropy (fp64, nats) of each ending's tokens
    and their number. `batch_size` candidates per forward (at least one example's four); logits are cut to
    the first `vocab_size` entries when given; `autocast` makes the forward's context (e.g. bf16)."""
    device = next(model.parameters()).device
    n = len(examples)
    sums = torch.zeros(n, N_ENDINGS, dtype=torch.float64)
    counts = torch.zeros(n, N_ENDINGS, dtype=torch.long)
    per_forward = max(1, batch_size // N_ENDINGS)
    order = sorted(range(n), key=lambda i: -examples[i].longest)
    was_training = model.training
    model.eval()
    try:
        for start in range(0, n, per_forward):
            idx = order[start : start + per_forward]
            tokens, targets = _batch([examples[i] for i in idx])
            with autocast() if autocast is not None else contextlib.nullcontext():
                logits = model(tokens.to(device))[0]
            mask = targets != -1
            picked = logits[mask.to(device)][:, :vocab_size].float()  # (M, V): only the scored positions
            losses = F.cross_entropy(picked, targets[mask].to(device), reduction="none").double().cpu()
            row_sums = torch.zeros(len(idx) * N_ENDINGS, dtype=torch.float64)
            row_sums.index_add_(0, mask.nonzero()[:, 0], losses)
            sums[idx] = row_sums.view(-1, N_ENDINGS)
            counts[idx] = mask.sum(dim=1).view(-1, N_ENDINGS)
            if progress is not None:
                progress.update(len(idx))
    finally:
        model.train(was_training)
    return sums, counts


def predictions(sums: torch.Tensor, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(pred, pred_norm), each (n,): the ending with the lowest summed and the lowest mean cross-entropy."""
    return sums.argmin(dim=1), (sums / counts).argmin(dim=1)


@dataclass
class HellaSwagResult:
    n: int  # examples scored
    correct: int  # by summed cross-entropy
    correct_norm: int  # by cross-entropy per ending token
    skipped: dict[str, int] = field(default_factory=dict)
    truncated: int = 0

    @property
    def acc(self) -> float:
        return self.correct / self.n if self.n else math.nan

    @property
    def acc_norm(self) -> float:
        return self.correct_norm / self.n if self.n else math.nan

    def to_dict(self) -> dict[str, Any]:
        return {
            "acc": self.acc if self.n else None,
            "acc_norm": self.acc_norm if self.n else None,
            "n": self.n,
            "correct": self.correct,
            "correct_norm": self.correct_norm,
            "skipped": sum(self.skipped.values()),
            "skipped_by_reason": dict(self.skipped),
            "truncated": self.truncated,
        }

    def record(self) -> dict[str, Any]:
        """The fields of a training run's eval record in metrics.jsonl."""
        return {
            "hellaswag_acc": self.acc if self.n else None,
            "hellaswag_acc_norm": self.acc_norm if self.n else None,
            "hellaswag_n": self.n,
            "hellaswag_skipped": sum(self.skipped.values()),
        }

    def summary(self) -> str:
        skipped = sum(self.skipped.values())
        text = f"acc {self.acc:.4f}, acc_norm {self.acc_norm:.4f} (n = {self.n:,}"
        if skipped:
            text += f"; skipped {skipped:,}: {describe_skips(self.skipped)}"
        if self.truncated:
            text += f"; contexts cut to fit: {self.truncated:,}"
        return text + ")"


def evaluate_hellaswag(
    model: torch.nn.Module,
    data: HellaSwagSet,
    batch_size: int = 32,
    autocast: Callable[[], contextlib.AbstractContextManager] | None = None,
    rank: int = 0,
    world_size: int = 1,
    progress: bool = False,
) -> HellaSwagResult:
    """Accuracies over `data`. Under DDP every rank calls this: rank r scores examples r, r + world_size,
    ... and the counts are all-reduced, so every rank returns the result for the whole set."""
    share = data.examples[rank::world_size]
    meter = Meter(len(share), "hellaswag", "examples", enabled=progress)
    try:
        sums, counts = score(model, share, batch_size, autocast, data.vocab_size, meter)
    finally:
        meter.close()
    labels = torch.tensor([ex.label for ex in share], dtype=torch.long)
    pred, pred_norm = predictions(sums, counts)
    totals = torch.tensor([len(share), int((pred == labels).sum()), int((pred_norm == labels).sum())])
    if world_size > 1 and dist.is_available() and dist.is_initialized():
        device = next(model.parameters()).device
        totals = totals.to(device)
        dist.all_reduce(totals)
        totals = totals.cpu()
    n, correct, correct_norm = (int(t) for t in totals)
    return HellaSwagResult(n, correct, correct_norm, dict(data.skipped), data.truncated)
