"""Triton kernels for GPT-2's attention, LayerNorm and GELU, each with its pure-PyTorch reference.

    from kernels import attention, layer_norm, add_layer_norm, gelu, bias_gelu   # Triton, autograd-aware
    from kernels.reference import attention, layer_norm, gelu                    # the oracle

The Triton ops are imported on first use, so `import kernels` alone does not load Triton. To run the
kernels on CPU tensors (Triton's interpreter), set `TRITON_INTERPRET=1` before importing any `kernels`
module, `kernels.reference` included: Triton decides interpreter or compiler when a kernel is defined.
"""

import importlib

_OPS = {
    "attention": "kernels.attention",
    "layer_norm": "kernels.layer_norm",
    "add_layer_norm": "kernels.layer_norm",
    "gelu": "kernels.gelu",
    "bias_gelu": "kernels.gelu",
}

__all__ = list(_OPS)


def __getattr__(name: str):
    if name in _OPS:
        return getattr(importlib.import_module(_OPS[name]), name)
    raise AttributeError(f"module 'kernels' has no attribute {name!r}")
