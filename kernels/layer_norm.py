"""LayerNorm over the last dimension: y = (x - mean) / sqrt(var + eps) * weight + bias.

Reference (pure PyTorch) lives here beside the Triton kernel; `kernels.reference` re-exports it.
"""

import torch


def layer_norm_ref(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, eps: float = 1e-5) -> torch.Tensor:
    """LayerNorm from scratch: biased variance over the last dimension, as in GPT-2 and `F.layer_norm`."""
    mean = x.mean(dim=-1, keepdim=True)
    var = (x - mean).pow(2).mean(dim=-1, keepdim=True)
    y = (x - mean) * torch.rsqrt(var + eps) * weight
    return y + bias if bias is not None else y


def add_layer_norm_ref(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, eps: float = 1e-5
) -> tuple[torch.Tensor, torch.Tensor]:
    """Residual add then LayerNorm: returns (layer_norm(x + residual), x + residual)."""
    s = x + residual
    return layer_norm_ref(s, weight, bias, eps), s
