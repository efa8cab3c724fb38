"""GELU, tanh approximation (GPT-2's): 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).

Reference (pure PyTorch) lives here beside the Triton kernel; `kernels.reference` re-exports it.
"""

import math

import torch

SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def gelu_ref(x: torch.Tensor) -> torch.Tensor:
    """GELU with the tanh approximation, written out (matches `F.gelu(x, approximate="tanh")`)."""
    return 0.5 * x * (1.0 + torch.tanh(SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)))


def bias_gelu_ref(x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """gelu(x + bias), bias broadcast over the last dimension (the MLP's first Linear without its bias)."""
    return gelu_ref(x + bias)
