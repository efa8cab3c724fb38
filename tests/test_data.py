"""Window samplers: determinism, shifted targets, per-rank slices, short splits, windows across shards, the
vocabulary check; the sliding-window dataset; every data-folder layout (ours, llm.c, nanoGPT) read back
exactly, foreign and truncated files as named errors; training over shards and foreign layouts."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from tritongpt.config import DataConfig, GPTConfig, TrainConfig
from tritongpt.data import (
    LLMC_MAGIC,
    DataError,
    SlidingWindowDataset,
    WindowSampler,
    load_meta,
    open_split,
    open_tokens,
    token_dtype,
    write_tokens,
)
from tritongpt.prepare import prepare
from tritongpt.tokenizer import CharTokenizer
from tritongpt.train import Trainer

TOKENS = np.arange(1000, dtype=np.uint16) % 97


def test_sampler_deterministic_and_shifted():
    s = WindowSampler(TOKENS, context_length=16, batch_size=4, seed=7)
    x, y = s.batch(step=3)
    assert x.shape == y.shape == (4, 16) and x.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    x2, y2 = WindowSampler(TOKENS, 16, 4, seed=7).batch(step=3)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert not torch.equal(x, s.batch(step=4)[0])
    assert not torch.equal(x, WindowSampler(TOKENS, 16, 4, seed=8).batch(step=3)[0])
    assert torch.equal(s.fixed_batches(2)[1][0], s.fixed_batches(2)[1][0])


def test_ranks_and_micro_batches_cover_the_global_batch():
    """2 ranks x 2 micro-batches x 3 windows == 1 process with one batch of 12 windows."""
    single = WindowSampler(TOKENS, 8, batch_size=12, seed=1)
    split = WindowSampler(TOKENS, 8, batch_size=3, seed=1, grad_accum=2, world_size=2)
    whole = single.batch(step=5)[0]
    parts = [split.batch(5, micro, rank)[0] for micro in range(2) for rank in range(2)]
    assert torch.equal(torch.cat(parts), whole)


def test_context_longer_than_split():
    with pytest.raises(DataError, match="fewer than one window"):
        WindowSampler(TOKENS[:16], context_length=16, batch_size=1, seed=0, name="val.bin")
    WindowSampler(TOKENS[:17], context_length=16, batch_size=1, seed=0)  # exactly one window fits


def test_sliding_window_dataset():
    tok = CharTokenizer.from_text("abcdefghij")
    ds = SlidingWindowDataset("abcdefghij", max_length=4, stride=2, tokenizer=tok)
    assert len(ds) == 3  # windows start at 0, 2, 4 (the last needs a target at 8)
    x, y = ds[1]
    assert tok.decode(x.tolist()) == "cdef" and tok.decode(y.tolist()) == "defg"
    assert tok.decode(ds[-1][0].tolist()) == "efgh"
    with pytest.raises(IndexError):
        ds[3]
    assert len(SlidingWindowDataset(list(range(10)), max_length=3, stride=3)) == 3
    with pytest.raises(DataError):
        SlidingWindowDataset(list(range(4)), max_length=4, stride=1)
    loader = torch.utils.data.DataLoader(ds, batch_size=2)
    assert next(iter(loader))[0].shape == (2, 4)


def test_token_dtype():
    assert token_dtype(50257) == np.uint16 and token_dtype(65535) == np.uint16
    assert token_dtype(65536) == np.uint32


def test_fixed_batches_depend_only_on_the_global_batch():
    single = WindowSampler(TOKENS, 8, batch_size=4, seed=2).fixed_batches(2)
    ranks = [WindowSampler(TOKENS, 8, batch_size=2, seed=2, world_size=2).fixed_batches(2, rank=r) for r in (0, 1)]
    for i in range(2):
        assert torch.equal(torch.cat([ranks[0][i][0], ranks[1][i][0]]), single[i][0])


# ---------------------------------------------------------------------------------------------------------
# Windows across shards


def test_single_array_windows_start_where_they_always_did():
    """One array: window i starts at offset i, drawn as before shards existed (old runs resume the same)."""
    s = WindowSampler(TOKENS, 16, 4, seed=7)
    starts = np.random.default_rng([7, 3]).integers(0, len(TOKENS) - 16, size=4)
    x, y = s.batch(step=3)
    assert torch.equal(x, torch.from_numpy(np.stack([TOKENS[i : i + 16] for i in starts]).astype(np.int64)))
    assert torch.equal(y[:, -1], torch.from_numpy(TOKENS[starts + 16].astype(np.int64)))


def test_windows_across_shards_are_uniform_and_never_straddle():
    T = 16
    lengths = [50, 10, 73, 17]  # windows per shard: 34, 0 (too short), 57, 1
    shards = [(1000 * k + np.arange(n)).astype(np.uint16) for k, n in enumerate(lengths)]
    s = WindowSampler(shards, T, batch_size=16, seed=5)
    assert s.n_windows == 34 + 57 + 1
    seen = np.zeros(4, dtype=int)
    starts_seen = set()
    for step in range(150):
        x, y = s.batch(step)
        full = torch.cat([x, y[:, -1:]], dim=1).numpy()
        shard = full[:, 0] // 1000
        assert (full // 1000 == shard[:, None]).all(), "a window lies inside one shard"
        assert (np.diff(full, axis=1) == 1).all(), "consecutive tokens of that shard"
        np.add.at(seen, shard, 1)
        starts_seen |= set(full[:, 0].tolist())
    assert seen[1] == 0 and len(starts_seen) == s.n_windows, "every window, and only whole ones, is drawn"
    expected = np.array([34, 0, 57, 1]) / s.n_windows * seen.sum()
    assert np.all(np.abs(seen - expected) <= 0.15 * expected + 10), (seen, expected)

    again = WindowSampler(shards, T, batch_size=16, seed=5)
    assert all(torch.equal(s.batch(k)[0], again.batch(k)[0]) for k in (0, 9, 149))
    split = WindowSampler(shards, T, batch_size=4, seed=5, grad_accum=2, world_size=2)
    parts = [split.batch(9, micro, rank)[0] for micro in range(2) for rank in range(2)]
    assert torch.equal(torch.cat(parts), WindowSampler(shards, T, batch_size=16, seed=5).batch(9)[0])
    with pytest.raises(DataError, match="in 2 shards, none holding one window"):
        WindowSampler([shards[1], shards[1]], T, 1, seed=0, name="val")


def test_token_ids_outside_the_vocabulary_name_the_file(tmp_path):
    good = write_tokens(tmp_path / "good.bin", np.arange(40) % 30, vocab_size=30)
    bad = write_tokens(tmp_path / "bad.bin", [1] * 30 + [31] + [2] * 9, vocab_size=40)
    s = WindowSampler([open_tokens(good), open_tokens(bad)], 8, batch_size=64, seed=0, vocab_size=30)
    with pytest.raises(DataError, match=r"bad\.bin holds token id 31 at token 30, outside the 30-token vocabulary"):
        s.batch(0)
    WindowSampler([open_tokens(good)], 8, batch_size=64, seed=0, vocab_size=30).batch(0)


# ---------------------------------------------------------------------------------------------------------
# Data folders: every layout through open_split / load_meta


def write_llmc(path, ids, magic=LLMC_MAGIC, version=1, count=None):
    header = np.zeros(256, dtype="<i4")
    header[:3] = [magic, version, len(ids) if count is None else count]
    path.write_bytes(header.tobytes() + np.asarray(ids, dtype="<u2").tobytes())
    return path


def as_lists(arrays):
    return [a.tolist() for a in arrays]


def test_our_shards_and_the_single_file_layout(tmp_path):
    src = tmp_path / "t.txt"
    src.write_text("".join(f"line {i} of a small text\n" for i in range(200)), encoding="utf-8")
    out = tmp_path / "shards"
    prepare(DataConfig(dir=str(out), inputs=[str(src)], shard_tokens=1000), quiet=True)
    meta = load_meta(out)
    assert meta["layout"] == "shards" and len(meta["shards"]["train"]) > 2
    train = open_split(out, "train")
    assert [len(a) for a in train] == [r["tokens"] for r in meta["shards"]["train"]]
    assert all(isinstance(a, np.memmap) for a in train)

    last = out / meta["shards"]["train"][-1]["file"]
    write_tokens(last, [1, 2, 3], vocab_size=meta["vocab_size"])
    with pytest.raises(DataError, match=rf"{last.name} holds 3 tokens but .*meta\.json lists"):
        open_split(out, "train")
    last.unlink()
    with pytest.raises(DataError, match=rf"{last.name} does not exist \(.*meta\.json lists it\)"):
        open_split(out, "train")

    v1 = tmp_path / "v1"  # what gpt prepare wrote before shards
    v1.mkdir()
    write_tokens(v1 / "train.bin", np.arange(100) % 7, vocab_size=7)
    write_tokens(v1 / "val.bin", np.arange(30) % 7, vocab_size=7)
    (v1 / "meta.json").write_text(
        json.dumps(
            {
                "format": "tritongpt-data",
                "version": 1,
                "tokenizer": {"type": "char", "chars": "abcdefg"},
                "vocab_size": 7,
                "dtype": "uint16",
            }
        )
    )
    assert load_meta(v1)["layout"] == "single"
    assert as_lists(open_split(v1, "val")) == [(np.arange(30) % 7).tolist()]


def test_llmc_shards_are_read_exactly(tmp_path):
    d = tmp_path / "fineweb10B"
    d.mkdir()
    sizes = {"fineweb_val_000000.bin": 300, "fineweb_train_000001.bin": 500, "fineweb_train_000002.bin": 211}
    rng = np.random.default_rng(0)
    parts = {name: rng.integers(0, 50257, size=n) for name, n in sizes.items()}
    for name, ids in parts.items():
        write_llmc(d / name, ids)
    meta = load_meta(d)
    assert meta["layout"] == "llm.c" and meta["tokenizer"] == {"type": "gpt2"} and meta["vocab_size"] == 50257
    train = [parts["fineweb_train_000001.bin"].tolist(), parts["fineweb_train_000002.bin"].tolist()]
    assert as_lists(open_split(d, "train")) == train
    assert as_lists(open_split(d, "val")) == [parts["fineweb_val_000000.bin"].tolist()]

    bad = d / "fineweb_train_000003.bin"
    write_llmc(bad, [1, 2, 3], count=4)  # truncated
    with pytest.raises(DataError, match=r"fineweb_train_000003\.bin is 1030 bytes but its llm\.c header promises 4"):
        open_split(d, "train")
    write_llmc(bad, [1, 2, 3], version=2)
    with pytest.raises(DataError, match=r"000003\.bin is llm\.c shard version 2"):
        open_split(d, "train")
    write_llmc(bad, [1, 2, 3], magic=1234)
    with pytest.raises(DataError, match=r"000003\.bin is not an llm\.c token shard \(magic 1234"):
        open_split(d, "train")
    bad.write_bytes(b"short")
    with pytest.raises(DataError, match=r"000003\.bin is too short to be an llm\.c token shard"):
        open_split(d, "train")
    bad.unlink()
    (d / "train.bin").write_bytes(b"\0\0")
    with pytest.raises(DataError, match="holds both llm.c shards"):
        load_meta(d)


def test_nanogpt_files_are_read_exactly(tmp_path):
    d = tmp_path / "openwebtext"
    d.mkdir()
    train, val = np.arange(1000, dtype="<u2") * 37 % 50257, np.arange(100, dtype="<u2")
    train.tofile(d / "train.bin")
    val.tofile(d / "val.bin")
    assert load_meta(d)["layout"] == "nanogpt"
    assert as_lists(open_split(d, "train")) == [train.tolist()]
    assert as_lists(open_split(d, "val")) == [val.tolist()]

    (d / "val.bin").write_bytes(val.tobytes()[:-1])
    with pytest.raises(DataError, match=r"val\.bin has an odd number of bytes \(199\)"):
        open_split(d, "val")
    write_llmc(d / "val.bin", val)  # an llm.c header in a nanoGPT folder is not read as tokens
    with pytest.raises(DataError, match=r"val\.bin has a token-file header but .* nanoGPT's headerless layout"):
        open_split(d, "val")
    write_tokens(d / "val.bin", val, vocab_size=50257)
    with pytest.raises(DataError, match=r"val\.bin is a tritongpt token file but .*meta\.json .* is missing"):
        load_meta(d)
    (d / "val.bin").write_bytes(val.tobytes())
    (d / "meta.pkl").write_bytes(b"pickle")
    with pytest.raises(DataError, match="meta.pkl.*custom vocabulary"):
        load_meta(d)

    llmc_named_plainly = tmp_path / "plain"  # llm.c's header behind nanoGPT's names is detected as llm.c
    llmc_named_plainly.mkdir()
    write_llmc(llmc_named_plainly / "train.bin", train)
    assert load_meta(llmc_named_plainly)["layout"] == "llm.c"
    assert as_lists(open_split(llmc_named_plainly, "train")) == [train.tolist()]


def test_folders_without_data(tmp_path):
    with pytest.raises(DataError, match=r"nowhere does not exist: get it from X"):
        load_meta(tmp_path / "nowhere", hint="get it from X")
    (tmp_path / "afile").write_text("x")
    with pytest.raises(DataError, match=r"afile is a file, not a data folder"):
        open_split(tmp_path / "afile", "train")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("hi")
    with pytest.raises(DataError, match=r"empty holds no token data .*gpt prepare \.\.\. --out"):
        open_split(tmp_path / "empty", "train")
    (tmp_path / "empty" / "meta.json").write_text("{not json")
    with pytest.raises(DataError, match=r"meta\.json is not valid JSON"):
        load_meta(tmp_path / "empty")
    meta = {"format": "tritongpt-data", "version": 2, "vocab_size": 5}
    (tmp_path / "empty" / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match=r"meta\.json has no 'tokenizer' entry"):
        load_meta(tmp_path / "empty")
    meta |= {"tokenizer": {"type": "gpt2"}, "shards": {"train": [{"file": "../x.bin", "tokens": 1}], "val": []}}
    (tmp_path / "empty" / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match=r"each file a plain name in the folder"):
        load_meta(tmp_path / "empty")


# ---------------------------------------------------------------------------------------------------------
# Training reads every layout, and resumes bit-exactly over shards


def tiny_training(data_dir, out_dir, vocab=64, **train):
    m = GPTConfig(vocab_size=vocab, context_length=16, emb_dim=32, n_heads=2, n_layers=2, backend="reference")
    t = TrainConfig(out_dir=str(out_dir), device="cpu", batch_size=4, max_steps=8, lr=3e-3, min_lr=3e-4)
    quiet = dict(eval_interval=4, eval_batches=2, sample_tokens=0, final_sample_tokens=0, log_interval=1, plot=False)
    t = dataclasses.replace(t, warmup_steps=2, seed=3, lr_decay_steps=8, keep_checkpoints=0, **quiet)
    return m, dataclasses.replace(t, **train), DataConfig(dir=str(data_dir))


def losses(run_dir):
    recs = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in recs if r["kind"] == "train"}


def test_training_on_shards_resumes_bit_exactly(tmp_path, one_thread):
    src = tmp_path / "t.txt"
    src.write_text("".join(f"{w} {i % 13} sat on the {w} mat.\n" for i in range(400) for w in ["cat"]), "utf-8")
    data = tmp_path / "data"
    prepare(DataConfig(dir=str(data), inputs=[str(src)], shard_tokens=2000), quiet=True)
    assert len(open_split(data, "train")) >= 4

    straight = Trainer(*tiny_training(data, tmp_path / "a"), verbose=False)
    assert straight.fit() == 0
    first = Trainer(*tiny_training(data, tmp_path / "b", max_steps=4), verbose=False)
    assert first.fit() == 0
    torch.manual_seed(999)
    second = Trainer(*tiny_training(data, tmp_path / "b"), resume=True, verbose=False)
    assert second.step == 4 and second.fit() == 0
    assert losses(tmp_path / "a") == losses(tmp_path / "b") and len(losses(tmp_path / "a")) == 8
    for (k, v), w in zip(straight.model.state_dict().items(), second.model.state_dict().values(), strict=True):
        assert torch.equal(v, w), k


def test_training_reads_llmc_and_nanogpt_folders(tmp_path, one_thread):
    rng = np.random.default_rng(0)
    llmc, nano = tmp_path / "llmc", tmp_path / "nano"
    llmc.mkdir()
    nano.mkdir()
    for i in range(3):
        write_llmc(llmc / f"fineweb_train_{i + 1:06d}.bin", rng.integers(0, 50257, size=200))
    write_llmc(llmc / "fineweb_val_000000.bin", rng.integers(0, 50257, size=100))
    rng.integers(0, 50257, size=500).astype("<u2").tofile(nano / "train.bin")
    rng.integers(0, 50257, size=100).astype("<u2").tofile(nano / "val.bin")
    for d in (llmc, nano):
        trainer = Trainer(*tiny_training(d, tmp_path / f"run-{d.name}", vocab=50257, max_steps=2), verbose=False)
        assert trainer.tok.vocab_size == 50257 and len(trainer.sampler.shards) == (3 if d is llmc else 1)
        assert trainer.fit() == 0
        assert all(np.isfinite(v) for v in losses(tmp_path / f"run-{d.name}").values())
