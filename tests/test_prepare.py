"""`gpt prepare`: inputs (text, JSON Lines, Parquet), the split, shards and meta.json, workers, max_tokens,
interruption and --resume, the output folder's rules, and every failure as one named line."""

import errno
import gzip
import hashlib
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import tritongpt.data
import tritongpt.prepare
from tritongpt.config import DataConfig
from tritongpt.data import (
    HEADER,
    MAGIC,
    STATE,
    DataError,
    open_split,
    open_tokens,
    read_header,
    write_tokens,
)
from tritongpt.files import LOCK_NAME
from tritongpt.prepare import Interrupted, ShardSplit, is_val_document, main, prepare, split_point
from tritongpt.tokenizer import TokenizerError, tokenizer_from_dict

TEXT = (
    "ROMEO:\nBut, soft! what light through yonder window breaks?\nIt is the east, and Juliet is the sun.\n\n"
    "JULIET:\nO Romeo, Romeo! wherefore art thou Romeo?\nDéjà vu — naïve café, 日本語, emoji 🎭.\n"
) * 7
EOT = 50256


@pytest.fixture(scope="module")
def bpe():
    try:
        return tokenizer_from_dict({"type": "gpt2"})
    except TokenizerError as e:
        pytest.skip(f"GPT-2 BPE files unavailable: {e}")


def tokens(out, split):
    arrays = open_split(out, split)
    return np.concatenate(arrays).tolist() if arrays else []


def decode_split(out_dir):
    meta = json.loads((out_dir / "meta.json").read_text(encoding="utf-8"))
    tok = tokenizer_from_dict(meta["tokenizer"])
    return meta, [tok.decode(tokens(out_dir, name)) for name in ("train", "val")]


def decode_split_after(tmp_path, src, tokenizer, **kw):
    prepare(DataConfig(dir=str(tmp_path / "out"), inputs=[str(src)], tokenizer=tokenizer, **kw), quiet=True)
    return decode_split(tmp_path / "out")


def folder(path: Path) -> dict[str, bytes]:
    """Every file of a folder (hidden ones too), by name."""
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())} if path.is_dir() else {}


def visible(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir() if not p.name.startswith("."))


def one_line_error(err: str, *parts: str) -> None:
    """A failure reported as `gpt prepare: error: ...` on one line, naming `parts`, without a traceback."""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("gpt prepare: error: "), err
    for part in parts:
        assert part in lines[0], (part, err)


# ---------------------------------------------------------------------------------------------------------
# Text inputs, the split, the token-file header (as before shards)


@pytest.mark.parametrize("tokenizer", ["char", "gpt2"])
def test_round_trip(tmp_path, tokenizer):
    if tokenizer == "gpt2":
        try:
            tokenizer_from_dict({"type": "gpt2"})
        except TokenizerError as e:
            pytest.skip(f"GPT-2 BPE files unavailable: {e}")
    src = tmp_path / "play.txt"
    src.write_text(TEXT, encoding="utf-8")
    meta, (train, val) = decode_split_after(tmp_path, src, tokenizer)
    assert train + val == TEXT
    assert val and train, "both splits hold text"
    assert train.endswith("\n"), "the split falls on a line end"
    assert meta["dtype"] == "uint16" and meta["version"] == 2
    assert meta["split"]["train_tokens"] == len(tokens(tmp_path / "out", "train"))
    assert meta["source"]["files"] == 1 and meta["source"]["documents"] == 1


def test_split_is_deterministic_and_near_fraction(tmp_path):
    src = tmp_path / "a.txt"
    src.write_text(TEXT, encoding="utf-8")
    outs = []
    for i in range(2):
        prepare(DataConfig(dir=str(tmp_path / f"o{i}"), inputs=[str(src)], val_fraction=0.25), quiet=True)
        outs.append(folder(tmp_path / f"o{i}"))
    assert outs[0] == outs[1] and sorted(outs[0]) == ["meta.json", "train-000000.bin", "val-000000.bin"]
    meta = json.loads(outs[0]["meta.json"])
    frac = meta["split"]["val_chars"] / (meta["split"]["train_chars"] + meta["split"]["val_chars"])
    assert 0.15 < frac < 0.35
    assert split_point("abc\ndef\n", 0.0) == 8
    assert [i for i in range(20) if is_val_document(i, 0.25)] == [3, 7, 11, 15, 19]
    assert not any(is_val_document(i, 0.0) for i in range(100))


def test_folder_input_sorted_with_separators(tmp_path):
    d = tmp_path / "docs"
    (d / "sub").mkdir(parents=True)
    (d / "b.txt").write_text("second\n", encoding="utf-8")
    (d / "a.txt").write_text("first\n", encoding="utf-8")
    (d / "sub" / "c.txt").write_text("third\n", encoding="utf-8")
    (d / ".hidden").write_text("never\n", encoding="utf-8")
    prepare(DataConfig(dir=str(tmp_path / "out"), inputs=[str(d)], val_fraction=0.0), quiet=True)
    meta, (train, val) = decode_split(tmp_path / "out")
    assert train == "first\n\n\nsecond\n\n\nthird\n" and val == ""
    assert meta["source"]["files"] == 3 and meta["shards"]["val"] == []
    # an output folder inside an input folder is not read back as input
    prepare(DataConfig(dir=str(d / "prepared"), inputs=[str(d)], val_fraction=0.0), quiet=True)
    assert decode_split(d / "prepared")[1][0] == train


def test_header_validation(tmp_path):
    path = write_tokens(tmp_path / "t.bin", [1, 2, 3, 65535], vocab_size=65536)  # 65536 ids need uint32
    dtype, count = read_header(path)
    assert dtype == np.dtype("<u4") and count == 4
    assert open_tokens(path).tolist() == [1, 2, 3, 65535]
    good = path.read_bytes()

    path.write_bytes(b"NOTTOKEN" + good[8:])
    with pytest.raises(DataError, match="not a tritongpt token file"):
        read_header(path)
    path.write_bytes(HEADER.pack(MAGIC, 99, 4, 4) + good[HEADER.size :])
    with pytest.raises(DataError, match="version 99"):
        read_header(path)
    path.write_bytes(HEADER.pack(MAGIC, 1, 3, 4) + good[HEADER.size :])
    with pytest.raises(DataError, match="3 bytes per token"):
        read_header(path)
    path.write_bytes(good[:-2])
    with pytest.raises(DataError, match="header promises 4 tokens"):
        read_header(path)
    path.write_bytes(good[:10])
    with pytest.raises(DataError, match="too short"):
        read_header(path)
    with pytest.raises(DataError, match="does not exist"):
        read_header(tmp_path / "missing.bin")
    assert struct.calcsize("<8sIIQ8x") == HEADER.size == 32


def test_bad_input(tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("", encoding="utf-8")
    with pytest.raises(DataError, match="empty"):
        prepare(DataConfig(dir=str(tmp_path / "o"), inputs=[str(empty)]), quiet=True)

    latin = tmp_path / "latin1.txt"
    latin.write_bytes("caf\u00e9 au lait\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1\.txt is not UTF-8.*byte offset 3.*--errors replace"):
        prepare(DataConfig(dir=str(tmp_path / "o"), inputs=[str(latin)]), quiet=True)
    assert not (tmp_path / "o").exists(), "a failed prepare leaves nothing"
    _, (train, val) = decode_split_after(tmp_path, latin, "char", errors="replace", val_fraction=0.0)
    assert train == "caf\ufffd au lait\n"

    assert main(["--input", str(latin), "--out", str(tmp_path / "o2"), "--quiet"]) == 2
    one_line_error(capsys.readouterr().err, "latin1.txt is not UTF-8")
    assert main(["--input", str(tmp_path / "nope.txt"), "--out", str(tmp_path / "o3")]) == 2
    one_line_error(capsys.readouterr().err, "does not exist")
    assert main(["--input", os.devnull, "--out", str(tmp_path / "o3")]) == 2
    one_line_error(capsys.readouterr().err, os.devnull, "not a regular file or a folder")
    assert main(["--input", str(latin), "--out", str(tmp_path / "o4"), "--errors", "replace", "--quiet"]) == 0
    assert "1 shard" in capsys.readouterr().out
    for flag in ("--shard-tokens", "--max-tokens", "--workers"):
        assert main(["--input", str(latin), "--out", str(tmp_path / "o5"), flag, "-1"]) == 2
        one_line_error(capsys.readouterr().err, flag.lstrip("-").replace("-", "_").split("_")[0])


def test_config_defaults_and_flags(tmp_path, capsys):
    src = tmp_path / "x.txt"
    src.write_text(TEXT, encoding="utf-8")
    argv = ["--config", "demo", "--input", str(src), "--out", str(tmp_path / "o"), "--val-fraction", "0.5"]
    assert main(argv) == 0
    meta = json.loads((tmp_path / "o" / "meta.json").read_text(encoding="utf-8"))
    assert meta["split"]["val_fraction"] == 0.5 and meta["tokenizer"]["type"] == "char"
    assert main(["--config", "demo", "--set", "data.nonsense=1"]) == 2
    assert "nonsense" in capsys.readouterr().err


def test_progress_line_on_large_input(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(tritongpt.prepare, "PROGRESS_MIN_BYTES", 1)
    src = tmp_path / "big.txt"
    src.write_text(TEXT * 50, encoding="utf-8")
    prepare(DataConfig(dir=str(tmp_path / "o"), inputs=[str(src)]))
    err = capsys.readouterr().err
    assert "prepare o [" in err and "100.0%" in err and "MB/s" in err and "tokens/s" in err and "left" in err


# ---------------------------------------------------------------------------------------------------------
# JSON Lines and Parquet


DOCS = [
    "The first document.\nIt has two lines.",
    "Second: <|endoftext|> inside a document is ordinary text.",
    "Déjà vu — naïve café, 日本語, emoji 🎭 and\ttabs\n\n\nblank lines",
    " leading space and trailing newline\n",
    "x" * 3000 + " a long word",
]


def write_jsonl(path: Path, docs, field="text", gz=False, extra=()) -> Path:
    lines = [json.dumps({"id": i, field: d}) for i, d in enumerate(docs)] + list(extra)
    data = ("\n".join(lines) + "\n").encode("utf-8")
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def write_parquet(path: Path, docs, field="text", row_group_size=2) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": list(range(len(docs))), field: docs}), path, row_group_size=row_group_size)
    return path


def joined(bpe, docs):
    out = []
    for i, d in enumerate(docs):
        out += ([EOT] if i else []) + bpe.enc.encode_ordinary(d)
    return out


def test_jsonl_and_parquet_are_encode_ordinary_joined_by_eot(tmp_path, bpe):
    json_docs = DOCS + ["lone surrogate \ud800 from a JSON escape"]
    src = write_jsonl(tmp_path / "a.jsonl", json_docs, extra=["", json.dumps({"text": ""}), json.dumps({"text": None})])
    pq_docs = [*DOCS, None, ""]
    write_parquet(tmp_path / "b.parquet", pq_docs)
    write_jsonl(tmp_path / "c.jsonl.gz", DOCS[:2], field="body", gz=True)

    out = tmp_path / "o1"
    prepare(DataConfig(dir=str(out), inputs=[str(src)], tokenizer="gpt2", val_fraction=0.0), quiet=True)
    assert tokens(out, "train") == joined(bpe, json_docs) and tokens(out, "val") == []
    meta = json.loads((out / "meta.json").read_text())
    assert meta["source"]["documents"] == len(json_docs) and meta["source"]["empty_documents"] == 2

    out = tmp_path / "o2"
    prepare(DataConfig(dir=str(out), inputs=[str(tmp_path / "b.parquet")], tokenizer="gpt2", val_fraction=0.4))
    train_docs = [d for i, d in enumerate(DOCS) if not is_val_document(i, 0.4)]
    val_docs = [d for i, d in enumerate(DOCS) if is_val_document(i, 0.4)]
    assert len(val_docs) == 2 and tokens(out, "train") == joined(bpe, train_docs)
    assert tokens(out, "val") == joined(bpe, val_docs)

    out = tmp_path / "o3"
    cfg = DataConfig(dir=str(out), inputs=[str(tmp_path / "c.jsonl.gz")], tokenizer="gpt2", val_fraction=0.0)
    with pytest.raises(DataError, match=r"c\.jsonl\.gz:1 has no 'text' field \(fields: id, body\).*--text-field"):
        prepare(cfg, quiet=True)
    prepare(DataConfig(**{**cfg.__dict__, "text_field": "body"}), quiet=True)
    assert tokens(out, "train") == joined(bpe, DOCS[:2])

    # the character tokenizer reads records too, and separates documents by a blank line
    out = tmp_path / "o4"
    prepare(DataConfig(dir=str(out), inputs=[str(tmp_path / "b.parquet")], val_fraction=0.0), quiet=True)
    assert decode_split(out)[1][0] == "\n\n".join(DOCS)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("bad.jsonl", b'{"text": "ok"}\n{"text": oops}\n', r"bad\.jsonl:2 is not JSON"),
        ("list.jsonl", b'["text"]\n', r"list\.jsonl:1 is a JSON list, not an object"),
        ("int.jsonl", b'{"text": 3}\n', r"int\.jsonl:1: field 'text' is a JSON int, not a string"),
        ("latin.jsonl", b'{"text": "caf\xe9"}\n', r"latin\.jsonl:1 is not UTF-8.*--errors replace"),
        ("broken.jsonl.gz", b"not gzip at all", r"broken\.jsonl\.gz is not a readable gzip file"),
        ("fake.parquet", b"PAR1 this is not parquet", r"fake\.parquet is not a readable Parquet file"),
    ],
)
def test_record_input_errors_name_the_file(tmp_path, capsys, name, content, message):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(DataError, match=message):
        prepare(DataConfig(dir=str(tmp_path / "o"), inputs=[str(tmp_path / name)]), quiet=True)
    assert folder(tmp_path / "o") == {}
    assert main(["--input", str(tmp_path / name), "--out", str(tmp_path / "o")]) == 2
    one_line_error(capsys.readouterr().err, name)


def test_odd_but_valid_record_files(tmp_path, bpe):
    """A UTF-8 BOM and CRLF line ends in JSON Lines, a dictionary-encoded Parquet column."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    lines = [json.dumps({"text": d}) for d in DOCS[:3]]
    (tmp_path / "bom.jsonl").write_bytes(b"\xef\xbb\xbf" + "\r\n".join(lines).encode() + b"\r\n")
    table = pa.table({"text": pa.array(DOCS[:3]).dictionary_encode()})
    pq.write_table(table, tmp_path / "dict.parquet", use_dictionary=True)
    for name in ("bom.jsonl", "dict.parquet"):
        out = tmp_path / name.split(".")[0]
        prepare(DataConfig(dir=str(out), inputs=[str(tmp_path / name)], tokenizer="gpt2", val_fraction=0.0))
        assert tokens(out, "train") == joined(bpe, DOCS[:3]), name


def test_parquet_column_errors(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    write_parquet(tmp_path / "a.parquet", DOCS, field="content")
    with pytest.raises(DataError, match=r"a\.parquet has no column 'text' \(columns: id, content\)"):
        prepare(DataConfig(dir=str(tmp_path / "o"), inputs=[str(tmp_path / "a.parquet")]), quiet=True)
    pq.write_table(pa.table({"text": [1, 2]}), tmp_path / "n.parquet")
    with pytest.raises(DataError, match=r"n\.parquet: column 'text' holds int64, not text"):
        prepare(DataConfig(dir=str(tmp_path / "o"), inputs=[str(tmp_path / "n.parquet")]), quiet=True)


# ---------------------------------------------------------------------------------------------------------
# Shards, workers, max_tokens


@pytest.fixture
def corpus(tmp_path):
    """A mixed folder: JSON Lines, Parquet with small row groups, and text files."""
    d = tmp_path / "corpus"
    d.mkdir()
    docs = [f"Document {i}: " + " ".join(f"word{(i * 7 + j) % 101}" for j in range(5 + i % 40)) for i in range(120)]
    write_jsonl(d / "a.jsonl", docs[:50])
    write_parquet(d / "b.parquet", docs[50:100], row_group_size=7)
    (d / "c.txt").write_text("\n".join(docs[100:]) + "\n", encoding="utf-8")
    (d / "d.txt").write_text(TEXT, encoding="utf-8")
    return d


def run_prepare(corpus, out, **kw):
    options = {k: kw.pop(k) for k in ("workers", "resume", "force") if k in kw}
    cfg = DataConfig(dir=str(out), inputs=[str(corpus)], tokenizer="gpt2", val_fraction=0.1, **kw)
    return prepare(cfg, quiet=True, **options)


def test_workers_give_byte_identical_shards_that_match_meta(corpus, tmp_path, monkeypatch, bpe):
    monkeypatch.setattr(tritongpt.prepare, "CHUNK_CHARS", 300)  # many chunks in flight
    outs = {}
    for n in (0, 1, 2, 3):
        run_prepare(corpus, tmp_path / f"w{n}", shard_tokens=997, workers=n)
        outs[n] = folder(tmp_path / f"w{n}")
    assert outs[0] == outs[1] == outs[2] == outs[3]

    out = tmp_path / "w2"
    meta = json.loads((out / "meta.json").read_text())
    assert visible(out) == sorted(["meta.json"] + [r["file"] for s in ("train", "val") for r in meta["shards"][s]])
    for split in ("train", "val"):
        recs = meta["shards"][split]
        assert [r["file"] for r in recs] == [f"{split}-{i:06d}.bin" for i in range(len(recs))]
        assert all(r["tokens"] == 997 for r in recs[:-1]) and 0 < recs[-1]["tokens"] <= 997
        for r in recs:
            raw = (out / r["file"]).read_bytes()
            assert read_header(out / r["file"])[1] == r["tokens"]
            assert hashlib.sha256(raw[HEADER.size :]).hexdigest() == r["sha256"]
        assert sum(r["tokens"] for r in recs) == meta["split"][f"{split}_tokens"]
    assert len(meta["shards"]["train"]) > 3

    # the same streams as one unsharded file
    run_prepare(corpus, tmp_path / "one", shard_tokens=10**9, workers=2)
    for split in ("train", "val"):
        assert tokens(out, split) == tokens(tmp_path / "one", split)
        assert len(open_split(tmp_path / "one", split)) == 1


def test_read_ahead_is_bounded_whatever_the_workers(corpus, tmp_path, monkeypatch, bpe):
    """On a machine of 64 cores, 64 threads: reading runs ahead of writing by READ_AHEAD_CHARS (plus the chunk
    that crosses it), not by 128 chunks; the output is the same."""
    run_prepare(corpus, tmp_path / "ref", shard_tokens=997, workers=1)
    monkeypatch.setattr(tritongpt.prepare, "default_workers", lambda: 64)
    monkeypatch.setattr(tritongpt.prepare, "CHUNK_CHARS", 300)
    monkeypatch.setattr(tritongpt.prepare, "READ_AHEAD_CHARS", 1500)
    ahead, peak, biggest = [0], [0], [0]
    chunks, write = tritongpt.prepare.CorpusReader.chunks, tritongpt.prepare._Run._write

    def counted_chunks(self):
        for chunk in chunks(self):
            ahead[0] += chunk.chars
            peak[0], biggest[0] = max(peak[0], ahead[0]), max(biggest[0], chunk.chars)
            yield chunk

    def counted_write(self, chunk, job):
        ahead[0] -= chunk.chars
        return write(self, chunk, job)

    monkeypatch.setattr(tritongpt.prepare.CorpusReader, "chunks", counted_chunks)
    monkeypatch.setattr(tritongpt.prepare._Run, "_write", counted_write)
    run_prepare(corpus, tmp_path / "w64", shard_tokens=997, workers=64)
    assert 1500 < peak[0] <= 1500 + biggest[0], (peak, biggest)
    assert folder(tmp_path / "w64") == folder(tmp_path / "ref")


def test_max_tokens_carves_an_exact_prefix(corpus, tmp_path, bpe):
    run_prepare(corpus, tmp_path / "all", shard_tokens=500)
    meta = run_prepare(corpus, tmp_path / "sample", shard_tokens=500, max_tokens=1234)
    train, val = tokens(tmp_path / "sample", "train"), tokens(tmp_path / "sample", "val")
    assert len(train) + len(val) == 1234 and meta["truncated"]
    assert train == tokens(tmp_path / "all", "train")[: len(train)]
    assert val == tokens(tmp_path / "all", "val")[: len(val)]
    assert not json.loads((tmp_path / "all" / "meta.json").read_text())["truncated"]


# ---------------------------------------------------------------------------------------------------------
# Interruption and --resume


def stop_at_write(monkeypatch, k, action):
    """Call `action()` at the k-th ShardSplit.write (0-based) of the next prepare."""
    calls = {"n": 0}
    original = ShardSplit.write

    def write(self, ids):
        if calls["n"] == k:
            action()
        calls["n"] += 1
        return original(self, ids)

    monkeypatch.setattr(ShardSplit, "write", write)
    return calls


def assert_nothing_looks_complete(out: Path) -> None:
    """No meta.json; every visible file is a whole shard the state lists; hidden files are ours (a killed run
    leaves its lock file, which blocks nobody)."""
    assert not (out / "meta.json").exists()
    state = json.loads((out / STATE).read_text())
    listed = {r["file"]: r["tokens"] for s in ("train", "val") for r in state["shards"][s]}
    for name in visible(out):
        assert name in listed, name
        assert read_header(out / name)[1] == listed[name]
    hidden = [p.name for p in out.iterdir() if p.name.startswith(".")]
    assert all(h in (STATE, LOCK_NAME) or h.endswith(".bin.tmp") for h in hidden), hidden


@pytest.mark.parametrize("how", ["sigterm", "second-ctrl-c", "killed"])
def test_interrupted_prepare_resumes_identically(corpus, tmp_path, monkeypatch, bpe, how):
    monkeypatch.setattr(tritongpt.prepare, "CHUNK_CHARS", 200)
    run_prepare(corpus, tmp_path / "ref", shard_tokens=300, workers=2)
    out = tmp_path / "out"
    if how == "killed":  # a copy of the folder taken mid-run is what a SIGKILL leaves behind
        stop_at_write(monkeypatch, 40, lambda: shutil.copytree(out, tmp_path / "killed"))
        run_prepare(corpus, out, shard_tokens=300, workers=2)
        out = tmp_path / "killed"
    elif how == "sigterm":  # the handler asks for a stop; the run commits after the chunk and stops
        stop_at_write(monkeypatch, 40, lambda: os.kill(os.getpid(), signal.SIGTERM))
        with pytest.raises(Interrupted, match="--resume` continues from here"):
            run_prepare(corpus, out, shard_tokens=300, workers=2)
    else:  # a second Ctrl-C raises at once, mid-write: what the last commit listed stays

        def ctrl_c():
            raise KeyboardInterrupt

        stop_at_write(monkeypatch, 40, ctrl_c)
        with pytest.raises(KeyboardInterrupt, match="--resume"):
            run_prepare(corpus, out, shard_tokens=300, workers=2)
    monkeypatch.undo()  # the chunk size does not change the output: the resumed run uses the default
    assert_nothing_looks_complete(out)
    assert any(n.startswith("train-") for n in visible(out)), "some shards were complete before the stop"
    with pytest.raises(DataError, match="unfinished gpt prepare.*--resume continues it"):
        run_prepare(corpus, out, shard_tokens=300)
    with pytest.raises(DataError, match="unfinished `gpt prepare`"):
        open_split(out, "train")
    with pytest.raises(DataError, match="other settings or inputs.*shard_tokens 300 -> 301"):
        run_prepare(corpus, out, shard_tokens=301, resume=True)
    run_prepare(corpus, out, shard_tokens=300, workers=1, resume=True)
    assert folder(out) == folder(tmp_path / "ref")


def test_interrupted_before_any_shard_leaves_nothing(corpus, tmp_path, monkeypatch, bpe):
    def ctrl_c():
        raise KeyboardInterrupt

    stop_at_write(monkeypatch, 0, ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        run_prepare(corpus, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_ctrl_c_during_the_final_swap_is_said_after_it(corpus, tmp_path, monkeypatch, capsys):
    """A Ctrl-C while a re-prepare swaps its new data in is held back until the swap is done: exit 130, and the
    line says the new data is complete (it is)."""
    out = tmp_path / "o"
    assert main(["--input", str(corpus), "--out", str(out), "--tokenizer", "char", "--quiet"]) == 0
    before = json.loads((out / "meta.json").read_text())
    before_docs = before["source"]["documents"]
    (corpus / "e.txt").write_text("one more line\n", encoding="utf-8")
    write_meta = tritongpt.prepare.write_json_atomic

    def ctrl_c_then_write(path, obj):  # the signal lands in the middle of the swap
        if Path(path).name == "meta.json":
            os.kill(os.getpid(), signal.SIGINT)
        return write_meta(path, obj)

    monkeypatch.setattr(tritongpt.prepare, "write_json_atomic", ctrl_c_then_write)
    capsys.readouterr()
    assert main(["--input", str(corpus), "--out", str(out), "--tokenizer", "char", "--quiet"]) == 130
    err = capsys.readouterr().err.strip()
    assert err == f"gpt prepare: interrupted: after the new data was complete ({out / 'meta.json'})", err
    monkeypatch.undo()
    assert main(["--check", str(out)]) == 0
    after = json.loads((out / "meta.json").read_text())
    assert after["inputs_sha256"] != before["inputs_sha256"] and after["source"]["documents"] > before_docs


def slow_prepare_command(corpus: Path, out: Path) -> list[str]:
    """`gpt prepare` in a subprocess with every chunk slowed down, so a signal lands mid-run."""
    code = (
        "import sys, time, tritongpt.prepare as p\n"
        "p.CHUNK_CHARS = 200\n"
        "enc = p.encode_chunk\n"
        "p.encode_chunk = lambda *a: (time.sleep(0.05), enc(*a))[1]\n"
        "sys.exit(p.main(sys.argv[1:]))\n"
    )
    args = ["--input", str(corpus), "--out", str(out), "--tokenizer", "gpt2", "--val-fraction", "0.1"]
    return [sys.executable, "-c", code, *args, "--shard-tokens", "300", "--workers", "1"]


@pytest.mark.parametrize("signals", [(signal.SIGTERM,), (signal.SIGINT, signal.SIGINT)])
def test_signals_in_a_subprocess(corpus, tmp_path, monkeypatch, bpe, signals):
    """A real SIGTERM, or Ctrl-C twice: exit 130 with one line, no traceback, nothing that looks complete,
    and --resume finishes the same data."""
    monkeypatch.setattr(tritongpt.prepare, "CHUNK_CHARS", 200)
    run_prepare(corpus, tmp_path / "ref", shard_tokens=300)
    out = tmp_path / "out"
    proc = subprocess.Popen(slow_prepare_command(corpus, out), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not (out / "train-000001.bin").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    for sig in signals:  # a second Ctrl-C 5 ms after the first lands while the chunk in flight (50 ms) runs
        proc.send_signal(sig)
        time.sleep(0.005)
    stdout, stderr = proc.communicate(timeout=60)
    err = stderr.decode()
    assert proc.returncode == 130, err
    lines = [x for x in err.splitlines() if not x.startswith("SIG")]  # the handler's note on the first signal
    assert len(lines) == 1 and lines[0].startswith("gpt prepare: interrupted") and "Traceback" not in err, err
    assert "--resume" in lines[0]
    assert_nothing_looks_complete(out)
    run_prepare(corpus, out, shard_tokens=300, resume=True)
    assert folder(out) == folder(tmp_path / "ref")


# ---------------------------------------------------------------------------------------------------------
# The output folder: refusals, failures as one line


def test_output_folder_rules(corpus, tmp_path, capsys, bpe):
    out = tmp_path / "out"
    args = ["--input", str(corpus), "--out", str(out), "--tokenizer", "gpt2", "--shard-tokens", "800", "--quiet"]
    assert main(args) == 0
    before = folder(out)
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    capsys.readouterr()

    assert main(args) == 0  # the same inputs and settings: nothing to do
    assert "nothing to do" in capsys.readouterr().err
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == mtimes

    assert main([*args, "--val-fraction", "0.2"]) == 2  # other settings: refused, untouched
    one_line_error(capsys.readouterr().err, str(out), "val_fraction 0.1 -> 0.2", "--force")
    assert folder(out) == before

    (corpus / "d.txt").write_text(TEXT + "more\n", encoding="utf-8")  # changed inputs: prepared again
    assert main(args) == 0
    assert "replaced the earlier" in capsys.readouterr().err and folder(out) != before

    assert main([*args, "--shard-tokens", "100000", "--force"]) == 0  # --force replaces; stale shards go
    assert visible(out) == ["meta.json", "train-000000.bin", "val-000000.bin"]

    (out / "train-000007.bin").write_bytes(b"someone's file")
    assert main([*args, "--shard-tokens", "100000"]) == 0  # up to date: the stray is not touched...
    (out / "meta.json").unlink()
    capsys.readouterr()
    assert main(args) == 2  # ...but never overwritten without --force
    one_line_error(capsys.readouterr().err, "exists and no meta.json lists it", "--force")
    assert (out / "train-000007.bin").read_bytes() == b"someone's file"

    other = tmp_path / "other"
    other.mkdir()
    (other / "meta.json").write_text('{"mine": true}')
    assert main(["--input", str(corpus), "--out", str(other)]) == 2
    one_line_error(capsys.readouterr().err, "meta.json is not from gpt prepare")
    assert (other / "meta.json").read_text() == '{"mine": true}'

    afile = tmp_path / "afile"
    afile.write_text("keep me")
    assert main(["--input", str(corpus), "--out", str(afile)]) == 2
    one_line_error(capsys.readouterr().err, str(afile), "is a file")
    assert main(["--input", str(corpus), "--out", str(afile / "sub")]) == 2
    one_line_error(capsys.readouterr().err, str(afile))
    assert afile.read_text() == "keep me"


class FullDisk:
    """`open` for tritongpt.data / tritongpt.prepare whose files raise ENOSPC once `limit` bytes were written in all."""

    def __init__(self, limit: int) -> None:
        self.limit, self.written = limit, 0

    def __call__(self, path, mode="r", *args, **kwargs):
        f = open(path, mode, *args, **kwargs)  # noqa: SIM115 - returned wrapped
        return _Limited(f, self) if "w" in mode or "+" in mode else f


class _Limited:
    def __init__(self, f, disk: FullDisk) -> None:
        self._f, self._disk = f, disk

    def write(self, data):
        self._disk.written += len(data)
        if self._disk.written > self._disk.limit:
            raise OSError(errno.ENOSPC, "No space left on device")
        return self._f.write(data)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


@pytest.mark.parametrize("limit", [100, 5000, "meta"])
def test_disk_full_is_one_line_and_resumable(corpus, tmp_path, monkeypatch, capsys, bpe, limit):
    run_prepare(corpus, tmp_path / "ref", shard_tokens=800)
    out = tmp_path / "out"
    args = ["--input", str(corpus), "--out", str(out), "--tokenizer", "gpt2", "--shard-tokens", "800"]
    monkeypatch.setattr(tritongpt.prepare, "CHUNK_CHARS", 200)  # a commit after each complete shard
    if limit == "meta":  # the shards fit, meta.json does not
        monkeypatch.setattr(tritongpt.prepare, "write_json_atomic", _fail_on_meta(tritongpt.prepare.write_json_atomic))
    else:
        monkeypatch.setattr(tritongpt.data, "open", FullDisk(limit), raising=False)
    assert main(args) == 2
    err = capsys.readouterr().err
    one_line_error(err, "no space left on the device", str(out))
    monkeypatch.undo()
    if limit == 100:  # nothing was complete: nothing is left
        assert not out.exists()
        assert "--resume" not in err
        return
    assert "--resume" in err
    assert_nothing_looks_complete(out)
    assert main([*args, "--resume"]) == 0
    assert folder(out) == folder(tmp_path / "ref")


def _fail_on_meta(write_json_atomic):
    def write(path, obj):
        if path.name == "meta.json":
            with tritongpt.prepare.name_os_errors(tritongpt.data.partial_name(path)):
                raise OSError(errno.ENOSPC, "No space left on device")
        return write_json_atomic(path, obj)

    return write


def test_read_only_output_folder(corpus, tmp_path, monkeypatch, capsys):
    """Where the output cannot be written (here: every file in it refused, as for a read-only folder)."""
    out = tmp_path / "ro"
    out.mkdir()

    def refuse(path, mode="r", *a, **kw):
        if Path(path).parent == out:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return open(path, mode, *a, **kw)

    monkeypatch.setattr(tritongpt.data, "open", refuse, raising=False)
    assert main(["--input", str(corpus), "--out", str(out), "--tokenizer", "char"]) == 2
    one_line_error(capsys.readouterr().err, str(out / ".train-000000.bin.tmp"), "Permission denied")
    assert folder(out) == {}


def test_ctrl_c_during_start_up_and_a_closed_stdout(corpus, tmp_path, monkeypatch, capsys):
    def ctrl_c(*a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(tritongpt.prepare, "char_vocabulary", ctrl_c)
    assert main(["--input", str(corpus), "--out", str(tmp_path / "o")]) == 130
    err = capsys.readouterr().err
    assert err.strip() == "gpt prepare: interrupted"
    assert not (tmp_path / "o").exists()
    monkeypatch.undo()

    read, write = os.pipe()
    os.close(read)  # nobody reads the summary line: the data is written all the same, and the status says so
    cmd = [sys.executable, "-m", "tritongpt", "prepare", "--input", str(corpus), "--out", str(tmp_path / "p")]
    proc = subprocess.run(cmd, stdout=write, stderr=subprocess.PIPE, timeout=120)
    os.close(write)
    assert proc.returncode == 141 and proc.stderr == b"", proc.stderr
    assert (tmp_path / "p" / "meta.json").is_file()


def test_tokenization_benchmark_runs(tmp_path, capsys, bpe):
    """`python -m tritongpt.bench.prepare` end to end on a 0.1 MB corpus (the harness, not the speed)."""
    from tritongpt.bench.prepare import main as bench_main

    argv = ["--mb", "0.1", "--workers", "1", "--rounds", "1", "--cache", str(tmp_path), "--no-csv"]
    assert bench_main(argv) == 0
    out = capsys.readouterr().out
    for provider in ("baseline", "pool", "ours"):
        assert f"| 0.1 MB | {provider} | 1 |" in out
    assert "| 0.1 MB | baseline | 1 | " in out and "1.00×" in out
