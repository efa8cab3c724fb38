"""Published and earlier-measured figures that `summary.md` quotes beside ours, with where they come from.

They live here so that the report never reads a file outside the repository. They are for orientation
(H100 SXM unless said); the figures that count are the ones measured in the same run, on the same card.
"""

# Ceilings: what a device-to-device copy (bytes read + written) and a large bf16 matmul reach.
CEILINGS = {
    "copy": "H100 ≈3.0 TB/s, H200 ≈4.3 TB/s measured on lent machines (datasheets: 3.35 / 4.8 TB/s)",
    "matmul": "8192³ bf16 ≈790–800 TFLOP/s measured on lent H100/H200 machines (datasheet: 989 dense)",
}

# FlashAttention-3 paper, H100, causal forward, head dim 64, T = 1k, TFLOP/s.
ATTENTION_FWD_T1K_D64 = {"FlashAttention-3": 265, "FlashAttention-2": 229, "Triton": 291, "cuDNN": 288}

# FlashAttention-2 (its paper's benchmark), H100, causal forward + backward, head dim 64: T -> TFLOP/s.
FA2_FWD_BWD_D64 = {512: 141.0, 1024: 192.0, 16384: 284.0}

# Liger-Kernel's LayerNorm on H100 (fp32, 4096 rows) against torch's F.layer_norm.
LAYER_NORM_VS_TORCH = {
    "fwd": "Liger-Kernel: 1.25–1.7× torch",
    "bwd": "Liger-Kernel at width 1024: ≈0.5× torch; beating torch here is the target",
}

# GPT-2 124M training throughput (MFU by 6N + 12·L·C·T FLOPs per token over the 989 TFLOP/s bf16 peak).
TRAIN = (
    "llm.c: ≈468K tokens/s per H100 on 8×H100 (≈38% MFU); on one H100 40% MFU ≈ 460K tokens/s, 50% ≈ 580K; "
    "LLMs-from-scratch with TF32, bf16, SDPA, torch.compile and fused AdamW on one A100: ≈142K tokens/s"
)
