"""Causal multi-head scaled dot-product attention, q, k, v shaped (B, H, T, D).

Reference (pure PyTorch) lives here beside the Triton kernel; `kernels.reference` re-exports it.
"""

import math

import torch


def attention_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool = True,
    dropout_p: float = 0.0,
    scale: float | None = None,
) -> torch.Tensor:
    """softmax(q k^T * scale + mask) v, materialising the (T, T) scores: the textbook form.

    q: (B, H, Tq, D); k, v: (B, H, Tk, D). With `causal`, query i sees keys j <= i + (Tk - Tq), so a
    query block that continues a cached prefix (Tq < Tk) is masked correctly. Dropout (training only)
    zeroes probabilities with probability `dropout_p` and rescales the rest by 1 / (1 - dropout_p).
    """
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    att = (q @ k.transpose(-2, -1)) * scale  # (B, H, Tq, Tk)
    if causal:
        tq, tk = q.shape[-2], k.shape[-2]
        mask = torch.ones(tq, tk, dtype=torch.bool, device=q.device).triu(diagonal=tk - tq + 1)
        att = att.masked_fill(mask, float("-inf"))
    att = torch.softmax(att, dim=-1)
    if dropout_p > 0.0:
        att = torch.nn.functional.dropout(att, p=dropout_p, training=True)
    return att @ v  # (B, H, Tq, D)
