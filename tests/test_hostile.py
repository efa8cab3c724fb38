"""Hostile inputs and faults, one table: every case breaks a prepared world (data, config, a trained run, an
export) or the machine (a full disk, a read-only folder, Ctrl-C, a closed pipe), runs one `gpt` command line,
and asserts the exact outcome class and that nothing on disk changed beyond what the case declares.

Outcome classes:
- "error":   exit 2; standard error is one line `gpt CMD: error: ...` naming every culprit; no traceback.
- "usage":   exit 2 from the argument parser: usage lines, then `gpt CMD: error: ...` naming the culprits.
- "stopped": exit 1; one line `gpt CMD: error: ...` (a run that began but cannot go on: it diverged).
- "ok":      exit 0, plus the case's own check of the result.
- "interrupted": Ctrl-C: exit 130 (or death by SIGINT before Python is up), a last line saying so; no traceback.
- "quiet":   the reader went away: exit 141, nothing on standard error.

Files: the world is snapshotted (path, mode, content) before and after; every created, changed or removed path
must match one of the case's `changes` patterns, and every pattern must match something (an error leaves the
world exactly as it was, temporary files included).

Cases run in-process (`tritongpt.cli.main`) unless a signal or a pipe is involved; `stdout="full"` points standard
output at /dev/full (a full disk) in-process. To add cases for another command, append `Case`s to `CASES` (the world
already has `corpus/` text for `gpt prepare`; `prepared(...)` makes a folder of it in a case's setup). Cases that need
two processes at once are the functions after the table.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import gzip
import hashlib
import io
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from tritongpt.cli import main as gpt_main
from tritongpt.prepare import check_folder

pytestmark = pytest.mark.usefixtures("one_thread")

TEXT = "".join(
    f"{who}: the {thing} {verb} {when}, good {friend}.\n"
    for who in ("HAMLET", "OPHELIA", "HORATIO")
    for thing in ("ghost", "crown", "skull", "letter")
    for verb in ("walks", "waits", "speaks")
    for when in ("at midnight", "by day", "no more")
    for friend in ("lord", "lady")
)
OTHER_TEXT = TEXT.replace("w", "Q")  # as many distinct characters, one different: another tokenizer of that size
assert "Q" not in TEXT

MODEL = dict(vocab_size=64, context_length=16, emb_dim=32, n_heads=2, n_layers=1, backend="reference")
TRAIN_CONFIG = dict(
    out_dir="run",
    device="cpu",
    batch_size=2,
    max_steps=2,
    warmup_steps=1,
    eval_interval=0,
    eval_batches=1,
    sample_tokens=0,
    final_sample_tokens=0,
    log_interval=1,
    plot=False,
)
CONFIG = "".join(
    f"[{table}]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items())
    for table, values in (("model", MODEL), ("data", {"dir": "data"}), ("train", TRAIN_CONFIG))
)
CKPT = "run/ckpt-00000002.pt"
LOCK = "run/.gpt.lock"  # tritongpt.files.LOCK_NAME in the run folder


# ---------------------------------------------------------------------------------------------------------
# The world every case starts from, built once


@pytest.fixture(scope="module")
def base_world(tmp_path_factory) -> Path:
    """corpus/, data/ and data2/ (prepared, same vocabulary size, different characters), tiny.toml, run/ (a
    trained 2-step run) and hf/ (its export)."""
    from tritongpt.config import DataConfig
    from tritongpt.prepare import prepare

    root = tmp_path_factory.mktemp("world")
    (root / "corpus").mkdir()
    (root / "corpus" / "play.txt").write_text(TEXT, encoding="utf-8")
    (root / "corpus" / "other.txt").write_text(OTHER_TEXT, encoding="utf-8")
    prepare(DataConfig(dir=str(root / "data"), inputs=[str(root / "corpus" / "play.txt")]), quiet=True)
    prepare(DataConfig(dir=str(root / "data2"), inputs=[str(root / "corpus" / "other.txt")]), quiet=True)
    (root / "tiny.toml").write_text(CONFIG, encoding="utf-8")
    cwd = Path.cwd()
    os.chdir(root)
    try:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        assert gpt_main(["train", "--config", "tiny.toml"]) == 0
        assert gpt_main(["export", "--checkpoint", "run", "--hf", "hf"]) == 0
        torch.set_num_threads(threads)
    finally:
        os.chdir(cwd)
    return root


# ---------------------------------------------------------------------------------------------------------
# Cases


@dataclass
class Env:
    """What a case's setup may use: the world folder, pytest's monkeypatch, and undo steps run afterwards."""

    world: Path
    monkeypatch: pytest.MonkeyPatch
    undo: list[Callable[[], None]] = field(default_factory=list)


@dataclass
class Result:
    code: int
    out: str
    err: str


@dataclass
class Case:
    id: str
    argv: list[str]  # after `gpt`, run in the world folder
    outcome: str  # "error", "usage", "stopped", "ok", "interrupted", "quiet"
    culprit: tuple[str, ...] = ()  # what the message must name
    setup: Callable[[Env], None] | None = None  # break the world or the machine
    changes: tuple[str, ...] = ()  # fnmatch patterns of the paths the command may (and must) create/change/remove
    check: Callable[[Path, Result], None] | None = None  # more assertions on a result
    process: str = ""  # "sigint", "head", "gone" or "closed-stdout": run `python -m tritongpt` as a child process
    stdin: str | bytes | None = None  # in-process: "closed" (sys.stdin is None) or these bytes
    stdout: str = ""  # in-process: "full" (standard output on /dev/full: every write fails with ENOSPC)


# --- setup helpers ----------------------------------------------------------------------------------------


def write(rel: str, content: str | bytes) -> Callable[[Env], None]:
    def setup(env: Env) -> None:
        p = env.world / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)

    return setup


def truncate(rel: str, n_bytes: int) -> Callable[[Env], None]:
    def setup(env: Env) -> None:
        p = env.world / rel
        p.write_bytes(p.read_bytes()[:-n_bytes])

    return setup


def both(*setups: Callable[[Env], None]) -> Callable[[Env], None]:
    def setup(env: Env) -> None:
        for s in setups:
            s(env)

    return setup


def edit_meta(change: Callable[[dict], object]) -> Callable[[Env], None]:
    def setup(env: Env) -> None:
        path = env.world / "data" / "meta.json"
        meta = json.loads(path.read_text(encoding="utf-8"))
        change(meta)
        path.write_text(json.dumps(meta), encoding="utf-8")

    return setup


def edit_checkpoint(change: Callable[[dict], object], rel: str = CKPT) -> Callable[[Env], None]:
    def setup(env: Env) -> None:
        path = env.world / rel
        ckpt = torch.load(path, weights_only=True)
        change(ckpt)
        torch.save(ckpt, path)

    return setup


def tokens_with(rel: str, bad_id: int, at: int) -> Callable[[Env], None]:
    """Rewrite a token file with one id replaced; the header stays valid (uint16 holds it)."""

    def setup(env: Env) -> None:
        from tritongpt.data import open_tokens, write_tokens

        path = env.world / rel
        tokens = open_tokens(path).copy()
        tokens[at] = bad_id
        write_tokens(path, tokens, 2**16 - 1)

    return setup


def read_only(rel: str) -> Callable[[Env], None]:
    """Make a folder read-only: chmod where that binds (not root), else the immutable flag; skip if neither."""

    def setup(env: Env) -> None:
        path = env.world / rel
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(0o555)
        env.undo.append(lambda: path.chmod(0o755))
        if _writable(path):
            if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode != 0:
                pytest.skip("cannot make a folder read-only here (root without chattr)")
            env.undo.insert(0, lambda: subprocess.run(["chattr", "-i", str(path)], check=True))
            if _writable(path):
                pytest.skip("cannot make a folder read-only here")

    return setup


def _writable(path: Path) -> bool:
    try:
        (path / ".probe").write_bytes(b"")
    except OSError:
        return False
    (path / ".probe").unlink()
    return True


def disk_full(failures: int = 10**9, kind: str = "oserror") -> Callable[[Env], None]:
    """torch.save writes a little, then fails as on a full disk, for the first `failures` calls; no pauses
    between save attempts."""

    def setup(env: Env) -> None:
        import tritongpt.checkpoint

        real_save, calls = torch.save, []

        def save(obj, f, *args, **kwargs):
            calls.append(1)
            if len(calls) > failures:
                return real_save(obj, f, *args, **kwargs)
            f.write(b"PK\x03\x04" + bytes(1000))
            if kind == "oserror":
                raise OSError(errno.ENOSPC, "No space left on device")
            raise RuntimeError("[enforce fail at inline_container.cc:778] . PytorchStreamWriter failed writing file")

        env.monkeypatch.setattr(torch, "save", save)
        env.monkeypatch.setattr(tritongpt.checkpoint, "SAVE_RETRY_WAITS_S", (0.0, 0.0))

    return setup


def export_disk_full(env: Env) -> None:
    import safetensors.torch
    from safetensors import SafetensorError

    def save_file(tensors, filename, metadata=None):
        Path(filename).write_bytes(bytes(100))
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    env.monkeypatch.setattr(safetensors.torch, "save_file", save_file)


def _logits_not_finite(logits: torch.Tensor) -> None:
    from tritongpt.generate import GenerationError

    raise GenerationError("the model's next-token logits are not finite (simulated)")


def no_interpreter(env: Env) -> None:
    env.monkeypatch.setenv("TRITON_INTERPRET", "0")


def umask(mask: int) -> Callable[[Env], None]:
    def setup(env: Env) -> None:
        old = os.umask(mask)
        env.undo.append(lambda: os.umask(old))

    return setup


def earlier_export_with_bpe_files(env: Env) -> None:
    hf = env.world / "hf"
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json", "pytorch_model.bin"):
        (hf / name).write_text("from an earlier GPT-2 BPE export", encoding="utf-8")
    (hf / "README.md").write_text("the user's notes", encoding="utf-8")


PREP = ["prepare", "--input", "corpus/play.txt", "--out", "o", "--quiet"]  # the char tokenizer
DOCS = ["prepare", "--input", "docs.jsonl", "--out", "o", "--quiet"]  # 300 records: chunks, shards, commits


def prepared(*argv: str) -> Callable[[Env], None]:
    """`gpt prepare ARGV` run in the world (the setup of a case about an existing folder)."""

    def setup(env: Env) -> None:
        assert gpt_main(["prepare", *argv, "--quiet"]) == 0

    return setup


def ctrl_c_at_write(k: int) -> Callable[[Env], None]:
    """Ctrl-C at the k-th shard write of the next `gpt prepare` (later writes go through), in chunks of 500
    characters: with small shards, some are committed before it."""

    def setup(env: Env) -> None:
        import tritongpt.prepare
        from tritongpt.prepare import ShardSplit

        write, calls = ShardSplit.write, []

        def stop(self, ids):
            calls.append(1)
            if len(calls) == k:
                raise KeyboardInterrupt
            return write(self, ids)

        env.monkeypatch.setattr(tritongpt.prepare, "CHUNK_CHARS", 500)
        env.monkeypatch.setattr(ShardSplit, "write", stop)

    return setup


def interrupted_prepare(*argv: str) -> Callable[[Env], None]:
    """`gpt prepare ARGV` (of docs.jsonl, written here) stopped by Ctrl-C midway: the folder holds a state to
    resume from."""

    def setup(env: Env) -> None:
        jsonl("docs.jsonl")(env)
        ctrl_c_at_write(6)(env)
        assert gpt_main(["prepare", *argv, "--quiet"]) == 130
        assert (env.world / argv[argv.index("--out") + 1] / ".prepare-state.json").is_file()

    return setup


def edit_json(rel: str, change: Callable[[dict], object]) -> Callable[[Env], None]:
    def setup(env: Env) -> None:
        path = env.world / rel
        obj = json.loads(path.read_text(encoding="utf-8"))
        change(obj)
        path.write_text(json.dumps(obj), encoding="utf-8")

    return setup


def append(rel: str, content: str | bytes) -> Callable[[Env], None]:
    def setup(env: Env) -> None:
        with open(env.world / rel, "ab") as f:
            f.write(content.encode("utf-8") if isinstance(content, str) else content)

    return setup


def jsonl(rel: str, n: int = 300) -> Callable[[Env], None]:
    return write(
        rel, "".join(json.dumps({"text": f"record {i}: the ghost walks at midnight."}) + "\n" for i in range(n))
    )


def hold_lock(rel: str, command: str) -> Callable[[Env], None]:
    """Another writer (here: the test itself) holds the lock of folder `rel` while the command runs."""

    def setup(env: Env) -> None:
        from tritongpt.files import folder_lock

        lock = folder_lock(env.world / rel, command)
        lock.__enter__()
        env.undo.append(lambda: lock.__exit__(None, None, None))

    return setup


def stale_lock(rel: str) -> Callable[[Env], None]:
    """The lock file a killed run leaves: it names a process that is gone and nobody holds it."""
    return write(f"{rel}/.gpt.lock", json.dumps({"pid": 2**22 + 1, "command": "gpt train", "started": "yesterday"}))


def deeply_nested(depth: int = 100_000) -> str:
    return "[" * depth + "]" * depth


def disk_full_for(module: str, name: str) -> Callable[[Env], None]:
    """Files that `module` opens for appending under `name` take no bytes: ENOSPC, without a file name, as
    from a real write."""

    def setup(env: Env) -> None:
        import builtins
        import importlib

        real_open = builtins.open

        class Full(io.StringIO):
            def write(self, text):
                raise OSError(errno.ENOSPC, "No space left on device")

        def fake(path, mode="r", *args, **kwargs):
            if Path(path).name == name and "a" in mode:
                return Full()
            return real_open(path, mode, *args, **kwargs)

        env.monkeypatch.setattr(importlib.import_module(module), "open", fake, raising=False)

    return setup


def fsync_fails(env: Env) -> None:
    """Every fsync fails as on a full disk (what a filesystem says when the data cannot be placed)."""

    def fsync(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    env.monkeypatch.setattr(os, "fsync", fsync)


# --- check helpers ----------------------------------------------------------------------------------------


def strict_metrics(rel: str) -> Callable[[Path, Result], None]:
    def check(world: Path, r: Result) -> None:
        def refuse(constant):
            raise AssertionError(f"{rel} holds {constant}, which is not JSON")

        lines = (world / rel).read_text(encoding="utf-8").splitlines()
        recs = [json.loads(line, parse_constant=refuse) for line in lines]
        assert any(rec["kind"] == "eval" and rec["val_loss"] is None for rec in recs), recs

    return check


def file_mode(*rels: str, mode: int) -> Callable[[Path, Result], None]:
    def check(world: Path, r: Result) -> None:
        for rel in rels:
            assert stat.S_IMODE((world / rel).stat().st_mode) == mode, (rel, oct((world / rel).stat().st_mode))

    return check


def same_bytes(rel: str, base_rel: str) -> Callable[[Path, Result], None]:
    """`rel` after the command holds what `base_rel` held in the untouched world."""

    def check(world: Path, r: Result) -> None:
        assert (world / rel).read_bytes() == (world.parent / "base" / base_rel).read_bytes(), rel

    return check


def output_has(*texts: str) -> Callable[[Path, Result], None]:
    def check(world: Path, r: Result) -> None:
        for t in texts:
            assert t in r.out, (t, r.out[-500:])

    return check


def error_has(*texts: str) -> Callable[[Path, Result], None]:
    def check(world: Path, r: Result) -> None:
        for t in texts:
            assert t in r.err, (t, r.err[-800:])

    return check


def resumes(*argv: str) -> Callable[[Path, Result], None]:
    """After the case: `gpt prepare ARGV --resume` completes and the folder checks out."""

    def check(world: Path, r: Result) -> None:
        assert gpt_main(["prepare", *argv, "--resume", "--quiet"]) == 0
        assert gpt_main(["prepare", "--check", argv[argv.index("--out") + 1]]) == 0

    return check


def exported_char_model(world: Path, r: Result) -> None:
    from tritongpt.hf import from_hf, tokenizer_for_hf

    assert tokenizer_for_hf(world / "hf").name == "char"
    assert from_hf(world / "hf", backend="reference").config.n_layers == 1


TRAIN = ["train", "--config", "tiny.toml"]
RESUME = [*TRAIN, "--resume", "--set", "train.max_steps=4"]
GEN = ["generate", "--checkpoint", "run", "--max-new-tokens", "5", "--seed", "1", "--device", "cpu"]
EXPORT = ["export", "--checkpoint", "run", "--hf"]

TRAIN_CASES = [
    Case(
        "train: a third run into a used folder keeps both earlier runs",
        [*TRAIN, "--set", "train.seed=5"],
        "ok",
        setup=both(
            write("run/previous-1/ckpt-00000009.pt", b"an older run"), write("run/previous/mine.txt", "user file")
        ),
        changes=("run/ckpt-00000002.pt", "run/metrics.jsonl", "run/previous-2*"),
        check=same_bytes("run/previous-2/ckpt-00000002.pt", CKPT),
    ),
    Case(
        "train: a fresh run sets the earlier one aside into previous-1",
        [*TRAIN, "--set", "train.plot=true", "train.seed=5"],
        "ok",
        changes=("run/ckpt-00000002.pt", "run/metrics.jsonl", "run/loss.png", "run/previous-1*"),
        check=same_bytes("run/previous-1/ckpt-00000002.pt", CKPT),
    ),
    Case(
        "train: checkpoints get the umask's mode (0644 under 022)",
        [*TRAIN, "--out", "fresh"],
        "ok",
        setup=umask(0o022),
        changes=("fresh*",),
        check=file_mode("fresh/ckpt-00000002.pt", "fresh/metrics.jsonl", mode=0o644),
    ),
    Case(
        "train: checkpoints honour a strict umask (0600 under 077)",
        [*TRAIN, "--out", "fresh"],
        "ok",
        setup=umask(0o077),
        changes=("fresh*",),
        check=file_mode("fresh/ckpt-00000002.pt", mode=0o600),
    ),
    Case(
        "train: config file not UTF-8",
        ["train", "--config", "bad.toml"],
        "error",
        ("bad.toml", "UTF-8"),
        setup=write("bad.toml", b"[train]\nmax_steps = 2 # \xff\xfe\n"),
    ),
    Case(
        "train: config file not TOML",
        ["train", "--config", "bad.toml"],
        "error",
        ("bad.toml", "not valid TOML"),
        setup=write("bad.toml", "[train\nmax_steps = "),
    ),
    Case("train: no such preset", ["train", "--config", "nonesuch"], "error", ("nonesuch",)),
    Case("train: beta2 = 1.5", [*TRAIN, "--set", "train.beta2=1.5"], "error", ("train.beta2", "1.5")),
    Case("train: beta1 < 0", [*TRAIN, "--set", "train.beta1=-0.1"], "error", ("train.beta1",)),
    Case("train: eps = -1", [*TRAIN, "--set", "train.eps=-1"], "error", ("train.eps", "-1")),
    Case("train: eps = 0", [*TRAIN, "--set", "train.eps=0"], "error", ("train.eps",)),
    Case("train: lr = nan", [*TRAIN, "--set", "train.lr=nan"], "error", ("train.lr", "nan")),
    Case("train: lr < 0", [*TRAIN, "--set", "train.lr=-1e-3", "train.min_lr=0"], "error", ("train.lr",)),
    Case("train: max_time_s = inf", [*TRAIN, "--set", "train.max_time_s=inf"], "error", ("train.max_time_s",)),
    Case("train: temperature < 0", [*TRAIN, "--set", "train.temperature=-1"], "error", ("train.temperature",)),
    Case("train: unknown key", [*TRAIN, "--set", "train.bogus=1"], "error", ("bogus",)),
    Case("train: wrong type", [*TRAIN, "--set", "train.max_steps=abc"], "error", ("max_steps", "abc")),
    Case("train: --set without a table", [*TRAIN, "--set", "lr=1"], "error", ("lr=1",)),
    Case("train: ln_eps = nan", [*TRAIN, "--set", "model.ln_eps=nan"], "error", ("ln_eps",)),
    Case("train: emb_dim not divisible by n_heads", [*TRAIN, "--set", "model.emb_dim=33"], "error", ("emb_dim",)),
    Case(
        "train: meta.json without tokenizer",
        TRAIN,
        "error",
        ("data/meta.json", "tokenizer"),
        setup=edit_meta(lambda m: m.pop("tokenizer")),
    ),
    Case(
        "train: meta.json with a bad tokenizer record",
        TRAIN,
        "error",
        ("data/meta.json", "tokenizer"),
        setup=edit_meta(lambda m: m.update(tokenizer={"type": "sentencepiece"})),
    ),
    Case(
        "train: meta.json vocab_size not a number",
        TRAIN,
        "error",
        ("data/meta.json", "vocab_size"),
        setup=edit_meta(lambda m: m.update(vocab_size="many")),
    ),
    Case(
        "train: meta.json vocab_size disagrees with its tokenizer",
        TRAIN,
        "error",
        ("data/meta.json", "vocab_size"),
        setup=edit_meta(lambda m: m.update(vocab_size=m["vocab_size"] + 1)),
    ),
    Case("train: meta.json not JSON", TRAIN, "error", ("data/meta.json",), setup=write("data/meta.json", "{oops")),
    Case("train: no prepared data", [*TRAIN, "--set", "data.dir='nowhere'"], "error", ("nowhere",)),
    Case(
        "train: token id past the vocabulary in a val shard (earlier run untouched)",
        TRAIN,
        "error",
        ("data/val-000000.bin", "60000"),
        setup=tokens_with("data/val-000000.bin", 60000, at=7),
    ),
    Case(
        "train: token id past the vocabulary in a train shard",
        TRAIN,
        "error",
        ("data/train-000000.bin", "position 100"),
        setup=tokens_with("data/train-000000.bin", 40000, at=100),
    ),
    Case(
        "train: truncated train shard",
        TRAIN,
        "error",
        ("data/train-000000.bin", "header promises"),
        setup=truncate("data/train-000000.bin", 5),
    ),
    Case(
        "train: context longer than the data",
        [*TRAIN, "--set", "model.context_length=100000"],
        "error",
        ("data/train-000000.bin", "context_length"),
    ),
    Case("train: device cuda without a GPU", [*TRAIN, "--set", "train.device='cuda'"], "error", ("cuda",)),
    Case("train: device banana", [*TRAIN, "--set", "train.device='banana'"], "error", ("device", "banana")),
    Case(
        "train: backend triton without a GPU or the interpreter",
        [*TRAIN, "--set", "model.backend='triton'"],
        "error",
        ("model.backend", "triton", "TRITON_INTERPRET"),
        setup=no_interpreter,
    ),
    Case(
        "train: 100,000 layers refused at once, with the numbers",
        [*TRAIN, "--set", "model.n_layers=100000", "model.emb_dim=768", "model.n_heads=12"],
        "error",
        ("n_layers=100000", "parameters", "GiB"),
    ),
    Case(
        "train: run folder is a file",
        [*TRAIN, "--out", "afile"],
        "error",
        ("afile", "is a file"),
        setup=write("afile", "not a folder"),
    ),
    Case(
        "train: run folder under a file",
        [*TRAIN, "--out", "afile/run"],
        "error",
        ("afile", "is a file"),
        setup=write("afile", "not a folder"),
    ),
    Case(
        "train: read-only run folder",
        [*TRAIN, "--out", "locked"],
        "error",
        ("locked", "cannot create files"),
        setup=read_only("locked"),
    ),
    Case(
        "train: read-only parent of a new run folder",
        [*TRAIN, "--out", "locked/run"],
        "error",
        ("locked/run",),
        setup=read_only("locked"),
    ),
    Case(
        "train: disk full at every checkpoint save: named error, the last good checkpoint kept",
        RESUME,
        "error",
        ("ckpt-00000004.pt", "No space left on device", "3 attempts", CKPT),
        setup=disk_full(),
        changes=("run/metrics.jsonl",),
    ),
    Case(
        "train: disk full as torch reports it (RuntimeError)",
        RESUME,
        "error",
        ("ckpt-00000004.pt", "PytorchStreamWriter", CKPT),
        setup=disk_full(kind="runtime"),
        changes=("run/metrics.jsonl",),
    ),
    Case(
        "train: disk full once, then freed: the retry saves",
        RESUME,
        "ok",
        setup=disk_full(failures=1),
        changes=("run/metrics.jsonl", "run/ckpt-00000004.pt"),
        check=output_has("No space left on device; trying again"),
    ),
    Case(
        "train: metrics.jsonl cannot be written: named error with the last good checkpoint",
        RESUME,
        "error",
        ("run/metrics.jsonl", CKPT),
        setup=both(
            lambda env: (env.world / "run/metrics.jsonl").unlink(),
            lambda env: (env.world / "run/metrics.jsonl").mkdir(),
        ),
    ),
    Case(
        "train: lr = 1e30 diverges: exit 1, strict JSON metrics, no checkpoint",
        [*TRAIN, "--out", "div", "--set", "train.lr=1e30", "train.min_lr=0", "train.eval_interval=1"],
        "stopped",
        ("validation loss is nan", "train.lr"),
        changes=("div*",),
        check=strict_metrics("div/metrics.jsonl"),
    ),
    Case(
        "train: lr = 1e30 with max_bad_steps = 1 stops at the first bad step",
        [*TRAIN, "--out", "div", "--set", "train.lr=1e30", "train.min_lr=0", "train.max_bad_steps=1"],
        "stopped",
        ("non-finite loss", "max_bad_steps"),
        changes=("div*",),
    ),
    Case(
        "train: non-finite logits while sampling stop the run",
        [*TRAIN, "--out", "div", "--set", "train.eval_interval=1", "train.sample_tokens=4"],
        "stopped",
        ("sampling failed", "not finite"),
        setup=lambda env: env.monkeypatch.setattr("tritongpt.generate.check_logits", _logits_not_finite),
        changes=("div*",),
    ),
    Case(
        "train: --resume with nothing to resume",
        [*TRAIN, "--out", "empty", "--resume"],
        "error",
        ("no usable checkpoint", "empty"),
    ),
    Case(
        "train: --resume on data of another tokenizer of the same size",
        [*RESUME, "--set", "data.dir='data2'"],
        "error",
        ("--resume", "data2", "data ", "char"),
    ),
    Case(
        "train: --resume with a malformed model_config",
        RESUME,
        "error",
        ("no usable checkpoint", "model_config"),
        setup=edit_checkpoint(lambda c: c.update(model_config=["n_layers", 1])),
    ),
    Case(
        "train: --resume with wrong types in model_config",
        RESUME,
        "error",
        (CKPT, "n_layers"),
        setup=edit_checkpoint(lambda c: c["model_config"].update(n_layers="one")),
    ),
    Case(
        "train: --resume with a bad tokenizer record in the checkpoint",
        RESUME,
        "error",
        (CKPT, "tokenizer"),
        setup=edit_checkpoint(lambda c: c.update(tokenizer={"type": 7})),
    ),
    Case(
        "train: --resume with an optimizer state that does not fit",
        RESUME,
        "error",
        (CKPT, "optimizer"),
        setup=edit_checkpoint(lambda c: c.update(optimizer={"state": {}, "param_groups": []})),
    ),
    Case(
        "train: pruning never counts a corrupt checkpoint toward keep_checkpoints",
        [*RESUME, "train.keep_checkpoints=2"],
        "ok",
        setup=write("run/ckpt-00000003.pt", b"PK\x03\x04 cut short"),
        changes=("run/metrics.jsonl", "run/ckpt-00000004.pt"),
    ),
    Case(
        "train: a plot that cannot be written is a warning, not the end of the run",
        [*TRAIN, "--out", "fresh", "--set", "train.plot=true"],
        "ok",
        setup=lambda env: (env.world / "fresh" / "loss.png").mkdir(parents=True),
        changes=("fresh/ckpt-00000002.pt", "fresh/metrics.jsonl"),
        check=output_has("warning: loss.png not written"),
    ),
    Case(
        "train: Ctrl-C during start-up",
        TRAIN,
        "interrupted",
        process="sigint",
    ),
    Case(
        "train: a second run into a folder a run is writing is refused, naming it",
        [*TRAIN, "--set", "train.seed=5"],
        "error",
        ("run is in use by gpt train", f"pid {os.getpid()}", "--out"),
        setup=hold_lock("run", "gpt train"),
    ),
    Case(
        "train: --resume into a folder a run is writing is refused",
        RESUME,
        "error",
        ("run is in use by gpt train",),
        setup=hold_lock("run", "gpt train"),
    ),
    Case(
        "train: into a data folder gpt prepare is writing is refused",
        [*TRAIN, "--out", "data"],
        "error",
        ("data is in use by gpt prepare",),
        setup=hold_lock("data", "gpt prepare"),
    ),
    Case(
        "train: the lock file a killed run left blocks nothing",
        [*TRAIN, "--set", "train.seed=5"],
        "ok",
        setup=stale_lock("run"),
        changes=("run/ckpt-00000002.pt", "run/metrics.jsonl", "run/previous-1*", LOCK),
    ),
    Case(
        "train: a lock file that is not JSON blocks nothing",
        [*RESUME],
        "ok",
        setup=write(LOCK, b"\xff\x00 garbage"),
        changes=("run/ckpt-00000004.pt", "run/metrics.jsonl", LOCK),
    ),
    Case(
        "train: .gpt.lock is a link to a file of the user's: refused, that file untouched",
        [*TRAIN, "--set", "train.seed=5"],
        "error",
        (LOCK,),
        setup=both(write("precious.txt", "mine"), lambda env: (env.world / LOCK).symlink_to("../precious.txt")),
    ),
    Case(
        "train: .gpt.lock is a folder",
        [*TRAIN, "--set", "train.seed=5"],
        "error",
        (LOCK,),
        setup=lambda env: (env.world / LOCK).mkdir(),
    ),
    Case(
        "train: standard output on a full disk: refused before the earlier run is set aside",
        [*TRAIN, "--set", "train.seed=5"],
        "error",
        ("standard output", "no space left on the device"),
        stdout="full",
    ),
    Case(
        "train: --resume with standard output on a full disk changes nothing",
        RESUME,
        "error",
        ("standard output",),
        stdout="full",
    ),
    Case(
        "train: metrics.jsonl records with a step of 'abc' or null survive --resume",
        RESUME,
        "ok",
        setup=append("run/metrics.jsonl", '{"kind": "note", "step": "abc"}\n{"kind": "note", "step": null}\n[1, 2]\n'),
        changes=("run/ckpt-00000004.pt", "run/metrics.jsonl"),
        check=lambda w, r: _assert_lines_kept(w / "run/metrics.jsonl", '"step": "abc"', '"step": null'),
    ),
    Case(
        "train: a metrics.jsonl line nested too deeply is dropped on --resume",
        [*RESUME, "train.plot=true"],
        "ok",
        setup=append("run/metrics.jsonl", deeply_nested() + "\n"),
        changes=("run/ckpt-00000004.pt", "run/metrics.jsonl", "run/loss.png"),
    ),
    Case(
        "train: a sample_prompt the data's tokenizer cannot encode is refused before training",
        [*TRAIN, "--out", "fresh", "--set", "train.sample_tokens=4", "train.sample_prompt='ROMEO \u20ac'"],
        "error",
        ("train.sample_prompt", "U+20AC", "data"),
    ),
    Case(
        "train: an unencodable final-sample prompt is refused too",
        [*TRAIN, "--out", "fresh", "--set", "train.final_sample_tokens=4", "train.sample_prompt='~'"],
        "error",
        ("train.sample_prompt", "'~'"),
    ),
    Case(
        "train: an unencodable sample_prompt is no matter when nothing is sampled",
        [*TRAIN, "--out", "fresh", "--set", "train.sample_prompt='~'"],
        "ok",
        changes=("fresh*",),
    ),
    Case(
        "train: metrics.jsonl on a full disk: the error names the file and the last good checkpoint",
        RESUME,
        "error",
        ("cannot write run/metrics.jsonl", "no space left on the device", CKPT),
        setup=disk_full_for("tritongpt.metrics", "metrics.jsonl"),
    ),
    Case(
        "train: a data folder with nanoGPT's train.bin and llm.c val shards",
        [*TRAIN, "--set", "data.dir='mixed'"],
        "error",
        ("mixed", "holds both", "fineweb_val_000000.bin", "train.bin"),
        setup=both(write("mixed/train.bin", bytes(2000)), write("mixed/fineweb_val_000000.bin", bytes(1024))),
    ),
    Case(
        "train: data meta.json not UTF-8",
        TRAIN,
        "error",
        ("data/meta.json", "UTF-8"),
        setup=write("data/meta.json", b'{"format": "tritongpt-data\xff"}'),
    ),
]

GENERATE_CASES = [
    Case("generate: from a run folder", [*GEN, "--prompt", "HAMLET:"], "ok", check=output_has("HAMLET:")),
    Case(
        "generate: no prompt for a character model starts after a newline", GEN, "ok", check=lambda w, r: len(r.out) > 1
    ),
    Case(
        "generate: a checkpoint of the triton backend runs on 'auto' where triton cannot, with a note",
        GEN,
        "ok",
        setup=both(no_interpreter, edit_checkpoint(lambda c: c["model_config"].update(backend="triton"))),
        check=lambda w, r: "running backend 'auto' instead" in r.err and len(r.out) > 1,
    ),
    Case("generate: --device banana", [*GEN, "--device", "banana"], "error", ("--device", "banana")),
    Case("generate: --device cuda without a GPU", [*GEN, "--device", "cuda"], "error", ("--device", "cuda")),
    Case("generate: --device cuda:x", [*GEN, "--device", "cuda:x"], "error", ("cuda:x",)),
    Case(
        "generate: --backend triton without a GPU or the interpreter",
        [*GEN, "--backend", "triton"],
        "error",
        ("--backend", "triton"),
        setup=no_interpreter,
    ),
    Case(
        "generate: --prompt - with standard input closed",
        [*GEN, "--prompt", "-"],
        "error",
        ("standard input", "closed"),
        stdin="closed",
    ),
    Case(
        "generate: --prompt - with standard input not UTF-8",
        [*GEN, "--prompt", "-"],
        "error",
        ("standard input", "UTF-8", "offset 2"),
        stdin=b"HA\xffMLET",
    ),
    Case(
        "generate: a prompt character outside the vocabulary", [*GEN, "--prompt", "ROMEO \u20ac"], "error", ("U+20AC",)
    ),
    Case(
        "generate: non-finite weights",
        GEN,
        "error",
        ("not finite",),
        setup=edit_checkpoint(lambda c: c["model"]["lm_head.weight"].fill_(float("nan"))),
    ),
    Case(
        "generate: non-finite weights, greedy",
        [*GEN, "--greedy"],
        "error",
        ("not finite",),
        setup=edit_checkpoint(lambda c: c["model"]["transformer.ln_f.bias"].fill_(float("inf"))),
    ),
    Case(
        "generate: checkpoint model_config is not a dict",
        GEN,
        "error",
        ("run", "model_config"),
        setup=edit_checkpoint(lambda c: c.update(model_config=[1, 2])),
    ),
    Case(
        "generate: checkpoint model_config with n_heads = 0",
        GEN,
        "error",
        (CKPT, "n_heads"),
        setup=edit_checkpoint(lambda c: c["model_config"].update(n_heads=0)),
    ),
    Case(
        "generate: checkpoint claims 100,000 layers",
        GEN,
        "error",
        (CKPT, "n_layers=100000"),
        setup=edit_checkpoint(lambda c: c["model_config"].update(n_layers=100000)),
    ),
    Case(
        "generate: checkpoint with a bad tokenizer record",
        GEN,
        "error",
        (CKPT, "tokenizer"),
        setup=edit_checkpoint(lambda c: c.update(tokenizer={"type": "char", "chars": "aa"})),
    ),
    Case(
        "generate: checkpoint is random bytes",
        ["generate", "--checkpoint", "junk.pt"],
        "error",
        ("junk.pt", "not a readable"),
        setup=write("junk.pt", os.urandom(2000)),
    ),
    Case("generate: checkpoint does not exist", ["generate", "--checkpoint", "none.pt"], "error", ("none.pt",)),
    Case(
        "generate: HF layer_norm_epsilon = 'abc'",
        ["generate", "--hf", "hf"],
        "error",
        ("hf/config.json", "layer_norm_epsilon"),
        setup=lambda env: _edit_hf_config(env, layer_norm_epsilon="abc"),
    ),
    Case(
        "generate: HF n_layer = 100000",
        ["generate", "--hf", "hf"],
        "error",
        ("hf/config.json", "n_layer"),
        setup=lambda env: _edit_hf_config(env, n_layer=100000),
    ),
    Case(
        "generate: HF n_embd is a string",
        ["generate", "--hf", "hf"],
        "error",
        ("hf/config.json", "emb_dim"),
        setup=lambda env: _edit_hf_config(env, n_embd="32"),
    ),
    Case(
        "generate: HF folder without config.json",
        ["generate", "--hf", "hf"],
        "error",
        ("config.json",),
        setup=lambda env: (env.world / "hf/config.json").unlink(),
    ),
    Case(
        "generate: HF folder with a bad tokenizer record",
        ["generate", "--hf", "hf"],
        "error",
        ("tritongpt_tokenizer.json",),
        setup=write("hf/tritongpt_tokenizer.json", "{not json"),
    ),
    Case("generate: --top-p 2", [*GEN, "--top-p", "2"], "usage", ("top_p",)),
    Case("generate: --max-new-tokens -1", [*GEN, "--max-new-tokens", "-1"], "usage", ("--max-new-tokens",)),
    Case("generate: --seed past 64 bits", [*GEN, "--seed", str(2**70)], "usage", ("--seed",)),
    Case(
        "generate: the reader goes away (gpt generate | head -c 1)",
        [*GEN, "--max-new-tokens", "400", "--num-samples", "50"],
        "quiet",
        process="head",
    ),
    Case(
        "generate: a corrupt newest checkpoint: the older one is used, named, with the reason",
        GEN,
        "ok",
        setup=write("run/ckpt-00000004.pt", os.urandom(500)),
        check=error_has("note: using run/ckpt-00000002.pt (step 2)", "run/ckpt-00000004.pt is not a readable"),
    ),
    Case(
        "generate: --temperature 1e-300 samples as greedy does",
        [*GEN, "--temperature", "1e-300", "--prompt", "HAMLET"],
        "ok",
        check=lambda w, r: _assert_same_output(r, [*GEN, "--greedy", "--prompt", "HAMLET"]),
    ),
    Case(
        "generate: --temperature 1e-40 (an fp32 subnormal)",
        [*GEN, "--temperature", "1e-40", "--top-k", "3", "--top-p", "0.5"],
        "ok",
    ),
    Case("generate: --temperature 1e300", [*GEN, "--temperature", "1e300"], "ok"),
    Case("generate: --temperature inf", [*GEN, "--temperature", "inf"], "usage", ("temperature", "inf")),
    Case(
        "generate: standard output on a full disk",
        GEN,
        "error",
        ("standard output", "no space left on the device"),
        stdout="full",
    ),
    Case(
        "generate: HF config.json nested too deeply",
        ["generate", "--hf", "hf"],
        "error",
        ("hf/config.json", "nested too deeply"),
        setup=write("hf/config.json", deeply_nested()),
    ),
    Case(
        "generate: tritongpt_tokenizer.json not UTF-8",
        ["generate", "--hf", "hf"],
        "error",
        ("tritongpt_tokenizer.json", "UTF-8"),
        setup=write("hf/tritongpt_tokenizer.json", b'{"type": "char", "chars": "\xff"}'),
    ),
    Case(
        "generate: HF shard index whose weight map holds lists",
        ["generate", "--hf", "hf"],
        "error",
        ("model.safetensors.index.json",),
        setup=both(
            lambda env: (env.world / "hf/model.safetensors").unlink(),
            write("hf/model.safetensors.index.json", json.dumps({"weight_map": {"a": ["x.safetensors"]}})),
        ),
    ),
]


def _edit_hf_config(env: Env, **changes) -> None:
    path = env.world / "hf" / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text(encoding="utf-8")), **changes}), encoding="utf-8")


EXPORT_CASES = [
    Case(
        "export: into a new folder, files 0644 under umask 022",
        [*EXPORT, "out/new"],
        "ok",
        setup=umask(0o022),
        changes=("out*",),
        check=file_mode("out/new/model.safetensors", "out/new/config.json", mode=0o644),
    ),
    Case(
        "export: model.safetensors honours umask 077",
        [*EXPORT, "new"],
        "ok",
        setup=umask(0o077),
        changes=("new*",),
        check=file_mode("new/model.safetensors", "new/config.json", mode=0o600),
    ),
    Case("export: into a non-empty folder is refused", [*EXPORT, "hf"], "error", ("hf", "not empty", "--force")),
    Case(
        "export: --force replaces an earlier export and leaves no stale file",
        [*EXPORT, "hf", "--force"],
        "ok",
        setup=earlier_export_with_bpe_files,
        changes=("hf/vocab.json", "hf/merges.txt", "hf/tokenizer_config.json", "hf/pytorch_model.bin"),
        check=exported_char_model,
    ),
    Case(
        "export: --force with a folder in the way of a file leaves the earlier export whole",
        [*EXPORT, "hf", "--force"],
        "error",
        ("hf/tritongpt_tokenizer.json", "in the way"),
        setup=both(
            lambda env: (env.world / "hf" / "tritongpt_tokenizer.json").unlink(),
            lambda env: (env.world / "hf" / "tritongpt_tokenizer.json").mkdir(),
        ),
    ),
    Case("export: output is a file", [*EXPORT, "afile"], "error", ("afile", "is a file"), setup=write("afile", "x")),
    Case(
        "export: read-only output folder",
        [*EXPORT, "locked/hf"],
        "error",
        ("locked", "cannot create files"),
        setup=read_only("locked"),
    ),
    Case(
        "export: disk full writing the weights leaves nothing behind",
        [*EXPORT, "out/new"],
        "error",
        ("model.safetensors", "No space left on device"),
        setup=export_disk_full,
    ),
    Case(
        "export: disk full with --force leaves the earlier export whole",
        [*EXPORT, "hf", "--force"],
        "error",
        ("No space left on device",),
        setup=export_disk_full,
    ),
    Case(
        "export: checkpoint with a bad tokenizer record",
        [*EXPORT, "new"],
        "error",
        (CKPT, "tokenizer"),
        setup=edit_checkpoint(lambda c: c.update(tokenizer={"type": "gpt3"})),
    ),
    Case(
        "export: checkpoint whose weights do not fit its config",
        [*EXPORT, "new"],
        "error",
        (CKPT, "wte"),
        setup=edit_checkpoint(lambda c: c["model_config"].update(vocab_size=99)),
    ),
    Case(
        "export: a post-norm model has no GPT-2 layout",
        [*EXPORT, "new"],
        "error",
        ("post-norm",),
        setup=edit_checkpoint(lambda c: c["model_config"].update(norm_placement="post")),
    ),
    Case("export: checkpoint missing", ["export", "--checkpoint", "none.pt", "--hf", "new"], "error", ("none.pt",)),
    Case(
        "export: a corrupt newest checkpoint: the older one, named, with the reason",
        [*EXPORT, "new"],
        "ok",
        setup=write("run/ckpt-00000004.pt", b"PK\x03\x04 cut short"),
        changes=("new*",),
        check=lambda w, r: (error_has("note: using run/ckpt-00000002.pt (step 2)")(w, r), output_has("step 2")(w, r)),
    ),
    Case(
        "export: standard output on a full disk: one line, the export written",
        [*EXPORT, "new"],
        "error",
        ("standard output",),
        stdout="full",
        changes=("new*",),
    ),
]

INFO_VERIFY_CASES = [
    Case(
        "info: config file not UTF-8",
        ["info", "--config", "bad.toml"],
        "error",
        ("bad.toml", "UTF-8"),
        setup=write("bad.toml", b"[model]\nn_layers = 2 # \xe9\n"),
    ),
    Case(
        "info: 100,000 layers are counted at once",
        ["info", "--config", "gpt2-124m", "--set", "model.n_layers=100000"],
        "ok",
        check=output_has("708,826,585,344"),
    ),
    Case(
        "info: --forward with 100,000 layers is refused with the numbers",
        ["info", "--config", "gpt2-124m", "--set", "model.n_layers=100000", "--forward"],
        "error",
        ("n_layers=100000", "GiB"),
    ),
    Case(
        "info: --forward with backend triton without a GPU or the interpreter",
        ["info", "--config", "demo", "--set", "model.backend='triton'", "--forward"],
        "error",
        ("triton",),
        setup=no_interpreter,
    ),
    Case("info: n_heads = 0", ["info", "--config", "demo", "--set", "model.n_heads=0"], "error", ("n_heads",)),
    Case("info: no such preset", ["info", "--config", "gpt5"], "error", ("gpt5",)),
    Case("info: standard output closed", ["info", "--config", "demo"], "ok", process="closed-stdout"),
    Case("verify: --ops names nothing", ["verify", "--quick", "--ops", ""], "usage", ("--ops",)),
    Case("verify: --ops names an unknown op", ["verify", "--quick", "--ops", "softmax"], "usage", ("softmax",)),
    Case("gpt: unknown command", ["frobnicate"], "error", ("frobnicate",)),
    Case("info: --config /dev/null: the defaults", ["info", "--config", "/dev/null"], "ok", check=output_has("124,")),
    Case(
        "info: --config a folder",
        ["info", "--config", "cfgdir"],
        "error",
        ("cfgdir", "is a folder"),
        setup=lambda env: (env.world / "cfgdir").mkdir(),
    ),
    Case(
        "info: standard output on a full disk",
        ["info", "--config", "demo"],
        "error",
        ("gpt info: error: standard output: no space left on the device",),
        stdout="full",
    ),
    Case("gpt: --help on a full disk", ["--help"], "error", ("gpt: error: standard output",), stdout="full"),
    Case(
        "verify: --seed past 64 bits",
        ["verify", "--quick", "--seed", "99999999999999999999999"],
        "usage",
        ("--seed", "99999999999999999999999"),
    ),
    Case(
        "verify: standard output on a full disk",
        ["verify", "--quick", "--ops", "gelu"],
        "error",
        ("standard output",),
        stdout="full",
    ),
]

HS = ["eval", "--checkpoint", "run", "--device", "cpu", "--quiet", "--hellaswag", "hs.jsonl"]
EVAL = ["eval", "--checkpoint", "run", "--device", "cpu", "--quiet", "--data", "data"]
ODD_NAME = os.fsdecode(b"corpus/n\xffme.txt")  # a file name of bytes that are not UTF-8
HS_LINE = json.dumps({"ctx": "HAMLET: the ghost", "endings": ["walks", "waits", "speaks", "walks"], "label": 0})

PREPARE_CASES = [
    # data lost
    Case(
        "prepare: a re-prepare that fails on a bad record keeps the earlier data whole",
        ["prepare", "--input", "docs.jsonl", "--out", "o", "--quiet"],
        "error",
        ("docs.jsonl:301", "not JSON", "o/meta.json", "untouched"),
        setup=both(
            jsonl("docs.jsonl"),
            prepared("--input", "docs.jsonl", "--out", "o"),
            append("docs.jsonl", '{"text": broken}\n'),
        ),
    ),
    Case(
        "prepare: --force that fails keeps the earlier data whole",
        [*PREP, "--force"],
        "error",
        ("play.txt", "UTF-8", "untouched"),
        setup=both(prepared(*PREP[1:]), append("corpus/play.txt", b"caf\xe9\n")),
    ),
    Case(
        "prepare: Ctrl-C in the middle of a re-prepare: the earlier data stays usable, --resume finishes",
        [*DOCS, "--shard-tokens", "1000"],
        "interrupted",
        ("untouched",),
        setup=both(
            jsonl("docs.jsonl"),
            prepared(*DOCS[1:], "--shard-tokens", "1000"),
            append("docs.jsonl", '{"text": "HORATIO: one more line."}\n'),
            ctrl_c_at_write(6),
        ),
        changes=("o/.prepare-state.json", "o/.*.bin.tmp"),
        check=resumes(*DOCS[1:], "--shard-tokens", "1000"),
    ),
    Case(
        "prepare: a second prepare into a folder being prepared is refused, naming the first",
        PREP,
        "error",
        ("o is in use by gpt prepare", f"pid {os.getpid()}", "--out"),
        setup=both(prepared(*PREP[1:]), append("corpus/play.txt", "HORATIO: more.\n"), hold_lock("o", "gpt prepare")),
    ),
    Case(
        "prepare: into a run folder a training run holds is refused",
        ["prepare", "--input", "corpus/play.txt", "--out", "run", "--quiet"],
        "error",
        ("run is in use by gpt train",),
        setup=hold_lock("run", "gpt train"),
    ),
    Case(
        "prepare: the lock file a killed prepare left blocks nothing",
        PREP,
        "ok",
        setup=both(prepared(*PREP[1:]), append("corpus/play.txt", "HORATIO: more.\n"), stale_lock("o")),
        changes=("o/*",),
    ),
    # silently wrong
    Case(
        "prepare: --resume with --max-tokens below what is already written is refused",
        [*DOCS, "--shard-tokens", "1000", "--resume", "--max-tokens", "100"],
        "error",
        ("already written", "--max-tokens 100"),
        setup=interrupted_prepare(*DOCS[1:], "--shard-tokens", "1000"),
    ),
    Case(
        "prepare: --resume with a larger --max-tokens continues to it",
        [*DOCS, "--shard-tokens", "1000", "--resume", "--max-tokens", "5000"],
        "ok",
        setup=interrupted_prepare(*DOCS[1:], "--shard-tokens", "1000"),
        changes=("o/*",),
        check=lambda w, r: _assert_tokens(w / "o", 5000),
    ),
    Case(
        "prepare: a listed shard deleted: prepared again, not 'nothing to do'",
        PREP,
        "ok",
        setup=both(prepared(*PREP[1:]), lambda env: (env.world / "o/val-000000.bin").unlink()),
        changes=("o/val-000000.bin",),
        check=error_has("o/val-000000.bin is missing"),
    ),
    Case(
        "prepare: a listed shard that is garbage: prepared again",
        PREP,
        "ok",
        setup=both(prepared(*PREP[1:]), write("o/train-000000.bin", os.urandom(3000))),
        changes=("o/train-000000.bin",),
        check=error_has("o/train-000000.bin is not a tritongpt token file"),
    ),
    Case(
        "prepare: a listed shard cut short: prepared again",
        PREP,
        "ok",
        setup=both(prepared(*PREP[1:]), truncate("o/train-000000.bin", 4)),
        changes=("o/train-000000.bin",),
        check=error_has("header promises"),
    ),
    Case(
        "prepare: a whole shard meta.json counts otherwise: prepared again",
        PREP,
        "ok",
        setup=both(prepared(*PREP[1:]), edit_json("o/meta.json", lambda m: m["shards"]["val"][0].update(tokens=1))),
        changes=("o/meta.json",),
        check=error_has("not the 1 o/meta.json lists"),
    ),
    Case(
        "prepare --check: a whole folder", ["prepare", "--check", "data"], "ok", check=output_has("matching the sha256")
    ),
    Case(
        "prepare --check: one flipped token",
        ["prepare", "--check", "data"],
        "error",
        ("data/train-000000.bin", "sha256", "changed after gpt prepare wrote it"),
        setup=tokens_with("data/train-000000.bin", 3, at=50),
    ),
    Case(
        "prepare --check: a missing shard",
        ["prepare", "--check", "data"],
        "error",
        ("data/val-000000.bin is missing",),
        setup=lambda env: (env.world / "data/val-000000.bin").unlink(),
    ),
    Case(
        "prepare --check: meta.json without a sha256",
        ["prepare", "--check", "data"],
        "error",
        ("records no sha256",),
        setup=edit_meta(lambda m: m["shards"]["train"][0].pop("sha256")),
    ),
    Case(
        "prepare --check: a folder of llm.c shards has nothing recorded",
        ["prepare", "--check", "llmc"],
        "error",
        ("llmc has no meta.json",),
        setup=write("llmc/fineweb_val_000000.bin", bytes(1024)),
    ),
    Case(
        "prepare --check: an unfinished folder",
        ["prepare", "--check", "o"],
        "error",
        ("unfinished", "--resume"),
        setup=interrupted_prepare(*DOCS[1:], "--shard-tokens", "1000"),
    ),
    Case("prepare --check: with other options", ["prepare", "--check", "data", "--force"], "usage", ("--check",)),
    Case("prepare --check: a file", ["prepare", "--check", "data/meta.json"], "error", ("a file, not a prepared",)),
    Case(
        "prepare --check: standard output on a full disk",
        ["prepare", "--check", "data"],
        "error",
        ("gpt prepare: error: standard output: no space left on the device",),
        stdout="full",
    ),
    Case(
        "prepare: --workers 1000 runs as many threads as there are cores, and says so",
        [*PREP, "--workers", "1000"],
        "ok",
        changes=("o*",),
        check=error_has("--workers 1000 is more than the"),
    ),
    Case("prepare: --workers -1", [*PREP, "--workers", "-1"], "error", ("--workers",)),
    Case(
        "prepare: standard output on a full disk: one line, the data written all the same",
        PREP,
        "error",
        ("standard output", "no space left", "complete all the same"),
        stdout="full",
        changes=("o*",),
    ),
    # tracebacks
    Case(
        "prepare: deeply nested JSON in a JSON Lines file",
        ["prepare", "--input", "deep.jsonl", "--out", "o"],
        "error",
        ("deep.jsonl:2", "nested too deeply"),
        setup=write("deep.jsonl", '{"text": "fine"}\n{"text": ' + deeply_nested() + "}\n"),
    ),
    Case(
        "prepare: deeply nested JSON in a gzipped JSON Lines file",
        ["prepare", "--input", "deep.jsonl.gz", "--out", "o"],
        "error",
        ("deep.jsonl.gz:1", "nested too deeply"),
        setup=write("deep.jsonl.gz", gzip.compress(('{"text": ' + deeply_nested() + "}\n").encode())),
    ),
    Case(
        "prepare: a lone surrogate with the char tokenizer reads as U+FFFD",
        ["prepare", "--input", "s.jsonl", "--out", "o", "--tokenizer", "char"],
        "ok",
        setup=write("s.jsonl", '{"text": "HAMLET \\ud800 speaks"}\n{"text": "lone \\udfff low"}\n'),
        changes=("o*",),
        check=lambda w, r: _assert_vocabulary_has(w / "o", "\ufffd"),
    ),
    Case(
        "prepare: a file name that is not UTF-8, given directly",
        ["prepare", "--input", ODD_NAME, "--out", "o", "--quiet"],
        "ok",
        setup=lambda env: (env.world / ODD_NAME).write_text(TEXT, encoding="utf-8"),
        changes=("o*",),
        check=lambda w, r: _assert_nothing_to_do(["prepare", "--input", ODD_NAME, "--out", "o"]),
    ),
    Case(
        "prepare: .prepare-state.json with a position of the wrong type",
        [*DOCS, "--shard-tokens", "1000", "--resume"],
        "error",
        ("o/.prepare-state.json", "'position'", "--force"),
        setup=both(
            interrupted_prepare(*DOCS[1:], "--shard-tokens", "1000"),
            edit_json("o/.prepare-state.json", lambda st: st["position"].update(file="abc")),
        ),
    ),
    Case(
        "prepare: .prepare-state.json whose position is a list",
        [*DOCS, "--shard-tokens", "1000", "--resume"],
        "error",
        ("o/.prepare-state.json", "'position'"),
        setup=both(
            interrupted_prepare(*DOCS[1:], "--shard-tokens", "1000"),
            edit_json("o/.prepare-state.json", lambda st: st.update(position=[0, 1])),
        ),
    ),
    Case(
        "prepare: .prepare-state.json that would remove a file outside the folder",
        [*DOCS, "--shard-tokens", "1000", "--resume"],
        "error",
        ("o/.prepare-state.json", "'replaces'"),
        setup=both(
            interrupted_prepare(*DOCS[1:], "--shard-tokens", "1000"),
            edit_json("o/.prepare-state.json", lambda st: st.update(replaces=["../tiny.toml"])),
        ),
    ),
    Case(
        "prepare: .prepare-state.json with a negative token count",
        [*DOCS, "--shard-tokens", "1000", "--resume"],
        "error",
        ("o/.prepare-state.json", "'shards'"),
        setup=both(
            interrupted_prepare(*DOCS[1:], "--shard-tokens", "1000"),
            edit_json("o/.prepare-state.json", lambda st: st["shards"]["train"][0].update(tokens=-1)),
        ),
    ),
    Case(
        "prepare: .prepare-state.json nested too deeply",
        [*DOCS, "--resume"],
        "error",
        ("o/.prepare-state.json", "not JSON"),
        setup=both(jsonl("docs.jsonl"), write("o/.prepare-state.json", deeply_nested())),
    ),
    # wrong behaviour, right exit code
    Case(
        "prepare: one text file without a trailing newline, char tokenizer",
        ["prepare", "--input", "one.txt", "--out", "o", "--val-fraction", "0.3"],
        "ok",
        setup=write("one.txt", "the ghost walks"),
        changes=("o*",),
    ),
    Case(
        "prepare: one text file without a newline, in the main thread",
        ["prepare", "--input", "one.txt", "--out", "o", "--workers", "0"],
        "ok",
        setup=write("one.txt", "x" * 5000),
        changes=("o*",),
    ),
    Case(
        "prepare: meta.json is a folder: refused at once, named",
        PREP,
        "error",
        ("o/meta.json", "in the way"),
        setup=lambda env: (env.world / "o/meta.json").mkdir(parents=True),
    ),
    Case(
        "prepare: .prepare-state.json is a folder",
        PREP,
        "error",
        ("o/.prepare-state.json", "in the way"),
        setup=lambda env: (env.world / "o/.prepare-state.json").mkdir(parents=True),
    ),
    Case(
        "prepare: a folder named like a shard, even with --force",
        [*PREP, "--force"],
        "error",
        ("o/train-000000.bin", "in the way"),
        setup=lambda env: (env.world / "o/train-000000.bin").mkdir(parents=True),
    ),
    Case(
        "prepare: --resume with ./docs.jsonl for docs.jsonl",
        ["prepare", "--input", "./docs.jsonl", "--out", "o", "--quiet", "--shard-tokens", "1000", "--resume"],
        "ok",
        setup=interrupted_prepare(*DOCS[1:], "--shard-tokens", "1000"),
        changes=("o/*",),
    ),
    Case(
        "prepare: the same input by another path to it: nothing to do",
        ["prepare", "--input", "corpus/../corpus/play.txt", "--out", "o"],
        "ok",
        setup=prepared(*PREP[1:]),
        check=error_has("nothing to do"),
    ),
    Case(
        "prepare: the reader is gone before the summary line (gpt prepare | true): the data is complete, exit 141",
        PREP,
        "quiet",
        process="gone",
        changes=("o/*",),
        check=lambda w, r: check_folder(w / "o"),
    ),
]

EVAL_CASES = [
    Case(
        "eval: standard output on a full disk is not a closed pipe",
        EVAL,
        "error",
        ("standard output", "no space left on the device"),
        stdout="full",
    ),
    Case(
        "eval: standard output full with --json: nothing half written",
        [*EVAL, "--json", "e.json"],
        "error",
        ("standard output",),
        stdout="full",
    ),
    Case(
        "eval: a corrupt newest checkpoint: the older one, named, with the reason",
        EVAL,
        "ok",
        setup=write("run/ckpt-00000009.pt", b"PK\x03\x04 cut short"),
        check=error_has("using run/ckpt-00000002.pt (step 2)", "run/ckpt-00000009.pt is not a readable"),
    ),
    Case(
        "eval: HellaSwag line nested too deeply",
        HS,
        "error",
        ("hs.jsonl:2", "nested too deeply"),
        setup=write("hs.jsonl", HS_LINE + "\n" + deeply_nested() + "\n"),
    ),
    Case(
        "eval: HellaSwag label '²'",
        HS,
        "error",
        ("hs.jsonl:1", "'label'", "²"),
        setup=write("hs.jsonl", HS_LINE.replace('"label": 0', '"label": "\u00b2"') + "\n"),
    ),
    Case(
        "eval: HellaSwag label in Arabic-Indic digits",
        HS,
        "error",
        ("hs.jsonl:1", "'label'"),
        setup=write("hs.jsonl", HS_LINE.replace('"label": 0', '"label": "\u0663"') + "\n"),
    ),
    Case(
        "eval: HF config.json not UTF-8",
        ["eval", "--hf", "hf", "--device", "cpu", "--data", "data"],
        "error",
        ("hf/config.json", "UTF-8"),
        setup=write("hf/config.json", b'{"model_type": "gpt2\xff"}'),
    ),
    Case(
        "eval: data meta.json nested too deeply",
        EVAL,
        "error",
        ("data/meta.json", "nested too deeply"),
        setup=write("data/meta.json", deeply_nested()),
    ),
]

BENCH = ["bench", "--quick", "--ops", "gelu", "--modes", "fwd", "--providers", "reference", "--out", "b"]

BENCH_CASES = [
    Case(
        "bench: a full disk at command.txt: named, nothing half written, the folder still ours",
        BENCH,
        "error",
        ("b/command.txt", "no space left on the device"),
        setup=fsync_fails,
        changes=("b/",),
        check=lambda w, r: _bench_takes(w / "b"),
    ),
    Case(
        "bench: the leftovers of a run that measured nothing do not block the same command",
        BENCH,
        "error",
        ("b/command.txt", "no space left on the device"),
        setup=both(write("b/command.txt", ""), write("b/notes.txt", ""), fsync_fails),
    ),
    Case(
        "bench: the reader is gone (gpt bench | true): the run goes on, its files are complete, exit 141 quietly",
        BENCH,
        "quiet",
        process="gone",
        changes=("b/", "b/*"),
        check=lambda w, r: _assert_results(w / "b"),
    ),
    Case("bench --plan: the reader is gone: exit 141 quietly", ["bench", "--plan"], "quiet", process="gone"),
    Case(
        "verify --out: the reader is gone: exit 141 quietly, no lock or temporary file left behind",
        ["verify", "--quick", "--ops", "gelu", "--variants", "none", "--out", "v"],
        "quiet",
        process="gone",
        changes=("v/", "v/*"),
        check=lambda w, r: _assert_checks_written(w / "v"),
    ),
]


def _assert_checks_written(out: Path) -> None:
    """Only whole result files (the checks done before the output stopped, if any), never a lock or a temporary."""
    left = sorted(p.name for p in out.iterdir())
    assert set(left) <= {"verify.csv", "summary.md"}, left
    if left:
        assert (out / "verify.csv").read_text(encoding="utf-8").startswith("op,variant,check,"), left


def _assert_results(out: Path) -> None:
    rows = (out / "results.csv").read_text(encoding="utf-8").splitlines()
    assert len(rows) > 1 and (out / "summary.md").is_file(), rows


def _assert_tokens(out: Path, n: int) -> None:
    meta = json.loads((out / "meta.json").read_text(encoding="utf-8"))
    assert meta["split"]["train_tokens"] + meta["split"]["val_tokens"] == n == meta["max_tokens"], meta["split"]


def _assert_vocabulary_has(out: Path, char: str) -> None:
    meta = json.loads((out / "meta.json").read_text(encoding="utf-8"))
    assert char in meta["tokenizer"]["chars"] and not any(0xD800 <= ord(c) < 0xE000 for c in meta["tokenizer"]["chars"])


def _assert_nothing_to_do(argv: list[str]) -> None:
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert gpt_main(argv) == 0
    assert "nothing to do" in err.getvalue(), err.getvalue()


def _assert_lines_kept(path: Path, *texts: str) -> None:
    content = path.read_text(encoding="utf-8")
    assert all(t in content for t in texts), content[-500:]


def _assert_same_output(r: Result, argv: list[str]) -> None:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert gpt_main(argv) == 0
    assert r.out == out.getvalue(), (r.out, out.getvalue())


def _bench_takes(out: Path) -> None:
    from tritongpt.bench.cli import _check_out

    assert not any(out.iterdir()), list(out.iterdir())
    _check_out(out, create=False)


CASES = TRAIN_CASES + GENERATE_CASES + EXPORT_CASES + INFO_VERIFY_CASES + PREPARE_CASES + EVAL_CASES + BENCH_CASES


# ---------------------------------------------------------------------------------------------------------
# The runner


def snapshot(root: Path) -> dict[str, tuple]:
    """Every path under `root` (folders end in /) with its mode and content hash."""
    out: dict[str, tuple] = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        st = p.lstat()
        if stat.S_ISDIR(st.st_mode):
            out[rel + "/"] = (stat.S_IMODE(st.st_mode),)
        else:
            out[rel] = (stat.S_IMODE(st.st_mode), hashlib.sha1(p.read_bytes()).hexdigest())
    return out


def run_in_process(case: Case, monkeypatch: pytest.MonkeyPatch, capsys) -> Result:
    if case.stdin == "closed":
        monkeypatch.setattr(sys, "stdin", None)
    elif isinstance(case.stdin, bytes):
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(case.stdin)))
    full, captured = None, sys.stdout
    if case.stdout == "full":
        if not Path("/dev/full").exists():
            pytest.skip("no /dev/full here")
        full = sys.stdout = open("/dev/full", "w", encoding="utf-8")  # noqa: SIM115 - closed below
    capsys.readouterr()
    try:
        code = gpt_main(case.argv)
    except SystemExit as e:  # argparse and ap.exit
        code = e.code if isinstance(e.code, int) else 0 if e.code is None else 1
    finally:
        if full is not None:
            sys.stdout = captured
            with contextlib.suppress(OSError):
                full.close()
    out, err = capsys.readouterr()
    return Result(code, out, err)


def run_in_child(case: Case, world: Path) -> Result:
    """`python -m tritongpt ...` in the world folder: Ctrl-C half a second in (during start-up), a reader that takes
    one byte and goes away, or standard output closed."""
    repo = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(repo)}
    env.pop("TRITON_INTERPRET", None)
    cmd = [sys.executable, "-m", "tritongpt", *case.argv]
    pipes = dict(cwd=world, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if case.process == "sigint":
        p = subprocess.Popen(cmd, **pipes)
        time.sleep(0.5)
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=300)
    elif case.process == "head":
        p = subprocess.Popen(cmd, **pipes)
        first = p.stdout.read(1)
        p.stdout.close()
        err = p.stderr.read()
        p.wait(timeout=300)
        out = first
    elif case.process == "gone":  # the reader goes away before the command writes anything
        p = subprocess.Popen(cmd, **pipes)
        p.stdout.close()
        err = p.stderr.read()
        p.wait(timeout=300)
        out = b""
    elif case.process == "closed-stdout":
        p = subprocess.run(["sh", "-c", 'exec "$@" >&-', "sh", *cmd], **{**pipes, "timeout": 300})
        out, err = p.stdout, p.stderr
    else:
        raise ValueError(f"unknown process mode {case.process!r}")
    return Result(p.returncode, out.decode(errors="replace"), err.decode(errors="replace"))


def assert_outcome(case: Case, r: Result) -> None:
    from tritongpt.cli import COMMANDS

    prefix = f"gpt {case.argv[0]}: error: " if case.argv[0] in COMMANDS else "gpt: error: "
    lines = r.err.strip().splitlines()
    assert "Traceback" not in r.err, r.err
    if case.outcome in ("error", "stopped"):
        assert r.code == (2 if case.outcome == "error" else 1), (r.code, r.err)
        assert len(lines) == 1 and lines[0].startswith(prefix), r.err
    elif case.outcome == "usage":
        assert r.code == 2 and lines and lines[-1].startswith(prefix), (r.code, r.err)
    elif case.outcome == "ok":
        assert r.code == 0, (r.code, r.err[-2000:])
        assert prefix not in r.err, r.err
    elif case.outcome == "interrupted":
        assert r.code in (130, -signal.SIGINT), (r.code, r.err)  # a signal before Python is up kills it plainly
        assert r.code != 130 or "interrupted" in lines[-1], r.err
    elif case.outcome == "quiet":
        assert r.code == 141 and r.err == "", (r.code, r.err)
    else:
        raise ValueError(f"unknown outcome {case.outcome!r}")
    message = lines[-1] if lines else ""
    for culprit in case.culprit:
        assert culprit in message, (culprit, message)


def assert_changes(case: Case, before: dict[str, tuple], after: dict[str, tuple]) -> None:
    touched = sorted((set(before) ^ set(after)) | {p for p in set(before) & set(after) if before[p] != after[p]})
    unexpected = [p for p in touched if not any(fnmatch.fnmatch(p, pat) for pat in case.changes)]
    assert not unexpected, f"created, changed or removed: {unexpected}"
    unmet = [pat for pat in case.changes if not any(fnmatch.fnmatch(p, pat) for p in touched)]
    assert not unmet, f"expected changes that did not happen: {unmet}"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile(case: Case, base_world: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    world = tmp_path / "world"
    shutil.copytree(base_world, world, symlinks=True)
    (tmp_path / "base").symlink_to(base_world)
    env = Env(world, monkeypatch)
    monkeypatch.chdir(world)
    try:
        if case.setup is not None:
            case.setup(env)
        before = snapshot(world)
        result = run_in_child(case, world) if case.process else run_in_process(case, monkeypatch, capsys)
        after = snapshot(world)
    finally:
        for undo in env.undo:
            undo()
    assert_outcome(case, result)
    assert_changes(case, before, after)
    if case.check is not None:
        case.check(world, result)


def test_the_table_covers_every_command_it_owns():
    """At least 180 cases, ids unique, every outcome class used, every command tried."""
    from tritongpt.cli import COMMANDS

    assert len(CASES) >= 180
    assert len({c.id for c in CASES}) == len(CASES)
    assert {c.outcome for c in CASES} == {"error", "usage", "stopped", "ok", "interrupted", "quiet"}
    assert set(COMMANDS) <= {c.argv[0] for c in CASES}


# ---------------------------------------------------------------------------------------------------------
# Two processes at once


def test_a_run_folder_has_one_writer(base_world: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """Another process writing into the run folder (holding its lock, as a running `gpt train` does): a `gpt train`
    into it is refused, naming that process, and changes nothing; once it is killed (SIGKILL: its lock file stays
    behind), the next run goes ahead."""
    world = tmp_path / "world"
    shutil.copytree(base_world, world, symlinks=True)
    monkeypatch.chdir(world)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    hold = "import time; from tritongpt.files import folder_lock\nwith folder_lock('run', 'gpt train'): time.sleep(600)"
    first = subprocess.Popen([sys.executable, "-c", hold], cwd=world, env=env, stderr=subprocess.PIPE)
    lock = world / LOCK
    try:
        deadline = time.monotonic() + 60
        while f'"pid": {first.pid}' not in (lock.read_text(errors="replace") if lock.is_file() else ""):
            assert first.poll() is None and time.monotonic() < deadline, first.stderr.read().decode()[-2000:]
            time.sleep(0.02)
        before = snapshot(world)
        capsys.readouterr()
        assert gpt_main([*TRAIN, "--set", "train.seed=6"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"run is in use by gpt train (pid {first.pid}" in err[0], err
        assert snapshot(world) == before
    finally:
        first.kill()
        first.wait(timeout=60)
    assert lock.is_file()
    assert gpt_main([*TRAIN, "--set", "train.seed=7"]) == 0
    assert not lock.exists()
    assert (world / "run" / "previous-1" / "ckpt-00000002.pt").read_bytes() == (base_world / CKPT).read_bytes()
