"""Checks and launch helpers shared by the Triton ops. Errors name the op, the argument and the problem."""

from __future__ import annotations

import os

import torch

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def interpreter_enabled() -> bool:
    """True when Triton runs kernels in its CPU interpreter (TRITON_INTERPRET=1 set before import)."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def check_inputs(op: str, **tensors: torch.Tensor | None) -> torch.device:
    """Validate the tensors one Triton op is handed; returns their common device.

    - each is a torch.Tensor of fp16, bf16 or fp32 (others: TypeError naming the argument and dtype);
    - all on one device (ValueError listing the devices);
    - that device is CUDA, or the CPU with Triton's interpreter on (ValueError saying how to turn it on).
    None values (optional arguments) are skipped.
    """
    device = None
    for name, t in tensors.items():
        if t is None:
            continue
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype not in SUPPORTED_DTYPES:
            raise TypeError(f"{op}: {name} has dtype {t.dtype}; supported: float16, bfloat16, float32")
        if device is None:
            device = t.device
        elif t.device != device:
            devices = ", ".join(f"{n}={v.device}" for n, v in tensors.items() if v is not None)
            raise ValueError(f"{op}: tensors are on different devices ({devices})")
    if device is None:
        raise ValueError(f"{op}: no tensor given")
    if device.type == "cuda":
        return device
    if device.type == "cpu" and interpreter_enabled():
        return device
    if device.type == "cpu":
        raise ValueError(
            f"{op}: got CPU tensors, but Triton kernels run on CUDA GPUs. Move the tensors to a GPU, use the "
            "reference (kernels.reference), or set TRITON_INTERPRET=1 before importing kernels to run them "
            "in Triton's CPU interpreter."
        )
    raise ValueError(f"{op}: unsupported device {device}; Triton kernels need CUDA tensors")
