"""torch's own fused ops under the public names: the `native` implementation, what nanoGPT-style code runs.

    from tritongpt import kernels
    ops = kernels.implementation("native")

F.layer_norm, F.gelu(approximate="tanh"), F.scaled_dot_product_attention (SDPA, which dispatches to
FlashAttention-2, cuDNN, memory-efficient or math kernels) and F.linear + F.cross_entropy, with the
signatures and semantics of `tritongpt.kernels.reference`. Where torch's semantics differ from ours, these
functions follow ours:

- causal attention with Tq != Tk is bottom-right aligned (query i sees keys j <= i + Tk - Tq, the KV-cache
  case); SDPA's `is_causal` aligns top-left, so Tq < Tk uses `causal_lower_right`, and for Tq > Tk the first
  Tq - Tk query rows, which see no key, output zeros (as our kernel does) while the rest run as a square
  causal block;
- bias_gelu adds the bias in x's dtype, as an nn.Linear's fused bias does under autocast (the bias is a
  separate argument only so the Triton implementation can fuse the add into the GELU);
- linear_cross_entropy of a batch whose targets are all ignored is 0 (F.cross_entropy's mean gives 0/0).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.attention.bias import causal_lower_right


def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, eps: float = 1e-5) -> torch.Tensor:
    """F.layer_norm over the last dimension."""
    return F.layer_norm(x, (x.shape[-1],), weight, bias, eps)


def add_layer_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, eps: float = 1e-5
) -> tuple[torch.Tensor, torch.Tensor]:
    """(layer_norm(x + residual), x + residual): the add and F.layer_norm as two ops."""
    s = x + residual
    return F.layer_norm(s, (s.shape[-1],), weight, bias, eps), s


def gelu(x: torch.Tensor) -> torch.Tensor:
    """F.gelu with the tanh approximation."""
    return F.gelu(x, approximate="tanh")


def bias_gelu(x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """gelu(x + bias), the bias added in x's dtype."""
    return F.gelu(x + bias.to(x.dtype), approximate="tanh")


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool = True,
    dropout_p: float = 0.0,
    scale: float | None = None,
) -> torch.Tensor:
    """SDPA with our causal alignment: q (B, H, Tq, D); k, v (B, H, Tk, D) -> (B, H, Tq, D)."""
    tq, tk = q.shape[-2], k.shape[-2]
    if not causal or tq == tk:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=causal, scale=scale)
    if tq < tk:  # a block of new queries after a cached prefix
        return F.scaled_dot_product_attention(q, k, v, attn_mask=causal_lower_right(tq, tk), dropout_p=dropout_p,
                                              scale=scale)  # fmt: skip
    # Tq > Tk: rows 0 .. Tq-Tk-1 see no key (zeros); the last Tk rows are a square causal block.
    seen = F.scaled_dot_product_attention(q[..., tq - tk :, :], k, v, dropout_p=dropout_p, is_causal=True, scale=scale)
    return torch.cat([seen.new_zeros((*q.shape[:-2], tq - tk, v.shape[-1])), seen], dim=-2)


def linear_cross_entropy(
    x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, ignore_index: int = -1, n_classes: int | None = None
) -> torch.Tensor:
    """F.linear, then F.cross_entropy on the logits upcast to fp32 (nanoGPT's head and loss): the mean over the
    rows whose target is not ignore_index, the softmax over the first n_classes logits."""
    logits = F.linear(x.reshape(-1, x.shape[-1]), weight)  # (N, V)
    if n_classes is not None:
        logits = logits[:, :n_classes]
    targets = targets.reshape(-1)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    total = F.cross_entropy(logits, targets, ignore_index=ignore_index, reduction="sum")
    return total / (targets != ignore_index).sum().clamp(min=1)
