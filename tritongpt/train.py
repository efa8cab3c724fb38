"""`gpt train`: train a GPT from a preset, with exact resume, metrics, samples and DDP.

    gpt prepare --config demo && gpt train --config demo         # the CPU demo
    gpt train --config demo --set train.max_steps=200 model.n_layers=2
    gpt train --config demo --resume                             # continue from the newest good checkpoint
    torchrun --nproc_per_node 8 -m tritongpt.train --config train-gpt2-124m

A preset's `[model]`, `[train]` and `[data]` tables build `GPTConfig`, `TrainConfig` and `DataConfig`
(`tritongpt.config`); `gpt prepare` writes the token files `[data]` names. A model `vocab_size` larger than the
data's vocabulary is padding (nanoGPT's 50304 for GPT-2's 50257 keeps the head's matmul on tensor-core sizes):
`real_vocab_size` is set to the data's, so the extra rows are never targets, never sampled and not exported.

One optimizer step reads `batch_size * grad_accum * world_size` windows of `context_length` tokens; the
learning rate rises linearly over `warmup_steps`, then follows a cosine down to `min_lr` at `lr_decay_steps`
(default: the last step) and stays there. AdamW decays only the matrices (linear weights and embeddings).

The run folder (`out_dir`) holds `metrics.jsonl` and `loss.png` (`tritongpt.metrics`) and the checkpoints
(`tritongpt.checkpoint.Checkpointer`: the newest `keep_checkpoints`, an earlier run set aside into `previous-N/`),
and one writer: a second `gpt train` into it while one runs is refused, naming the first (`.gpt.lock`).
A checkpoint has everything a step depends on (weights, AdamW state, step, sampler position, every RNG), so on
CPU a resumed run is bit-identical to one that never stopped. Ctrl-C (or SIGTERM) finishes the current step,
saves and exits. A step whose loss or gradient norm is not finite is skipped (the weights are not touched);
after `max_bad_steps` of them in a row, or at a non-finite validation loss, the run stops with exit status 1
and saves nothing. A checkpoint that cannot be written even after pauses stops the run with exit status 2,
naming the last good checkpoint.

Limits: MFU is reported against the dense bf16 peak of the GPUs in `tritongpt.flops`; on CPU and on
unknown GPUs it is left out. A resumed DDP run restores each rank's RNG only when the world size is the same.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
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
from tritongpt.checkpoint import Checkpointer, CheckpointError, model_payload, restore_rng, rng_state
from tritongpt.config import (
    ConfigError,
    DataConfig,
    GPTConfig,
    TrainConfig,
    add_set_argument,
    fit_vocabulary,
    load_configs,
)  # fmt: skip
from tritongpt.data import DataError, open_training_data
from tritongpt.files import OutputError, StdoutError, StopRequest, check_output_dir, folder_lock, os_error_message
from tritongpt.flops import device_peak_flops, flops_per_token
from tritongpt.generate import GenerationError, generate, training_sample_ids
from tritongpt.hellaswag import evaluate_hellaswag, load_hellaswag
from tritongpt.metrics import MetricsLog
from tritongpt.model import GPT, TRAINING_BYTES_PER_PARAM, check_model_fits
from tritongpt.tokenizer import TokenizerError

# ---------------------------------------------------------------------------------------------------------
# Pieces with a formula: schedule, parameter groups


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
    """Builds model, optimizer and data from the three configs; `fit()` runs the loop. The run folder's files
    are its `checkpoints` (a Checkpointer) and `metrics` (a MetricsLog); the DDP collectives are here."""

    def __init__(
        self, model_cfg: GPTConfig, cfg: TrainConfig, data_cfg: DataConfig, resume: bool = False, verbose: bool = True
    ) -> None:
        self.cfg, self.data_cfg = cfg, data_cfg
        self.dist, self.device = setup_distributed(cfg.device)
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
        try:
            check_backend_runs(model_cfg.backend, self.device)
        except ValueError as e:
            raise ConfigError(f"model.backend: {e}") from None
        if self.dist.master:
            check_output_dir(self.run_dir, "train.out_dir")

        # data: every shard, windows drawn across them; the vocabulary the data's (the rest of the model's padding)
        ranks = self.dist.world_size
        data = open_training_data(
            data_cfg, model_cfg.context_length, cfg.batch_size, cfg.seed, cfg.grad_accum, ranks, self.dist.rank,
            cfg.eval_batches,
        )  # fmt: skip
        self.meta, self.tok, self.sampler, self.val_batches = data
        self.model_cfg = model_cfg = fit_vocabulary(model_cfg, self.tok.vocab_size, data_cfg.dir)
        T = model_cfg.context_length
        self.tokens_per_step = cfg.batch_size * cfg.grad_accum * ranks * T
        self.max_steps = math.ceil(cfg.max_tokens / self.tokens_per_step) if cfg.max_tokens else cfg.max_steps
        self.hellaswag = load_hellaswag(cfg.hellaswag, self.tok, T, cfg.hellaswag_limit) if cfg.hellaswag else None
        sampling = cfg.sample_tokens or cfg.final_sample_tokens
        self.sample_ids = training_sample_ids(cfg.sample_prompt, self.tok, data_cfg.dir) if sampling else []

        # model and optimizer: the same seed on every rank gives the same initial weights
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
        check_model_fits(model_cfg, self.device, TRAINING_BYTES_PER_PARAM, "training with AdamW in fp32")
        self.model = GPT(model_cfg).to(self.device)
        groups, fused = param_groups(self.model, cfg.weight_decay), self.device.type == "cuda"
        self.optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, fused=fused)
        if self.dist.rank:  # dropout masks differ between ranks
            torch.manual_seed(cfg.seed + self.dist.rank)

        # the run folder's files
        master = self.dist.master
        self.metrics = MetricsLog(
            self.run_dir, self.tokens_per_step, self.max_steps, cfg.log_interval, plot=cfg.plot, enabled=master,
            verbose=verbose, flops_per_token=flops_per_token(self.model), peak_flops=device_peak_flops(self.device),
            world_size=ranks, device=self.device,
        )  # fmt: skip
        self.checkpoints = Checkpointer(self.run_dir, cfg.keep_checkpoints, self.log)
        self.step, self.bad_steps = 0, 0
        self.best_val, self.last_val = float("inf"), None
        self.resumed_from: Path | None = None
        if resume:
            self._resume()

        self.fwd = torch.compile(self.model) if cfg.compile else self.model
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            self.fwd = DDP(self.fwd, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.stop = StopRequest("finishing this step, saving a checkpoint, then stopping", self.log)  # this rank's
        self._stop_agreed = False  # some rank had a stop request at the last step's all-reduce
        self._time_requested = False  # this rank's clock says max_time_s has passed
        self._time_up = False  # some rank's clock said so at the last step's all-reduce

    def log(self, text: str) -> None:
        self.metrics.log(text)

    def autocast(self):
        if self.precision == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # ------------------------------------------------------------------ checkpoints
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
        """Continue from the newest usable checkpoint (`Checkpointer.resume_from` checks that it fits)."""
        train_cfg = dataclasses.asdict(self.cfg)
        path, ckpt = self.checkpoints.resume_from(
            self.model_cfg, self.tok.to_dict(), self.data_cfg.dir, train_cfg, self.dist.world_size
        )
        try:  # a file that loads but whose entries do not fit: a named error, never a traceback
            self.model.load_state_dict(ckpt["model"])
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.step = int(ckpt["step"])
            self.bad_steps = int(ckpt.get("bad_steps", 0))
            self.best_val = float(ckpt.get("best_val_loss", float("inf")))
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise CheckpointError(f"--resume: {path} does not fit this model and optimizer: {e}") from None
        restore_rng(ckpt, path, self.dist.rank, self.dist.world_size, self.cfg.seed + self.dist.rank + self.step)
        self.resumed_from = path
        self.log(f"resumed from {path} at step {self.step}")

    def save(self) -> Path | None:
        """Write this step's checkpoint (rank 0, through the Checkpointer), then redraw the plot.

        CheckpointError on every rank if rank 0 could not write it; the message names the last good one.
        """
        state = self.state()  # collective under DDP
        path, error = None, None
        if self.dist.master:
            try:
                path = self.checkpoints.save(self.step, state)
                self.metrics.plot()
            except CheckpointError as e:
                error = e
        other = CheckpointError(f"rank 0 could not save the checkpoint of step {self.step} (see its message)")
        self._raise_on_every_rank(error, other)  # also the barrier: every rank learns whether rank 0 saved
        return path

    def _raise_on_every_rank(self, error: Exception | None, other: Exception) -> None:
        """Rank 0's `error` raised on rank 0, and `other` on every other rank, where rank 0 had one (under DDP
        a collective: every rank calls it)."""
        if self.dist.enabled:
            failed = torch.tensor([float(error is not None)], device=self.device)
            dist.all_reduce(failed)
            if failed.item() and error is None:
                error = other
        if error is not None:
            raise error

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
        # one all-reduce for the logged loss and the stop requests, so every rank decides the same way
        requests = torch.tensor([float(self.stop.requested), float(self._time_requested)], device=self.device)
        flags = torch.cat([loss.reshape(1), requests])
        if self.dist.enabled:
            dist.all_reduce(flags)
            flags[0] /= self.dist.world_size
        max_norm = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        loss_val, norm_val = flags[0].item(), grad_norm.item()
        # the agreed flags: a signal that lands on one rank after this all-reduce is acted on after the next step
        self._stop_agreed, self._time_up = flags[1].item() > 0, flags[2].item() > 0
        ok = math.isfinite(loss_val) and math.isfinite(norm_val)
        if ok:
            self.optimizer.step()
            self.bad_steps = 0
        else:
            self.bad_steps += 1
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        dt = time.perf_counter() - t0
        return {"step": self.step, "loss": loss_val, "lr": lr, "grad_norm": norm_val, "skipped": not ok, "dt": dt}

    def _skipped(self, s: dict[str, Any]) -> None:
        """A step whose update was skipped: recorded and said; TrainingStopped after max_bad_steps in a row."""
        self.metrics.skipped(s, self.bad_steps)
        if self.bad_steps >= self.cfg.max_bad_steps:
            raise TrainingStopped(
                f"stopping: {self.bad_steps} steps in a row had a non-finite loss or gradient "
                f"(max_bad_steps = {self.cfg.max_bad_steps}); lower train.lr or check the data"
            )

    # ------------------------------------------------------------------ evaluation and samples
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
        ids = self.sample_ids
        idx = torch.tensor([ids], dtype=torch.long, device=self.device)
        with self.autocast():
            try:
                sampling = {"temperature": self.cfg.temperature, "top_k": self.cfg.top_k or None, "generator": gen}
                out = generate(self.model, idx, n_tokens, **sampling, vocab_size=self.tok.vocab_size)
            except GenerationError as e:  # non-finite logits: the weights diverged
                raise TrainingStopped(f"stopping at step {self.step}: sampling failed: {e}") from None
        return self.tok.decode(out[0, len(ids) :].tolist())

    def eval_and_log(self) -> float:
        """Validation loss (and HellaSwag, and a sample) recorded and said; TrainingStopped, with nothing saved,
        when the loss is not finite: the weights have diverged."""
        t0 = time.perf_counter()
        val = self.evaluate()
        self.last_val = val
        self.best_val = min(self.best_val, val)
        rec = {"kind": "eval", "step": self.step, "val_loss": val, "val_ppl": math.exp(min(val, 50.0))}
        if not math.isfinite(val):
            self.metrics.record(rec)
            raise TrainingStopped(
                f"stopping: the validation loss is {val} at step {self.step} (the weights have diverged); no "
                f"checkpoint saved for it. {self.checkpoints.last_good_note(self.step)} Lower train.lr (now "
                f"{self.cfg.lr:g}) or check the data"
            )
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
        self.metrics.record(rec)
        self.log(f"step {self.step}: val loss {val:.4f} (ppl {rec['val_ppl']:.2f}){hellaswag}")
        if text:
            self.log("  | " + text.replace("\n", "\n  | "))
        return val

    # ------------------------------------------------------------------ the loop
    def describe(self) -> str:
        """The run in one line: model, device, precision, processes, tokens per step, steps."""
        c = self.model_cfg
        vocab = f"vocab {c.vocab_size}" + (f" = {c.real_vocab_size} tokens + padding" if c.real_vocab_size else "")
        return (
            f"model {self.model.num_params() / 1e6:.2f}M parameters ({c.n_layers} layers, {c.emb_dim} wide, "
            f"context {c.context_length}, {vocab}) on {self.device} "
            f"({self.precision}, {self.dist.world_size} process{'es' if self.dist.enabled else ''}); "
            f"{self.tokens_per_step:,} tokens/step, steps {self.step} -> {self.max_steps}"
        )

    def fit(self) -> int:
        """Train to max_steps (or the time budget): 0 when done, 130 after Ctrl-C (saved). TrainingStopped when
        the run diverged (too many bad steps, a non-finite validation loss), CheckpointError when a checkpoint
        could not be saved, OutputError when another process writes into the run folder.

        Nothing in the run folder changes before the first line is out (a standard output that fails, a full
        disk say, fails here) and the folder's lock is held (`tritongpt.files.folder_lock`: one writer); only
        then is an earlier run set aside, or the records a resumed run redoes dropped from metrics.jsonl."""
        self.log(self.describe())
        with contextlib.ExitStack() as held:
            error = None
            if self.dist.master:  # rank 0 writes the folder; under DDP every rank learns whether it may
                try:
                    self.run_dir.mkdir(parents=True, exist_ok=True)
                    held.enter_context(folder_lock(self.run_dir, "gpt train"))
                except OSError as e:
                    error = e
            self._raise_on_every_rank(error, OutputError(f"rank 0 could not take {self.run_dir} (see its message)"))
            if self.dist.master and self.resumed_from is not None:
                self.metrics.truncate(self.step)
            elif self.dist.master:
                self.checkpoints.set_aside_previous_run()
            return self._loop()

    def _loop(self) -> int:
        cfg, step0 = self.cfg, self.step
        self.metrics.start(step0)

        def every(interval: int) -> bool:  # due at this step, and not the last (the end evaluates and saves)
            return bool(interval) and self.step % interval == 0 and self.step < self.max_steps

        try:
            with self.stop:
                while self.step < self.max_steps:
                    s = self.train_step()
                    if s["skipped"]:
                        self._skipped(s)
                    self._time_requested = bool(cfg.max_time_s) and self.metrics.elapsed >= cfg.max_time_s
                    self.metrics.step(s)
                    if every(cfg.eval_interval):
                        self.eval_and_log()
                    if self._stop_agreed:
                        path = self.save()
                        self.log(f"interrupted at step {self.step}; saved {path} (resume with --resume)")
                        return 130
                    if every(cfg.checkpoint_interval):
                        self.save()
                    if self._time_up:
                        self.log(f"time budget of {cfg.max_time_s:.0f} s reached at step {self.step}")
                        break
                if self.step > step0 or self.last_val is None:
                    self.eval_and_log()
                self.save()
                self.log(
                    f"done: step {self.step}, val loss {self.last_val:.4f}, {self.metrics.overall()}; "
                    f"run folder {self.run_dir}"
                )
                if self.dist.master and cfg.final_sample_tokens:
                    self.log("--- sample ---\n" + self.sample(cfg.final_sample_tokens) + "\n--------------")
        except TrainingStopped:
            self.metrics.plot()
            raise
        except OutputError:
            raise
        except OSError as e:  # the run folder stopped taking files (a full disk): say where the good checkpoint is
            what = f"cannot write {os_error_message(e)}" if e.filename else os_error_message(e)
            raise OutputError(f"{what}. {self.checkpoints.last_good_note(self.step)}") from e
        except StdoutError as e:
            raise StdoutError(f"{e}. {self.checkpoints.last_good_note(self.step)}") from None
        return 0


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
        code = Trainer(model_cfg, train_cfg, data_cfg, resume=args.resume).fit()
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
        # The trainer (its DDP wrapper holds the process group) is in reference cycles: collect it first, so that
        # the group and gloo's worker threads end here, not while the interpreter is torn down (an abort).
        gc.collect()
        dist.destroy_process_group()
    return code


if __name__ == "__main__":  # torchrun -m tritongpt.train: through the dispatcher's rules for Ctrl-C and stdout
    from tritongpt.cli import main as gpt

    sys.exit(gpt(["train", *sys.argv[1:]]))
