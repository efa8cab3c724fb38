"""GPT-2 from scratch: embeddings, stacked transformer blocks, final LayerNorm and a language-model head.

No torch.nn.LayerNorm, GELU, MultiheadAttention or Transformer: the layer math is one implementation of
`tritongpt.kernels` -- the from-scratch reference ("reference"), torch's fused ops ("native"), our Triton kernels
("triton"), or "auto" (Triton on CUDA, native elsewhere) -- picked by `GPTConfig.backend` through `Ops`.

    from tritongpt.config import load_model_config
    from tritongpt.model import GPT
    model = GPT(load_model_config("gpt2-124m"))
    logits, loss = model(idx, targets)      # idx, targets: (B, T) token ids; logits None when training on triton
    out = model.generate(idx, max_new_tokens=50, temperature=0.8, top_k=200)   # tritongpt/generate.py
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from tritongpt.backend import Ops
from tritongpt.config import ConfigError, GPTConfig


class LayerNorm(nn.Module):
    """LayerNorm over the last dimension with a learnable scale (weight) and shift (bias).

    Under autocast the Triton LayerNorm writes its output in the autocast dtype, for the matmul it feeds.
    `residual_stream=True` marks a LayerNorm whose output is the residual stream itself (post-norm): it runs
    with autocast off, so the stream keeps its dtype whatever the backend."""

    def __init__(self, dim: int, eps: float, ops: Ops, residual_stream: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.eps = eps
        self.ops = ops
        self.residual_stream = residual_stream

    def _dtype_context(self, x: torch.Tensor):
        if self.residual_stream and torch.is_autocast_enabled(x.device.type):
            return torch.autocast(x.device.type, enabled=False)
        return contextlib.nullcontext()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with self._dtype_context(x):
            return self.ops.layer_norm(x, self.weight, self.bias, self.eps)

    def add_forward(self, x: torch.Tensor, residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(layer_norm(x + residual), x + residual) in one fused pass where the backend has one."""
        with self._dtype_context(x):
            return self.ops.add_layer_norm(x, residual, self.weight, self.bias, self.eps)


class KVCache:
    """Keys and values of past positions for every layer, preallocated to the context length.

    `k[i]`, `v[i]`: layer i's buffers, (B, nh, context_length, hs). `model(idx, kv_cache=cache, start_pos=p)`
    writes the keys and values of idx's positions p..p+T-1 and attends over positions 0..p+T-1. Positions are
    absolute (learned embeddings), so entries stay valid only while the sequence keeps its start.
    """

    def __init__(self, cfg: GPTConfig, batch_size: int, device=None, dtype: torch.dtype = torch.float32) -> None:
        shape = (cfg.n_layers, batch_size, cfg.n_heads, cfg.context_length, cfg.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)

    def __getitem__(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.k[layer], self.v[layer]


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention with a causal mask: one fused q/k/v projection, then an output projection."""

    def __init__(self, cfg: GPTConfig, ops: Ops) -> None:
        super().__init__()
        self.n_heads = cfg.n_heads
        self.c_attn = nn.Linear(cfg.emb_dim, 3 * cfg.emb_dim, bias=cfg.qkv_bias)  # q, k, v side by side
        self.c_proj = nn.Linear(cfg.emb_dim, cfg.emb_dim)
        self.dropout = cfg.drop_rate
        self.ops = ops

    def qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        # (B, T, C) -> (B, nh, T, hs): a strided view, no copy; the kernels take strides.
        shape = (B, T, self.n_heads, C // self.n_heads)
        return tuple(t.view(shape).transpose(1, 2) for t in (q, k, v))

    def project(self, y: torch.Tensor) -> torch.Tensor:
        B, nh, T, hs = y.shape
        y = y.transpose(1, 2).reshape(B, T, nh * hs)  # re-assemble heads: (B, T, C)
        return self.c_proj(y)

    def forward(self, x: torch.Tensor, kv_cache=None, start_pos: int = 0) -> torch.Tensor:
        q, k, v = self.qkv(x)
        if kv_cache is not None:  # this layer's (k, v) buffers: store positions start_pos.., attend over 0..end
            k_buf, v_buf = kv_cache
            end = start_pos + x.shape[1]
            k_buf[:, :, start_pos:end] = k
            v_buf[:, :, start_pos:end] = v
            k, v = k_buf[:, :, :end], v_buf[:, :, :end]  # (B, nh, end, hs); causal mask is bottom-right aligned
        y = self.ops.attention(q, k, v, causal=True, dropout_p=self.dropout if self.training else 0.0)
        return self.project(y)


class MLP(nn.Module):
    """Linear(C, 4C) -> GELU (tanh approximation) -> Linear(4C, C)."""

    def __init__(self, cfg: GPTConfig, ops: Ops) -> None:
        super().__init__()
        self.c_fc = nn.Linear(cfg.emb_dim, 4 * cfg.emb_dim)
        self.c_proj = nn.Linear(4 * cfg.emb_dim, cfg.emb_dim)
        self.ops = ops

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.ops.name(x) == "triton":  # the bias added inside our fused bias+GELU kernel
            return self.c_proj(self.ops.bias_gelu(F.linear(x, self.c_fc.weight), self.c_fc.bias))
        # elsewhere the bias goes into the matmul (addmm), as torch's own Linear does; a separate add is a pass
        return self.c_proj(self.ops.gelu(self.c_fc(x)))


class Block(nn.Module):
    """One transformer block: attention and MLP, each with a residual connection and a LayerNorm.

    pre-norm (GPT-2):     x = x + attn(ln_1(x));  x = x + mlp(ln_2(x))
    post-norm (2017):     x = ln_1(x + attn(x));  x = ln_2(x + mlp(x))
    Residual dropout is applied to each branch's output before it is added.
    """

    def __init__(self, cfg: GPTConfig, ops: Ops) -> None:
        super().__init__()
        self.pre_norm = cfg.norm_placement == "pre"
        self.ln_1 = LayerNorm(cfg.emb_dim, cfg.ln_eps, ops, residual_stream=not self.pre_norm)
        self.attn = CausalSelfAttention(cfg, ops)
        self.ln_2 = LayerNorm(cfg.emb_dim, cfg.ln_eps, ops, residual_stream=not self.pre_norm)
        self.mlp = MLP(cfg, ops)
        self.resid_drop = nn.Dropout(cfg.drop_rate)

    def forward(self, x: torch.Tensor, kv_cache=None, start_pos: int = 0) -> torch.Tensor:
        if self.pre_norm:
            h, x = self.ln_2.add_forward(self.resid_drop(self.attn(self.ln_1(x), kv_cache, start_pos)), x)
            return x + self.resid_drop(self.mlp(h))
        x, _ = self.ln_1.add_forward(self.resid_drop(self.attn(x, kv_cache, start_pos)), x)
        x, _ = self.ln_2.add_forward(self.resid_drop(self.mlp(x)), x)
        return x


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.config = cfg
        self.ops = Ops(cfg.backend)
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(cfg.vocab_size, cfg.emb_dim),  # token embedding
                wpe=nn.Embedding(cfg.context_length, cfg.emb_dim),  # learned position embedding
                drop=nn.Dropout(cfg.drop_rate),
                h=nn.ModuleList(Block(cfg, self.ops) for _ in range(cfg.n_layers)),
                ln_f=LayerNorm(cfg.emb_dim, cfg.ln_eps, self.ops),
            )
        )
        self.lm_head = nn.Linear(cfg.emb_dim, cfg.vocab_size, bias=False)
        if cfg.tie_weights:
            self.lm_head.weight = self.transformer.wte.weight
        self.apply(self._init_weights)
        # GPT-2: residual projections scaled by 1/sqrt(2 * n_layers), one per residual branch.
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layers))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def set_backend(self, backend: str) -> None:
        """Switch every layer to another backend in place (the weights are untouched)."""
        self.config.backend = backend
        self.ops.__init__(backend)

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        kv_cache: KVCache | None = None,
        start_pos: int = 0,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """idx: (B, T) token ids -> logits (B, T, vocab); with targets (B, T), also the mean cross-entropy over
        the positions whose target is not -1 (fp32; 0 if every target is -1).

        vocab is `config.real_vocab`: the rows of a padded head (vocab_size > real_vocab_size) give no logits
        and take no part in the loss's softmax. When training (`model.train()`) with targets on the triton
        backend (or "auto" on CUDA), the head and the loss run as one chunked kernel
        (`linear_cross_entropy`) that never materialises the logits: the result is (None, loss).
        Evaluation (`model.eval()`), calls without targets and generation always return the logits.

        With `kv_cache` (generation), idx holds positions start_pos..start_pos+T-1 of a sequence whose earlier
        positions are in the cache; their keys and values are added to it, and only the last position's
        logits (B, 1, vocab) are computed.
        """
        B, T = idx.shape
        if start_pos + T > self.config.context_length:
            raise ValueError(f"sequence length {start_pos + T} exceeds the context length {self.config.context_length}")
        if kv_cache is not None and targets is not None:
            raise ValueError("targets (training) and kv_cache (generation) do not go together")
        if start_pos and kv_cache is None:
            raise ValueError(f"start_pos={start_pos} needs a kv_cache holding the earlier positions")
        pos = torch.arange(start_pos, start_pos + T, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))  # (B, T, C)
        for i, block in enumerate(self.transformer.h):
            x = block(x, None if kv_cache is None else kv_cache[i], start_pos)
        if kv_cache is not None:
            x = x[:, -1:]  # generation needs only the next-token logits
        x = self.transformer.ln_f(x)
        vocab = self.config.real_vocab
        if targets is not None and self.training and self.ops.fuses_linear_cross_entropy(x):
            # head and loss in one chunked kernel: the (B * T, vocab) logits never exist in full
            loss = self.ops.linear_cross_entropy(x.flatten(0, 1), self.lm_head.weight, targets.flatten(), -1, vocab)
            return None, loss
        logits = self.lm_head(x)  # (B, T, vocab_size)
        if vocab < self.config.vocab_size:
            logits = logits[..., :vocab]  # padding rows are no tokens: (B, T, real_vocab)
        loss = None
        if targets is not None:
            targets = targets.flatten()
            total = F.cross_entropy(logits.float().flatten(0, 1), targets, ignore_index=-1, reduction="sum")
            loss = total / (targets != -1).sum().clamp(min=1)
        return logits, loss

    # ------------------------------------------------------------------ generation and pretrained weights
    def generate(self, idx: torch.Tensor, max_new_tokens: int, **kwargs) -> torch.Tensor:
        """idx (B, T) followed by up to max_new_tokens sampled tokens; options in `tritongpt.generate.generate`."""
        from tritongpt.generate import generate

        return generate(self, idx, max_new_tokens, **kwargs)

    @classmethod
    def from_hf(cls, path, **kwargs) -> GPT:
        """A GPT from a local Hugging Face GPT-2 folder; options in `tritongpt.hf.from_hf`."""
        from tritongpt.hf import from_hf

        return from_hf(path, **kwargs)

    # ------------------------------------------------------------------ size
    def num_params(self, non_embedding: bool = False) -> int:
        """Parameters, counting tied weights once; `non_embedding` leaves out the position embedding."""
        n = sum(p.numel() for p in self.parameters())  # parameters() yields a shared tensor once
        if non_embedding:
            n -= self.transformer.wpe.weight.numel()
        return n

    def size_mb(self, dtype: torch.dtype = torch.float32) -> float:
        """Size of the parameters in MB (2**20 bytes) when stored in `dtype`."""
        return self.num_params() * torch.finfo(dtype).bits / 8 / 2**20


# ---------------------------------------------------------------------------------------------------------
# Size from the config alone: counted before anything is built, so an impossible size fails at once

TRAINING_BYTES_PER_PARAM = 16  # fp32 weights, gradients and AdamW's two moments


def param_count(cfg: GPTConfig, non_embedding: bool = False) -> int:
    """`GPT(cfg).num_params(non_embedding)` from the config alone (tied weights counted once):

    embeddings V C + T C; per layer 12 C^2 + 10 C (+ 3 C q/k/v bias); final LayerNorm 2 C; head V C if untied.
    """
    V, T, C, L = cfg.vocab_size, cfg.context_length, cfg.emb_dim, cfg.n_layers
    per_layer = 12 * C * C + 10 * C + (3 * C if cfg.qkv_bias else 0)  # 2 LayerNorms, attention, MLP
    n = V * C + T * C + L * per_layer + 2 * C + (0 if cfg.tie_weights else V * C)
    return n - T * C if non_embedding else n


class ModelTooLarge(ConfigError):
    """A config whose model cannot fit in the memory of the device it is meant for; the message has the numbers."""


def check_model_fits(cfg: GPTConfig, device: torch.device | str, bytes_per_param: int, purpose: str) -> int:
    """The parameter count of `cfg`, after making sure `bytes_per_param` bytes per parameter (4 for fp32
    weights, `TRAINING_BYTES_PER_PARAM` for training) fit in the device's total memory; ModelTooLarge names
    the shape, the count and both sizes otherwise. A lower bound: activations come on top."""
    from tritongpt.flops import device_memory_bytes

    n = param_count(cfg)
    need = n * bytes_per_param
    have = device_memory_bytes(device)
    if have is not None and need > have:
        raise ModelTooLarge(
            f"the model (n_layers={cfg.n_layers}, emb_dim={cfg.emb_dim}, vocab_size={cfg.vocab_size}, "
            f"context_length={cfg.context_length}) has {n:,} parameters: {purpose} needs at least "
            f"{need / 2**30:,.1f} GiB ({bytes_per_param} bytes per parameter), but {device} has "
            f"{have / 2**30:,.1f} GiB in all"
        )
    return n
