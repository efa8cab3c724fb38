"""Text generation: sampling (greedy, temperature, top-k, top-p), a KV-cached decode loop, and `gpt generate`.

    gpt generate --checkpoint runs/demo --prompt "ROMEO:" --max-new-tokens 200 --temperature 0.8
    gpt generate --hf ~/models/gpt2 --prompt "The meaning of life is" --top-k 50 --top-p 0.95 --seed 1
    echo "Once upon a time" | gpt generate --hf ~/models/gpt2 --prompt - --greedy

    from tritongpt.generate import generate
    out = generate(model, idx, max_new_tokens=100, temperature=0.8, top_k=200, eos_id=50256)

Decoding: the prompt is encoded once into a `KVCache` (prefill), then each step feeds one token at the next
position and attends over the cache, with `ops.attention` masking causally from the bottom right, so both
backends run it unchanged.

Limits: positions are learned absolute embeddings, so once the sequence is longer than the context the
cached keys and values (computed at old positions) are useless: every later step re-encodes the last
`context_length` tokens from position 0, exactly like generation without the cache, and costs as much.
"""

from __future__ import annotations

import argparse
import codecs
import math
import sys
from collections.abc import Iterator

import torch

from tritongpt.backend import BACKENDS, resolve_device
from tritongpt.config import ConfigError, TrainConfig
from tritongpt.model import GPT, KVCache
from tritongpt.tokenizer import TokenizerError

# ---------------------------------------------------------------------------------------------------------
# Sampling


class GenerationError(ValueError):
    """Generation cannot go on: the model's logits are not finite (diverged or corrupt weights)."""


def check_logits(logits: torch.Tensor) -> None:
    """GenerationError when next-token logits (B, V) hold NaN or +inf, or a row is -inf throughout: there is no
    distribution to sample from (softmax would give NaN, and argmax an arbitrary token). -inf alone is a mask."""
    finite_max = logits.float().amax(dim=-1)
    if bool(torch.isnan(logits).any() | torch.isinf(finite_max).any()):
        raise GenerationError(
            "the model's next-token logits are not finite (NaN or infinite): its weights have diverged or are "
            "corrupt, so there is nothing to sample from"
        )


def check_sampling_args(temperature: float, top_k: int | None, top_p: float | None) -> None:
    """ValueError naming the argument for a temperature that is not a finite number >= 0, top_k < 1 or top_p
    outside (0, 1]."""
    if not 0 <= temperature < math.inf:  # also rejects NaN
        raise ValueError(f"temperature must be a finite number >= 0 (0 = greedy), got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Logits (..., V) with all but the k largest set to -inf (exactly k kept; k > V keeps all)."""
    k = min(k, logits.shape[-1])
    values, indices = torch.topk(logits, k, dim=-1)
    return torch.full_like(logits, float("-inf")).scatter(-1, indices, values)


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus: keep the smallest set of most likely tokens whose probability reaches p; the rest -> -inf.

    Sorted descending, token i is kept while the mass before it is < p, so the most likely is always kept.
    """
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = torch.softmax(sorted_logits.float(), dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs
    drop_sorted = mass_before >= p
    drop = drop_sorted.scatter(-1, order, drop_sorted)  # back to vocabulary order
    return logits.masked_fill(drop, float("-inf"))


def sample_next(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Next token ids (B,) from logits (B, V): temperature 0 is greedy (argmax); otherwise divide by the
    temperature, apply top-k, then top-p, and draw from the softmax with `generator`. GenerationError for
    logits that are not finite (`check_logits`)."""
    check_sampling_args(temperature, top_k, top_p)
    check_logits(logits)
    if temperature == 0:
        return logits.argmax(dim=-1)
    scaled = logits.float() / temperature
    if bool((torch.isposinf(scaled) | torch.isnan(scaled)).any()):  # a temperature so small that logits overflow
        wide = logits.double()  # (fp32 holds no 1e-300): the maximum shifted to 0, the rest towards -inf
        scaled = ((wide - wide.amax(dim=-1, keepdim=True)) / temperature).float()
    logits = scaled
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    if top_p is not None and top_p < 1:
        logits = top_p_filter(logits, top_p)
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


# ---------------------------------------------------------------------------------------------------------
# Decode loop


def _cache_dtype(model: GPT, device: torch.device) -> torch.dtype:
    """The dtype the keys and values arrive in: autocast's while it is on for `device` (the q/k/v projection
    runs in it), else the weights'. A cache of another dtype would hand the attention mixed dtypes."""
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return model.lm_head.weight.dtype


@torch.no_grad()
def generate_stream(
    model: GPT,
    idx: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_id: int | None = None,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
    vocab_size: int | None = None,
) -> Iterator[torch.Tensor]:
    """Yield the next token ids (B,) one step at a time, for prompts idx (B, T).

    Stops after max_new_tokens, or once every row has produced `eos_id` (a finished row yields eos_id from
    then on). Prompts longer than the context keep their last context_length tokens. Without `use_cache`
    every step runs the whole (cropped) sequence through the model, as nanoGPT does. `vocab_size` restricts
    sampling to ids below it (a tokenizer smaller than the model's vocabulary). The padding rows of a padded
    vocabulary (`config.real_vocab_size`) are never sampled: the model gives no logits for them.
    """
    check_sampling_args(temperature, top_k, top_p)
    if idx.dim() != 2 or idx.shape[1] == 0:
        raise ValueError(f"idx must be (B, T) token ids with T >= 1, got shape {tuple(idx.shape)}")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    ctx = model.config.context_length
    seq = idx[:, -ctx:]
    cache = KVCache(model.config, seq.shape[0], seq.device, _cache_dtype(model, seq.device)) if use_cache else None
    cached = 0  # positions of the current window already in the cache
    done = torch.zeros(seq.shape[0], dtype=torch.bool, device=seq.device)
    was_training = model.training
    model.eval()
    try:
        for _ in range(max_new_tokens):
            if cache is None:
                logits = model(seq[:, -ctx:])[0]
            elif seq.shape[1] > ctx:  # window slid: every cached position is stale, re-encode from position 0
                logits = model(seq[:, -ctx:], kv_cache=cache, start_pos=0)[0]
                cached = ctx
            else:
                logits = model(seq[:, cached:], kv_cache=cache, start_pos=cached)[0]
                cached = seq.shape[1]
            logits = logits[:, -1, :vocab_size]  # (B, V)
            nxt = sample_next(logits, temperature, top_k, top_p, generator)
            if eos_id is not None:
                nxt = nxt.masked_fill(done, eos_id)
                done |= nxt == eos_id
            seq = torch.cat([seq[:, -ctx:], nxt[:, None]], dim=1)  # at most ctx + 1 tokens kept
            yield nxt
            if eos_id is not None and bool(done.all()):
                return
    finally:
        model.train(was_training)


def generate(model: GPT, idx: torch.Tensor, max_new_tokens: int, **kwargs) -> torch.Tensor:
    """idx (B, T) followed by the generated tokens (B, T + n), n <= max_new_tokens (fewer if every row hit
    eos_id). Keyword arguments as for `generate_stream`."""
    new = list(generate_stream(model, idx, max_new_tokens, **kwargs))
    return torch.cat([idx, torch.stack(new, dim=1)], dim=1) if new else idx


# ---------------------------------------------------------------------------------------------------------
# Streaming text


class TextStream:
    """Turns token ids into printable text as they arrive: BPE tokens can split a UTF-8 character, so bytes
    are accumulated and only the longest valid prefix is released (invalid bytes become U+FFFD)."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        if hasattr(self.tokenizer, "decode_bytes"):
            return self.utf8.decode(self.tokenizer.decode_bytes([token_id]))
        return self.tokenizer.decode([token_id])

    def flush(self) -> str:
        return self.utf8.decode(b"", final=True)


# ---------------------------------------------------------------------------------------------------------
# `gpt generate`


class ArgumentError(ValueError):
    """A prompt or device that cannot be used here; the message names the argument and says why."""


def _load(args, device: torch.device):
    """(model, tokenizer) from --checkpoint or --hf on `device`, by `tritongpt.checkpoint.load_model`'s rule
    for --backend."""
    from tritongpt.checkpoint import CheckpointError, load_model

    model, tok, _ = load_model(args.checkpoint, args.hf, device, args.backend, note=_note)
    if tok is None:
        raise CheckpointError(f"{args.checkpoint} has no tokenizer record, so prompts cannot be encoded")
    return model, tok


def _note(message: str) -> None:
    print(f"gpt generate: note: {message}", file=sys.stderr)


def _read_prompt(prompt: str) -> str:
    """The prompt text; `-` reads standard input, which must be open and UTF-8."""
    if prompt != "-":
        return prompt
    if sys.stdin is None:
        raise ArgumentError("--prompt -: standard input is closed")
    try:
        data = sys.stdin.buffer.read() if hasattr(sys.stdin, "buffer") else sys.stdin.read()
    except (OSError, ValueError) as e:
        raise ArgumentError(f"--prompt -: cannot read standard input ({e})") from None
    if isinstance(data, str):
        return data
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ArgumentError(
            f"--prompt -: standard input is not UTF-8 text (bad byte {data[e.start : e.start + 1]!r} at byte "
            f"offset {e.start})"
        ) from None


def _start_ids(tok) -> list[int]:
    """Where an empty prompt starts: after <|endoftext|>, as GPT-2 was trained; else after a newline, as the
    trainer samples a character model."""
    if tok.eot_id is not None:
        return [tok.eot_id]
    try:
        return tok.encode("\n")
    except TokenizerError:
        raise ArgumentError(
            "empty prompt, and this tokenizer has neither <|endoftext|> nor a newline to start from: give --prompt"
        ) from None


def training_sample_ids(prompt: str, tok, data_dir: str) -> list[int]:
    """The ids a training run's samples start from: `train.sample_prompt` encoded, or <|endoftext|> (else id 0)
    for an empty one. ConfigError naming the prompt where the data's tokenizer cannot encode it (checked before
    training); only the default, a newline, falls back quietly (a character corpus without one)."""
    try:
        ids = tok.encode(prompt) if prompt else []
    except TokenizerError as e:
        if prompt != TrainConfig.sample_prompt:
            raise ConfigError(f"train.sample_prompt {prompt!r}: {e} of the data in {data_dir}") from None
        ids = []
    return ids or [tok.eot_id if tok.eot_id is not None else 0]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="gpt generate",
        description="\n\n".join(__doc__.split("\n\n")[:2]),
        formatter_class=argparse.RawTextHelpFormatter,
    )
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--checkpoint", metavar="PATH", help="a tritongpt checkpoint file, or a run folder (its newest checkpoint)"
    )
    src.add_argument("--hf", metavar="PATH", help="a local Hugging Face GPT-2 folder (config.json + weights)")
    ap.add_argument("--prompt", default="", help="prompt text, or - to read standard input (default: empty)")
    ap.add_argument("--max-new-tokens", type=int, default=200)
    ap.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    ap.add_argument("--top-k", type=int, default=None)
    ap.add_argument("--top-p", type=float, default=None)
    ap.add_argument("--greedy", action="store_true", help="always take the most likely token (temperature 0)")
    ap.add_argument("--seed", type=int, default=None, help="seed for sampling; the same seed gives the same text")
    ap.add_argument("--num-samples", type=int, default=1)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--backend", choices=BACKENDS, default=None, help="layer implementation (default: the model's)")
    ap.add_argument("--no-cache", action="store_true", help="re-encode the whole sequence at every step")
    args = ap.parse_args(argv)

    temperature = 0.0 if args.greedy else args.temperature
    try:
        check_sampling_args(temperature, args.top_k, args.top_p)
    except ValueError as e:
        ap.error(str(e))
    if args.max_new_tokens < 0 or args.num_samples < 1:
        ap.error("--max-new-tokens must be >= 0 and --num-samples >= 1")
    if args.seed is not None and not -(2**63) <= args.seed < 2**64:
        ap.error(f"--seed must fit in 64 bits, got {args.seed}")

    from tritongpt.checkpoint import CheckpointError
    from tritongpt.hf import HFError

    try:
        try:
            device = resolve_device(args.device)
        except ValueError as e:
            raise ArgumentError(f"--device {e}") from None
        text = _read_prompt(args.prompt)  # before loading: a closed or undecodable stdin fails at once
        model, tok = _load(args, device)
        try:
            ids = tok.encode(text)
        except TokenizerError as e:
            raise ArgumentError(f"prompt: {e}") from None
        if not ids:
            ids, text = _start_ids(tok), ""
        return _write_samples(args, model, tok, ids, text, temperature)
    except (CheckpointError, HFError, ConfigError, TokenizerError, ArgumentError, GenerationError) as e:
        ap.exit(2, f"gpt generate: error: {e}\n")


def _write_samples(args, model: GPT, tok, ids: list[int], text: str, temperature: float) -> int:
    """Stream `num_samples` samples to standard output, each after the prompt text."""
    ctx = model.config.context_length
    if len(ids) > ctx:
        print(
            f"gpt generate: warning: the prompt is {len(ids)} tokens, the context {ctx}: keeping its last {ctx} tokens",
            file=sys.stderr,
        )
        text = tok.decode(ids[-ctx:])
        ids = ids[-ctx:]
    device = next(model.parameters()).device
    idx = torch.tensor([ids], dtype=torch.long, device=device)
    generator = None
    if args.seed is not None:
        generator = torch.Generator(device=device).manual_seed(args.seed)

    out = sys.stdout
    for i in range(args.num_samples):
        if i:
            out.write("\n---------------\n")
        out.write(text)
        out.flush()
        stream = TextStream(tok)
        for nxt in generate_stream(
            model,
            idx,
            args.max_new_tokens,
            temperature,
            args.top_k,
            args.top_p,
            tok.eot_id,
            generator,
            use_cache=not args.no_cache,
            vocab_size=tok.vocab_size,
        ):
            token = int(nxt[0])
            if token == tok.eot_id:
                break
            out.write(stream.push(token))
            out.flush()
        out.write(stream.flush() + "\n")
        out.flush()
    return 0
