"""GPT-2's layers, each op in three implementations with the same signatures, chosen by name.

    from tritongpt import kernels
    ops = kernels.implementation("triton")      # or "reference" (the oracle), "native" (torch's fused ops)
    y = ops.layer_norm(x, weight, bias, 1e-5)
    y = ops.attention(q, k, v, causal=True, dropout_p=0.1)
    loss = ops.linear_cross_entropy(x, lm_head_weight, targets)   # the LM head and its loss

| name        | module                          | what it is                                                 |
|-------------|---------------------------------|------------------------------------------------------------|
| `reference` | `tritongpt.kernels.reference`   | from scratch in PyTorch: the correctness oracle            |
| `native`    | `tritongpt.kernels.native`      | torch's own ops (F.layer_norm, F.gelu, SDPA,               |
|             |                                 | F.cross_entropy): the nanoGPT baseline                     |
| `triton`    | `tritongpt.kernels.triton_ops`  | our Triton kernels, autograd-aware, `torch.compile`-able   |

Each module defines the same functions with the same signatures (`OPS`, checked by the tests). The op files
(`attention.py`, `layer_norm.py`, `gelu.py`, `linear_cross_entropy.py` in this folder) each hold one op's
Triton kernels beside its reference. Modules are imported when first asked for, so `TRITON_INTERPRET=1`
(Triton's CPU interpreter) can still be set after `from tritongpt import kernels` as long as no
implementation was imported yet.
"""

from __future__ import annotations

import importlib
import types

IMPLEMENTATIONS = ("reference", "native", "triton")
OPS = ("layer_norm", "add_layer_norm", "gelu", "bias_gelu", "attention", "linear_cross_entropy")

_MODULES = {
    "reference": "tritongpt.kernels.reference",
    "native": "tritongpt.kernels.native",
    "triton": "tritongpt.kernels.triton_ops",
}


def implementation(name: str) -> types.ModuleType:
    """The module holding implementation `name` ("reference", "native" or "triton") of every op in `OPS`."""
    try:
        module = _MODULES[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown implementation {name!r}; choose one of {', '.join(IMPLEMENTATIONS)}") from None
    return importlib.import_module(module)
