"""The three preset schemas and the strict TOML loader they share.

A preset is a TOML file in `configs/` (loaded by exact name, e.g. `gpt2-124m`) or any path. Its `[model]`
table overrides `GPTConfig` fields (the model), `[train]` those of `TrainConfig` (`gpt train`) and `[data]`
those of `DataConfig` (where the prepared tokens are, and how `gpt prepare` makes them); `load_configs` reads
all three. A top-level `extends = "NAME"` starts from another preset:

    extends = "gpt2-124m"
    [model]
    drop_rate = 0.1
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tritongpt.corpus import CORPORA
from tritongpt.kernels import IMPLEMENTATIONS

# The presets: the repository's configs/, shipped inside the package as tritongpt/configs/ by an installed wheel.
_SHIPPED = Path(__file__).resolve().parent / "configs"
CONFIG_DIR = _SHIPPED if _SHIPPED.is_dir() else Path(__file__).resolve().parent.parent / "configs"

BACKENDS = ("auto", *IMPLEMENTATIONS)  # GPTConfig.backend: an implementation's name, or "auto" (tritongpt.backend)
Backend = Literal[BACKENDS]
NormPlacement = Literal["pre", "post"]
Precision = Literal["auto", "fp32", "bf16"]
Device = Literal["auto", "cpu", "cuda"]


class ConfigError(ValueError):
    """A config file or override that does not fit its dataclass; the message names the key and the file."""


@dataclass
class GPTConfig:
    vocab_size: int = 50257  # rows of the embedding and head; GPT-2 BPE: 50,000 merges + 256 bytes + <|endoftext|>
    real_vocab_size: int = 0  # tokens that exist when vocab_size is padded past them (50257 of 50304); 0: all rows
    context_length: int = 1024  # longest sequence; size of the learned position embedding
    emb_dim: int = 768
    n_heads: int = 12
    n_layers: int = 12
    drop_rate: float = 0.0  # embedding, attention-probability and residual dropout
    qkv_bias: bool = True  # bias in the fused q/k/v projection (OpenAI's GPT-2 has one)
    tie_weights: bool = True  # LM head shares the token embedding matrix
    norm_placement: NormPlacement = "pre"  # "pre": x + f(ln(x)) (GPT-2); "post": ln(x + f(x)) (original Transformer)
    ln_eps: float = 1e-5
    backend: Backend = "auto"  # "reference", "native" (torch's fused ops), "triton" (ours); see tritongpt.backend

    def __post_init__(self) -> None:
        check_fields(self)
        for name in ("vocab_size", "context_length", "emb_dim", "n_heads", "n_layers"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.real_vocab_size <= self.vocab_size:
            limit = f"[0, vocab_size={self.vocab_size}] (0: no padding)"
            raise ConfigError(f"real_vocab_size must be in {limit}, got {self.real_vocab_size}")
        if self.emb_dim % self.n_heads:
            raise ConfigError(f"emb_dim ({self.emb_dim}) must be divisible by n_heads ({self.n_heads})")
        if not 0.0 <= self.drop_rate < 1.0:
            raise ConfigError(f"drop_rate must be in [0, 1), got {self.drop_rate}")
        if not 0 < self.ln_eps < math.inf:  # also rejects nan
            raise ConfigError(f"ln_eps must be a finite number > 0, got {self.ln_eps}")

    @property
    def head_dim(self) -> int:
        return self.emb_dim // self.n_heads

    @property
    def real_vocab(self) -> int:
        """Token ids that exist: the rows of the embedding and head past them are padding, never targets and
        never sampled (a vocabulary padded to a multiple of 64 keeps the head's matmul on tensor-core sizes)."""
        return self.real_vocab_size or self.vocab_size


@dataclass
class TrainConfig:
    out_dir: str = "runs/default"  # run folder: checkpoints, metrics.jsonl, loss.png
    device: Device = "auto"  # "auto": CUDA when there is a GPU
    seed: int = 1337
    # batch: one optimizer step = batch_size * grad_accum * world_size windows of context_length tokens
    batch_size: int = 32  # windows per micro-batch, per process
    grad_accum: int = 1  # micro-batches summed into one optimizer step
    max_steps: int = 1000
    max_tokens: int = 0  # when > 0, sets max_steps = ceil(max_tokens / tokens per step)
    max_time_s: float = 0.0  # when > 0, stop (evaluate, save) once training has run this long
    # optimizer and schedule
    lr: float = 6e-4  # peak learning rate, reached at the end of warmup
    min_lr: float = 6e-5  # floor of the cosine decay
    warmup_steps: int = 100
    lr_decay_steps: int = 0  # step where the cosine reaches min_lr; 0: max_steps
    weight_decay: float = 0.1  # on matrices only
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0  # max global gradient norm; 0: no clipping
    max_bad_steps: int = 5  # stop after this many non-finite steps in a row
    # speed
    precision: Precision = "auto"  # "auto": bf16 autocast on CUDA (when supported), fp32 elsewhere
    compile: bool = False  # torch.compile the model
    num_threads: int = 0  # CPU threads for torch; 0: torch's default
    # evaluation, samples, logging, checkpoints
    eval_interval: int = 250  # steps between evaluations (and at the end)
    eval_batches: int = 20  # fixed validation batches per evaluation, batch_size windows per process each
    hellaswag: str = ""  # path to hellaswag_val.jsonl: accuracy at each evaluation (tritongpt/hellaswag.py); "": none
    hellaswag_limit: int = 0  # only its first N examples; 0: all
    sample_tokens: int = 200  # tokens sampled at each evaluation; 0: none
    final_sample_tokens: int = 500  # tokens sampled and printed at the end; 0: none
    sample_prompt: str = "\n"
    temperature: float = 0.8
    top_k: int = 0  # 0: sample from the whole distribution
    log_interval: int = 10  # steps between metrics records (and progress lines when not on a terminal)
    checkpoint_interval: int = 0  # steps between checkpoints; 0: only at the end (and on Ctrl-C)
    keep_checkpoints: int = 3  # newest checkpoints kept; 0: all
    plot: bool = True  # write loss.png at the end and with each checkpoint

    def __post_init__(self) -> None:
        check_fields(self)
        for name in ("batch_size", "grad_accum", "eval_batches", "log_interval", "max_bad_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        for name in (
            "max_steps",
            "max_tokens",
            "warmup_steps",
            "lr_decay_steps",
            "eval_interval",
            "checkpoint_interval",
            "keep_checkpoints",
            "num_threads",
            "sample_tokens",
            "final_sample_tokens",
            "top_k",
            "hellaswag_limit",
        ):
            if getattr(self, name) < 0:
                raise ConfigError(f"train.{name} must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.seed < 2**32:  # numpy's global seed takes 32 bits
            raise ConfigError(f"train.seed must be in [0, 2**32), got {self.seed}")
        for f in dataclasses.fields(self):  # nan passes no range check below and inf no sensible one
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"train.{f.name} must be a finite number, got {value}")
        if self.lr < 0:
            raise ConfigError(f"train.lr must be >= 0, got {self.lr}")
        if not 0.0 <= self.min_lr <= self.lr:
            raise ConfigError(f"train.min_lr must be in [0, lr={self.lr}], got {self.min_lr}")
        for name in ("beta1", "beta2"):  # AdamW's moment decays
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"train.{name} must be in [0, 1), got {getattr(self, name)}")
        if self.eps <= 0:
            raise ConfigError(f"train.eps must be > 0 (AdamW divides by sqrt(v) + eps), got {self.eps}")
        for name in ("grad_clip", "weight_decay", "max_time_s", "temperature"):
            if getattr(self, name) < 0:
                raise ConfigError(f"train.{name} must be >= 0, got {getattr(self, name)}")


@dataclass
class DataConfig:
    """The `[data]` table: where the prepared corpus lives and how `gpt prepare --config` makes it."""

    dir: str = "data/shakespeare-char"  # folder with meta.json and the token shards (or llm.c / nanoGPT files)
    corpus: str = ""  # built-in corpus ("shakespeare", "python-source"); empty when `inputs` is used
    inputs: list[str] = field(default_factory=list)  # files or folders: text, JSON Lines, Parquet
    tokenizer: str = "char"  # "char" or "gpt2"
    val_fraction: float = 0.1
    errors: str = "strict"  # "strict": non-UTF-8 input is an error; "replace": bad bytes become U+FFFD
    text_field: str = "text"  # the document's field in JSON Lines, its column in Parquet
    shard_tokens: int = 100_000_000  # tokens per shard file
    max_tokens: int = 0  # stop after this many tokens (train + val); 0: the whole corpus
    hint: str = ""  # where the data comes from: said when `dir` holds no data, or `inputs` are missing

    def __post_init__(self) -> None:
        if self.corpus and self.corpus not in CORPORA:
            raise ConfigError(f"data.corpus: unknown corpus {self.corpus!r}; choose one of {', '.join(CORPORA)}")
        if self.tokenizer not in ("char", "gpt2"):
            raise ConfigError(f"data.tokenizer: expected 'char' or 'gpt2', got {self.tokenizer!r}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"data.val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.errors not in ("strict", "replace"):
            raise ConfigError(f"data.errors: expected 'strict' or 'replace', got {self.errors!r}")
        if not self.text_field:
            raise ConfigError("data.text_field must not be empty")
        if self.shard_tokens < 1:
            raise ConfigError(f"data.shard_tokens must be >= 1, got {self.shard_tokens}")
        if self.max_tokens < 0:
            raise ConfigError(f"data.max_tokens must be >= 0, got {self.max_tokens}")

    def missing_hint(self) -> str:
        """How to make the data of `dir`: the preset's hint, or the `gpt prepare` command for it."""
        if self.hint:
            return self.hint
        src = f"--corpus {self.corpus}" if self.corpus else "--input " + " ".join(self.inputs or ["PATH ..."])
        return f"prepare the data first: gpt prepare {src} --tokenizer {self.tokenizer} --out {self.dir}"


# ---------------------------------------------------------------------------------------------------------
# Strict loading: unknown keys and wrong types are errors that name the key and where it came from.


def _type_ok(value: Any, tp: Any) -> bool:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return value in typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, t) for t in typing.get_args(tp))
    if origin in (list, tuple):
        (item,) = typing.get_args(tp)[:1] or (Any,)
        return isinstance(value, (list, tuple)) and all(_type_ok(v, item) for v in value)
    if tp is Any:
        return True
    if tp is type(None):
        return value is None
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, tp)


def _describe(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp))


def check_fields(obj: Any, where: str = "") -> None:
    """Raise ConfigError if a dataclass instance holds a value of the wrong type."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if not _type_ok(value, hints[f.name]):
            raise ConfigError(
                f"{type(obj).__name__}.{f.name}{where}: expected {_describe(hints[f.name])}, got {value!r}"
            )


def from_dict(cls: type, data: dict[str, Any], where: str = "", base: Any = None) -> Any:
    """Build dataclass `cls` from `data` (on top of `base` if given), rejecting unknown keys and wrong types."""
    names = {f.name for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key, value in data.items():
        if key not in names:
            raise ConfigError(f"unknown key {key!r}{where}; {cls.__name__} has: {', '.join(sorted(names))}")
        if not _type_ok(value, hints[key]):
            raise ConfigError(f"key {key!r}{where}: expected {_describe(hints[key])}, got {value!r}")
        if hints[key] is float and isinstance(value, int):
            data = {**data, key: float(value)}
    kwargs = dataclasses.asdict(base) if base is not None else {}
    kwargs.update(data)
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise ConfigError(f"{e}{where}") from None


def resolve_preset(name_or_path: str | Path) -> Path:
    """A preset name (`configs/<name>.toml`, matched exactly) or a path to a TOML file: any file that is not a
    folder, so `--config /dev/null` (no overrides) and `--config <(...)` (a pipe) read too."""
    p = Path(name_or_path)
    if p.suffix == ".toml" or p.exists():
        if p.is_dir():
            raise ConfigError(f"config file {p} is a folder")
        if not p.exists():
            raise ConfigError(f"config file {p} does not exist")
        return p
    candidate = CONFIG_DIR / f"{name_or_path}.toml"
    if candidate.is_file():
        return candidate
    raise ConfigError(f"no preset named {str(name_or_path)!r}; presets: {', '.join(list_presets())}")


def list_presets() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.toml"))


def load_toml(name_or_path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, dict[str, Any]]:
    """Read a preset into {table: {key: value}}, following `extends` chains (tables merge key by key)."""
    path = resolve_preset(name_or_path)
    if path.resolve() in _seen:
        raise ConfigError(f"{path}: 'extends' chain loops back to itself")
    try:
        raw = tomllib.loads(path.read_bytes().decode("utf-8"))
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (TOML must be UTF-8): bad byte at offset {e.start}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    parent = raw.pop("extends", None)
    merged: dict[str, dict[str, Any]] = {}
    if parent is not None:
        if not isinstance(parent, str):
            raise ConfigError(f"key 'extends' in {path}: expected a preset name or path, got {parent!r}")
        merged = load_toml(parent, _seen + (path.resolve(),))
    for table, values in raw.items():
        if not isinstance(values, dict):
            raise ConfigError(f"unknown top-level key {table!r} in {path}; expected tables like [model], [train]")
        merged.setdefault(table, {}).update(values)
        merged[table]["__file__"] = str(path)
    return merged


def section(cfg: dict[str, dict[str, Any]], table: str, cls: type, known_tables: set[str]) -> Any:
    """Build `cls` from one table of a loaded preset; tables nobody knows are errors too."""
    for t in cfg:
        if t not in known_tables:
            files = cfg[t].get("__file__", "?")
            raise ConfigError(f"unknown table [{t}] in {files}; known tables: {', '.join(sorted(known_tables))}")
    values = dict(cfg.get(table, {}))
    file = values.pop("__file__", None)
    return from_dict(cls, values, f" in [{table}] of {file}" if file else "")


TABLES = {"model": GPTConfig, "train": TrainConfig, "data": DataConfig}  # a preset's tables and their schemas
KNOWN_TABLES = set(TABLES)


def parse_overrides(pairs: list[str]) -> dict[str, dict[str, Any]]:
    """`--set model.n_layers=4 train.lr=1e-3` -> {"model": {"n_layers": 4}, "train": {"lr": 0.001}}.

    Values are parsed as TOML (so `true`, `3e-4`, `"text"`); bare words that are not TOML stay strings.
    """
    out: dict[str, dict[str, Any]] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"--set {pair!r}: expected TABLE.KEY=VALUE, e.g. model.n_layers=4")
        key, text = pair.split("=", 1)
        if "." not in key:
            raise ConfigError(f"--set {pair!r}: name the table, e.g. model.{key}=... or train.{key}=...")
        table, name = key.split(".", 1)
        try:
            value = tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            value = text
        out.setdefault(table, {})[name] = value
    return out


def add_set_argument(parser, tables: str = "TABLE") -> None:
    """`--set TABLE.KEY=VALUE ...`, the same in every command: one or more pairs, and the flag may repeat
    (`--set a.x=1 b.y=2 --set c.z=3`); the pairs land in `args.set` for `parse_overrides`."""
    parser.add_argument(
        "--set",
        dest="set",
        action="extend",
        nargs="+",
        default=[],
        metavar=f"{tables}.KEY=VALUE",
        help="override config keys (TOML values), e.g. train.max_steps=100 model.n_layers=2",
    )


def merge(cfg: dict[str, dict[str, Any]], overrides: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out = {t: dict(v) for t, v in cfg.items()}
    for table, values in overrides.items():
        source = out.get(table, {}).get("__file__")
        out.setdefault(table, {}).update(values)
        out[table]["__file__"] = f"{source} with --set" if source else "--set"  # errors name both sources
    return out


def load_model_config(name_or_path: str | Path, overrides: list[str] | None = None) -> GPTConfig:
    cfg = merge(load_toml(name_or_path), parse_overrides(overrides or []))
    return section(cfg, "model", GPTConfig, KNOWN_TABLES)


def load_configs(
    name_or_path: str | Path, overrides: list[str] | None = None
) -> tuple[GPTConfig, TrainConfig, DataConfig]:
    """The three configs of a preset (`gpt train`), with the `--set TABLE.KEY=VALUE` overrides applied."""
    raw = merge(load_toml(name_or_path), parse_overrides(overrides or []))
    return tuple(section(raw, table, cls, KNOWN_TABLES) for table, cls in TABLES.items())


def fit_vocabulary(model_cfg: GPTConfig, data_vocab: int, data_dir: str) -> GPTConfig:
    """`model_cfg` with `real_vocab_size` set for data of `data_vocab` tokens: the data's size where the model's
    vocabulary is larger (the rows past it are padding), else 0. ConfigError where the model's is too small."""
    if data_vocab > model_cfg.vocab_size:
        raise ConfigError(
            f"the prepared data in {data_dir} has a {data_vocab}-token vocabulary, more than "
            f"model.vocab_size = {model_cfg.vocab_size}; raise model.vocab_size"
        )
    if model_cfg.real_vocab_size not in (0, data_vocab):
        raise ConfigError(
            f"model.real_vocab_size = {model_cfg.real_vocab_size}, but the prepared data in {data_dir} has "
            f"a {data_vocab}-token vocabulary; leave it unset (the data decides it)"
        )
    padded = data_vocab < model_cfg.vocab_size
    return dataclasses.replace(model_cfg, real_vocab_size=data_vocab if padded else 0)
