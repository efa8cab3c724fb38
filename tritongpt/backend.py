"""Which implementation of the layers a model runs, by its `GPTConfig.backend` name.

| backend     | implementation (`tritongpt.kernels`)                                                     |
|-------------|-------------------------------------------------------------------------------------------|
| `reference` | the from-scratch PyTorch layers, for reading and checking                                  |
| `native`    | torch's fused ops (F.layer_norm, F.gelu, SDPA), the nanoGPT-style model                    |
| `triton`    | our kernels                                                                                |
| `auto`      | the fastest that runs where the tensors are: `triton` on CUDA, `native` elsewhere          |

A backend other than `auto` is an implementation's own name (`kernels.IMPLEMENTATIONS`); `auto` decides per
call from the input's device, so a model moved between CPU and GPU keeps working.
"""

from __future__ import annotations

import types

import torch

from tritongpt import kernels
from tritongpt.config import BACKENDS

# The implementation modules an `Ops` may call, imported when the `Ops` is made: the lookups in the forward pass
# are then plain dict reads, which torch.compile traces without an import (or the triton module's op
# registration) inside the graph.
_LOADED: dict[str, types.ModuleType] = {}


def _load(name: str) -> None:
    if name not in _LOADED:
        _LOADED[name] = kernels.implementation(name)


class Ops:
    """The layer functions of one backend, each with the signature of `tritongpt.kernels.reference`."""

    def __init__(self, backend: str) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
        self.backend = backend
        if backend != "auto":
            _load(backend)
        else:  # the triton module only where a CUDA device may hand it tensors
            _load("native")
            if torch.cuda.is_available():
                _load("triton")

    def name(self, x) -> str:
        """The name of the implementation (`kernels.IMPLEMENTATIONS`) that runs a call whose first tensor is `x`."""
        if self.backend == "auto":
            return "triton" if x.is_cuda else "native"
        return self.backend

    def implementation(self, x) -> types.ModuleType:
        """The `kernels` module that runs a call whose first tensor is `x`."""
        name = self.name(x)
        if name not in _LOADED:  # e.g. CUDA made visible after the model was built
            _load(name)
        return _LOADED[name]

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
        return self.name(x) == "triton"

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
    from tritongpt.kernels._common import interpreter_enabled

    if device.type == "cpu" and interpreter_enabled():
        return
    raise ValueError(
        f"backend 'triton' cannot run on {device}: the Triton kernels need a CUDA GPU (or, on the CPU, Triton's "
        "interpreter: TRITON_INTERPRET=1); use backend 'native' or 'reference' here"
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
