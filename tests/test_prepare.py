"""`gpt prepare`: round trips for both tokenizers, the token-file header, the split, and bad input."""

import json
import struct

import numpy as np
import pytest

from gpt.data import (
    HEADER,
    MAGIC,
    DataError,
    markdown_to_text,
    open_tokens,
    read_header,
    shakespeare_files,
    write_tokens,
)
from gpt.prepare import DataConfig, main, prepare, split_point
from gpt.tokenizer import TokenizerError, tokenizer_from_dict

TEXT = (
    "ROMEO:\nBut, soft! what light through yonder window breaks?\nIt is the east, and Juliet is the sun.\n\n"
    "JULIET:\nO Romeo, Romeo! wherefore art thou Romeo?\nDéjà vu — naïve café, 日本語, emoji 🎭.\n"
) * 7


def decode_split(out_dir):
    meta = json.loads((out_dir / "meta.json").read_text(encoding="utf-8"))
    tok = tokenizer_from_dict(meta["tokenizer"])
    parts = [tok.decode(open_tokens(out_dir / f"{name}.bin").tolist()) for name in ("train", "val")]
    return meta, parts


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
    expected_dtype = "uint16"
    assert meta["dtype"] == expected_dtype
    assert meta["split"]["train_tokens"] == len(open_tokens(tmp_path / "out" / "train.bin"))
    assert meta["source"]["files"] == 1


def decode_split_after(tmp_path, src, tokenizer, **kw):
    prepare(DataConfig(dir=str(tmp_path / "out"), inputs=[str(src)], tokenizer=tokenizer, **kw), quiet=True)
    return decode_split(tmp_path / "out")


def test_split_is_deterministic_and_near_fraction(tmp_path):
    src = tmp_path / "a.txt"
    src.write_text(TEXT, encoding="utf-8")
    outs = []
    for i in range(2):
        prepare(DataConfig(dir=str(tmp_path / f"o{i}"), inputs=[str(src)], val_fraction=0.25), quiet=True)
        outs.append([(tmp_path / f"o{i}" / n).read_bytes() for n in ("train.bin", "val.bin", "meta.json")])
    assert outs[0] == outs[1]
    meta = json.loads(outs[0][2])
    frac = meta["split"]["val_chars"] / (meta["split"]["train_chars"] + meta["split"]["val_chars"])
    assert 0.15 < frac < 0.35
    assert split_point("abc\ndef\n", 0.0) == 8


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
    assert meta["source"]["files"] == 3


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
    _, (train, val) = decode_split_after(tmp_path, latin, "char", errors="replace", val_fraction=0.0)
    assert train == "caf\ufffd au lait\n"

    assert main(["--input", str(latin), "--out", str(tmp_path / "o2"), "--quiet"]) == 2
    assert "latin1.txt is not UTF-8" in capsys.readouterr().err
    assert main(["--input", str(tmp_path / "nope.txt"), "--out", str(tmp_path / "o3")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["--input", str(latin), "--out", str(tmp_path / "o4"), "--errors", "replace", "--quiet"]) == 0
    assert "wrote" in capsys.readouterr().out


def test_config_defaults_and_flags(tmp_path, capsys):
    src = tmp_path / "x.txt"
    src.write_text(TEXT, encoding="utf-8")
    argv = ["--config", "demo", "--input", str(src), "--out", str(tmp_path / "o"), "--val-fraction", "0.5"]
    assert main(argv) == 0
    meta = json.loads((tmp_path / "o" / "meta.json").read_text(encoding="utf-8"))
    assert meta["split"]["val_fraction"] == 0.5 and meta["tokenizer"]["type"] == "char"
    assert main(["--config", "demo", "--set", "data.nonsense=1"]) == 2
    assert "nonsense" in capsys.readouterr().err


def test_markdown_plays():
    md = (
        "# Hamlet\n\n## ACT I\n\n_Enter BERNARDO and FRANCISCO, two sentinels_\n\n**BERNARDO**  \n"
        "Who's there?  \nNay, answer me: stand, and unfold yourself.\n\n\n**FRANCISCO**  \n"
        "*\\[Aside.\\]* Long live the king!\n"
    )
    assert markdown_to_text(md) == (
        "Hamlet\n\nACT I\n\nEnter BERNARDO and FRANCISCO, two sentinels\n\nBERNARDO:\nWho's there?\n"
        "Nay, answer me: stand, and unfold yourself.\n\nFRANCISCO:\n[Aside.] Long live the king!\n"
    )
    files = shakespeare_files()
    assert len(files) == 38 and files == sorted(files)
    assert all(f.suffix == ".md" for f in files)


def test_progress_bar_on_large_input(tmp_path, monkeypatch, capsys):
    import gpt.prepare

    monkeypatch.setattr(gpt.prepare, "PROGRESS_MIN_BYTES", 1)
    src = tmp_path / "big.txt"
    src.write_text(TEXT * 50, encoding="utf-8")
    prepare(DataConfig(dir=str(tmp_path / "o"), inputs=[str(src)]))
    err = capsys.readouterr().err
    assert "prepare o [" in err and "100.0%" in err and "MB/s" in err
