"""Training data: the token-file format, the data-folder layouts we read, and windows.

Token files (`train-000000.bin`, ... written by `gpt prepare`) are a 32-byte header followed by the tokens:

    offset  size  field
    0       8     magic   b"TGPTTOK\\0"
    8       4     version (uint32, little-endian) = 1
    12      4     bytes per token: 2 (uint16, vocabularies < 65,536) or 4 (uint32)
    16      8     token count (uint64)
    24      8     reserved, zero

Readers check all four fields and that the file is exactly as long as the header says, so a truncated or
foreign file is an error that names it rather than garbage tokens.

A data folder holds one of three layouts, told apart by its files (`open_split` reads them all):

    ours      meta.json ("format": "tritongpt-data") listing the shards of each split with their token counts
              and sha256 (version 2), or version 1's single train.bin / val.bin
    llm.c     *_train_*.bin / *_val_*.bin (or *_train.bin / *_val.bin): a 256 x int32 header (magic 20240520,
              version 1, token count), then uint16 tokens; GPT-2 BPE
    nanoGPT   train.bin / val.bin: headerless uint16 tokens; GPT-2 BPE (a meta.pkl beside them means a custom
              vocabulary, which is refused)

    tokens = open_split("data/fineweb-edu-10B", "train")        # list of read-only np.memmaps, in order
    sampler = WindowSampler(tokens, context_length=1024, batch_size=16, seed=1337)
    x, y = sampler.batch(step=0)                                 # (16, 1024) int64 each

`WindowSampler` is stateless apart from its seed: the windows of a step are a pure function of (seed, step),
drawn uniformly over every window that fits inside one shard, so resuming at step k (or running on more
processes, each taking its slice) reads exactly the same data. `SlidingWindowDataset` is the in-memory
alternative for small texts: every `stride`-th window, in order. The corpora `gpt prepare` reads (text, JSON
Lines, Parquet, the built-in ones) are `tritongpt.corpus`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from tritongpt.files import name_os_errors, parse_json

if TYPE_CHECKING:  # torch is imported where tensors are made: `gpt prepare` starts without it
    import torch

    from tritongpt.config import DataConfig

MAGIC = b"TGPTTOK\0"
VERSION = 1
HEADER = struct.Struct("<8sIIQ8x")  # magic, version, bytes per token, token count, reserved
DTYPES = {2: np.dtype("<u2"), 4: np.dtype("<u4")}
HASH_BLOCK = 8 << 20  # bytes hashed at a time when a partial shard is reopened
FULL_SCAN_TOKENS = 1 << 28  # token ids of a split up to this size are all checked at start-up (check_token_ids)

LLMC_MAGIC = 20240520  # llm.c's GPT-2 token shards: 256 int32 header, then uint16 tokens
LLMC_VERSION = 1
LLMC_HEADER_BYTES = 256 * 4
GPT2_VOCAB = 50257  # what llm.c and nanoGPT uint16 files hold (their tokenizer is GPT-2 BPE)
META = "meta.json"
STATE = ".prepare-state.json"  # an unfinished `gpt prepare` (see tritongpt.prepare)


class DataError(ValueError):
    """Input or token data that cannot be used; the message names the file and what is wrong."""


# ---------------------------------------------------------------------------------------------------------
# Token files


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits (vocab < 65,536), else uint32."""
    return DTYPES[2] if vocab_size < 2**16 else DTYPES[4]


def partial_name(path: str | Path) -> Path:
    """The hidden name a file is written under until it is complete: `dir/.name.tmp`, the same every time, so
    a resumed `gpt prepare` finds its unfinished files again (`tritongpt.files.temp_name` is unique per call)."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp")


class TokenWriter:
    """Append token arrays to a token file; the header's count is filled in when it is finished.

    Written under `partial_name(path)`: `close()` finishes it and renames it into place, `finish()` only
    finishes it (the caller renames it later), `abort()` removes it. An interrupted `gpt prepare` therefore
    never leaves a file that looks complete. `sha256` is the hash of the token bytes (everything after the
    header). `resume_count=n` reopens an unfinished temporary file, keeping its first n tokens.
    OSErrors (a full disk, a read-only folder) name the file.
    """

    def __init__(self, path: str | Path, dtype: np.dtype, resume_count: int | None = None) -> None:
        self.path = Path(path)
        self.dtype = np.dtype(dtype).newbyteorder("<")
        if self.dtype.itemsize not in DTYPES:
            raise DataError(f"token dtype must be uint16 or uint32, got {dtype}")
        self.tmp = partial_name(self.path)
        self._sha = hashlib.sha256()
        self.count = 0
        with name_os_errors(self.tmp):
            if resume_count is None:
                self.f = open(self.tmp, "wb")  # noqa: SIM115 - closed in finish()/abort()
                self.f.write(HEADER.pack(MAGIC, VERSION, self.dtype.itemsize, 0))
            else:
                self._reopen(resume_count)

    def _reopen(self, count: int) -> None:
        need = HEADER.size + count * self.dtype.itemsize
        if not self.tmp.is_file() or self.tmp.stat().st_size < need:
            have = self.tmp.stat().st_size if self.tmp.is_file() else None
            raise DataError(
                f"{self.tmp} should hold the first {count:,} tokens of {self.path.name} but "
                + ("is missing" if have is None else f"is only {have:,} bytes")
            )
        self.f = open(self.tmp, "r+b")  # noqa: SIM115 - closed in finish()/abort()
        magic, _, itemsize, _ = HEADER.unpack(self.f.read(HEADER.size))
        if magic != MAGIC or itemsize != self.dtype.itemsize:
            self.f.close()
            raise DataError(f"{self.tmp} is not an unfinished {self.dtype} token file")
        self.f.truncate(need)
        left = need - HEADER.size
        while left:
            block = self.f.read(min(left, HASH_BLOCK))
            self._sha.update(block)
            left -= len(block)
        self.count = count

    def write(self, ids: list[int] | np.ndarray) -> None:
        arr = np.asarray(ids)
        if arr.size == 0:
            return
        if arr.min() < 0 or arr.max() >= 2 ** (8 * self.dtype.itemsize):
            raise DataError(f"token id out of range for {self.dtype} in {self.path}")
        raw = arr.astype(self.dtype, copy=False).tobytes()
        with name_os_errors(self.tmp):
            self.f.write(raw)
        self._sha.update(raw)
        self.count += int(arr.size)

    @property
    def sha256(self) -> str:
        return self._sha.hexdigest()

    def sync(self) -> None:
        """Flush the tokens written so far to the disk (the header still says 0 tokens)."""
        with name_os_errors(self.tmp):
            self.f.flush()
            os.fsync(self.f.fileno())

    def finish(self) -> Path:
        """Write the final header, flush to disk and close; returns the temporary file (not yet renamed)."""
        with name_os_errors(self.tmp):
            self.f.seek(0)
            self.f.write(HEADER.pack(MAGIC, VERSION, self.dtype.itemsize, self.count))
            self.f.flush()
            os.fsync(self.f.fileno())
            self.f.close()
        return self.tmp

    def close(self) -> Path:
        self.finish()
        with name_os_errors(self.tmp):
            os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        """Close and remove the temporary file."""
        try:
            self.f.close()
        except OSError:
            pass
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


def _memmap(path: Path, dtype: np.dtype, offset: int, count: int) -> np.ndarray:
    if count == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=(count,))


def open_tokens(path: str | Path) -> np.ndarray:
    """The tokens of a token file as a read-only memory map (nothing is read until it is indexed)."""
    dtype, count = read_header(path)
    return _memmap(Path(path), dtype, HEADER.size, count)


def read_llmc_header(path: str | Path) -> int:
    """Token count of an llm.c shard, after checking its magic, version and length."""
    path = Path(path)
    with open(path, "rb") as f:
        raw = f.read(LLMC_HEADER_BYTES)
    if len(raw) < LLMC_HEADER_BYTES:
        raise DataError(f"{path} is too short to be an llm.c token shard ({len(raw)} bytes, header needs 1024)")
    magic, version, count = np.frombuffer(raw, dtype="<i4")[:3].tolist()
    if magic != LLMC_MAGIC:
        raise DataError(f"{path} is not an llm.c token shard (magic {magic}, expected {LLMC_MAGIC})")
    if version != LLMC_VERSION:
        raise DataError(f"{path} is llm.c shard version {version}; only version 1 (uint16 GPT-2 tokens) is read")
    expected = LLMC_HEADER_BYTES + 2 * count
    actual = path.stat().st_size
    if count < 0 or actual != expected:
        raise DataError(f"{path} is {actual} bytes but its llm.c header promises {count} tokens ({expected} bytes)")
    return count


def open_llmc(path: str | Path) -> np.ndarray:
    """The uint16 tokens of an llm.c shard as a read-only memory map."""
    return _memmap(Path(path), DTYPES[2], LLMC_HEADER_BYTES, read_llmc_header(path))


def open_headerless(path: str | Path) -> np.ndarray:
    """nanoGPT's headerless uint16 token file as a read-only memory map."""
    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        raise DataError(f"{path} is empty")
    if size % 2:
        raise DataError(f"{path} has an odd number of bytes ({size:,}): not uint16 tokens, or truncated")
    return _memmap(path, DTYPES[2], 0, size // 2)


# ---------------------------------------------------------------------------------------------------------
# Data folders: our meta.json and shards, llm.c shards, nanoGPT's train.bin / val.bin

SPLITS = ("train", "val")


def _sniff(path: Path) -> str:
    """ "ours", "llm.c" or "raw", from a token file's first bytes."""
    with open(path, "rb") as f:
        head = f.read(8)
    if head == MAGIC:
        return "ours"
    if len(head) >= 4 and struct.unpack("<i", head[:4])[0] == LLMC_MAGIC:
        return "llm.c"
    return "raw"


def _llmc_files(d: Path, split: str) -> list[Path]:
    found = {*d.glob(f"*_{split}_*.bin"), *d.glob(f"*_{split}.bin")}
    return sorted(p for p in found if p.is_file() and not p.name.startswith("."))


def read_meta_file(meta_path: Path) -> dict:
    """Our meta.json, checked, with "layout" added ("shards" for version 2, "single" for version 1)."""
    try:
        meta = parse_json(meta_path.read_bytes())
    except json.JSONDecodeError as e:
        raise DataError(f"{meta_path} is not valid JSON: {e}") from None
    if not isinstance(meta, dict) or meta.get("format") != "tritongpt-data":
        raise DataError(f"{meta_path} is not a tritongpt data description (no 'tritongpt-data' format marker)")
    if meta.get("version") not in (1, 2):
        raise DataError(f"{meta_path} has data version {meta.get('version')!r}; this code reads versions 1 and 2")
    for key in ("tokenizer", "vocab_size"):
        if key not in meta:
            raise DataError(f"{meta_path} has no {key!r} entry")
    if not isinstance(meta["vocab_size"], int) or meta["vocab_size"] < 1:
        raise DataError(f"{meta_path}: vocab_size must be a positive integer, got {meta['vocab_size']!r}")
    if meta["version"] == 2:
        shards = meta.get("shards")
        ok = isinstance(shards, dict) and all(
            isinstance(shards.get(s), list)
            and all(
                isinstance(r, dict) and is_plain_name(r.get("file")) and isinstance(r.get("tokens"), int)
                for r in shards[s]
            )
            for s in SPLITS
        )
        if not ok:
            raise DataError(
                f"{meta_path}: 'shards' must list the train and val shards as {{file, tokens, sha256}}, each file "
                "a plain name in the folder"
            )
    return {**meta, "layout": "shards" if meta["version"] == 2 else "single"}


def is_plain_name(name) -> bool:
    """A file name inside the folder: no path separators, not hidden."""
    return isinstance(name, str) and re.fullmatch(r"[\w][\w.-]*", name) is not None


def _foreign_meta(layout: str, where: str) -> dict:
    return {
        "format": layout,
        "layout": layout,
        "tokenizer": {"type": "gpt2"},
        "vocab_size": GPT2_VOCAB,
        "dtype": "uint16",
        "assumed": f"GPT-2 BPE (the tokenizer of {layout}'s uint16 files); {where}",
    }


def load_meta(data_dir: str | Path, hint: str = "") -> dict:
    """What a data folder holds: our meta.json (with "layout" = "shards" or "single"), or for llm.c and nanoGPT
    folders a description derived from the files ("layout" = "llm.c" / "nanogpt", GPT-2 BPE assumed).

    DataError, naming the folder or file, when it holds none of the layouts, an unfinished `gpt prepare`, or a
    file that is none of them; `hint` (how to get the data) is added when the folder holds nothing.
    """
    d = Path(data_dir)
    hint = hint or f"prepare the data first (gpt prepare ... --out {d})"
    if (d / META).is_file():
        return read_meta_file(d / META)
    if (d / STATE).is_file():
        raise DataError(f"{d} holds an unfinished `gpt prepare` (no {META} yet): finish it with `gpt prepare --resume`")
    if d.exists() and not d.is_dir():
        raise DataError(f"{d} is a file, not a data folder")
    if not d.is_dir():
        raise DataError(f"{d} does not exist: {hint}")
    llmc = {s: _llmc_files(d, s) for s in SPLITS}
    plain = [d / f"{s}.bin" for s in SPLITS if (d / f"{s}.bin").is_file()]
    if llmc["train"] or llmc["val"]:
        if plain:
            first = (llmc["train"] or llmc["val"])[0]
            raise DataError(f"{d} holds both llm.c shards ({first.name}, ...) and {plain[0].name}: keep one")
        return _foreign_meta("llm.c", f"{len(llmc['train'])} train + {len(llmc['val'])} val shards in {d}")
    if plain:
        if (d / "meta.pkl").is_file():
            raise DataError(
                f"{d} has nanoGPT's meta.pkl: its train.bin / val.bin use that custom vocabulary, not GPT-2 BPE; "
                "prepare the text with `gpt prepare` instead"
            )
        kinds = {p.name: _sniff(p) for p in plain}
        if "ours" in kinds.values():
            name = next(n for n, k in kinds.items() if k == "ours")
            raise DataError(f"{d / name} is a tritongpt token file but {d / META} (its tokenizer) is missing")
        if set(kinds.values()) == {"llm.c"}:
            return _foreign_meta("llm.c", f"{', '.join(kinds)} in {d}")
        return _foreign_meta("nanogpt", f"headerless {', '.join(kinds)} in {d}")
    raise DataError(
        f"{d} holds no token data ({META} from gpt prepare, llm.c's *_train_*.bin shards or nanoGPT's "
        f"train.bin / val.bin): {hint}"
    )


def read_data_tokenizer(data_dir: str | Path, hint: str = ""):
    """(what the folder holds, its tokenizer): `load_meta` and the tokenizer the data was prepared with, for
    every reader of prepared data (training, evaluation). DataError naming meta.json for a missing or bad
    tokenizer record, or a vocabulary size that is not the tokenizer's; `hint` says how to get missing data."""
    from tritongpt.tokenizer import TokenizerError, tokenizer_from_dict

    meta = load_meta(data_dir, hint)
    where = Path(data_dir) / META
    if not isinstance(meta.get("tokenizer"), dict):
        raise DataError(f"{where} has no 'tokenizer' record: prepare the data again (gpt prepare)")
    vocab = meta.get("vocab_size")
    if not isinstance(vocab, int) or isinstance(vocab, bool) or vocab < 1:
        raise DataError(f"{where}: 'vocab_size' must be a positive integer, got {vocab!r}")
    try:
        tok = tokenizer_from_dict(meta["tokenizer"])
    except TokenizerError as e:
        raise DataError(f"{where}: bad tokenizer record: {e}") from None
    if tok.vocab_size != vocab:
        raise DataError(f"{where}: vocab_size {vocab} does not match its tokenizer's {tok.vocab_size}")
    return meta, tok


def split_files(data_dir: str | Path, split: str, meta: dict | None = None) -> list[Path]:
    """The token files of one split, in order (as `open_split` reads them)."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; expected 'train' or 'val'")
    d = Path(data_dir)
    meta = meta if meta is not None else load_meta(d)
    if meta["layout"] == "shards":
        return [d / r["file"] for r in meta["shards"][split]]
    if meta["layout"] == "llm.c" and _llmc_files(d, "train") + _llmc_files(d, "val"):
        return _llmc_files(d, split)
    return [d / f"{split}.bin"]


def open_split(data_dir: str | Path, split: str) -> list[np.ndarray]:
    """The tokens of one split ("train" or "val") of a data folder, as read-only arrays in order.

    The one entry point for every reader of prepared data (training, evaluation), for every layout (see the
    module docstring), one array per file. DataError, naming the file, when one is missing, truncated, or not
    of the folder's layout.
    """
    d = Path(data_dir)
    meta = load_meta(d)
    files = split_files(d, split, meta)
    layout = meta["layout"]
    out = []
    for i, path in enumerate(files):
        if not path.is_file():
            raise DataError(f"{path} does not exist" + (f" ({d / META} lists it)" if layout == "shards" else ""))
        if layout in ("shards", "single"):
            arr = open_tokens(path)
            listed = meta["shards"][split][i]["tokens"] if layout == "shards" else None
            if listed is not None and listed != len(arr):
                raise DataError(f"{path} holds {len(arr):,} tokens but {d / META} lists {listed:,}")
        elif layout == "llm.c":
            arr = open_llmc(path)
        else:
            if _sniff(path) != "raw":
                raise DataError(f"{path} has a token-file header but {d} is read as nanoGPT's headerless layout")
            arr = open_headerless(path)
        out.append(arr)
    return out


# ---------------------------------------------------------------------------------------------------------
# Windows


class WindowSampler:
    """Random (input, target) windows of one or more token arrays (shards), a pure function of (seed, step).

    A window is `context_length + 1` consecutive tokens inside one shard; window i of all of them (in shard
    order, then by start offset) is drawn uniformly. One optimizer step reads `batch_size * grad_accum *
    world_size` windows, drawn together from `np.random.default_rng([seed, step])`; micro-batch `micro` of rank
    `rank` is the slice number `micro * world_size + rank`. Any split of the same global batch over ranks and
    micro-batches therefore sees the same windows, and a resumed run needs nothing but the step to continue.
    With a single array, window i starts at offset i.

    `vocab_size`, when given, is checked against every window read: a token id outside the vocabulary is a
    DataError naming the file (memory-mapped shards) and the offset, instead of an IndexError in the model.
    """

    def __init__(
        self,
        tokens: np.ndarray | Sequence[np.ndarray],
        context_length: int,
        batch_size: int,
        seed: int,
        grad_accum: int = 1,
        world_size: int = 1,
        name: str = "tokens",
        vocab_size: int | None = None,
    ) -> None:
        self.shards = [tokens] if isinstance(tokens, np.ndarray) else list(tokens)
        self.T = context_length
        windows = [max(len(t) - context_length, 0) for t in self.shards]
        self.first_window = np.cumsum([0, *windows], dtype=np.int64)  # window index where each shard begins
        self.n_windows = int(self.first_window[-1])
        files = [getattr(t, "filename", None) for t in self.shards]
        if len(files) == 1 and files[0]:
            name = f"{name} ({files[0]})"
        if self.n_windows == 0:
            total = sum(len(t) for t in self.shards)
            where = f" in {len(self.shards)} shards, none holding" if len(self.shards) > 1 else ", fewer than"
            raise DataError(
                f"{name} has {total} tokens{where} one window of context_length + 1 = {context_length + 1}; "
                "use a shorter context or more data (or a larger split)"
            )
        self.name = name
        self.B = batch_size
        self.seed = seed
        self.grad_accum = grad_accum
        self.world_size = world_size
        self.vocab_size = vocab_size

    def starts(self, step: int) -> np.ndarray:
        """Window indices of one global batch: (grad_accum * world_size * batch_size,)."""
        rng = np.random.default_rng([self.seed, step])
        n = self.grad_accum * self.world_size * self.B
        return rng.integers(0, self.n_windows, size=n)

    def window(self, i: int) -> np.ndarray:
        """Window i: `context_length + 1` tokens as int64."""
        shard = int(np.searchsorted(self.first_window, i, side="right")) - 1
        off = int(i - self.first_window[shard])
        win = np.asarray(self.shards[shard][off : off + self.T + 1], dtype=np.int64)
        if self.vocab_size is not None and win.max() >= self.vocab_size:
            bad = int(np.argmax(win >= self.vocab_size))
            src = getattr(self.shards[shard], "filename", None) or f"{self.name} (shard {shard})"
            raise DataError(
                f"{src} holds token id {win[bad]} at token {off + bad:,}, outside the {self.vocab_size:,}-token "
                "vocabulary of the data: the file does not belong to this tokenizer"
            )
        return win

    def batch(self, step: int, micro: int = 0, rank: int = 0, starts: np.ndarray | None = None):
        """(x, y) int64 tensors of shape (batch_size, context_length); y is x shifted left by one."""
        if starts is None:
            starts = self.starts(step)
        import torch

        chunk = starts[(micro * self.world_size + rank) * self.B :][: self.B]
        win = torch.from_numpy(np.stack([self.window(i) for i in chunk]))
        return win[:, :-1], win[:, 1:]

    def fixed_batches(self, n_batches: int, rank: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """This rank's share of `n_batches` global batches that are the same every time (evaluation).

        The `n_batches * world_size * batch_size` windows come from one seeded draw; batch i of rank r is
        slice `i * world_size + r`, so the whole set depends only on the seed and the global batch size.
        """
        rng = np.random.default_rng([self.seed, 0x5EED])
        starts = rng.integers(0, self.n_windows, size=n_batches * self.world_size * self.B)
        return [self.batch(0, micro=i, rank=rank, starts=starts) for i in range(n_batches)]


class TrainingData(NamedTuple):
    meta: dict  # meta.json
    tokenizer: Any
    sampler: WindowSampler  # the training windows of every step, this rank's share
    val_batches: list[tuple[torch.Tensor, torch.Tensor]]  # the fixed validation batches, this rank's share


def open_training_data(
    data_cfg: DataConfig, context_length: int, batch_size: int, seed: int, grad_accum: int, world_size: int,
    rank: int, eval_batches: int,
) -> TrainingData:  # fmt: skip
    """What `gpt train` reads from a prepared folder: its meta and tokenizer (`read_data_tokenizer`), both splits
    checked against the vocabulary, the train split's `WindowSampler` and the validation batches."""
    d = Path(data_cfg.dir)
    meta, tok = read_data_tokenizer(d, data_cfg.missing_hint())
    vocab = tok.vocab_size
    train_tokens, val_tokens = open_split(d, "train"), open_split(d, "val")
    check_token_ids(d, meta, vocab, {"train": train_tokens, "val": val_tokens})
    args = (context_length, batch_size, seed)
    sampler = WindowSampler(train_tokens, *args, grad_accum, world_size, f"the train split of {d}", vocab)
    val = WindowSampler(val_tokens, *args, 1, world_size, f"the val split of {d}", vocab)
    return TrainingData(meta, tok, sampler, val.fixed_batches(eval_batches, rank))


class SlidingWindowDataset:
    """Every `stride`-th window of `max_length` tokens of a small in-memory text, with next-token targets.

    stride == max_length gives non-overlapping windows; a smaller stride overlaps them (more, correlated
    examples). Takes a string and a tokenizer, or already-encoded ids. A map-style dataset (`__len__`,
    `__getitem__`): `torch.utils.data.DataLoader` takes it.
    """

    def __init__(self, text_or_ids: str | list[int] | np.ndarray, max_length: int, stride: int, tokenizer=None):
        import torch

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
# Checks


def check_token_ids(data_dir: str | Path, meta: dict, vocab_size: int, splits: dict[str, list[np.ndarray]]) -> None:
    """Every token id of the `splits` ({split: arrays, as `open_split` returns them}) below `vocab_size`, file
    by file (`check_token_range`), for splits of up to FULL_SCAN_TOKENS (a fraction of a second). Larger data
    (FineWeb's billions of tokens) is not read whole at start-up: `WindowSampler` checks each window it reads."""
    for split, arrays in splits.items():
        if sum(len(a) for a in arrays) > FULL_SCAN_TOKENS:
            continue
        for path, tokens in zip(split_files(data_dir, split, meta), arrays, strict=True):
            check_token_range(tokens, vocab_size, path)


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
