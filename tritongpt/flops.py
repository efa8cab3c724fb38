"""Hardware and FLOP facts, stated once: GPU peak rates, training FLOPs per token, and MFU.

    from tritongpt.flops import flops_per_token, mfu, peak_bf16_flops
    peak_bf16_flops("NVIDIA H100 80GB HBM3")          # 989e12
    mfu(tokens_per_s, flops_per_token(model), peak)    # fraction of the peak, or None without a peak
    device_memory_bytes("cuda:0")                      # what the size checks of tritongpt.model compare against

Training (`gpt train`) and the benchmarks (`gpt bench`) both read these; nothing else holds a peak table.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

# Dense bf16 tensor-core peak in FLOP/s, from the vendors' datasheets (no sparsity). Patterns are searched in the
# CUDA device name in order and the first match wins, so the specific comes before the general; `\b` keeps
# "L4" from matching "L40" and "L40" from matching "L40S".
PEAK_BF16_FLOPS: tuple[tuple[str, float], ...] = (
    (r"H100.*PCIe", 756e12),
    (r"H100.*NVL", 835e12),
    (r"H100|H200|H800|GH200", 989e12),
    (r"B200", 2250e12),
    (r"A100|A800", 312e12),
    (r"L40S", 362e12),
    (r"\bL40\b", 181e12),
    (r"\bL4\b", 121e12),
    (r"\bA10\b", 125e12),
    (r"RTX 4090", 165e12),
    (r"RTX 3090", 71e12),
)


def peak_bf16_flops(device_name: str) -> float | None:
    """Peak dense bf16 FLOP/s of a GPU by its CUDA device name, or None when the card is not in the table."""
    return next((peak for pattern, peak in PEAK_BF16_FLOPS if re.search(pattern, device_name)), None)


def device_peak_flops(device: torch.device) -> float | None:
    """Peak dense bf16 FLOP/s of the GPU `device`; None on the CPU and for cards not in the table."""
    return peak_bf16_flops(torch.cuda.get_device_name(device)) if device.type == "cuda" else None


def flops_per_token(model, seq_len: int | None = None) -> float:
    """Training FLOPs per token of a GPT (PaLM appendix B, as nanoGPT counts): 6 N + 12 L C T.

    N: parameters without the position embedding (6 = forward 2 + backward 4 per parameter per token);
    12 L C T: the attention scores and their weighted sum (C = heads x head dim) over T = `seq_len`
    (default: the context length). GPT-2 124M at T = 1024: about 0.855 GFLOP per token.
    """
    c = model.config
    t = c.context_length if seq_len is None else seq_len
    return 6 * model.num_params(non_embedding=True) + 12 * c.n_layers * c.emb_dim * t


def mfu(tokens_per_s: float, flops_per_tok: float, peak: float | None, n_gpus: int = 1) -> float | None:
    """Model FLOPs utilisation: achieved FLOP/s over the peak of all `n_gpus`; None when the peak is unknown."""
    if not peak:
        return None
    return tokens_per_s * flops_per_tok / (peak * n_gpus)


def device_memory_bytes(device: torch.device | str) -> int | None:
    """Total memory of `device` in bytes: a GPU's own memory, or for the CPU the machine's RAM (or the cgroup's
    limit, when a container sets a lower one); None where it cannot be told."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    if device.type != "cpu":
        return None
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
    except OSError:
        return total
    return min(total, int(limit)) if limit.isdigit() else total
