"""`gpt eval`: held-out loss against the trainer's evaluation and an independent computation, HellaSwag
during training (metrics.jsonl and the plot), and what the command does with bad input and outputs."""

import json
import math
import os
import sys

import pytest
import torch

from tritongpt.checkpoint import model_payload, save_checkpoint
from tritongpt.config import DataConfig, GPTConfig, TrainConfig
from tritongpt.data import open_split
from tritongpt.eval import main
from tritongpt.hellaswag import HellaSwagError
from tritongpt.model import GPT
from tritongpt.plot import loss_figure
from tritongpt.prepare import main as prepare_main
from tritongpt.tokenizer import CharTokenizer, GPT2Tokenizer
from tritongpt.train import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")

TEXT = "".join(
    f"{who}: The {thing} is {state} today, and the {other} is {state2}.\n"
    for who in ("ANNA", "BORIS", "CLARA")
    for thing in ("sky", "sea", "road", "field")
    for other in ("wind", "rain", "sun")
    for state, state2 in (("grey", "cold"), ("calm", "warm"), ("wide", "strong"))
)

# made-up HellaSwag lines in the corpus' characters; endings short enough for a 16-character context
HELLASWAG = [
    {"ctx": f"{who}: The {thing} is", "endings": [" grey.", " calm today.", " wide.", " the sun."], "label": i % 4}
    for i, (who, thing) in enumerate([("ANNA", "sky"), ("BORIS", "sea"), ("CLARA", "road"), ("ANNA", "field")])
] + [{"ctx": "The rain is cold today, and the wind is", "endings": ["warm.", "strong.", "wide.", "grey"], "label": 1}]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """The corpus as `gpt prepare` writes it for the demo: characters, a tenth held out."""
    root = tmp_path_factory.mktemp("data")
    (root / "weather.txt").write_text(TEXT, encoding="utf-8")
    argv = ["--input", str(root / "weather.txt"), "--tokenizer", "char", "--val-fraction", "0.1"]
    assert prepare_main([*argv, "--out", str(root / "char"), "--quiet"]) == 0
    return root / "char"


def tiny(data_dir, out_dir, **train):
    m = GPTConfig(vocab_size=64, context_length=16, emb_dim=32, n_heads=2, n_layers=2, backend="reference")
    defaults = dict(out_dir=str(out_dir), device="cpu", batch_size=4, max_steps=6, lr=3e-3, min_lr=3e-4)
    defaults |= dict(warmup_steps=2, eval_interval=0, eval_batches=3, sample_tokens=0, final_sample_tokens=0)
    defaults |= dict(log_interval=1, plot=False, seed=3)
    return m, TrainConfig(**{**defaults, **train}), DataConfig(dir=str(data_dir))


def evals(run_dir):
    recs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in recs if r["kind"] == "eval"]


def run(argv, capsys):
    code = main([*argv, "--device", "cpu", "--quiet"])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory):
    """A run folder after 6 steps, with its logged val loss."""
    run_dir = tmp_path_factory.mktemp("run")
    Trainer(*tiny(data_dir, run_dir), verbose=False).fit()
    return run_dir


# ---------------------------------------------------------------------------------------------------------
# Held-out loss


def test_eval_batches_give_the_loss_the_trainer_logged(trained, data_dir, tmp_path, capsys):
    """--eval-batches draws the run's own validation batches (seed and batch size from the checkpoint)."""
    logged = evals(trained)[-1]["val_loss"]
    argv = ["--checkpoint", str(trained), "--data", str(data_dir), "--eval-batches", "3"]
    code, out, _ = run([*argv, "--json", str(tmp_path / "e.json")], capsys)
    assert code == 0, out
    val = json.loads((tmp_path / "e.json").read_text())["val"]
    assert val["loss"] == pytest.approx(logged, rel=1e-6)
    assert val["windows"] == "trainer" and val["seed"] == 3 and val["batch_size"] == 4
    assert val["tokens"] == 3 * 4 * 16
    assert f"loss {logged:.4f}" in out and "as gpt train draws them" in out
    assert run([*argv, "--seed", "4", "--json", str(tmp_path / "other.json")], capsys)[0] == 0
    other = json.loads((tmp_path / "other.json").read_text())["val"]["loss"]
    assert other != pytest.approx(logged, rel=1e-6)  # other windows


@torch.no_grad()
def test_whole_split_loss_perplexity_and_bits_per_byte(trained, data_dir, tmp_path, capsys):
    from tritongpt.checkpoint import model_from_checkpoint

    model, _, _ = model_from_checkpoint(trained)
    (tokens,) = open_split(data_dir, "val")
    tokens = torch.from_numpy(tokens.astype("int64"))
    T = model.config.context_length
    nats = []
    for s in range(0, len(tokens) - 1, T):  # one window at a time, no padding
        x, y = tokens[s : s + T], tokens[s + 1 : s + T + 1]
        x = x[: len(y)]
        nats += torch.nn.functional.cross_entropy(model(x[None])[0][0], y, reduction="none").tolist()
    assert len(nats) == len(tokens) - 1 and (len(tokens) - 1) % T  # the last window is a short one

    for batch_size in ("1", "5"):
        out_file = tmp_path / f"b{batch_size}.json"
        argv = ["--checkpoint", str(trained), "--data", str(data_dir), "--batch-size", batch_size]
        assert run([*argv, "--json", str(out_file)], capsys)[0] == 0
        val = json.loads(out_file.read_text())["val"]
        assert val["tokens"] == len(nats) and val["windows"] == "consecutive"
        assert val["loss"] == pytest.approx(sum(nats) / len(nats), rel=1e-6)
        assert val["ppl"] == pytest.approx(math.exp(val["loss"]), rel=1e-12)
        assert val["bytes"] == len(nats)  # ASCII characters: one byte each
        assert val["bpb"] == pytest.approx(val["loss"] / math.log(2), rel=1e-12)

    assert (
        run(
            [
                "--checkpoint",
                str(trained),
                "--data",
                str(data_dir),
                "--max-tokens",
                "37",
                "--json",
                str(tmp_path / "m.json"),
            ],
            capsys,
        )[0]
        == 0
    )
    val = json.loads((tmp_path / "m.json").read_text())["val"]
    assert val["tokens"] == 37 and val["loss"] == pytest.approx(sum(nats[:37]) / 37, rel=1e-6)


def test_bits_per_byte_leave_out_end_of_text_and_count_utf8_bytes():
    from tritongpt.eval import evaluate_loss

    tok = GPT2Tokenizer()
    model = GPT(
        GPTConfig(vocab_size=tok.vocab_size, context_length=16, emb_dim=16, n_heads=2, n_layers=1, backend="reference")
    )
    ids = tok.encode("café au lait") + [tok.eot_id] + tok.encode(" naïve")
    x, y = torch.tensor([ids[:-1]]), torch.tensor([ids[1:]])
    result = evaluate_loss(model, [(x, y)], tok.token_byte_lengths())
    with torch.no_grad():
        nats = torch.nn.functional.cross_entropy(model(x)[0][0], y[0], reduction="none").double()
    text = y[0] != tok.eot_id
    assert result.tokens == len(ids) - 1 and result.loss == pytest.approx(nats.mean().item(), rel=1e-6)
    assert result.bytes == len(tok.decode(ids[1:]).replace("<|endoftext|>", "").encode("utf-8"))
    assert result.bpb == pytest.approx(nats[text].sum().item() / math.log(2) / result.bytes, rel=1e-6)


def test_data_from_another_tokenizer_or_out_of_range_is_an_error(data_dir, tmp_path, capsys):
    tok = GPT2Tokenizer()
    bpe = GPT(GPTConfig(vocab_size=tok.vocab_size, context_length=16, emb_dim=16, n_heads=2, n_layers=1))
    path = save_checkpoint(tmp_path / "bpe.pt", model_payload(bpe, tok))
    code, _, err = run(["--checkpoint", str(path), "--data", str(data_dir)], capsys)
    assert code == 2 and "gpt eval: error:" in err and "different tokenizer (char" in err
    # no tokenizer record: the data's is used, and ids beyond the model's vocabulary are named
    small = GPT(GPTConfig(vocab_size=10, context_length=16, emb_dim=16, n_heads=2, n_layers=1))
    path = save_checkpoint(tmp_path / "small.pt", model_payload(small, None))
    code, _, err = run(["--checkpoint", str(path), "--data", str(data_dir)], capsys)
    assert code == 2 and "outside the model's 10-token vocabulary" in err and "Traceback" not in err
    code, _, err = run(["--checkpoint", str(path), "--hellaswag", str(tmp_path / "x.jsonl")], capsys)
    assert code == 2 and "has no tokenizer record" in err


# ---------------------------------------------------------------------------------------------------------
# HellaSwag during training


def write_hellaswag(path, examples=HELLASWAG):
    path.write_text("".join(json.dumps(e) + "\n" for e in examples), encoding="utf-8")
    return path


def test_training_logs_and_plots_hellaswag(data_dir, tmp_path):
    file = write_hellaswag(tmp_path / "hs.jsonl")
    trainer = Trainer(*tiny(data_dir, tmp_path / "run", eval_interval=3, hellaswag=str(file), plot=True), verbose=False)
    assert trainer.fit() == 0
    recs = evals(tmp_path / "run")
    assert [r["step"] for r in recs] == [3, 6]
    for r in recs:
        assert r["hellaswag_n"] == 5 and r["hellaswag_skipped"] == 0
        assert r["hellaswag_acc_norm"] * 5 == pytest.approx(round(r["hellaswag_acc_norm"] * 5))
    fig = loss_figure(tmp_path / "run" / "metrics.jsonl")
    assert [ax.get_title() for ax in fig.axes][1] == "HellaSwag"
    assert (tmp_path / "run" / "loss.png").read_bytes()[:4] == b"\x89PNG"

    # the same figure from `gpt eval` on the final checkpoint
    code = main(
        [
            "--checkpoint",
            str(tmp_path / "run"),
            "--hellaswag",
            str(file),
            "--json",
            str(tmp_path / "e.json"),
            "--device",
            "cpu",
            "--quiet",
        ]
    )
    assert code == 0
    assert json.loads((tmp_path / "e.json").read_text())["hellaswag"]["acc_norm"] == recs[-1]["hellaswag_acc_norm"]

    limited = Trainer(
        *tiny(data_dir, tmp_path / "r2", max_steps=1, hellaswag=str(file), hellaswag_limit=2), verbose=False
    )
    assert limited.fit() == 0 and evals(tmp_path / "r2")[-1]["hellaswag_n"] == 2


def test_a_bad_hellaswag_file_stops_training_before_it_starts(data_dir, tmp_path, capsys):
    from tritongpt.train import main as train_main

    with pytest.raises(HellaSwagError, match="does not exist"):
        Trainer(*tiny(data_dir, tmp_path / "run", hellaswag=str(tmp_path / "missing.jsonl")), verbose=False)
    assert not (tmp_path / "run").exists()
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(HELLASWAG[0]) + "\n" + json.dumps({**HELLASWAG[0], "label": 7}) + "\n")
    cfg = tmp_path / "t.toml"
    cfg.write_text(f'[data]\ndir = "{data_dir.as_posix()}"\n[train]\ndevice = "cpu"\nhellaswag = "{bad.as_posix()}"\n')
    assert train_main(["--config", str(cfg), "--out", str(tmp_path / "run")]) == 2
    assert "gpt train: error:" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------
# The command with bad input and outputs


@pytest.fixture
def char_checkpoint(tmp_path):
    tok = CharTokenizer.from_text(TEXT)
    model = GPT(
        GPTConfig(vocab_size=tok.vocab_size, context_length=16, emb_dim=16, n_heads=2, n_layers=1, backend="reference")
    )
    return save_checkpoint(tmp_path / "c.pt", model_payload(model, tok))


def test_bad_arguments_and_files_are_one_line_errors(char_checkpoint, tmp_path, capsys):
    ckpt = ["--checkpoint", str(char_checkpoint)]
    good = write_hellaswag(tmp_path / "hs.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(HELLASWAG[0]) + "\n" + '{"ctx": "a", "endings": ["b"]' + "\n")
    for argv in (
        ckpt,
        [*ckpt, "--limit", "3"],
        [*ckpt, "--hellaswag", str(good), "--limit", "0"],
        [*ckpt, "--max-tokens", "5", "--hellaswag", str(good)],
        ["--hellaswag", str(good)],
    ):
        with pytest.raises(SystemExit) as e:
            run(argv, capsys)
        assert e.value.code == 2 and "gpt eval: error:" in capsys.readouterr().err
    for argv, message in [
        ([*ckpt, "--hellaswag", str(tmp_path / "missing.jsonl")], "missing.jsonl does not exist"),
        ([*ckpt, "--hellaswag", str(bad)], "bad.jsonl:2: not valid JSON"),
        (["--checkpoint", str(tmp_path / "nope.pt"), "--hellaswag", str(good)], "nope.pt does not exist"),
        (["--hf", str(tmp_path), "--hellaswag", str(good)], "has no config.json"),
        ([*ckpt, "--data", str(tmp_path / "nodata")], "does not exist"),
        ([*ckpt, "--hellaswag", str(good), "--json", str(good)], "exists; pass --force"),
        ([*ckpt, "--hellaswag", str(good), "--json", str(tmp_path)], "is a folder"),
        ([*ckpt, "--hellaswag", str(good), "--json", str(good / "x.json")], "not a folder"),
    ]:
        code, out, err = run(argv, capsys)
        assert code == 2 and err.startswith("gpt eval: error:") and message in err, (argv, err)
        assert err.count("\n") == 1 and "Traceback" not in err
    code = main([*ckpt, "--hellaswag", str(good), "--device", "banana"])
    assert code == 2 and "'banana' is not a device" in capsys.readouterr().err
    assert good.read_text() == "".join(json.dumps(e) + "\n" for e in HELLASWAG)  # never overwritten


@pytest.mark.skipif(torch.cuda.is_available(), reason="the triton backend runs here")
def test_a_backend_that_cannot_run_here(char_checkpoint, tmp_path, capsys, monkeypatch):
    """The rule gpt generate has too (tritongpt.checkpoint.load_model): a model's own backend that cannot run
    here gives way to auto, with a note; a --backend that cannot run here is an error naming it."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # no GPU and no interpreter: triton cannot run
    ckpt = torch.load(char_checkpoint, weights_only=True)
    ckpt["model_config"]["backend"] = "triton"
    torch.save(ckpt, char_checkpoint)
    argv = ["--checkpoint", str(char_checkpoint), "--hellaswag", str(write_hellaswag(tmp_path / "hs.jsonl"))]
    code, out, err = run(argv, capsys)
    assert code == 0 and "gpt eval: note:" in err and "running backend 'auto' instead" in err
    assert "backend auto" in out
    code, _, err = run([*argv, "--backend", "triton"], capsys)
    assert code == 2 and err.startswith("gpt eval: error: --backend triton: ") and len(err.splitlines()) == 1


def test_json_is_replaced_only_with_force(char_checkpoint, tmp_path, capsys):
    good = write_hellaswag(tmp_path / "hs.jsonl")
    target = tmp_path / "out" / "new" / "eval.json"
    argv = ["--checkpoint", str(char_checkpoint), "--hellaswag", str(good), "--json", str(target)]
    assert run(argv, capsys)[0] == 0  # missing folders are made
    first = json.loads(target.read_text())
    assert run(argv, capsys)[0] == 2 and target.read_text() == json.dumps(first, indent=1) + "\n"
    assert run([*argv, "--force"], capsys)[0] == 0
    assert sorted(p.name for p in target.parent.iterdir()) == ["eval.json"]  # no temporary file left


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes into read-only folders")
def test_json_into_a_read_only_folder_is_refused_before_any_work(char_checkpoint, tmp_path, capsys):
    good = write_hellaswag(tmp_path / "hs.jsonl")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        argv = ["--checkpoint", str(char_checkpoint), "--hellaswag", str(good), "--json", str(ro / "e.json")]
        code, out, err = run(argv, capsys)
        assert code == 2 and "cannot write in" in err and out == ""
    finally:
        ro.chmod(0o755)


def test_a_reader_that_goes_away_or_a_closed_stdout(char_checkpoint, tmp_path, capsys, monkeypatch):
    """`gpt eval ... | head -1`: quiet exit 141 (as for SIGPIPE), unless the figures also go to --json; a closed
    stdout (`>&-`, sys.stdout None) reads as /dev/null."""

    class Gone:
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self):
            pass

    good = write_hellaswag(tmp_path / "hs.jsonl")
    argv = ["--checkpoint", str(char_checkpoint), "--hellaswag", str(good), "--device", "cpu", "--quiet"]
    monkeypatch.setattr(sys, "stdout", Gone())
    assert main(argv) == 141
    assert main([*argv, "--json", str(tmp_path / "e.json")]) == 0  # the figures still reach the file
    assert json.loads((tmp_path / "e.json").read_text())["hellaswag"]["n"] == 5
    monkeypatch.setattr(sys, "stdout", None)
    assert main(argv) == 0
    assert main([*argv, "--json", str(tmp_path / "f.json")]) == 0
    assert capsys.readouterr().err == "" and (tmp_path / "f.json").is_file()


@pytest.mark.gpu
def test_triton_backend_on_the_gpu_scores_like_the_reference(tmp_path):
    from tritongpt.hellaswag import load_hellaswag, score

    tok = CharTokenizer.from_text(TEXT)
    model = (
        GPT(
            GPTConfig(
                vocab_size=tok.vocab_size, context_length=16, emb_dim=64, n_heads=2, n_layers=2, backend="reference"
            )
        )
        .cuda()
        .eval()
    )
    data = load_hellaswag(write_hellaswag(tmp_path / "hs.jsonl"), tok, 16)
    ref, counts = score(model, data.examples)
    model.set_backend("triton")
    ours, _ = score(model, data.examples)
    torch.testing.assert_close(ours, ref, rtol=1e-3, atol=1e-3)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        half, _ = score(model, data.examples)
    torch.testing.assert_close(half / counts, ref / counts, rtol=0.05, atol=0.05)
