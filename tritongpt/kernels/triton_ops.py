"""Our Triton kernels under the public names: the `triton` implementation (`kernels.implementation("triton")`).

Each function lives, with its kernels and its reference, in the op's own file; see tritongpt/kernels/README.md.
"""

from tritongpt.kernels.attention import attention
from tritongpt.kernels.gelu import bias_gelu, gelu
from tritongpt.kernels.layer_norm import add_layer_norm, layer_norm
from tritongpt.kernels.linear_cross_entropy import linear_cross_entropy

__all__ = ["add_layer_norm", "attention", "bias_gelu", "gelu", "layer_norm", "linear_cross_entropy"]
