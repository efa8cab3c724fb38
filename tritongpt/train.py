"""`gpt train`: train a GPT from a preset, with exact resume, metrics, samples and DDP.

    gpt prepare --config demo && gpt train --config demo         # the CPU demo
    gpt train --config demo --set train.max_steps=200 model.n_layers=2
    gpt train --config demo --resume                             # continue from the newest good checkpoint
    torchrun --nproc_per_node 8 -m tritongpt.train --config train-gpt2-124m

A preset's `[model]` table builds `GPTConfig`, `[train]` builds `TrainConfig` and `[data]` says where the
prepared token files are (`gpt prepare` writes them). The model's `vocab_size` (rows of the embedding and
head) must hold the prepared tokenizer's vocabulary; when it is larger the extra rows are padding (nanoGPT's
50304 for GPT-2's 50257 keeps the head's matmul on tensor-core sizes): the model's `real_vocab_size` is set
to the data's, so they are never targets, never sampled and not exported.

One optimizer step reads `batch_size * grad_accum * world_size` windows of `context_length` tokens; the
learning rate rises linearly over `warmup_steps`, then follows a cosine down to `min_lr` at
`lr_decay_steps` (default: the last step) and stays there. AdamW decays only the matrices (parameters with
two or more dimensions: linear weights and embeddings), never biases or LayerNorm parameters.

A run folder (`out_dir`) holds `metrics.jsonl` (one strict JSON record per logged step, eval and skipped
step; `null` for a non-finite number), `loss.png` and `ckpt-<step>.pt` checkpoints (the last `keep_checkpoints`
readable ones); a fresh run in a used folder moves the earlier run's files to the first free `previous-N/`,
after the data, configs and folder have been checked. A checkpoint has everything a step depends on (weights,
AdamW state, step, sampler position, every RNG), so on CPU a resumed run is bit-identical to one that never
stopped; resuming refuses data prepared with another tokenizer. Ctrl-C (or SIGTERM) finishes the current step,
saves and exits. A step whose loss or gradient norm is not finite is skipped (the weights are not touched);
after `max_bad_steps` of them in a row, or at a non-finite validation loss, the run stops with exit status 1
and saves nothing. A checkpoint that cannot be written (a full disk) is tried again after a pause; if it still
fails the run stops with exit status 2, naming the last good checkpoint.

Limits: MFU is reported against the dense bf16 peak of the GPUs in `tritongpt.flops`; on CPU and on
unknown GPUs it is left out. A resumed DDP run restores each rank's RNG only when the world size is the same.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from tritongpt.backend import check_backend_runs
from tritongpt.checkpoint import (
    CheckpointError,
    checkpoint_path,
    list_checkpoints,
    load_newest_good,
    model_payload,
    prune_checkpoints,
    readable,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from tritongpt.config import ConfigError, DataConfig, GPTConfig, TrainConfig, add_set_argument, load_configs
from tritongpt.data import DataError, WindowSampler, check_token_ids, open_split, read_data_tokenizer
from tritongpt.files import (
    OutputError,
    StopRequest,
    atomic_write,
    check_output_dir,
    os_error_message,
    signals_deferred,
    strict_json,
)
from tritongpt.flops import device_peak_flops, flops_per_token, mfu
from tritongpt.generate import GenerationError, generate
from tritongpt.hellaswag import evaluate_hellaswag, load_hellaswag
from tritongpt.model import GPT, TRAINING_BYTES_PER_PARAM, check_model_fits
from tritongpt.progress import ProgressLine, bar, fmt_rate, fmt_time
from tritongpt.tokenizer import TokenizerError

SAVE_RETRY_WAITS_S = (10.0, 60.0)  # pauses before the 2nd and 3rd attempt at a checkpoint that failed to save


# ---------------------------------------------------------------------------------------------------------
# Pieces with a formula: schedule, parameter groups, FLOPs


def lr_at(step: int, cfg: TrainConfig, max_steps: int | None = None) -> float:
    """Learning rate of optimizer step `step` (0-based): linear warmup, cosine to min_lr, then flat.

    warmup:  lr * (step + 1) / warmup_steps                      for step < warmup_steps
    cosine:  min_lr + (lr - min_lr) * (1 + cos(pi * p)) / 2      p = (step - warmup) / (decay - warmup)
    floor:   min_lr                                               for step >= decay
    """
    decay = cfg.lr_decay_steps or (max_steps if max_steps is not None else cfg.max_steps)
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if step >= decay:
        return cfg.min_lr
    p = (step - cfg.warmup_steps) / max(decay - cfg.warmup_steps, 1)
    return cfg.min_lr + (cfg.lr - cfg.min_lr) * 0.5 * (1.0 + math.cos(math.pi * p))


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two AdamW groups: matrices (>= 2-D: linear weights, embeddings) decayed; biases and norms not."""
    decay, no_decay = [], []
    for p in model.parameters():  # a tied weight appears once
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _tokenizer_name(record: Any) -> str:
    """'gpt2' or 'char (65 characters)', for messages that compare two tokenizer records."""
    if not isinstance(record, dict):
        return repr(record)
    if record.get("type") == "char":
        return f"char ({len(str(record.get('chars', '')))} characters)"
    return str(record.get("type"))


# ---------------------------------------------------------------------------------------------------------
# Processes


@dataclass
class Dist:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def master(self) -> bool:
        return self.rank == 0


def setup_distributed(device_pref: str) -> tuple[Dist, torch.device]:
    """Join the process group when launched by torchrun (RANK/WORLD_SIZE set): NCCL on GPUs, gloo on CPU."""
    use_cuda = device_pref == "cuda" or (device_pref == "auto" and torch.cuda.is_available())
    if device_pref == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device = 'cuda' but torch sees no CUDA GPU")
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Dist(), torch.device("cuda" if use_cuda else "cpu")
    d = Dist(int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0")), int(os.environ["WORLD_SIZE"]))
    if use_cuda:
        torch.cuda.set_device(d.local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return d, torch.device(f"cuda:{d.local_rank}" if use_cuda else "cpu")


# ---------------------------------------------------------------------------------------------------------
# The trainer


class TrainingStopped(RuntimeError):
    """The run cannot go on: too many non-finite steps in a row, or a non-finite validation loss."""


class Trainer:
    """Builds model, optimizer and data from the three configs; `fit()` runs the loop."""

    def __init__(
        self, model_cfg: GPTConfig, cfg: TrainConfig, data_cfg: DataConfig, resume: bool = False, verbose: bool = True
    ) -> None:
        self.cfg, self.data_cfg = cfg, data_cfg
        self.dist, self.device = setup_distributed(cfg.device)
        self.verbose = verbose and self.dist.master
        self.progress = ProgressLine(self.verbose, sys.stdout)
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        self.precision = cfg.precision
        if self.precision == "auto":
            bf16_ok = self.device.type == "cuda" and torch.cuda.is_bf16_supported()
            self.precision = "bf16" if bf16_ok else "fp32"
        self.run_dir = Path(cfg.out_dir)
        # everything is checked before anything on disk is touched (an earlier run is set aside only at the end)
        self._check_where_it_runs(model_cfg.backend)

        # data
        self.meta, self.tok = read_data_tokenizer(data_cfg.dir, data_cfg.missing_hint())
        data_vocab = int(self.meta["vocab_size"])
        if data_vocab > model_cfg.vocab_size:
            raise ConfigError(
                f"the prepared data in {data_cfg.dir} has a {data_vocab}-token vocabulary, more than "
                f"model.vocab_size = {model_cfg.vocab_size}; raise model.vocab_size"
            )
        if model_cfg.real_vocab_size not in (0, data_vocab):
            raise ConfigError(
                f"model.real_vocab_size = {model_cfg.real_vocab_size}, but the prepared data in {data_cfg.dir} has "
                f"a {data_vocab}-token vocabulary; leave it unset (the data decides it)"
            )
        padded = data_vocab < model_cfg.vocab_size  # the rows past data_vocab are padding
        model_cfg = dataclasses.replace(model_cfg, real_vocab_size=data_vocab if padded else 0)
        self.model_cfg = model_cfg
        T = model_cfg.context_length
        d = Path(data_cfg.dir)
        train_tokens, val_tokens = open_split(d, "train"), open_split(d, "val")
        check_token_ids(d, self.meta, data_vocab, {"train": train_tokens, "val": val_tokens})
        self.sampler = WindowSampler(
            train_tokens,  # every shard, windows drawn across them
            T,
            cfg.batch_size,
            cfg.seed,
            cfg.grad_accum,
            self.dist.world_size,
            name=f"the train split of {d}",
            vocab_size=data_vocab,
        )
        val = WindowSampler(
            val_tokens, T, cfg.batch_size, cfg.seed, 1, self.dist.world_size, f"the val split of {d}", data_vocab
        )
        self.val_batches = val.fixed_batches(cfg.eval_batches, self.dist.rank)
        self.tokens_per_step = cfg.batch_size * cfg.grad_accum * self.dist.world_size * T
        self.max_steps = math.ceil(cfg.max_tokens / self.tokens_per_step) if cfg.max_tokens else cfg.max_steps
        self.hellaswag = load_hellaswag(cfg.hellaswag, self.tok, T, cfg.hellaswag_limit) if cfg.hellaswag else None

        # model and optimizer: the same seed on every rank gives the same initial weights
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
        check_model_fits(model_cfg, self.device, TRAINING_BYTES_PER_PARAM, "training with AdamW in fp32")
        self.model = GPT(model_cfg).to(self.device)
        self.optimizer = torch.optim.AdamW(
            param_groups(self.model, cfg.weight_decay),
            lr=cfg.lr,
            betas=(cfg.beta1, cfg.beta2),
            eps=cfg.eps,
            fused=self.device.type == "cuda",
        )
        if self.dist.rank:  # dropout masks differ between ranks
            torch.manual_seed(cfg.seed + self.dist.rank)
        self.step = 0
        self.bad_steps = 0
        self.best_val = float("inf")
        self.last_val: float | None = None
        self.resumed_from: Path | None = None
        if resume:
            self._resume()
        elif self.dist.master:
            self._set_aside_previous_run()

        self.fwd = torch.compile(self.model) if cfg.compile else self.model
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.fwd = DDP(self.fwd, device_ids=ids)
        self.flops_per_token = flops_per_token(self.model)
        self.peak = device_peak_flops(self.device)
        self.stop = StopRequest("finishing this step, saving a checkpoint, then stopping", self.log)  # this rank's
        self._stop_agreed = False  # some rank had a stop request at the last step's all-reduce
        self._time_up = False  # set when max_time_s has passed; agreed on by all ranks in train_step

    # ------------------------------------------------------------------ start-up checks
    def _check_where_it_runs(self, backend: str) -> None:
        """The backend runs on this device and the run folder can take files (rank 0 writes them)."""
        try:
            check_backend_runs(backend, self.device)
        except ValueError as e:
            raise ConfigError(f"model.backend: {e}") from None
        if self.dist.master:
            check_output_dir(self.run_dir, "train.out_dir")

    def _check_same_tokenizer(self, path: Path, ckpt: dict[str, Any]) -> None:
        """--resume: the prepared data must use the tokenizer the checkpoint was trained with."""
        saved, mine = ckpt.get("tokenizer"), self.tok.to_dict()
        if saved == mine:
            return
        detail = ""
        if isinstance(saved, dict) and saved.get("type") == mine.get("type") == "char":
            a, b = set(str(saved.get("chars", ""))), set(mine["chars"])
            detail = f" (characters only in the checkpoint's: {''.join(sorted(a - b))!r}; only in the data's: "
            detail += f"{''.join(sorted(b - a))!r})"
        data_dir = ckpt.get("data_config", {}).get("dir", "?") if isinstance(ckpt.get("data_config"), dict) else "?"
        raise CheckpointError(
            f"--resume: {path} was trained on {data_dir} with the {_tokenizer_name(saved)} tokenizer, but the "
            f"prepared data in {self.data_cfg.dir} uses the {_tokenizer_name(mine)} tokenizer{detail}; resume with "
            "the data it was trained on, or start a fresh run"
        )

    # ------------------------------------------------------------------ state
    def autocast(self):
        if self.precision == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def state(self) -> dict[str, Any]:
        """The checkpoint payload (rank 0 writes it; every rank must call this under DDP)."""
        rng = rng_state()
        ranks = [rng]
        if self.dist.enabled:
            ranks = [None] * self.dist.world_size
            dist.all_gather_object(ranks, rng)
        return {
            **model_payload(self.model, self.tok),
            "optimizer": self.optimizer.state_dict(),
            "step": self.step,
            "schedule": {"step": self.step, "lr": lr_at(self.step, self.cfg, self.max_steps)},
            "sampler": {
                "seed": self.cfg.seed,
                "step": self.step,
                "batch_size": self.cfg.batch_size,
                "grad_accum": self.cfg.grad_accum,
                "world_size": self.dist.world_size,
            },
            "rng": rng,
            "rng_ranks": ranks,
            "bad_steps": self.bad_steps,
            "best_val_loss": self.best_val,
            "train_config": dataclasses.asdict(self.cfg),
            "data_config": dataclasses.asdict(self.data_cfg),
            "data_meta": self.meta,
        }

    def _resume(self) -> None:
        # to the CPU: the RNG states must be CPU tensors; load_state_dict moves weights and AdamW state over
        skipped: list[str] = []
        found = load_newest_good(self.run_dir, map_location="cpu", warn=lambda m: (skipped.append(m), self.log(m)))
        if found is None:
            detail = "; ".join(skipped) or "no ckpt-NNNNNNNN.pt files"
            raise CheckpointError(f"--resume: no usable checkpoint in {self.run_dir} ({detail})")
        path, ckpt = found
        saved = ckpt["model_config"]
        mine = dataclasses.asdict(self.model_cfg)
        default = dataclasses.asdict(GPTConfig())  # what a field missing from an older checkpoint meant
        diff = sorted(k for k in mine if k != "backend" and saved.get(k, default[k]) != mine[k])
        if diff:
            changes = ", ".join(f"{k}: {saved.get(k, default[k])!r} -> {mine[k]!r}" for k in diff)
            if "vocab_size" in diff and "real_vocab_size" not in saved:  # trained when the vocabulary was cut
                changes += f"; a run from before padded vocabularies: add --set model.vocab_size={saved['vocab_size']}"
            raise CheckpointError(f"--resume: {path} was trained with a different model config ({changes})")
        self._check_same_tokenizer(path, ckpt)
        try:  # a file that loads but whose entries do not fit: a named error, never a traceback
            self.model.load_state_dict(ckpt["model"])
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.step = int(ckpt["step"])
            self.bad_steps = int(ckpt.get("bad_steps", 0))
            self.best_val = float(ckpt.get("best_val_loss", float("inf")))
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise CheckpointError(f"--resume: {path} does not fit this model and optimizer: {e}") from None
        s = ckpt.get("sampler", {})
        if (s.get("batch_size"), s.get("grad_accum"), s.get("world_size")) != (
            self.cfg.batch_size,
            self.cfg.grad_accum,
            self.dist.world_size,
        ):
            self.log(f"note: the batch layout changed since {path.name}; the data order will differ")
        ranks = ckpt.get("rng_ranks") or [ckpt["rng"]]
        if len(ranks) == self.dist.world_size:
            try:
                set_rng_state(ranks[self.dist.rank])
            except (KeyError, TypeError, ValueError, RuntimeError) as e:
                raise CheckpointError(f"--resume: {path} has an unusable RNG state: {e}") from None
        else:
            torch.manual_seed(self.cfg.seed + self.dist.rank + self.step)
        saved_cfg = ckpt.get("train_config") if isinstance(ckpt.get("train_config"), dict) else {}
        changed = sorted(k for k, v in dataclasses.asdict(self.cfg).items() if saved_cfg.get(k) != v)
        if changed:
            self.log(f"note: train config differs from {path.name} in: {', '.join(changed)}")
        self.resumed_from = path
        self.log(f"resumed from {path} at step {self.step}")
        if self.dist.master:
            self._truncate_metrics(self.step)

    # ------------------------------------------------------------------ logging
    def log(self, text: str) -> None:
        if self.verbose:
            self.progress.print(text)

    def record(self, rec: dict[str, Any]) -> None:
        """Append one record to metrics.jsonl as strict JSON: a non-finite number is written as null."""
        if not self.dist.master:
            return
        line = json.dumps(strict_json(rec), allow_nan=False)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with open(self.run_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(line + "\n")

    def _set_aside_previous_run(self) -> None:
        """A fresh run in a used folder: move the earlier run's checkpoints, metrics and plot into the first
        free `previous-N/` (N = 1, 2, ...), so `--resume` can never pick up a checkpoint of the earlier run and
        nothing of it is lost. Ctrl-C waits until the move is complete."""
        old = [p for _, p in list_checkpoints(self.run_dir)]
        old += [p for p in (self.run_dir / "metrics.jsonl", self.run_dir / "loss.png") if p.is_file()]
        if not old:
            return
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

    def _truncate_metrics(self, step: int) -> None:
        """Drop records of steps after `step` (a resumed run redoes them)."""
        path = self.run_dir / "metrics.jsonl"
        if not path.is_file():
            return
        keep = []
        for line in path.read_text(encoding="utf-8", errors="surrogateescape").splitlines():
            try:
                if json.loads(line).get("step", 0) <= step:
                    keep.append(line)
            except (json.JSONDecodeError, AttributeError):  # a line cut short by a crash, or not a record
                continue
        text = "".join(k + "\n" for k in keep).encode("utf-8", errors="surrogateescape")
        atomic_write(path, lambda f: f.write(text))

    # ------------------------------------------------------------------ one step
    def accumulate_gradients(self, step: int) -> torch.Tensor:
        """Forward and backward over the step's grad_accum micro-batches; returns this rank's mean loss.

        Each micro-batch's loss is divided by grad_accum, so the summed gradient is the gradient of the mean
        loss over the whole step's windows. Under DDP the gradient all-reduce runs only after the last one.
        """
        cfg = self.cfg
        starts = self.sampler.starts(step)
        loss_sum = torch.zeros((), device=self.device, dtype=torch.float32)
        for micro in range(cfg.grad_accum):
            x, y = self.sampler.batch(step, micro, self.dist.rank, starts)
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            last = micro == cfg.grad_accum - 1
            sync = self.fwd.no_sync() if self.dist.enabled and not last else contextlib.nullcontext()
            with sync:
                with self.autocast():
                    _, loss = self.fwd(x, y)
                (loss / cfg.grad_accum).backward()
            loss_sum += loss.detach().float()
        return loss_sum / cfg.grad_accum

    def train_step(self) -> dict[str, Any]:
        """One optimizer step; skipped (weights and AdamW state untouched) when loss or gradient is not finite."""
        cfg, step = self.cfg, self.step
        t0 = time.perf_counter()
        lr = lr_at(step, cfg, self.max_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        loss = self.accumulate_gradients(step)
        # one all-reduce for the logged loss and the stop request, so every rank decides the same way
        requests = torch.tensor([float(self.stop.requested), float(self._time_up)], device=self.device)
        flags = torch.cat([loss.reshape(1), requests])
        if self.dist.enabled:
            dist.all_reduce(flags)
            flags[0] /= self.dist.world_size
        max_norm = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        loss_val, norm_val = flags[0].item(), grad_norm.item()
        # the agreed flags: a signal that lands on one rank after this all-reduce is acted on after the next step
        self._stop_agreed = flags[1].item() > 0
        self._time_up = flags[2].item() > 0
        ok = math.isfinite(loss_val) and math.isfinite(norm_val)
        if ok:
            self.optimizer.step()
            self.bad_steps = 0
        else:
            self.bad_steps += 1
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        dt = time.perf_counter() - t0
        tps = self.tokens_per_step / dt
        return {
            "step": self.step,
            "loss": loss_val,
            "lr": lr,
            "grad_norm": norm_val,
            "skipped": not ok,
            "dt": dt,
            "tokens_per_s": tps,
            "mfu": mfu(tps, self.flops_per_token, self.peak, self.dist.world_size),
        }

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean cross-entropy over the fixed validation batches (each rank evaluates its share)."""
        model = self.fwd.module if self.dist.enabled else self.fwd
        model.eval()
        total = torch.zeros(2, device=self.device, dtype=torch.float64)
        for x, y in self.val_batches:
            with self.autocast():
                _, loss = model(x.to(self.device), y.to(self.device))
            total[0] += loss.double()
            total[1] += 1
        model.train()
        if self.dist.enabled:
            dist.all_reduce(total)
        return (total[0] / total[1].clamp(min=1)).item()

    def sample(self, n_tokens: int) -> str:
        """`n_tokens` sampled after `sample_prompt` through `tritongpt.generate` (KV cache), seeded by seed and step."""
        gen = torch.Generator(device=self.device).manual_seed(self.cfg.seed + self.step)
        try:
            ids = self.tok.encode(self.cfg.sample_prompt) if self.cfg.sample_prompt else []
        except TokenizerError:
            ids = []
        if not ids:
            ids = [self.tok.eot_id if self.tok.eot_id is not None else 0]
        idx = torch.tensor([ids], dtype=torch.long, device=self.device)
        with self.autocast():
            try:
                out = generate(
                    self.model,
                    idx,
                    n_tokens,
                    temperature=self.cfg.temperature,
                    top_k=self.cfg.top_k or None,
                    generator=gen,
                    vocab_size=self.tok.vocab_size,
                )
            except GenerationError as e:  # non-finite logits: the weights diverged
                raise TrainingStopped(f"stopping at step {self.step}: sampling failed: {e}") from None
        return self.tok.decode(out[0, len(ids) :].tolist())

    def eval_and_log(self) -> float:
        t0 = time.perf_counter()
        val = self.evaluate()
        self.last_val = val
        self.best_val = min(self.best_val, val)
        rec = {"kind": "eval", "step": self.step, "val_loss": val, "val_ppl": math.exp(min(val, 50.0))}
        self._stop_if_diverged(val, rec)
        hellaswag = ""
        if self.hellaswag is not None:  # every rank scores its share; the counts are all-reduced
            hs = evaluate_hellaswag(
                self.model, self.hellaswag, self.cfg.batch_size, self.autocast, self.dist.rank, self.dist.world_size
            )
            rec.update(hs.record())
            hellaswag = f", HellaSwag acc_norm {hs.acc_norm:.4f} (n = {hs.n:,})"
        text = ""
        if self.dist.master and self.cfg.sample_tokens:
            text = self.sample(self.cfg.sample_tokens)
            rec["sample"] = text
        rec["eval_s"] = time.perf_counter() - t0
        self.record(rec)
        self.log(f"step {self.step}: val loss {val:.4f} (ppl {rec['val_ppl']:.2f}){hellaswag}")
        if text:
            self.log("  | " + text.replace("\n", "\n  | "))
        return val

    def _stop_if_diverged(self, val: float, rec: dict[str, Any]) -> None:
        """A non-finite validation loss ends the run (exit 1) with nothing saved: the weights are useless."""
        if math.isfinite(val):
            return
        self.record(rec)
        raise TrainingStopped(
            f"stopping: the validation loss is {val} at step {self.step} (the weights have diverged); no "
            f"checkpoint saved for it. {self._last_good_note()} Lower train.lr (now {self.cfg.lr:g}) or check the data"
        )

    # ------------------------------------------------------------------ checkpoints
    def save(self) -> Path | None:
        """Write this step's checkpoint (tried again after a pause if the write fails), prune, plot.

        CheckpointError on every rank if rank 0 could not write it even so; the message names the last good one.
        """
        state = self.state()  # collective under DDP
        path, error = None, None
        if self.dist.master:
            try:
                path = self._write_checkpoint(state)
            except CheckpointError as e:
                error = e
        if self.dist.enabled:  # also the barrier: every rank learns whether rank 0 saved
            failed = torch.tensor([float(error is not None)], device=self.device)
            dist.all_reduce(failed)
            if failed.item() and error is None:
                error = CheckpointError(f"rank 0 could not save the checkpoint of step {self.step} (see its message)")
        if error is not None:
            raise error
        return path

    def _write_checkpoint(self, state: dict[str, Any]) -> Path:
        """Save, trying again after each pause of SAVE_RETRY_WAITS_S when the write fails (a full disk may be
        freed meanwhile); then prune and plot. CheckpointError naming the last good checkpoint if every try fails."""
        target = checkpoint_path(self.run_dir, self.step)
        tries = 1 + len(SAVE_RETRY_WAITS_S)
        for attempt in range(tries):
            try:
                path = save_checkpoint(target, state)
                break
            except CheckpointError as e:
                if attempt == tries - 1:
                    raise CheckpointError(f"{e} ({tries} attempts). {self._last_good_note()}") from e
                wait = SAVE_RETRY_WAITS_S[attempt]
                self.log(f"warning: {e}; trying again in {wait:g} s (attempt {attempt + 2} of {tries})")
                time.sleep(wait)
        prune_checkpoints(self.run_dir, self.cfg.keep_checkpoints, upto=self.step)
        self.plot()
        return path

    def _last_good_note(self) -> str:
        """Where the newest readable checkpoint of this run is, for a message about a run that stopped."""
        for step, path in reversed(list_checkpoints(self.run_dir)):
            if step <= self.step and readable(path):
                return f"The last good checkpoint is {path} (step {step}): resume from it with --resume."
        return "This run has no earlier checkpoint."

    def plot(self) -> None:
        """loss.png from metrics.jsonl; a plot that cannot be written is a warning, never the end of the run."""
        if self.cfg.plot and self.dist.master:
            from tritongpt.plot import write_loss_png

            try:
                write_loss_png(self.run_dir / "metrics.jsonl", self.run_dir / "loss.png", title=str(self.run_dir))
            except OSError as e:
                self.log(f"warning: loss.png not written: {os_error_message(e)}")

    # ------------------------------------------------------------------ the loop
    def fit(self) -> int:
        """Train to max_steps (or the time budget): 0 when done, 130 after Ctrl-C (saved). TrainingStopped when
        the run diverged (too many bad steps, a non-finite validation loss), CheckpointError when a checkpoint
        could not be saved."""
        cfg = self.cfg
        if self.dist.master:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        n = self.model.num_params()
        vocab = f"vocab {self.model_cfg.vocab_size}"
        if self.model_cfg.real_vocab_size:
            vocab += f" = {self.model_cfg.real_vocab_size} tokens + padding"
        self.log(
            f"model {n / 1e6:.2f}M parameters ({self.model_cfg.n_layers} layers, {self.model_cfg.emb_dim} wide, "
            f"context {self.model_cfg.context_length}, {vocab}) on {self.device} "
            f"({self.precision}, {self.dist.world_size} process{'es' if self.dist.enabled else ''}); "
            f"{self.tokens_per_step:,} tokens/step, steps {self.step} -> {self.max_steps}"
        )
        self.stop.__enter__()
        t_start = time.perf_counter()
        step0, tokens_seen, window_t, window_tokens = self.step, 0, time.perf_counter(), 0
        try:
            while self.step < self.max_steps:
                s = self.train_step()
                tokens_seen += self.tokens_per_step
                window_tokens += self.tokens_per_step
                if s["skipped"]:
                    self.record(
                        {
                            "kind": "skip",
                            "step": s["step"],
                            "loss": s["loss"],
                            "grad_norm": s["grad_norm"],
                            "in_a_row": self.bad_steps,
                        }
                    )
                    self.log(
                        f"step {s['step']}: non-finite loss {s['loss']} / grad norm {s['grad_norm']}: "
                        f"update skipped ({self.bad_steps} in a row)"
                    )
                    if self.bad_steps >= cfg.max_bad_steps:
                        raise TrainingStopped(
                            f"stopping: {self.bad_steps} steps in a row had a non-finite loss or gradient "
                            f"(max_bad_steps = {cfg.max_bad_steps}); lower train.lr or check the data"
                        )
                elapsed = time.perf_counter() - t_start
                out_of_time = self._time_up
                self._time_up = bool(cfg.max_time_s) and elapsed >= cfg.max_time_s  # acted on after next step
                if self.step % cfg.log_interval == 0 or self.step == self.max_steps:
                    now = time.perf_counter()
                    tps = window_tokens / max(now - window_t, 1e-9)
                    window_t, window_tokens = now, 0
                    step_mfu = mfu(tps, self.flops_per_token, self.peak, self.dist.world_size)
                    self.record(
                        {
                            "kind": "train",
                            "step": self.step,
                            "loss": s["loss"],
                            "lr": s["lr"],
                            "grad_norm": s["grad_norm"],
                            "tokens_per_s": tps,
                            "mfu": step_mfu,
                            "tokens": self.step * self.tokens_per_step,
                            "time_s": elapsed,
                            **self._memory(),
                        }
                    )
                    s["tokens_per_s"], s["mfu"] = tps, step_mfu
                self._show(s, elapsed, step0)
                if cfg.eval_interval and self.step % cfg.eval_interval == 0 and self.step < self.max_steps:
                    self.eval_and_log()
                if self._stop_agreed:
                    path = self.save()
                    self.log(f"interrupted at step {self.step}; saved {path} (resume with --resume)")
                    return 130
                if cfg.checkpoint_interval and self.step % cfg.checkpoint_interval == 0 and self.step < self.max_steps:
                    self.save()
                if out_of_time:
                    self.log(f"time budget of {cfg.max_time_s:.0f} s reached at step {self.step}")
                    break
            if self.step > step0 or self.last_val is None:
                self.eval_and_log()
            self.save()
            total = time.perf_counter() - t_start
            self.log(
                f"done: step {self.step}, val loss {self.last_val:.4f}, {fmt_time(total)} "
                f"({tokens_seen / max(total, 1e-9):,.0f} tokens/s overall); run folder {self.run_dir}"
            )
            if self.dist.master and cfg.final_sample_tokens:
                self.log("--- sample ---\n" + self.sample(cfg.final_sample_tokens) + "\n--------------")
        except TrainingStopped:
            self.plot()
            raise
        except OutputError:
            raise
        except OSError as e:  # the run folder stopped taking files (a full disk): say where the good checkpoint is
            raise OutputError(f"cannot write {os_error_message(e)}. {self._last_good_note()}") from e
        finally:
            self.stop.__exit__()
        return 0

    def _memory(self) -> dict[str, float]:
        if self.device.type != "cuda":
            return {}
        return {"peak_mem_gib": torch.cuda.max_memory_allocated(self.device) / 2**30}

    def _show(self, s: dict[str, Any], elapsed: float, step0: int) -> None:
        done = self.step - step0
        left = (self.max_steps - self.step) * elapsed / max(done, 1)
        parts = [
            f"step {self.step}/{self.max_steps} {bar(self.step / max(self.max_steps, 1))}",
            f"loss {s['loss']:.4f}",
            f"lr {s['lr']:.2e}",
            f"{fmt_rate(s['tokens_per_s'])} tok/s",
        ]
        if s["mfu"] is not None:
            parts.append(f"MFU {100 * s['mfu']:.1f}%")
        parts.append(f"{fmt_time(elapsed)} elapsed, {fmt_time(left)} left")
        self.progress.update(" | ".join(parts), force=self.step % self.cfg.log_interval == 0)


# ---------------------------------------------------------------------------------------------------------
# Command line


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gpt train", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config", required=True, help="preset name (configs/NAME.toml) or path")
    add_set_argument(p)
    p.add_argument("--resume", action="store_true", help="continue from the newest good checkpoint in out_dir")
    p.add_argument("--out", help="run folder (overrides train.out_dir)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        model_cfg, train_cfg, data_cfg = load_configs(args.config, args.set)
        if args.out:
            train_cfg = dataclasses.replace(train_cfg, out_dir=args.out)
        trainer = Trainer(model_cfg, train_cfg, data_cfg, resume=args.resume)
        code = trainer.fit()
    except TrainingStopped as e:
        print(f"gpt train: error: {e}", file=sys.stderr)
        code = 1
    except (ConfigError, DataError, CheckpointError, TokenizerError) as e:
        print(f"gpt train: error: {e}", file=sys.stderr)
        code = 2
    except OSError as e:  # a run folder that stopped taking files (full disk, removed, read-only)
        print(f"gpt train: error: {os_error_message(e)}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        print("\ngpt train: interrupted (no checkpoint written for the unfinished step)", file=sys.stderr)
        code = 130
    if dist.is_initialized():
        dist.destroy_process_group()
    return code


if __name__ == "__main__":
    sys.exit(main())
