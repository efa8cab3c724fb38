"""Checkpoint files and a run folder's checkpoints (`tritongpt.checkpoint`), without a training run."""

import dataclasses
import errno

import pytest
import torch

import tritongpt.checkpoint
from tritongpt.checkpoint import (
    Checkpointer,
    CheckpointError,
    checkpoint_path,
    list_checkpoints,
    model_from_checkpoint,
    model_payload,
    save_checkpoint,
)
from tritongpt.config import GPTConfig
from tritongpt.model import GPT
from tritongpt.tokenizer import CharTokenizer

TOK = CharTokenizer.from_text("to be or not to be\n")


def tiny_model(**overrides) -> GPT:
    base = dict(vocab_size=TOK.vocab_size, context_length=8, emb_dim=16, n_heads=2, n_layers=1, backend="reference")
    return GPT(GPTConfig(**{**base, **overrides}))


def test_a_checkpoint_of_the_backend_once_named_torch_loads_as_reference(tmp_path):
    model = tiny_model()
    payload = model_payload(model, TOK)
    payload["model_config"] = {**dataclasses.asdict(model.config), "backend": "torch"}
    path = save_checkpoint(tmp_path / "old.pt", payload)
    loaded, tok, _ = model_from_checkpoint(path)
    assert loaded.config.backend == "reference" and tok.to_dict() == TOK.to_dict()
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


# ---------------------------------------------------------------------------------------------------------
# A run folder's checkpoints: Checkpointer


def payload(step, model=None, tok=TOK, **extra):
    """A training checkpoint's payload, as the trainer writes it (only what the Checkpointer reads)."""
    model = model if model is not None else tiny_model()
    return {**model_payload(model, tok), "optimizer": {}, "step": step, "rng": {}, **extra}


def steps(run_dir):
    return [s for s, _ in list_checkpoints(run_dir)]


def test_save_keeps_the_newest_readable_and_leaves_foreign_files(tmp_path):
    keeper = Checkpointer(tmp_path, keep=2)
    (tmp_path / "ckpt-00000000.pt").write_bytes(b"not ours")  # never counted, never deleted
    for step in (1, 2, 3):
        assert keeper.save(step, payload(step)) == checkpoint_path(tmp_path, step)
    assert steps(tmp_path) == [0, 2, 3]
    (tmp_path / "ckpt-00000099.pt").write_bytes(b"foreign, numbered later")
    keeper.save(4, payload(4))  # the later-numbered file neither counts nor pushes the fresh one out
    assert steps(tmp_path) == [0, 3, 4, 99]
    Checkpointer(tmp_path, keep=0).save(5, payload(5))  # keep 0: all
    assert steps(tmp_path) == [0, 3, 4, 5, 99]


def full_disk(monkeypatch, failures):
    """torch.save fails as on a full disk for its first `failures` calls; no pauses between attempts."""
    real_save, calls = torch.save, []

    def save(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) <= failures:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    monkeypatch.setattr(tritongpt.checkpoint, "SAVE_RETRY_WAITS_S", (0.0, 0.0))


def test_a_failed_save_is_tried_again_then_names_the_last_good_checkpoint(tmp_path, monkeypatch):
    said = []
    keeper = Checkpointer(tmp_path, keep=3, log=said.append)
    keeper.save(2, payload(2))
    full_disk(monkeypatch, failures=2)
    keeper.save(4, payload(4))  # the third attempt succeeds
    assert steps(tmp_path) == [2, 4] and len(said) == 2
    assert "No space left on device; trying again in 0 s (attempt 2 of 3)" in said[0] and "attempt 3 of 3" in said[1]
    full_disk(monkeypatch, failures=3)
    with pytest.raises(CheckpointError, match=r"ckpt-00000006\.pt.*\(3 attempts\)\. The last good checkpoint is"):
        keeper.save(6, payload(6))
    assert steps(tmp_path) == [2, 4] and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_the_last_good_note(tmp_path):
    keeper = Checkpointer(tmp_path)
    assert keeper.last_good_note(10) == "This run has no earlier checkpoint."
    keeper.save(3, payload(3))
    keeper.save(5, payload(5))
    (tmp_path / "ckpt-00000007.pt").write_bytes(b"truncated")
    note = keeper.last_good_note(10)
    assert note == f"The last good checkpoint is {checkpoint_path(tmp_path, 5)} (step 5): resume from it with --resume."
    assert "(step 3)" in keeper.last_good_note(4)  # only steps up to the one asked about


def test_an_earlier_run_is_set_aside_into_the_first_free_previous_folder(tmp_path):
    said = []
    keeper = Checkpointer(tmp_path, log=said.append)
    assert keeper.set_aside_previous_run() is None and said == []  # an empty folder: nothing to move
    (tmp_path / "previous-1").mkdir()
    (tmp_path / "previous-1" / "mine.txt").write_text("the user's")
    (tmp_path / "notes.txt").write_text("the user's too")
    keeper.save(2, payload(2))
    (tmp_path / "metrics.jsonl").write_text("{}\n")
    (tmp_path / "loss.png").write_bytes(b"png")
    assert keeper.set_aside_previous_run() == tmp_path / "previous-2"
    assert sorted(p.name for p in (tmp_path / "previous-2").iterdir()) == [
        "ckpt-00000002.pt",
        "loss.png",
        "metrics.jsonl",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "previous-1", "previous-2"]
    assert [p.name for p in (tmp_path / "previous-1").iterdir()] == ["mine.txt"]
    assert "its checkpoints and metrics are now in" in said[0]


def resume(keeper, model=None, tok=TOK, train_config=None, world_size=1):
    model = model if model is not None else tiny_model()
    config = {"batch_size": 4, "grad_accum": 1, "seed": 3} if train_config is None else train_config
    return keeper.resume_from(model.config, tok.to_dict(), "data/mine", config, world_size)


def test_resume_takes_the_newest_usable_checkpoint_and_notes_what_changed(tmp_path):
    said = []
    keeper = Checkpointer(tmp_path, log=said.append)
    with pytest.raises(CheckpointError, match="--resume: no usable checkpoint in .*no ckpt-NNNNNNNN.pt files"):
        resume(keeper)
    layout = {"batch_size": 4, "grad_accum": 1, "world_size": 1}
    keeper.save(2, payload(2, sampler=layout, train_config={"batch_size": 4, "grad_accum": 1, "seed": 3}))
    checkpoint_path(tmp_path, 3).write_bytes(b"truncated")
    path, ckpt = resume(keeper, model=tiny_model(backend="native"))  # the backend may change
    assert path == checkpoint_path(tmp_path, 2) and ckpt["step"] == 2
    assert len(said) == 1 and said[0].startswith("skipping unusable checkpoint")
    said.clear()
    resume(keeper, train_config={"batch_size": 2, "grad_accum": 2, "seed": 3}, world_size=1)
    assert said[1:] == [
        "note: the batch layout changed since ckpt-00000002.pt; the data order will differ",
        "note: train config differs from ckpt-00000002.pt in: batch_size, grad_accum",
    ]


def test_resume_refuses_another_model_config_or_tokenizer(tmp_path):
    keeper = Checkpointer(tmp_path)
    keeper.save(2, payload(2, data_config={"dir": "data/old"}))
    with pytest.raises(CheckpointError, match=r"different model config \(emb_dim: 16 -> 32\)"):
        resume(keeper, model=tiny_model(emb_dim=32))
    other = CharTokenizer.from_text("to bQ or not to bQ\n")
    with pytest.raises(CheckpointError) as e:
        resume(keeper, model=tiny_model(vocab_size=other.vocab_size), tok=other)
    message = str(e.value)
    assert "was trained on data/old with the char (8 characters) tokenizer" in message
    assert "data/mine uses the char (8 characters) tokenizer" in message
    assert "only in the checkpoint's: 'e'; only in the data's: 'Q'" in message
