"""Which implementation of the layers a model runs, by its `GPTConfig.backend` name.

| backend  | implementation (`kernels.implementation`)                                        |
|----------|----------------------------------------------------------------------------------|
| `torch`  | `reference`: the from-scratch PyTorch layers, for reading and checking            |
| `native` | `native`: torch's fused ops (F.layer_norm, F.gelu, SDPA), the nanoGPT-style model |
| `triton` | `triton`: our kernels                                                              |
| `auto`   | the fastest that runs where the tensors are: `triton` on CUDA, `native` elsewhere |

`auto` decides per call from the input's device, so a model moved between CPU and GPU keeps working.
"""

from __future__ import annotations

import types

import kernels

BACKENDS = ("auto", "torch", "native", "triton")
_IMPLEMENTATION = {"torch": "reference", "native": "native", "triton": "triton"}


class Ops:
    """The layer functions of one backend, each with the signature of `kernels.reference`."""

    def __init__(self, backend: str) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
        self.backend = backend

    def implementation(self, x) -> types.ModuleType:
        """The `kernels` module that runs a call whose first tensor is `x`."""
        if self.backend == "auto":
            return kernels.implementation("triton" if x.is_cuda else "native")
        return kernels.implementation(_IMPLEMENTATION[self.backend])

    def layer_norm(self, x, weight, bias, eps):
        return self.implementation(x).layer_norm(x, weight, bias, eps)

    def add_layer_norm(self, x, residual, weight, bias, eps):
        return self.implementation(x).add_layer_norm(x, residual, weight, bias, eps)

    def gelu(self, x):
        return self.implementation(x).gelu(x)

    def bias_gelu(self, x, bias):
        return self.implementation(x).bias_gelu(x, bias)

    def linear_cross_entropy(self, x, weight, targets, ignore_index=-1, n_classes=None):
        return self.implementation(x).linear_cross_entropy(x, weight, targets, ignore_index, n_classes)

    def fuses_linear_cross_entropy(self, x) -> bool:
        """True where `linear_cross_entropy` never materialises the logits (our kernel), so a caller that needs
        only the loss should take it from there rather than from the logits."""
        return self.implementation(x) is kernels.implementation("triton")

    def attention(self, q, k, v, causal=True, dropout_p=0.0, scale=None):
        return self.implementation(q).attention(q, k, v, causal=causal, dropout_p=dropout_p, scale=scale)
