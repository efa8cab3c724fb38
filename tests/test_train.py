"""The training loop on a tiny model: loss falls, schedule, decay groups, accumulation, exact resume,
checkpoint selection, the non-finite guard, Ctrl-C, the command line and the MFU peak table."""

import dataclasses
import json
import math
import os
import signal

import pytest
import torch
import torch.nn.functional as F

from tritongpt.checkpoint import CheckpointError, checkpoint_path, list_checkpoints, load_checkpoint
from tritongpt.config import ConfigError, DataConfig, GPTConfig, TrainConfig
from tritongpt.model import GPT
from tritongpt.prepare import prepare
from tritongpt.train import Trainer, TrainingStopped, lr_at, main, param_groups

TEXT = "".join(
    f"{who}:\nWhat {w} is this, that {v} so {a}?\nIt is the {w}, my lord, and it {v} {a}.\n\n"
    for who in ("HAMLET", "HORATIO", "OPHELIA")
    for w in ("ghost", "night", "king", "sword")
    for v in ("walks", "speaks", "sleeps")
    for a in ("late", "strange", "cold")
)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    (root / "play.txt").write_text(TEXT, encoding="utf-8")
    prepare(DataConfig(dir=str(root / "char"), inputs=[str(root / "play.txt")], val_fraction=0.1), quiet=True)
    return root / "char"


def tiny(data_dir, out_dir, model=None, **train):
    m = GPTConfig(vocab_size=64, context_length=16, emb_dim=32, n_heads=2, n_layers=2, backend="reference")
    m = dataclasses.replace(m, **(model or {}))
    defaults = dict(
        out_dir=str(out_dir),
        device="cpu",
        batch_size=4,
        max_steps=20,
        lr=3e-3,
        min_lr=3e-4,
        warmup_steps=3,
        eval_interval=0,
        eval_batches=2,
        sample_tokens=0,
        final_sample_tokens=0,
        log_interval=1,
        plot=False,
        seed=3,
    )
    return m, TrainConfig(**{**defaults, **train}), DataConfig(dir=str(data_dir))


def train_losses(run_dir):
    recs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in recs if r["kind"] == "train"}


def test_loss_falls(data_dir, tmp_path):
    trainer = Trainer(*tiny(data_dir, tmp_path, max_steps=50, lr=1e-2, min_lr=1e-3), verbose=False)
    before = trainer.evaluate()
    losses = [trainer.train_step()["loss"] for _ in range(50)]
    after = trainer.evaluate()
    assert sum(losses[-10:]) / 10 < losses[0] - 0.8, losses
    assert after < before - 0.8
    assert before == pytest.approx(math.log(trainer.model_cfg.real_vocab), rel=0.1)


def test_lr_schedule():
    cfg = TrainConfig(lr=1.0, min_lr=0.1, warmup_steps=10, max_steps=110)
    assert lr_at(0, cfg) == pytest.approx(0.1)
    assert lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(10, cfg) == pytest.approx(1.0)  # cosine starts at the peak
    assert lr_at(60, cfg) == pytest.approx(0.55)  # half way: (1 + 0.1) / 2
    assert lr_at(110, cfg) == pytest.approx(0.1) and lr_at(500, cfg) == pytest.approx(0.1)
    assert lr_at(35, cfg) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4)))
    steps = [lr_at(s, cfg) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(steps, steps[1:], strict=False))
    assert lr_at(60, dataclasses.replace(cfg, lr_decay_steps=60)) == pytest.approx(0.1)


def test_weight_decay_groups():
    model = GPT(GPTConfig(vocab_size=50, context_length=8, emb_dim=16, n_heads=2, n_layers=2, backend="reference"))
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[id(p)] for p in decay["params"]} == {n for n, p in model.named_parameters() if p.dim() == 2}
    assert all(p.dim() == 1 for p in no_decay["params"])
    assert "transformer.wte.weight" in {names[id(p)] for p in decay["params"]}  # tied head counted once
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


class Fp64Loss(torch.nn.Module):
    """The model with its loss taken in fp64 (the model itself upcasts logits to fp32 only)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x, y):
        logits, _ = self.model(x)
        return logits, F.cross_entropy(logits.flatten(0, 1), y.flatten())


def test_grad_accumulation_matches_one_big_batch(data_dir, tmp_path):
    grads = []
    for batch_size, accum in ((12, 1), (3, 4)):
        trainer = Trainer(*tiny(data_dir, tmp_path, batch_size=batch_size, grad_accum=accum), verbose=False)
        trainer.model.double()
        trainer.fwd = Fp64Loss(trainer.model)
        loss = trainer.accumulate_gradients(step=0)
        grads.append((loss, [p.grad.clone() for p in trainer.model.parameters()]))
    (loss_a, ga), (loss_b, gb) = grads
    assert loss_a.item() == pytest.approx(loss_b.item(), abs=1e-6)  # logged loss is fp32
    for a, b in zip(ga, gb, strict=True):
        assert a.dtype == torch.float64
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


def params(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_resume_is_bit_identical(data_dir, tmp_path):
    """20 steps straight == 10 steps, a new process state, --resume, 10 more; dropout makes the RNG matter."""
    model = {"drop_rate": 0.1}
    common = dict(lr_decay_steps=20, eval_interval=5, checkpoint_interval=10, keep_checkpoints=0)
    straight = Trainer(*tiny(data_dir, tmp_path / "a", model, **common), verbose=False)
    assert straight.fit() == 0
    final_a = params(straight.model)

    first = Trainer(*tiny(data_dir, tmp_path / "b", model, max_steps=10, **common), verbose=False)
    assert first.fit() == 0
    torch.manual_seed(12345)  # whatever the process did in between must not matter
    second = Trainer(*tiny(data_dir, tmp_path / "b", model, **common), resume=True, verbose=False)
    assert second.step == 10 and second.resumed_from == checkpoint_path(tmp_path / "b", 10)
    assert second.fit() == 0

    la, lb = train_losses(tmp_path / "a"), train_losses(tmp_path / "b")
    assert list(la) == list(range(1, 21)) and la == lb
    for k, v in params(second.model).items():
        assert torch.equal(v, final_a[k]), k

    # corrupt the newest checkpoint: it is skipped (not deleted), the previous one is used
    newest = checkpoint_path(tmp_path / "a", 20)
    newest.write_bytes(newest.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="not a readable"):
        load_checkpoint(newest)
    third = Trainer(*tiny(data_dir, tmp_path / "a", model, **common), resume=True, verbose=False)
    assert third.step == 10 and third.resumed_from == checkpoint_path(tmp_path / "a", 10)
    assert third.fit() == 0
    for k, v in params(third.model).items():
        assert torch.equal(v, final_a[k]), k
    assert load_checkpoint(newest)["step"] == 20  # rewritten, whole again


def test_checkpoint_contents_and_keep_last(data_dir, tmp_path):
    trainer = Trainer(
        *tiny(data_dir, tmp_path, max_steps=12, checkpoint_interval=3, keep_checkpoints=2, plot=True, eval_interval=6),
        verbose=False,
    )
    assert trainer.fit() == 0
    assert [s for s, _ in list_checkpoints(tmp_path)] == [9, 12]
    ck = load_checkpoint(checkpoint_path(tmp_path, 12))
    for key in (
        "model",
        "optimizer",
        "step",
        "schedule",
        "sampler",
        "rng",
        "train_config",
        "data_config",
        "model_config",
        "tokenizer",
    ):
        assert key in ck, key
    assert ck["step"] == 12 and ck["sampler"]["step"] == 12 and ck["tokenizer"]["type"] == "char"
    assert set(ck["rng"]) == {"torch", "cuda", "numpy", "python"}
    assert (tmp_path / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (tmp_path / "ckpt-00000099.pt").write_bytes(b"foreign bytes")  # newest by name, but not ours
    resumed = Trainer(*tiny(data_dir, tmp_path, max_steps=12), resume=True, verbose=False)
    assert resumed.step == 12


def test_resume_without_checkpoint_or_with_other_model(data_dir, tmp_path):
    with pytest.raises(CheckpointError, match="no usable checkpoint"):
        Trainer(*tiny(data_dir, tmp_path), resume=True, verbose=False)
    Trainer(*tiny(data_dir, tmp_path, max_steps=2), verbose=False).fit()
    with pytest.raises(CheckpointError, match="emb_dim"):
        Trainer(*tiny(data_dir, tmp_path, {"emb_dim": 64}), resume=True, verbose=False)


def test_a_padded_vocabulary_is_kept(data_dir, tmp_path):
    """model.vocab_size above the data's vocabulary is padding (the rows stay, real_vocab_size says how many are
    tokens); a real_vocab_size that disagrees with the data is an error naming both."""
    trainer = Trainer(*tiny(data_dir, tmp_path, max_steps=2), verbose=False)
    data_vocab = trainer.tok.vocab_size
    assert data_vocab < 64
    assert (trainer.model_cfg.vocab_size, trainer.model_cfg.real_vocab_size) == (64, data_vocab)
    assert trainer.model.lm_head.weight.shape[0] == 64 and trainer.fit() == 0
    assert load_checkpoint(checkpoint_path(tmp_path, 2))["model_config"]["real_vocab_size"] == data_vocab
    exact = Trainer(*tiny(data_dir, tmp_path / "exact", {"vocab_size": data_vocab}), verbose=False)
    assert exact.model_cfg.real_vocab_size == 0  # nothing padded
    with pytest.raises(ConfigError, match=f"model.real_vocab_size = 5, but .* has a {data_vocab}-token vocabulary"):
        Trainer(*tiny(data_dir, tmp_path / "bad", {"real_vocab_size": 5}), verbose=False)


def test_resume_of_a_run_from_before_padded_vocabularies(data_dir, tmp_path):
    """Such a run had vocab_size cut to the data's and no real_vocab_size: it resumes with that vocab_size, and
    the error for the preset's padded one says so."""
    data_vocab = Trainer(*tiny(data_dir, tmp_path / "probe"), verbose=False).tok.vocab_size
    Trainer(*tiny(data_dir, tmp_path, {"vocab_size": data_vocab}, max_steps=2), verbose=False).fit()
    path = checkpoint_path(tmp_path, 2)
    ckpt = torch.load(path, weights_only=True)
    del ckpt["model_config"]["real_vocab_size"]  # as written before the field existed
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match=f"vocab_size: {data_vocab} -> 64.*--set model.vocab_size={data_vocab}"):
        Trainer(*tiny(data_dir, tmp_path, max_steps=3), resume=True, verbose=False)
    resumed = Trainer(*tiny(data_dir, tmp_path, {"vocab_size": data_vocab}, max_steps=3), resume=True, verbose=False)
    assert resumed.step == 2 and resumed.fit() == 0


class NaNAt(torch.nn.Module):
    """The model, but the loss is NaN on the listed calls (0-based)."""

    def __init__(self, model, bad_calls):
        super().__init__()
        self.model, self.bad_calls, self.calls = model, set(bad_calls), 0

    def forward(self, x, y):
        logits, loss = self.model(x, y)
        if self.calls in self.bad_calls:
            loss = loss * float("nan")
        self.calls += 1
        return logits, loss


def test_non_finite_loss_skips_the_update(data_dir, tmp_path, capsys):
    trainer = Trainer(*tiny(data_dir, tmp_path, max_bad_steps=3), verbose=False)
    trainer.fwd = NaNAt(trainer.model, bad_calls={1})
    assert not trainer.train_step()["skipped"]
    before, opt_before = params(trainer.model), trainer.optimizer.state_dict()["state"][0]["step"].clone()
    s = trainer.train_step()
    assert s["skipped"] and math.isnan(s["loss"]) and trainer.bad_steps == 1 and trainer.step == 2
    for k, v in params(trainer.model).items():
        assert torch.equal(v, before[k]), k
    assert torch.equal(trainer.optimizer.state_dict()["state"][0]["step"], opt_before)
    assert all(p.grad is None for p in trainer.model.parameters())
    assert not trainer.train_step()["skipped"] and trainer.bad_steps == 0

    stuck = Trainer(*tiny(data_dir, tmp_path / "stuck", max_bad_steps=3))
    stuck.fwd = NaNAt(stuck.model, bad_calls=range(100))
    with pytest.raises(TrainingStopped, match="3 steps in a row had a non-finite loss"):
        stuck.fit()
    assert "update skipped" in capsys.readouterr().out
    assert stuck.step == 3


class InterruptAt(torch.nn.Module):
    def __init__(self, model, call):
        super().__init__()
        self.model, self.call, self.calls = model, call, 0

    def forward(self, x, y):
        self.calls += 1
        if self.calls == self.call:
            os.kill(os.getpid(), signal.SIGINT)
        return self.model(x, y)


def test_ctrl_c_saves_and_exits(data_dir, tmp_path):
    trainer = Trainer(*tiny(data_dir, tmp_path), verbose=False)
    trainer.fwd = InterruptAt(trainer.model, call=4)
    assert trainer.fit() == 130
    assert [s for s, _ in list_checkpoints(tmp_path)] == [4]  # the step in flight finishes first
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_late_stop_request_waits_for_the_next_agreement(data_dir, tmp_path):
    """A request landing after a step's all-reduce (on one DDP rank, say) is acted on after the next step, so
    every rank stops together instead of one saving while the others train on."""
    trainer = Trainer(*tiny(data_dir, tmp_path), verbose=False)
    step_done = trainer.metrics.step

    def late_request(s):
        step_done(s)
        if trainer.step == 4:
            trainer.stop.requested = True

    trainer.metrics.step = late_request
    assert trainer.fit() == 130
    assert [s for s, _ in list_checkpoints(tmp_path)] == [5]


def test_keep_last_never_prunes_the_fresh_checkpoint(data_dir, tmp_path):
    """A higher-numbered unreadable file (skipped on resume) must not push the new checkpoints out."""
    Trainer(*tiny(data_dir, tmp_path, max_steps=2, keep_checkpoints=1), verbose=False).fit()
    (tmp_path / "ckpt-00000099.pt").write_bytes(b"foreign bytes")
    resumed = Trainer(*tiny(data_dir, tmp_path, max_steps=3, keep_checkpoints=1), resume=True, verbose=False)
    assert resumed.step == 2 and resumed.fit() == 0
    assert [s for s, _ in list_checkpoints(tmp_path)] == [3, 99]
    assert Trainer(*tiny(data_dir, tmp_path, max_steps=3), resume=True, verbose=False).step == 3


def test_command_line(data_dir, tmp_path, capsys):
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(
        f"""
[model]
vocab_size = 64
context_length = 16
emb_dim = 32
n_heads = 2
n_layers = 1
backend = "reference"
[data]
dir = "{data_dir.as_posix()}"
[train]
device = "cpu"
batch_size = 2
max_steps = 6
eval_interval = 3
eval_batches = 1
sample_tokens = 8
final_sample_tokens = 20
log_interval = 2
""",
        encoding="utf-8",
    )
    assert main(["--config", str(cfg), "--out", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "val loss" in out and "--- sample ---" in out and "tok/s" in out
    assert (tmp_path / "run" / "loss.png").is_file()
    recs = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs if r["kind"] == "eval"] == [3, 6]
    assert all(r["mfu"] is None for r in recs if r["kind"] == "train")  # no peak on CPU

    assert main(["--config", str(cfg), "--out", str(tmp_path / "run"), "--resume", "--set", "train.max_steps=8"]) == 0
    assert "resumed from" in capsys.readouterr().out
    assert main(["--config", str(cfg), "--set", "train.bogus=1"]) == 2
    assert "bogus" in capsys.readouterr().err
    assert main(["--config", str(cfg), "--set", "model.vocab_size=10", "--out", str(tmp_path / "r2")]) == 2
    assert "raise model.vocab_size" in capsys.readouterr().err
    assert main(["--config", str(cfg), "--set", "data.dir='/nonexistent'"]) == 2
    assert "prepare the data first" in capsys.readouterr().err


def test_config_validation():
    with pytest.raises(ConfigError, match="min_lr"):
        TrainConfig(lr=1e-3, min_lr=1e-2)
    with pytest.raises(ConfigError, match="batch_size"):
        TrainConfig(batch_size=0)
    with pytest.raises(ConfigError, match="precision"):
        TrainConfig(precision="fp16")
    with pytest.raises(ConfigError, match="train.seed"):
        TrainConfig(seed=-1)


def test_train_presets_load():
    from tritongpt.config import load_configs

    m, t, d = load_configs("demo", [])
    assert m.n_layers >= 1 and d.corpus == "shakespeare" and d.tokenizer == "char" and t.max_time_s <= 300
    m, t, d = load_configs("train-gpt2-124m", [])
    assert m.context_length == 1024 and m.backend == "triton" and t.compile
    assert t.batch_size * t.grad_accum * m.context_length == 524288


def test_fresh_run_sets_the_previous_one_aside(data_dir, tmp_path):
    """Every earlier run is kept, each in the next free previous-N/; nothing already there is touched."""
    (tmp_path / "previous-1").mkdir(parents=True)
    (tmp_path / "previous-1" / "mine.txt").write_text("the user's", encoding="utf-8")
    for steps in (4, 3, 2):
        Trainer(*tiny(data_dir, tmp_path, max_steps=steps), verbose=False).fit()
    assert [s for s, _ in list_checkpoints(tmp_path)] == [2]
    assert [s for s, _ in list_checkpoints(tmp_path / "previous-2")] == [4]
    assert [s for s, _ in list_checkpoints(tmp_path / "previous-3")] == [3]
    assert sorted(p.name for p in (tmp_path / "previous-1").iterdir()) == ["mine.txt"]
    assert list(train_losses(tmp_path)) == [1, 2]
    assert list(train_losses(tmp_path / "previous-2")) == [1, 2, 3, 4]
    assert Trainer(*tiny(data_dir, tmp_path, max_steps=2), resume=True, verbose=False).step == 2
