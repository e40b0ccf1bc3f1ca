"""Training FLOPs per token and model FLOPs utilisation (MFU), PaLM-style (Chowdhery et al. 2022, appendix B).

    flops_per_token = 6 * N + 12 * L * q_size * T

N is the number of weights that take part in a matrix multiply per token: every projection of every
layer (q, k, v, o, gate, up, down) plus the output head (hidden x vocab, counted even when tied to
the embedding: the lookup is free, the head's matmul is not). 6 = 2 (multiply-add) x 3 (forward,
and a backward twice as expensive). The second term is attention's QK^T and PV: per layer
2 * 2 * q_size * T FLOPs forward per token, times 3, over the whole sequence length T as PaLM counts
it (no discount for the causal mask or for per-document masks). Norm gains, biases, the rotary
embedding, softmax and the quantizers are elementwise (O(hidden) per token) and left out.

The ternary projections are counted as dense matmuls, and the peak is the GPU's dense bf16 tensor
rate, so MFU compares bitk's training against what the hardware does for a bf16 model of the same
shape. The peaks are the vendors' dense (no sparsity) bf16 figures.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["PEAK_BF16_FLOPS", "flops_per_token", "matmul_params", "mfu", "peak_flops"]

# Substring of torch.cuda.get_device_name -> dense bf16 FLOP/s (tried in this order: more specific first).
PEAK_BF16_FLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H200", 989e12),  # H200 SXM / NVL share the H100 SXM tensor cores
    ("GH200", 989e12),
    ("H100", 989e12),  # H100 SXM5 (and H100 80GB HBM3)
    ("H800", 989e12),
    ("A100", 312e12),
    ("A800", 312e12),
    ("L40S", 362e12),
    ("B200", 2250e12),
)


def matmul_params(config: Any) -> int:
    """Weights used in matrix multiplies per token: all layers' projections and the output head."""
    h, f, L = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    attention = h * config.q_size + 2 * h * config.kv_size + config.q_size * h
    mlp = 3 * h * f
    return L * (attention + mlp) + h * config.vocab_size


def flops_per_token(config: Any, seq_len: int) -> float:
    """Training (forward + backward) FLOPs per token of a `ModelConfig` at sequence length ``seq_len``."""
    if seq_len < 1:
        raise ValueError(f"seq_len must be positive, got {seq_len}")
    return 6.0 * matmul_params(config) + 12.0 * config.num_hidden_layers * config.q_size * seq_len


def peak_flops(device: torch.device | str, dtype: torch.dtype = torch.bfloat16) -> float | None:
    """Dense peak FLOP/s of a known GPU for bf16/fp16 matmuls; None on CPU, unknown GPUs and other dtypes."""
    device = torch.device(device)
    if device.type != "cuda" or dtype not in (torch.bfloat16, torch.float16) or not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(device)
    for key, peak in PEAK_BF16_FLOPS:
        if key in name:
            return peak
    return None


def mfu(tokens_per_s: float, flops_per_token: float, peak: float | None) -> float | None:
    """Model FLOPs utilisation in [0, 1]: achieved FLOP/s over the peak (None when the peak is unknown).

    ``tokens_per_s`` and ``peak`` must describe the same devices: the tokens per second of one GPU
    with one GPU's peak, or the global rate with the peak times the number of GPUs.
    """
    if peak is None or peak <= 0:
        return None
    return tokens_per_s * flops_per_token / peak
