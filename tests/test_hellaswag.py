"""HellaSwag scoring: our predictions and accuracies against an independent computation with transformers'
GPT2LMHeadModel on a made-up file, batching and the DDP split, malformed files, counted skips."""

import json

import pytest
import torch
import torch.nn.functional as F

from tritongpt.config import GPTConfig
from tritongpt.eval import main as eval_main
from tritongpt.hellaswag import (
    HellaSwagError,
    evaluate_hellaswag,
    load_hellaswag,
    predictions,
    read_examples,
    score,
)
from tritongpt.hf import from_hf
from tritongpt.model import GPT
from tritongpt.tokenizer import CharTokenizer, GPT2Tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")

CONTEXT = 48  # the HF model's n_positions: short enough that one example needs its context cut

EXAMPLES = [
    (
        "A man is sitting on a roof. He",
        [
            "is using wrap to wrap skis.",
            "is ripping tiles off.",
            "is holding a cube.",
            "starts pulling up roofing on a roof.",
        ],
        3,
    ),
    (
        "The chef cracks two eggs into a bowl and",
        [
            "whisks them with a fork.",
            "throws the bowl at the wall.",
            "reads a newspaper quietly.",
            "paints the eggs blue and green.",
        ],
        0,
    ),
    (
        "A girl walks her dog through the park. The dog",
        [
            "chases a red ball across the grass.",
            "flies away.",
            "starts to sing opera loudly for the crowd.",
            "becomes a tree.",
        ],
        0,
    ),
    (
        "Two teams line up on the field. The referee",
        [
            "blows the whistle to start the game.",
            "eats a sandwich.",
            "cuts his hair with scissors while dancing.",
            "sleeps.",
        ],
        1,
    ),
    (
        "She opens the laptop,",
        [
            "types her password and starts working on the report due tomorrow morning.",
            "and",
            "closes it again without looking.",
            "drops it into a pond.",
        ],
        2,
    ),
    (
        " ".join(["The old lighthouse keeper climbed the narrow stairs every night to light the lamp."] * 3),
        ["He looked out at the dark sea.", "He forgot why he came.", "The lamp lit itself.", "He sang."],
        0,
    ),
    ("Numbers: 1, 2, 3,", ["4, 5, 6.", "banana.", "seven hundred.", "3, 2, 1."], 0),
    (
        "A cat sits on the windowsill and watches birds. Suddenly it",
        ["jumps at the glass.", "writes a letter to the birds.", "turns into a dog.", "falls asleep in the sun."],
        3,
    ),
]


def write_file(path, examples=EXAMPLES, extra=None):
    lines = [
        json.dumps({"ind": i, "ctx": c, "endings": e, "label": lab, "split": "val"})
        for i, (c, e, lab) in enumerate(examples)
    ]
    path.write_text("\n".join(lines + (extra or [])) + "\n", encoding="utf-8")
    return path


def hf_folder(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=50257, n_positions=CONTEXT, n_embd=32, n_layer=2, n_head=4, attn_implementation="eager"
    )
    model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # GPT-2's init zeroes biases and sets LayerNorm to identity: perturb everything
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.save_pretrained(tmp_path / "hf")
    return model, tmp_path / "hf"


@torch.no_grad()
def independent_scores(model, enc, examples, context_length):
    """build-nanogpt's definition, one candidate per forward, no padding: (sums, means) per example."""
    out = []
    for ctx, endings, _ in examples:
        c = enc.encode_ordinary(ctx)
        ends = [enc.encode_ordinary(" " + e) for e in endings]
        longest = max(len(e) for e in ends)
        c = c[max(0, len(c) + longest - context_length) :]  # the rule: cut the context from the left
        sums = []
        for e in ends:
            row = torch.tensor([c + e])
            logits = model(row).logits[0, :-1]
            nll = F.cross_entropy(logits, row[0, 1:], reduction="none")
            sums.append(nll[-len(e) :].sum().item())
        out.append((sums, [s / len(e) for s, e in zip(sums, ends, strict=True)]))
    return out


@pytest.mark.parametrize("backend", ["reference", "native"])
def test_predictions_and_accuracies_match_gpt2lmheadmodel(tmp_path, backend, capsys):
    theirs, folder = hf_folder(tmp_path)
    file = write_file(tmp_path / "hellaswag.jsonl")
    tok = GPT2Tokenizer()
    expected = independent_scores(theirs, tok.enc, EXAMPLES, CONTEXT)

    ours = from_hf(folder, backend=backend)
    data = load_hellaswag(file, tok, CONTEXT)
    assert len(data.examples) == len(EXAMPLES) and data.skipped == {} and data.truncated == 1
    for batch_size in (4, 64):  # one example per forward; all of them padded into one
        sums, counts = score(ours, data.examples, batch_size=batch_size)
        torch.testing.assert_close(sums, torch.tensor([s for s, _ in expected], dtype=torch.float64), atol=1e-4, rtol=0)
        torch.testing.assert_close(
            sums / counts, torch.tensor([m for _, m in expected], dtype=torch.float64), atol=1e-4, rtol=0
        )
        pred, pred_norm = predictions(sums, counts)
        assert pred.tolist() == [min(range(4), key=s.__getitem__) for s, _ in expected]
        assert pred_norm.tolist() == [min(range(4), key=m.__getitem__) for _, m in expected]

    labels = [lab for _, _, lab in EXAMPLES]
    acc = sum(min(range(4), key=s.__getitem__) == lab for (s, _), lab in zip(expected, labels, strict=True))
    acc_norm = sum(min(range(4), key=m.__getitem__) == lab for (_, m), lab in zip(expected, labels, strict=True))
    assert acc != acc_norm  # the file tells the two definitions apart for this model
    out = tmp_path / "eval.json"
    argv = ["--hf", str(folder), "--hellaswag", str(file), "--json", str(out), "--backend", backend, "--quiet"]
    assert eval_main(argv) == 0
    report = json.loads(out.read_text())
    assert report["hellaswag"]["n"] == len(EXAMPLES)
    assert report["hellaswag"]["acc"] == acc / len(EXAMPLES)
    assert report["hellaswag"]["acc_norm"] == acc_norm / len(EXAMPLES)
    assert report["model"]["source"] == "hf" and report["device"] and report["date"].startswith("20")
    assert f"acc_norm {acc_norm / len(EXAMPLES):.4f}" in capsys.readouterr().out


def char_model(chars="abcdefghijklmnopqrstuvwxyz .,", context_length=24):
    tok = CharTokenizer(sorted(set(chars)))
    torch.manual_seed(0)
    cfg = GPTConfig(
        vocab_size=tok.vocab_size, context_length=context_length, emb_dim=32, n_heads=2, n_layers=1, backend="reference"
    )
    return GPT(cfg).eval(), tok


def test_ranks_split_the_examples_and_the_shares_add_up(tmp_path):
    model, tok = char_model()
    examples = [
        (f"the {w} sat on a mat.", ["it slept.", "it ran.", "a dog.", "the end."], i % 4)
        for i, w in enumerate(["cat", "dog", "fox", "owl", "bee", "cow", "pig"])
    ]
    data = load_hellaswag(write_file(tmp_path / "h.jsonl", examples), tok, model.config.context_length)
    whole = evaluate_hellaswag(model, data, batch_size=8)
    shares = [evaluate_hellaswag(model, data, batch_size=8, rank=r, world_size=3) for r in range(3)]
    assert [s.n for s in shares] == [3, 2, 2]
    assert sum(s.correct for s in shares) == whole.correct and sum(s.correct_norm for s in shares) == whole.correct_norm
    assert whole.n == 7 and 0 <= whole.correct <= 7


def test_examples_a_model_cannot_score_are_skipped_and_counted(tmp_path):
    model, tok = char_model(context_length=24)
    examples = [
        ("the cat sat.", ["it slept.", "it ran.", "a dog.", "the end."], 0),  # fine
        ("the cat sat.", ["it slept.", "", "a dog.", "the end."], 0),  # an empty ending
        ("the cat sat.", ["it slept.", "   ", "a dog.", "the end."], 0),  # only blanks
        ("the CAT sat.", ["it slept.", "it ran.", "a dog.", "the end."], 0),  # capitals: not in the vocabulary
        ("", ["it slept.", "it ran.", "a dog.", "the end."], 0),  # an empty context
        ("the cat sat.", ["it slept and slept and slept.", "it ran.", "a dog.", "the end."], 0),  # > 23 tokens
        ("the cat sat on the mat and then it sat on the hat.", ["it slept.", "it ran.", "a dog.", "x."], 1),  # cut
    ]
    data = load_hellaswag(write_file(tmp_path / "h.jsonl", examples), tok, 24)
    assert data.read == 7 and len(data.examples) == 2 and data.truncated == 1
    assert data.skipped == {"empty_ending": 2, "not_encodable": 1, "empty_context": 1, "too_long": 1}
    assert [ex.line for ex in data.examples] == [1, 7]
    assert all(ex.longest <= 24 for ex in data.examples)
    result = evaluate_hellaswag(model, data)
    assert result.n == 2 and result.to_dict()["skipped"] == 5
    assert "skipped 5: 2 with an empty ending" in result.summary() and "contexts cut to fit: 1" in result.summary()

    with pytest.raises(HellaSwagError, match=r"none of the 1 examples .*\(1 with text the tokenizer cannot encode"):
        load_hellaswag(write_file(tmp_path / "none.jsonl", examples[3:4]), tok, 24)


GOOD = {"ctx": "a b", "endings": ["c", "d", "e", "f"], "label": 2}


@pytest.mark.parametrize(
    "line, message",
    [
        ("{not json", r":3: not valid JSON \(Expecting property name"),
        ("[1, 2]", ":3: expected a JSON object with ctx, endings and label, got list"),
        (json.dumps({**GOOD, "ctx": None}), ":3: 'ctx' must be a string, got NoneType"),
        (json.dumps({k: v for k, v in GOOD.items() if k != "endings"}), ":3: no 'endings' field"),
        (json.dumps({**GOOD, "endings": ["a", "b", "c"]}), ":3: 'endings' must be a list of 4 strings, got 3 items"),
        (json.dumps({**GOOD, "endings": ["a", "b", "c", 4]}), "must be a list of 4 strings, got a non-string item"),
        (json.dumps({**GOOD, "endings": "abcd"}), "must be a list of 4 strings, got str"),
        (json.dumps({**GOOD, "label": 4}), r":3: label 4 is out of range \(0..3\)"),
        (json.dumps({**GOOD, "label": -1}), ":3: label -1 is out of range"),
        (json.dumps({**GOOD, "label": "x"}), ":3: 'label' must be an integer, got 'x'"),
        (json.dumps({**GOOD, "label": True}), ":3: 'label' must be an integer, got True"),
        (json.dumps({**GOOD, "label": 1.0}), ":3: 'label' must be an integer, got 1.0"),
    ],
)
def test_a_malformed_line_is_an_error_naming_its_line(tmp_path, line, message):
    path = tmp_path / "h.jsonl"
    path.write_text(json.dumps(GOOD) + "\n\n" + line + "\n" + json.dumps(GOOD) + "\n", encoding="utf-8")
    with pytest.raises(HellaSwagError, match=message):
        read_examples(path)
    assert len(read_examples(path, limit=1)) == 1  # --limit stops before the bad line


def test_unreadable_files_are_named_errors(tmp_path):
    with pytest.raises(HellaSwagError, match="does not exist .*download hellaswag_val.jsonl"):
        read_examples(tmp_path / "missing.jsonl")
    with pytest.raises(HellaSwagError, match="is a folder"):
        read_examples(tmp_path)
    (tmp_path / "empty.jsonl").write_text("\n\n", encoding="utf-8")
    with pytest.raises(HellaSwagError, match="holds no examples"):
        read_examples(tmp_path / "empty.jsonl")
    (tmp_path / "latin1.jsonl").write_bytes(json.dumps(GOOD).encode() + b"\n" + b'{"ctx": "caf\xe9"}\n')
    with pytest.raises(HellaSwagError, match=r"latin1.jsonl:2: not UTF-8"):
        read_examples(tmp_path / "latin1.jsonl")
    assert read_examples(tmp_path / "latin1.jsonl", limit=1)[0].label == 2
    (tmp_path / "str-label.jsonl").write_text(json.dumps({**GOOD, "label": "3"}), encoding="utf-8")  # HF's copy
    assert read_examples(tmp_path / "str-label.jsonl")[0].label == 3
