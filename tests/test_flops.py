"""tritongpt/flops.py: the one peak table, FLOPs per token and MFU."""

import pytest
import torch

from tritongpt.config import load_model_config
from tritongpt.flops import flops_per_token, mfu, peak_bf16_flops
from tritongpt.model import GPT


@pytest.mark.parametrize(
    "name, peak",
    [
        ("NVIDIA H100 80GB HBM3", 989e12),
        ("NVIDIA H100 PCIe", 756e12),
        ("NVIDIA H100 NVL", 835e12),
        ("NVIDIA H200", 989e12),
        ("NVIDIA A100-SXM4-80GB", 312e12),
        ("NVIDIA L40", 181e12),
        ("NVIDIA L40S", 362e12),
        ("NVIDIA L4", 121e12),
        ("NVIDIA A10", 125e12),
        ("NVIDIA A10G", None),
        ("Tesla T4", None),
        ("cpu", None),
    ],
)
def test_peak_table(name, peak):
    assert peak_bf16_flops(name) == peak


def test_flops_per_token_gpt2_124m():
    with torch.device("meta"):  # shapes only, no memory
        model = GPT(load_model_config("gpt2-124m"))
    assert flops_per_token(model) == 6 * (124_439_808 - 1024 * 768) + 12 * 12 * 768 * 1024
    assert flops_per_token(model) == pytest.approx(0.855e9, rel=1e-3)  # ANCHORS.md
    assert flops_per_token(model, 512) == flops_per_token(model) - 12 * 12 * 768 * 512


def test_mfu():
    assert mfu(1000.0, 1e9, 1e13) == pytest.approx(0.1)
    assert mfu(1000.0, 1e9, 1e13, n_gpus=2) == pytest.approx(0.05)
    assert mfu(1000.0, 1e9, None) is None
