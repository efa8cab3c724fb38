"""The pure-PyTorch oracle under the public names: the `reference` implementation.

Written from scratch (no F.layer_norm, F.gelu or SDPA); each function lives beside its Triton kernel in
`tritongpt/kernels/<op>.py`. Tests, `gpt verify`, the benchmarks and the model's `reference` backend all use these.
"""

from tritongpt.kernels.attention import attention_ref as attention
from tritongpt.kernels.gelu import bias_gelu_ref as bias_gelu
from tritongpt.kernels.gelu import gelu_ref as gelu
from tritongpt.kernels.layer_norm import add_layer_norm_ref as add_layer_norm
from tritongpt.kernels.layer_norm import layer_norm_ref as layer_norm
from tritongpt.kernels.linear_cross_entropy import linear_cross_entropy_ref as linear_cross_entropy

__all__ = ["add_layer_norm", "attention", "bias_gelu", "gelu", "layer_norm", "linear_cross_entropy"]
