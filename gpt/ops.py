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

import torch

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


def check_backend_runs(backend: str, device) -> None:
    """ValueError unless `backend` can run on `device`: `triton` needs a CUDA device, or the CPU with Triton's
    interpreter switched on (TRITON_INTERPRET=1 before the kernels are imported). Checked before a model is
    built, so the failure is one line at start-up instead of a traceback inside the first forward pass."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    device = torch.device(device)
    if backend != "triton" or device.type == "cuda":
        return
    from kernels._common import interpreter_enabled

    if device.type == "cpu" and interpreter_enabled():
        return
    raise ValueError(
        f"backend 'triton' cannot run on {device}: the Triton kernels need a CUDA GPU (or, on the CPU, Triton's "
        "interpreter: TRITON_INTERPRET=1); use backend 'native' or 'torch' here"
    )


def resolve_device(name: str) -> torch.device:
    """The torch.device a command-line `--device` names (cpu, cuda, cuda:N); ValueError saying what is wrong
    for a name torch does not know, a device type other than those, or a GPU this machine does not have."""
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ValueError(f"{name!r} is not a device; use cpu, cuda or cuda:N") from None
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise ValueError(f"{name!r}: only cpu and cuda devices are supported")
    if not torch.cuda.is_available():
        raise ValueError(f"{name!r}: torch sees no CUDA GPU on this machine")
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"{name!r}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    return device
