"""The pure-PyTorch oracle for every op, under the public names.

Tests, benchmarks, `gpt verify` and the model's `torch` backend all import these; each lives beside its
Triton kernel in `kernels/<op>.py`.
"""

from kernels.attention import attention_ref as attention
from kernels.gelu import bias_gelu_ref as bias_gelu
from kernels.gelu import gelu_ref as gelu
from kernels.layer_norm import add_layer_norm_ref as add_layer_norm
from kernels.layer_norm import layer_norm_ref as layer_norm

__all__ = ["add_layer_norm", "attention", "bias_gelu", "gelu", "layer_norm"]
