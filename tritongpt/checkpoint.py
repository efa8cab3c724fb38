"""Checkpoint files: one `torch.save`d dict, written atomically, read back with clear errors.

Layout (every value a tensor, number, string, list or dict, so `torch.load(weights_only=True)` reads it):

    {"format": "tritongpt-checkpoint", "version": 1,
     "model": state_dict, "model_config": asdict(GPTConfig), "tokenizer": tokenizer.to_dict(),
     ... anything else the writer adds (optimizer, step, RNG states, train config) ...}

A file is written to a temporary name in the same folder, fsync'd, then renamed over the target
(`tritongpt.files.atomic_write`), so a crash or a full disk never leaves a half-written checkpoint under the real
name and never destroys the previous one; a failed write is a CheckpointError naming the file and the reason.

A training run keeps numbered checkpoints `ckpt-00001000.pt` in its folder (the last K readable ones);
`load_newest_good` finds the newest one that validates, skipping truncated or foreign files, which are never
deleted and never count toward K. `Checkpointer` is what `gpt train` does with its folder's checkpoints:

    checkpoints = Checkpointer("runs/demo", keep=3, log=print)
    checkpoints.set_aside_previous_run()           # a fresh run: the earlier run's files into previous-N/
    checkpoints.save(step, payload)                # tried again after a pause if the write fails; keeps 3
    path, ckpt = checkpoints.resume_from(model_cfg, tokenizer, data_dir, train_cfg, world_size)   # --resume
    checkpoints.last_good_note(step)               # "The last good checkpoint is ... resume from it with --resume."
"""

from __future__ import annotations

import dataclasses
import random
import re
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tritongpt.files import atomic_write, signals_deferred

FORMAT = "tritongpt-checkpoint"
VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that is missing, truncated, foreign or of an unknown version; the message names the file."""


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write `payload` (plus format and version) to `path` atomically; CheckpointError if the write fails (a
    full disk, no permission), with `path` as it was before."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return atomic_write(path, lambda f: torch.save({"format": FORMAT, "version": VERSION, **payload}, f))
    except (OSError, RuntimeError) as e:  # torch's zip writer reports a failed write as a RuntimeError
        space = _free_space(path) if isinstance(e, RuntimeError) else ""
        raise CheckpointError(f"cannot write checkpoint {path}: {_first_line(e)}{space}") from e


def _free_space(path: Path) -> str:
    """ " (12.3 MB free on its disk)", for a write that torch's zip writer reports as a RuntimeError: it says
    "unexpected pos" where the disk was full."""
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        return ""
    return f" ({free / 1e6:,.1f} MB free on its disk)"


def _first_line(e: BaseException) -> str:
    """The gist of an exception for a one-line message: its type and first line (first sentence, if long)."""
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    if len(text) > 120 and ". " in text:  # torch's weights-only advice runs on for several sentences
        text = text.split(". ")[0]
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", mmap: bool = False) -> dict[str, Any]:
    """Read and validate a checkpoint; CheckpointError names the file and what is wrong with it.

    `mmap=True` maps the tensors instead of reading them: a cheap check that a file is whole and ours.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as e:  # truncated zip, random bytes, pickled foreign objects, ...
        raise CheckpointError(f"{path} is not a readable tritongpt checkpoint ({_first_line(e)})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a tritongpt checkpoint (no '{FORMAT}' format marker)")
    if ckpt.get("version") != VERSION:
        raise CheckpointError(f"{path} has checkpoint version {ckpt.get('version')!r}; this code reads {VERSION}")
    for key in ("model", "model_config"):
        if not isinstance(ckpt.get(key), dict):
            raise CheckpointError(
                f"{path} has no {key!r} entry (a dict)"
                if key not in ckpt
                else f"{path}: its {key!r} entry is a {type(ckpt[key]).__name__}, not a dict"
            )
    return ckpt


def model_payload(model: torch.nn.Module, tokenizer: Any | None) -> dict[str, Any]:
    """The part of a checkpoint that `model_from_checkpoint` needs."""
    return {
        "model": model.state_dict(),
        "model_config": dataclasses.asdict(model.config),
        "tokenizer": tokenizer.to_dict() if tokenizer is not None else None,
    }


def model_from_checkpoint(path: str | Path, device: str | torch.device = "cpu", backend: str | None = None, note=None):
    """(model in eval mode, tokenizer or None, the raw checkpoint dict) from a checkpoint file, or from the
    newest readable checkpoint of a run folder; `note(message)` names the file and step taken when newer ones
    were skipped, and why. A config that does not match the weights, a model too large for `device` and a bad
    tokenizer record are CheckpointErrors naming the file, raised before building."""
    from tritongpt.config import ConfigError, GPTConfig, from_dict
    from tritongpt.model import GPT, check_model_fits
    from tritongpt.tokenizer import TokenizerError, tokenizer_from_dict

    if Path(path).is_dir():
        skipped: list[str] = []
        found = load_newest_good(path, warn=skipped.append, require=())
        if found is None:
            detail = "; ".join(skipped) or "no ckpt-NNNNNNNN.pt files"
            raise CheckpointError(f"{path} holds no readable checkpoint ({detail})")
        path, ckpt = found
        if skipped and note is not None:
            note(f"using {path} (step {ckpt.get('step')}), the newest usable one; skipped: {'; '.join(skipped)}")
    else:
        ckpt = load_checkpoint(path)  # on the CPU: only the weights move to `device`, never the optimizer state
    saved = ckpt["model_config"]
    if saved.get("backend") == "torch":  # the reference backend's name before it took its implementation's
        saved = {**saved, "backend": "reference"}
    try:
        cfg = from_dict(GPTConfig, saved, f" in the model config of {path}")
        check_weights_fit(ckpt["model"], cfg, path)
        check_model_fits(cfg, device, 4, "loading it in fp32")
    except ConfigError as e:
        raise CheckpointError(str(e)) from None
    try:
        tok = tokenizer_from_dict(ckpt["tokenizer"]) if ckpt.get("tokenizer") else None
    except TokenizerError as e:
        raise CheckpointError(f"{path}: bad tokenizer record: {e}") from None
    if backend is not None:
        cfg.backend = backend
    model = GPT(cfg)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit its model config: {_first_line(e)}") from None
    return model.to(device).eval(), tok, ckpt


def load_model(
    checkpoint: str | Path | None = None,
    hf: str | Path | None = None,
    device: str | torch.device = "cpu",
    backend: str | None = None,
    note=None,
):
    """(model in eval mode, tokenizer or None, what was loaded) from `checkpoint` (a file, or a run folder: its
    newest readable checkpoint) or `hf` (a Hugging Face GPT-2 folder): `gpt generate` and `gpt eval` load this way.

    `backend` (their --backend) replaces the model's own and must run on `device`: ConfigError naming --backend
    where it cannot, before anything is read. Without it, a model whose own backend cannot run here (triton,
    trained on a GPU) runs on "auto", the same math on torch's ops, and `note(message)` says so. Otherwise
    CheckpointError, HFError, ConfigError or TokenizerError from the readers, naming the file.
    """
    from tritongpt.backend import check_backend_runs
    from tritongpt.config import ConfigError

    if backend is not None:
        try:
            check_backend_runs(backend, device)
        except ValueError as e:
            raise ConfigError(f"--backend {backend}: {e}") from None
    if checkpoint is not None:
        model, tok, ckpt = model_from_checkpoint(checkpoint, device, backend, note)
        info = {"kind": "checkpoint", "path": str(checkpoint), "step": ckpt.get("step")}
        info["train_config"] = ckpt.get("train_config")
        info["world_size"] = (ckpt.get("sampler") or {}).get("world_size", 1)
    else:
        from tritongpt.hf import from_hf, tokenizer_for_hf

        model = from_hf(hf, device=device, backend=backend or "auto")
        tok = tokenizer_for_hf(hf)
        info = {"kind": "hf", "path": str(hf)}
    try:
        check_backend_runs(model.config.backend, device)
    except ValueError as e:
        if note is not None:
            note(f"{e}; running backend 'auto' instead")
        model.set_backend("auto")
    return model.eval(), tok, info


LAYER_KEY = re.compile(r"^transformer\.h\.(\d+)\.")


def check_weights_fit(state: dict[str, Any], cfg, path: str | Path) -> None:
    """CheckpointError unless the weights have the config's layer count and embedding shapes: checked before
    the model is built, so a config claiming 100,000 layers fails at once instead of after minutes."""
    layers = {int(m.group(1)) for k in state if (m := LAYER_KEY.match(str(k)))}
    n_layers = max(layers) + 1 if layers else 0
    if n_layers != cfg.n_layers:
        raise CheckpointError(f"{path}: its model config says n_layers={cfg.n_layers}, its weights hold {n_layers}")
    for key, shape in (
        ("transformer.wte.weight", (cfg.vocab_size, cfg.emb_dim)),
        ("transformer.wpe.weight", (cfg.context_length, cfg.emb_dim)),
    ):
        t = state.get(key)
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != shape:
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else "missing"
            raise CheckpointError(f"{path}: {key} is {got}, its model config needs {shape}")


# ---------------------------------------------------------------------------------------------------------
# Training runs: numbered checkpoints in a run folder, keep-last-K, newest-good discovery, RNG states

CKPT_PATTERN = re.compile(r"^ckpt-(\d{8})\.pt$")


def checkpoint_path(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / f"ckpt-{step:08d}.pt"


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of every numbered checkpoint in `run_dir`, oldest first."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in run_dir.iterdir() if (m := CKPT_PATTERN.match(p.name))]
    return sorted(found)


def readable(path: str | Path) -> bool:
    """Whether `path` is a whole checkpoint of ours (mapped, not read: cheap for any size)."""
    try:
        load_checkpoint(path, mmap=True)
    except CheckpointError:
        return False
    return True


def prune_checkpoints(run_dir: str | Path, keep: int, upto: int | None = None) -> list[Path]:
    """Delete all but the newest `keep` readable numbered checkpoints (keep <= 0 keeps all); returns the deleted.

    Only readable checkpoints count and only they are deleted: an unreadable one (truncated, foreign) never
    pushes a good one out and is left for its owner to look at. With `upto` (the step just saved), only
    checkpoints of steps <= upto count: later-numbered files are left alone and never push the fresh one out.
    """
    if keep <= 0:
        return []
    good = [p for s, p in list_checkpoints(run_dir) if (upto is None or s <= upto) and readable(p)]
    old = good[:-keep]
    for p in old:
        p.unlink(missing_ok=True)
    return old


TRAINING_KEYS = ("optimizer", "step", "rng")


def load_newest_good(
    run_dir: str | Path, map_location: str | torch.device = "cpu", warn=None, require: tuple[str, ...] = TRAINING_KEYS
) -> tuple[Path, dict[str, Any]] | None:
    """The newest numbered checkpoint in `run_dir` that loads and has the `require`d entries (by default those
    a training run resumes from), or None if there is none.

    A truncated or foreign newer file is skipped (`warn(why)`, the reason naming the file), never deleted.
    """
    for _, path in reversed(list_checkpoints(run_dir)):
        try:
            ckpt = load_checkpoint(path, map_location=map_location)
            for key in require:
                if key not in ckpt:
                    raise CheckpointError(f"{path} has no {key!r} entry (not a training checkpoint)")
        except CheckpointError as e:
            if warn is not None:
                warn(str(e))
            continue
        return path, ckpt
    return None


def rng_state() -> dict[str, Any]:
    """Every random-number generator a training step can touch, in a weights_only-loadable form."""
    np_state = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "kind": np_state[0],
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": {"version": py_version, "internal": list(py_internal), "gauss_next": py_gauss},
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` captured (CUDA states only where this machine has the same GPUs).

    The states may have been loaded onto a GPU (`map_location`); generators take CPU byte tensors.
    """
    torch.set_rng_state(state["torch"].cpu())
    if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    n = state["numpy"]
    np.random.set_state(
        (n["kind"], n["keys"].cpu().numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))


def restore_rng(ckpt: dict[str, Any], path: Path, rank: int, world_size: int, fallback_seed: int) -> None:
    """Restore this rank's generators from a training checkpoint (`rng_ranks`, one state per rank); with another
    world size than the run that saved it, seed them with `fallback_seed` instead. CheckpointError naming `path`
    for a state that cannot be restored."""
    ranks = ckpt.get("rng_ranks") or [ckpt["rng"]]
    if len(ranks) != world_size:
        torch.manual_seed(fallback_seed)
        return
    try:
        set_rng_state(ranks[rank])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"--resume: {path} has an unusable RNG state: {e}") from None


# ---------------------------------------------------------------------------------------------------------
# A run folder's checkpoints, as a training run keeps them

SAVE_RETRY_WAITS_S = (10.0, 60.0)  # pauses before the 2nd and 3rd attempt at a checkpoint that failed to save


class Checkpointer:
    """The checkpoint files of one training run folder: saving (tried again after a pause when the write fails,
    a full disk say) and keeping the newest `keep`; where the last good one is, for a run that stopped; setting
    an earlier run's files aside for a fresh run; and the checkpoint a resumed run continues from, checked
    against the run's model config and tokenizer.

    Files only: the payload comes from the trainer, which also restores it. Under DDP only rank 0 saves and sets
    aside; every rank reads. `log(message)` gets the warnings and notes.
    """

    def __init__(self, run_dir: str | Path, keep: int = 0, log=None) -> None:
        self.run_dir = Path(run_dir)
        self.keep = keep
        self.log = log if log is not None else (lambda message: None)

    def save(self, step: int, payload: dict[str, Any]) -> Path:
        """Write the checkpoint of `step`, trying again after each pause of SAVE_RETRY_WAITS_S when the write
        fails, then keep the newest `keep`. CheckpointError naming the last good checkpoint if every try fails."""
        target = checkpoint_path(self.run_dir, step)
        tries = 1 + len(SAVE_RETRY_WAITS_S)
        for attempt in range(tries):
            try:
                path = save_checkpoint(target, payload)
                break
            except CheckpointError as e:
                if attempt == tries - 1:
                    raise CheckpointError(f"{e} ({tries} attempts). {self.last_good_note(step)}") from e
                wait = SAVE_RETRY_WAITS_S[attempt]
                self.log(f"warning: {e}; trying again in {wait:g} s (attempt {attempt + 2} of {tries})")
                time.sleep(wait)
        prune_checkpoints(self.run_dir, self.keep, upto=step)
        return path

    def last_good_note(self, step: int) -> str:
        """Where the newest readable checkpoint up to `step` is, for a message about a run that stopped."""
        for saved, path in reversed(list_checkpoints(self.run_dir)):
            if saved <= step and readable(path):
                return f"The last good checkpoint is {path} (step {saved}): resume from it with --resume."
        return "This run has no earlier checkpoint."

    def set_aside_previous_run(self) -> Path | None:
        """A fresh run in a used folder: move the earlier run's checkpoints, metrics and plot into the first free
        `previous-N/` (N = 1, 2, ...), so `--resume` can never pick up a checkpoint of the earlier run and nothing
        of it is lost. Ctrl-C waits until the move is complete. Returns that folder (None: nothing to move)."""
        old = [p for _, p in list_checkpoints(self.run_dir)]
        old += [p for p in (self.run_dir / "metrics.jsonl", self.run_dir / "loss.png") if p.is_file()]
        if not old:
            return None
        with signals_deferred():
            for n in range(1, 1_000_000):
                prev = self.run_dir / f"previous-{n}"
                try:
                    prev.mkdir()
                    break
                except FileExistsError:
                    continue
            for p in old:
                p.rename(prev / p.name)
        self.log(f"note: {self.run_dir} held an earlier run; its checkpoints and metrics are now in {prev}")
        return prev

    def resume_from(
        self, model_config, tokenizer: dict[str, Any], data_dir: str, train_config: dict[str, Any], world_size: int
    ) -> tuple[Path, dict[str, Any]]:
        """(path, checkpoint) of the newest usable checkpoint, read onto the CPU (the RNG states must be CPU
        tensors). CheckpointError when there is none, or when it was trained with another model config
        (`backend` aside) or tokenizer; a note when the batch layout or the train config changed."""
        from tritongpt.config import GPTConfig

        skipped: list[str] = []

        def warn(why: str) -> None:
            skipped.append(why)
            self.log(f"skipping unusable checkpoint: {why}")

        found = load_newest_good(self.run_dir, map_location="cpu", warn=warn)
        if found is None:
            detail = "; ".join(skipped) or "no ckpt-NNNNNNNN.pt files"
            raise CheckpointError(f"--resume: no usable checkpoint in {self.run_dir} ({detail})")
        path, ckpt = found
        saved, mine = ckpt["model_config"], dataclasses.asdict(model_config)
        default = dataclasses.asdict(GPTConfig())  # what a field missing from an older checkpoint meant
        diff = sorted(k for k in mine if k != "backend" and saved.get(k, default[k]) != mine[k])
        if diff:
            changes = ", ".join(f"{k}: {saved.get(k, default[k])!r} -> {mine[k]!r}" for k in diff)
            if "vocab_size" in diff and "real_vocab_size" not in saved:  # trained when the vocabulary was cut
                changes += f"; a run from before padded vocabularies: add --set model.vocab_size={saved['vocab_size']}"
            raise CheckpointError(f"--resume: {path} was trained with a different model config ({changes})")
        _check_same_tokenizer(path, ckpt, tokenizer, data_dir)
        s = ckpt.get("sampler", {})
        layout = (train_config["batch_size"], train_config["grad_accum"], world_size)
        if (s.get("batch_size"), s.get("grad_accum"), s.get("world_size")) != layout:
            self.log(f"note: the batch layout changed since {path.name}; the data order will differ")
        saved_cfg = ckpt.get("train_config") if isinstance(ckpt.get("train_config"), dict) else {}
        changed = sorted(k for k, v in train_config.items() if saved_cfg.get(k) != v)
        if changed:
            self.log(f"note: train config differs from {path.name} in: {', '.join(changed)}")
        return path, ckpt


def _check_same_tokenizer(path: Path, ckpt: dict[str, Any], mine: dict[str, Any], data_dir: str) -> None:
    """--resume: the prepared data in `data_dir` must use the tokenizer the checkpoint was trained with."""
    saved = ckpt.get("tokenizer")
    if saved == mine:
        return
    detail = ""
    if isinstance(saved, dict) and saved.get("type") == mine.get("type") == "char":
        a, b = set(str(saved.get("chars", ""))), set(mine["chars"])
        detail = f" (characters only in the checkpoint's: {''.join(sorted(a - b))!r}; only in the data's: "
        detail += f"{''.join(sorted(b - a))!r})"
    trained_on = ckpt.get("data_config", {}).get("dir", "?") if isinstance(ckpt.get("data_config"), dict) else "?"
    raise CheckpointError(
        f"--resume: {path} was trained on {trained_on} with the {_tokenizer_name(saved)} tokenizer, but the "
        f"prepared data in {data_dir} uses the {_tokenizer_name(mine)} tokenizer{detail}; resume with "
        "the data it was trained on, or start a fresh run"
    )


def _tokenizer_name(record: Any) -> str:
    """'gpt2' or 'char (65 characters)', for messages that compare two tokenizer records."""
    if not isinstance(record, dict):
        return repr(record)
    if record.get("type") == "char":
        return f"char ({len(str(record.get('chars', '')))} characters)"
    return str(record.get("type"))
