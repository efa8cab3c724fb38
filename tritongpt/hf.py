"""OpenAI's GPT-2 in the Hugging Face layout: read a local folder into our GPT, and write ours out in it.

    model = GPT.from_hf("~/models/gpt2")            # gpt2, gpt2-medium, gpt2-large, gpt2-xl
    model = GPT.from_hf("~/models/gpt2", vocab_size=50304)   # head padded to 64 x 786 rows (zeros)
    to_hf(model, "out/hf", tokenizer)                # config.json + model.safetensors (+ tokenizer files)

The layout: `config.json` (GPT2Config: n_embd, n_layer, n_head, n_positions, vocab_size, layer_norm_epsilon,
activation_function) and the weights in `model.safetensors` or `pytorch_model.bin` (or sharded, with an
`.index.json`). Parameter names are ours already (nanoGPT kept OpenAI's), give or take a `transformer.`
prefix, with three differences:
- the projections are `Conv1D` modules holding (in, out) weights; `nn.Linear` holds (out, in): transpose;
- `h.N.attn.bias` / `h.N.attn.masked_bias` are causal-mask buffers, not parameters: skipped;
- the LM head is tied to `wte` (`tie_word_embeddings`), so files usually leave `lm_head.weight` out.

A padded vocabulary (`GPTConfig.real_vocab_size` < `vocab_size`) exists only on our side: loading with
`vocab_size=` appends zero rows to `wte` (and an untied head), and writing drops the padding rows again and
stores the real vocabulary's size, so a padded model round-trips to the file it came from.

Limits: only the plain GPT-2 architecture maps (tanh GELU, pre-norm, MLP width 4 * n_embd, no cross-attention,
no per-layer attention scaling); anything else is an HFError naming the field. No downloads: the folder
must be on disk.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from pathlib import Path

import torch

from tritongpt.config import ConfigError, GPTConfig
from tritongpt.files import parse_json
from tritongpt.model import GPT

CONV1D_WEIGHTS = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
MASK_BUFFER = re.compile(r"^h\.\d+\.attn\.(bias|masked_bias)$")
HF_LAYER = re.compile(r"^h\.(\d+)\.")
TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh")
TOKENIZER_RECORD = "tritongpt_tokenizer.json"  # our tokenizer, so `gpt generate --hf` can read a char model back
VOCAB_ROWS = ("transformer.wte.weight", "lm_head.weight")  # one row per token: padded on our side only


class HFError(ValueError):
    """A folder or model that does not fit the Hugging Face GPT-2 layout; the message says what and where."""


# ---------------------------------------------------------------------------------------------------------
# config.json <-> GPTConfig


def read_hf_config(path: str | Path) -> dict:
    path = Path(path).expanduser()
    if not path.is_dir():
        raise HFError(f"{path} is not a folder; expected a Hugging Face GPT-2 folder (config.json + weights)")
    file = path / "config.json"
    if not file.is_file():
        raise HFError(f"{path} has no config.json; expected a Hugging Face GPT-2 folder")
    try:
        hf = parse_json(file.read_bytes())
    except (OSError, json.JSONDecodeError) as e:
        raise HFError(f"cannot read {file}: {e}") from None
    if not isinstance(hf, dict):
        raise HFError(f"{file} is not a JSON object")
    return hf


def config_from_hf(hf: dict, where: str = "config.json", drop_rate: float = 0.0) -> GPTConfig:
    """GPTConfig for a GPT2Config dict; HFError names any field our GPT cannot reproduce."""
    if hf.get("model_type") != "gpt2":
        raise HFError(f"{where}: model_type is {hf.get('model_type')!r}; only 'gpt2' maps onto this GPT")
    act = hf.get("activation_function", "gelu_new")
    if act not in TANH_GELUS:
        raise HFError(f"{where}: activation_function {act!r} is not the tanh GELU ({' or '.join(TANH_GELUS)})")
    n_embd = hf.get("n_embd", 768)
    checks = {
        "n_inner": (hf.get("n_inner"), (None, 4 * n_embd) if isinstance(n_embd, int) else (None,)),
        "scale_attn_weights": (hf.get("scale_attn_weights", True), (True,)),
        "scale_attn_by_inverse_layer_idx": (hf.get("scale_attn_by_inverse_layer_idx", False), (False,)),
        "add_cross_attention": (hf.get("add_cross_attention", False), (False,)),
    }
    for key, (value, allowed) in checks.items():
        if value not in allowed:
            raise HFError(f"{where}: {key}={value!r} is not supported (this GPT needs {allowed[-1]!r})")
    eps = hf.get("layer_norm_epsilon", 1e-5)
    if not isinstance(eps, (int, float)) or isinstance(eps, bool):
        raise HFError(f"{where}: layer_norm_epsilon must be a number, got {eps!r}")
    try:
        return GPTConfig(
            vocab_size=hf.get("vocab_size", 50257),
            context_length=hf.get("n_positions", hf.get("n_ctx", 1024)),
            emb_dim=n_embd,
            n_heads=hf.get("n_head", 12),
            n_layers=hf.get("n_layer", 12),
            drop_rate=drop_rate,
            qkv_bias=True,
            tie_weights=hf.get("tie_word_embeddings", True),
            norm_placement="pre",
            ln_eps=float(eps),
        )
    except (ConfigError, TypeError) as e:
        raise HFError(f"{where}: {e}") from None


def config_to_hf(cfg: GPTConfig, eot_id: int | None = None) -> dict:
    """A GPT2Config dict that `transformers` loads as GPT2LMHeadModel."""
    if cfg.norm_placement != "pre":
        raise HFError("a post-norm GPT has no Hugging Face GPT-2 equivalent (GPT-2 is pre-norm)")
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": cfg.real_vocab,  # the padding rows are not written
        "n_positions": cfg.context_length,
        "n_ctx": cfg.context_length,  # older transformers read this name
        "n_embd": cfg.emb_dim,
        "n_layer": cfg.n_layers,
        "n_head": cfg.n_heads,
        "n_inner": None,
        "activation_function": "gelu_new",
        "layer_norm_epsilon": cfg.ln_eps,
        "resid_pdrop": cfg.drop_rate,
        "embd_pdrop": cfg.drop_rate,
        "attn_pdrop": cfg.drop_rate,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "tie_word_embeddings": cfg.tie_weights,
        "bos_token_id": eot_id,
        "eos_token_id": eot_id,
        "torch_dtype": "float32",
    }


# ---------------------------------------------------------------------------------------------------------
# Weights


def _load_file(file: Path) -> dict[str, torch.Tensor]:
    if file.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise HFError(f"reading {file} needs the safetensors package (pip install safetensors)") from None
        try:
            return load_file(str(file), device="cpu")
        except Exception as e:
            raise HFError(f"cannot read {file}: {e}") from None
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:
        raise HFError(f"cannot read {file}: {type(e).__name__}: {e}") from None


def load_hf_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a Hugging Face folder under their file names: safetensors first, then pytorch_model.bin."""
    path = Path(path).expanduser()
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (path / name).is_file():
            return _load_file(path / name)
        index = path / f"{name}.index.json"
        if index.is_file():
            try:
                shards = sorted(set(parse_json(index.read_bytes())["weight_map"].values()))
            except (OSError, json.JSONDecodeError, KeyError, AttributeError, TypeError) as e:
                raise HFError(f"cannot read the shard index {index}: {e}") from None
            sd = {}
            for shard in shards:
                sd.update(_load_file(path / shard))
            return sd
    raise HFError(f"{path} has no model.safetensors or pytorch_model.bin (nor a sharded .index.json of either)")


def state_dict_from_hf(sd: dict[str, torch.Tensor], model: GPT, where: str = "") -> dict[str, torch.Tensor]:
    """Our state dict from HF-named tensors: prefix, Conv1D transposes, mask buffers out, tied head."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    out, unknown = {}, []
    for name, t in sd.items():
        name = name.removeprefix("transformer.")
        if MASK_BUFFER.match(name):
            continue
        if name == "lm_head.weight" and model.config.tie_weights:
            continue  # tied: the head is wte (some files store a copy)
        ours = name if name == "lm_head.weight" else f"transformer.{name}"
        if ours not in expected:
            unknown.append(name)
            continue
        conv1d = name.endswith(CONV1D_WEIGHTS)
        want = expected[ours][::-1] if conv1d else expected[ours]  # as the file holds it
        padding = 0
        if ours in VOCAB_ROWS:  # the file holds the real vocabulary; a padded model has zero rows after it
            padding = model.config.vocab_size - model.config.real_vocab
            want = (want[0] - padding, *want[1:])
        if tuple(t.shape) != want:
            raise HFError(f"{where}{name}: shape {tuple(t.shape)} does not fit the config, expected {want}")
        t = t.t() if conv1d else t
        if padding:
            t = torch.cat([t, t.new_zeros(padding, *t.shape[1:])])
        out[ours] = t.contiguous()
    if model.config.tie_weights and "transformer.wte.weight" in out:
        out["lm_head.weight"] = out["transformer.wte.weight"]
    missing = sorted(set(expected) - set(out))
    if unknown or missing:
        raise HFError(
            f"{where}weights do not fit GPT-2: "
            + "; ".join(s for s in (_few("unknown", unknown), _few("missing", missing)) if s)
        )
    return out


def _few(what: str, names: list[str]) -> str:
    if not names:
        return ""
    more = f" and {len(names) - 5} more" if len(names) > 5 else ""
    return f"{what}: {', '.join(names[:5])}{more}"


def state_dict_to_hf(model: GPT) -> dict[str, torch.Tensor]:
    """HF-named, contiguous CPU tensors as GPT2LMHeadModel saves them (head left out when tied; the padding
    rows of a padded vocabulary dropped)."""
    cfg = model.config
    out = {}
    for name, t in model.state_dict().items():
        if name == "lm_head.weight" and cfg.tie_weights:
            continue
        t = t.detach().to("cpu")
        if name.endswith(CONV1D_WEIGHTS):
            t = t.t()
        if name in VOCAB_ROWS:
            t = t[: cfg.real_vocab]
        out[name] = t.contiguous()
    if not cfg.qkv_bias:  # GPT-2 always has a q/k/v bias; zeros reproduce "none" exactly
        dtype = out["transformer.wte.weight"].dtype
        for i in range(cfg.n_layers):
            out[f"transformer.h.{i}.attn.c_attn.bias"] = torch.zeros(3 * cfg.emb_dim, dtype=dtype)
    return out


# ---------------------------------------------------------------------------------------------------------
# Folders


def from_hf(
    path: str | Path,
    device: str | torch.device = "cpu",
    backend: str = "auto",
    dtype: torch.dtype = torch.float32,
    drop_rate: float = 0.0,
    vocab_size: int | None = None,
) -> GPT:
    """Our GPT (eval mode) with the weights of a local Hugging Face GPT-2 folder."""
    from tritongpt.model import check_model_fits

    path = Path(path).expanduser()
    where = f"{path / 'config.json'}"
    cfg = config_from_hf(read_hf_config(path), where, drop_rate)
    cfg.backend = backend
    if vocab_size is not None and vocab_size != cfg.vocab_size:  # a padded vocabulary: zero rows after the file's
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < cfg.vocab_size:
            raise HFError(f"{path}: vocab_size={vocab_size!r} cannot hold the folder's {cfg.vocab_size} tokens")
        cfg = GPTConfig(**{**vars(cfg), "vocab_size": vocab_size, "real_vocab_size": cfg.vocab_size})
    try:
        check_model_fits(cfg, device, torch.finfo(dtype).bits // 8, f"loading it in {dtype}")
    except ConfigError as e:
        raise HFError(f"{where}: {e}") from None
    raw = load_hf_state_dict(path)
    layers = {int(m.group(1)) for k in raw if (m := HF_LAYER.match(k.removeprefix("transformer.")))}
    n_layers = max(layers) + 1 if layers else 0
    if n_layers != cfg.n_layers:  # checked before building: n_layer = 100000 fails at once, not after minutes
        raise HFError(f"{where}: n_layer={cfg.n_layers}, but the weights in {path} hold {n_layers} layers")
    with torch.device("meta"):  # no random init of weights about to be replaced (gpt2-xl: 1.5 B)
        model = GPT(cfg)
    sd = state_dict_from_hf(raw, model, f"{path}: ")
    model.load_state_dict(sd, assign=True)
    if cfg.tie_weights:
        model.lm_head.weight = model.transformer.wte.weight  # assign=True gave each its own Parameter
    return model.to(device=device, dtype=dtype).eval()


# Names of the Hugging Face layout (weights, configs, tokenizer files of any tool). An export with force=True
# removes those it does not write itself, so no earlier export's tokenizer or weights is loaded beside the new model.
HF_LAYOUT_FILES = re.compile(
    r"^(config\.json|generation_config\.json|.*\.safetensors|.*\.bin|.*\.index\.json|.*\.msgpack|.*\.h5|"
    r"tokenizer.*\.json|vocab\.(json|txt)|merges\.txt|special_tokens_map\.json|added_tokens\.json|"
    + re.escape(TOKENIZER_RECORD)
    + r")$"
)


def to_hf(model: GPT, out: str | Path, tokenizer=None, force: bool = False) -> Path:
    """Write `model` to folder `out` as config.json + model.safetensors, plus the tokenizer: GPT-2 BPE as
    vocab.json / merges.txt (so `transformers` reads it too), and ours as tritongpt_tokenizer.json.

    `out` must be missing or empty (HFError otherwise); `force=True` replaces an earlier export there: every
    file of the Hugging Face layout (`HF_LAYOUT_FILES`) that this export does not write is removed, anything
    else is left alone. The files are written into a temporary folder inside `out` and moved into place only
    once all of them are written, so a failure (a full disk, Ctrl-C) leaves `out` as it was.
    """
    from tritongpt.files import OutputError, check_output_dir, default_file_mode, fsync_dir, signals_deferred, temp_name

    try:
        from safetensors import SafetensorError
        from safetensors.torch import save_file
    except ImportError:
        raise HFError("writing model.safetensors needs the safetensors package (pip install safetensors)") from None
    from tritongpt.tokenizer import save_tokenizer

    eot = getattr(tokenizer, "eot_id", None) if getattr(tokenizer, "name", None) == "gpt2" else None
    config = config_to_hf(model.config, eot)
    out = Path(out).expanduser()
    check_output_dir(out, "export folder")
    existing = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if existing and not force:
        raise HFError(
            f"{out} is not empty ({_few('it holds', existing)}): export into a new folder, or pass --force to "
            "replace the earlier export there"
        )
    created = [p for p in (out, *out.parents) if not p.exists()][::-1]  # folders this call makes, outermost first
    out.mkdir(parents=True, exist_ok=True)
    stage = temp_name(out / "export")
    try:
        stage.mkdir()
        weights = stage / "model.safetensors"
        try:
            save_file(state_dict_to_hf(model), str(weights), metadata={"format": "pt"})
        except SafetensorError as e:
            raise OutputError(f"cannot write {out / weights.name}: {e}") from None
        os.chmod(weights, default_file_mode())  # safetensors makes it 0600 through a temporary file
        (stage / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        if tokenizer is not None:
            save_tokenizer(tokenizer, stage / TOKENIZER_RECORD)
            if tokenizer.name == "gpt2":
                _write_gpt2_tokenizer_files(stage, model.config.context_length)
        written = sorted(p.name for p in stage.iterdir())
        in_the_way = [name for name in written if (out / name).is_dir()]
        if in_the_way:
            raise OutputError(f"cannot write {out / in_the_way[0]}: a folder of that name is in the way")
        for name in written:
            with open(stage / name, "rb") as f:
                os.fsync(f.fileno())
        with signals_deferred():  # the swap completes once begun
            for name in written:
                os.replace(stage / name, out / name)
            for p in out.iterdir():
                if p.name not in written and p.is_file() and HF_LAYOUT_FILES.match(p.name):
                    p.unlink()
        stage.rmdir()
        fsync_dir(out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        for d in reversed(created):
            with contextlib.suppress(OSError):
                d.rmdir()
        raise
    return out


def _write_gpt2_tokenizer_files(out: Path, context_length: int) -> None:
    """OpenAI's encoder.json / vocab.bpe are Hugging Face's vocab.json / merges.txt, byte for byte."""
    from tritongpt.tokenizer import (
        ENDOFTEXT,
        GPT2_FILES,
        _bundled_gpt2_files,
        _tiktoken_cache_path,
        _tiktoken_has_gpt2_files,
    )

    if _tiktoken_has_gpt2_files():
        files = {name: _tiktoken_cache_path(url) for name, (url, _) in GPT2_FILES.items()}
    else:
        files = _bundled_gpt2_files()
    (out / "vocab.json").write_bytes(files["encoder.json"].read_bytes())
    (out / "merges.txt").write_bytes(files["vocab.bpe"].read_bytes())
    special = {"bos_token": ENDOFTEXT, "eos_token": ENDOFTEXT, "unk_token": ENDOFTEXT}
    tok_config = {"tokenizer_class": "GPT2Tokenizer", "model_max_length": context_length, **special}
    (out / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2) + "\n", encoding="utf-8")


def tokenizer_for_hf(path: str | Path):
    """The folder's tokenizer: ours if it carries tritongpt_tokenizer.json, otherwise GPT-2 BPE."""
    from tritongpt.tokenizer import GPT2Tokenizer, load_tokenizer

    path = Path(path).expanduser()
    tok = load_tokenizer(path / TOKENIZER_RECORD) if (path / TOKENIZER_RECORD).is_file() else GPT2Tokenizer()
    vocab = read_hf_config(path).get("vocab_size", 50257)
    if isinstance(vocab, int) and vocab < tok.vocab_size:
        raise HFError(f"{path}: vocab_size {vocab} is smaller than the {tok.name} tokenizer's {tok.vocab_size}")
    return tok
