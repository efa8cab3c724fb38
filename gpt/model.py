"""GPT-2 from scratch: embeddings, stacked transformer blocks, final LayerNorm and a language-model head.

No torch.nn.LayerNorm, GELU, MultiheadAttention or Transformer: the layer math is `kernels.reference`
(backend "torch") or the Triton kernels (backend "triton"), picked by `GPTConfig.backend` through `Ops`.

    from gpt.config import load_model_config
    from gpt.model import GPT
    model = GPT(load_model_config("gpt2-124m"))
    logits, loss = model(idx, targets)      # idx, targets: (B, T) token ids
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from gpt.config import GPTConfig
from gpt.ops import Ops


class LayerNorm(nn.Module):
    """LayerNorm over the last dimension with a learnable scale (weight) and shift (bias)."""

    def __init__(self, dim: int, eps: float, ops: Ops) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.eps = eps
        self.ops = ops

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ops.layer_norm(x, self.weight, self.bias, self.eps)

    def add_forward(self, x: torch.Tensor, residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(layer_norm(x + residual), x + residual) in one fused pass where the backend has one."""
        return self.ops.add_layer_norm(x, residual, self.weight, self.bias, self.eps)


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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x)
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
        h = F.linear(x, self.c_fc.weight)  # bias added inside the fused bias+GELU
        return self.c_proj(self.ops.bias_gelu(h, self.c_fc.bias))


class Block(nn.Module):
    """One transformer block: attention and MLP, each with a residual connection and a LayerNorm.

    pre-norm (GPT-2):     x = x + attn(ln_1(x));  x = x + mlp(ln_2(x))
    post-norm (2017):     x = ln_1(x + attn(x));  x = ln_2(x + mlp(x))
    Residual dropout is applied to each branch's output before it is added.
    """

    def __init__(self, cfg: GPTConfig, ops: Ops) -> None:
        super().__init__()
        self.pre_norm = cfg.norm_placement == "pre"
        self.ln_1 = LayerNorm(cfg.emb_dim, cfg.ln_eps, ops)
        self.attn = CausalSelfAttention(cfg, ops)
        self.ln_2 = LayerNorm(cfg.emb_dim, cfg.ln_eps, ops)
        self.mlp = MLP(cfg, ops)
        self.resid_drop = nn.Dropout(cfg.drop_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pre_norm:
            h, x = self.ln_2.add_forward(self.resid_drop(self.attn(self.ln_1(x))), x)
            return x + self.resid_drop(self.mlp(h))
        x, _ = self.ln_1.add_forward(self.resid_drop(self.attn(x)), x)
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
        self, idx: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """idx: (B, T) token ids -> logits (B, T, vocab); with targets (B, T), also the mean cross-entropy."""
        B, T = idx.shape
        if T > self.config.context_length:
            raise ValueError(f"sequence length {T} exceeds the context length {self.config.context_length}")
        pos = torch.arange(T, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))  # (B, T, C)
        for block in self.transformer.h:
            x = block(x)
        logits = self.lm_head(self.transformer.ln_f(x))  # (B, T, vocab)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-1)
        return logits, loss

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
