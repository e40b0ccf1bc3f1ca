"""Pure-torch reference numerics of bitk: the executable form of docs/numerics.md.

BitNet b1.58 (arXiv 2402.17764) and its training-tips FAQ: absmean ternary weights, per-token
absmax int8 activations, straight-through estimators with warm-up, RMSNorm and BitLinear; plus
the inference forwards of bitnet.cpp (I2_S) and llama.cpp (TQ1_0 / TQ2_0 with Q8_K activations).
Every Triton kernel and CPU fast path is tested against these functions; they define the result.
"""

from .bitlinear import bitlinear, bitlinear_bitnet_cpp, bitlinear_fake_quant, bitlinear_ggml_tq, linear_output_dtype
from .quant import (
    abs_sum,
    fake_quantize_activations,
    fake_quantize_weights,
    quantize_activations,
    quantize_activations_bitnet_cpp,
    quantize_activations_q8k,
    quantize_weights,
    ste,
)
from .rmsnorm import rms_norm

__all__ = [
    "abs_sum",
    "quantize_weights",
    "quantize_activations",
    "quantize_activations_bitnet_cpp",
    "quantize_activations_q8k",
    "fake_quantize_weights",
    "fake_quantize_activations",
    "ste",
    "rms_norm",
    "bitlinear",
    "bitlinear_fake_quant",
    "bitlinear_bitnet_cpp",
    "bitlinear_ggml_tq",
    "linear_output_dtype",
]
