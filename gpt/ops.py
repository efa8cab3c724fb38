"""Which implementation of the fused layers a model runs: the PyTorch reference or the Triton kernels.

`backend="torch"` always uses `kernels.reference`; `"triton"` always uses the Triton kernels; `"auto"`
uses the kernels for CUDA tensors and the reference elsewhere, decided per call from the input's device.
"""

from __future__ import annotations

import types

import kernels
import kernels.reference as reference

BACKENDS = ("auto", "torch", "triton")


class Ops:
    """layer_norm, add_layer_norm, gelu, bias_gelu and attention for one backend."""

    def __init__(self, backend: str) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
        self.backend = backend

    def _impl(self, x) -> types.ModuleType:
        if self.backend == "torch" or (self.backend == "auto" and not x.is_cuda):
            return reference
        return kernels

    def layer_norm(self, x, weight, bias, eps):
        return self._impl(x).layer_norm(x, weight, bias, eps)

    def add_layer_norm(self, x, residual, weight, bias, eps):
        return self._impl(x).add_layer_norm(x, residual, weight, bias, eps)

    def gelu(self, x):
        return self._impl(x).gelu(x)

    def bias_gelu(self, x, bias):
        return self._impl(x).bias_gelu(x, bias)

    def attention(self, q, k, v, causal=True, dropout_p=0.0, scale=None):
        return self._impl(q).attention(q, k, v, causal=causal, dropout_p=dropout_p, scale=scale)
