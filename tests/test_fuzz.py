"""`gpt verify --fuzz` / `--case` (tritongpt/fuzz.py): a fixed-seed run of every op (the CI budget), the same
cases for the same seed, a case replayed from its JSON, a planted bug found, shrunk and reproduced alone,
the dropout checks, and the command line's errors."""

import json
import random
import re

import pytest
import torch

from tritongpt import fuzz, kernels, verify

reference = kernels.implementation("reference")
triton_ops = kernels.implementation("triton")
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")

# The CI budget: cases per op of a fixed-seed run, about 30 s in all on 2 CPU cores through the interpreter (the
# whole file about 40 s). A campaign runs `gpt verify --fuzz` with more cases and other seeds
# (tritongpt/kernels/README.md).
CI_CASES = {
    "layer_norm": 40,
    "add_layer_norm": 40,
    "gelu": 100,
    "bias_gelu": 100,
    "attention": 16,
    "linear_cross_entropy": 40,
}


@pytest.mark.parametrize("op", kernels.OPS)
def test_fixed_seed_fuzz_run_passes(op):
    lines = []
    assert fuzz.fuzz([op], CI_CASES[op], seed=0, budget=None, device=DEVICE, out=lines.append) == 0, "\n".join(lines)
    assert f"{CI_CASES[op]} cases" in lines[-2], lines


def _cases(op, seed, n=30):
    return [fuzz.build(op, DEVICE, rng=random.Random(f"{seed}:{op}:{i}")).draw.case for i in range(n)]


@pytest.mark.parametrize("op", kernels.OPS)
def test_same_seed_same_cases_every_case_replays(op):
    """Drawing is deterministic for a seed; every drawn case, compacted to its JSON, replays strictly to the same
    case and the same tensors (what `--case` runs)."""
    assert _cases(op, 5) == _cases(op, 5) != _cases(op, 6)
    for i in range(30):
        call = fuzz.build(op, DEVICE, rng=random.Random(f"5:{op}:{i}"))
        case = json.loads(json.dumps(fuzz.compact(call.draw)))
        again = fuzz.build(op, DEVICE, given=case, strict=True)
        assert again.draw.case == call.draw.case
        for name, value in call.kwargs.items():
            if isinstance(value, torch.Tensor) and value.device.type != "meta":
                assert value.stride() == again.kwargs[name].stride()
                torch.testing.assert_close(value, again.kwargs[name], rtol=0, atol=0, equal_nan=True)


def test_dtypes_restrict_what_is_drawn_not_what_a_case_reads():
    """--dtypes fp16: every drawn dtype is fp16 (add_layer_norm's residual: "same" or fp16), and each case's JSON
    replays to the same case without the restriction."""
    for i in range(30):
        call = fuzz.build("add_layer_norm", DEVICE, rng=random.Random(f"3:add_layer_norm:{i}"), dtypes=["fp16"])
        case = call.draw.case
        assert case["dtype"] == "fp16" and case.get("residual_dtype", "same") in ("same", "fp16"), case
        again = fuzz.build("add_layer_norm", DEVICE, given=json.loads(json.dumps(fuzz.compact(call.draw))), strict=True)
        assert again.draw.case == case


def test_sizes_are_skewed_to_block_edges():
    widths = [case.get("C", 1) for case in _cases("bias_gelu", 0, 200)]
    near_edges = sum(any(abs(w - e) <= 1 for e in (1024, 2048, 3072)) for w in widths)
    assert near_edges >= 20  # ~45% of the draws aim at an edge (of 6), uniform drawing would give ~1


def test_a_planted_bug_is_found_shrunk_and_fails_alone(monkeypatch, tmp_path, capsys):
    """bias_gelu wrong past its first 1024-column tile (what a broken column mask does): the fuzzer finds it,
    shrinks it to the first width that fails, prints one command, and that command fails alone. Nothing but --out's
    folder is written to the working folder; its row of the case holds the shrunk case."""

    def broken(x, bias):
        y = reference.bias_gelu(x, bias)
        return torch.cat([y[..., :1024], y[..., 1024:] * 1.01], dim=-1) if y.dim() else y

    monkeypatch.setattr(triton_ops, "bias_gelu", broken)
    monkeypatch.chdir(tmp_path)
    assert verify.main(["--fuzz", "30", "--ops", "bias_gelu", "--out", "found"]) == 1
    out = capsys.readouterr().out
    commands = re.findall(r"gpt verify --case '(.*)'", out)
    assert commands and "FAIL bias_gelu case" in out and "fails alone" in out
    case = json.loads(commands[0])
    assert case["C"] == 1025 and case.get("rows", 0) <= 1 and "dtype" not in case
    failed = [line for line in (tmp_path / "found" / "verify.csv").read_text().splitlines() if ",FAIL," in line]
    assert len(failed) == out.count("FAIL bias_gelu case") and f"shrunk: {commands[0]}".replace('"', '""') in failed[0]
    assert verify.main(["--case", commands[0]]) == 1
    assert "FAIL" in capsys.readouterr().out
    assert [p.name for p in tmp_path.iterdir()] == ["found"]  # nothing but what --out asked for


def test_a_wrong_refusal_is_a_failure(monkeypatch):
    """An invalid call must raise a TypeError/ValueError naming the problem: a result, or another exception, fails."""
    call = fuzz.build("gelu", DEVICE, given={"op": "gelu", "invalid": True, "defect": "dtype"}, strict=True)
    assert fuzz.failure_kind(fuzz.run_case(call)) == ""
    monkeypatch.setattr(triton_ops, "gelu", lambda x: x)
    assert "returned a result" in fuzz.run_case(call)[0].note
    monkeypatch.setattr(triton_ops, "gelu", lambda x: 1 / 0)
    assert "ZeroDivisionError instead of a TypeError" in fuzz.run_case(call)[0].note


def test_dropout_is_checked_against_the_kernels_own_mask(monkeypatch):
    case = {"op": "attention", "D": 16, "Tq": 9, "Tk": 9, "dropout_p": 0.5}
    call = fuzz.build("attention", DEVICE, given=case, strict=True)
    names = [c.name for c in fuzz.run_case(call)]
    assert fuzz.failure_kind(fuzz.run_case(call)) == "" and names[-3:] == ["same seed", "kept", "other seed"]
    attention_module = fuzz._space("attention")
    real = attention_module.dropout_keep_mask
    monkeypatch.setattr(attention_module, "dropout_keep_mask", lambda seed, *a: real(seed + 1, *a))
    assert fuzz.failure_kind(fuzz.run_case(call)) == "rule"  # another mask than the kernel's
    monkeypatch.setattr(attention_module, "dropout_keep_mask", lambda seed, *a: real(seed // 2 * 2, *a))
    assert fuzz.failure_kind(fuzz.run_case(call)) == "other seed"  # seeds 0 and 1 draw one mask


def test_rows_without_keys_must_be_zero(monkeypatch):
    case = {"op": "attention", "D": 16, "Tq": 5, "Tk": 2}
    call = fuzz.build("attention", DEVICE, given=case, strict=True)
    assert fuzz.failure_kind(fuzz.run_case(call)) == ""
    real = triton_ops.attention

    def rows_without_keys_at_one(q, k, v, **kw):
        out = real(q, k, v, **kw)
        return torch.cat([out[:, :, :3] + 1, out[:, :, 3:]], dim=2)

    monkeypatch.setattr(triton_ops, "attention", rows_without_keys_at_one)
    assert fuzz.failure_kind(fuzz.run_case(call)) == "no keys"


def test_budget_stops_drawing(capsys):
    assert verify.main(["--fuzz", "1000", "--budget", "0.001", "--ops", "gelu,bias_gelu"]) == 0
    out = capsys.readouterr().out
    assert "budget 0.001 s" in out and int(re.search(r"(\d+) cases, 0 failed", out).group(1)) <= 2


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--fuzz", "0"], "--fuzz takes a number of cases per op >= 1"),
        (["--budget", "0"], "--budget takes a positive number of seconds"),
        (["--fuzz", "5", "--budget", "-1"], "--budget takes a positive number"),
        (["--fuzz", "5", "--case", "{}"], "--fuzz and --case exclude each other"),
        (["--fuzz", "5", "--backend", "native"], "check the triton backend"),
        (["--case", "{"], "--case is not JSON"),
        (["--case", '{"op": "softmax"}'], '"op" one of layer_norm'),
        (["--case", "[1]"], '"op" one of layer_norm'),
    ],
)
def test_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        verify.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("gpt verify: error: ") and message in err


@pytest.mark.parametrize(
    "case,message",
    [
        ({"op": "gelu", "colour": 1}, "colour: not used by this gelu case"),
        ({"op": "attention", "D": 8}, "D=8 is outside 16..128"),
        ({"op": "attention", "causal": "yes"}, 'causal="yes" is not one of true, false'),
        ({"op": "gelu", "C": 2.5}, "C must be an integer"),
    ],
)
def test_a_case_that_cannot_be_replayed_is_a_usage_error(case, message, capsys):
    assert verify.main(["--case", json.dumps(case)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("gpt verify: error: --case: ") and message in err and "\n" not in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="bf16 is drawn on a GPU")
def test_bf16_cases_are_refused_in_the_interpreter(capsys):
    assert verify.main(["--case", '{"op": "gelu", "dtype": "bf16"}']) == 2
    assert "bf16 is drawn only on a GPU" in capsys.readouterr().err
