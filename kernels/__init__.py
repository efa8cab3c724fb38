"""Triton kernels for GPT-2's attention, LayerNorm and GELU, each with its pure-PyTorch reference.

    from kernels import attention, layer_norm, add_layer_norm, gelu, bias_gelu   # Triton, autograd-aware
    from kernels.reference import attention, layer_norm, gelu                    # the oracle

To run the kernels on CPU tensors (Triton's interpreter), set `TRITON_INTERPRET=1` before importing any
`kernels` module: Triton decides interpreter or compiler when a kernel is defined. The op modules share
their names with the functions they define, so reach a module itself through
`importlib.import_module("kernels.attention")`.
"""

from kernels.attention import attention
from kernels.gelu import bias_gelu, gelu
from kernels.layer_norm import add_layer_norm, layer_norm

__all__ = ["add_layer_norm", "attention", "bias_gelu", "gelu", "layer_norm"]
