"""bitk's fused Triton training kernels, installed as `bitk.triton_kernels`.

One op per file (CONTRIBUTING.md "Style"): activation quantization, weight quantization, RMSNorm,
SubLN fused with activation quantization, the ternary matmul (forward, dx, dW), and BitLinear
composing them; each is tested against `bitk.numerics` (docs/kernels.md has one row per kernel).
The folder is named `triton_kernels/` in the repository; it installs under another import name
because `triton_kernels` is taken by a package published from the Triton repository.
Without a GPU, set TRITON_INTERPRET=1 before importing this package to run the kernels on CPU.
"""

from .activation_quant import fake_quantize_activations, quantize_activations
from .bitlinear import bitlinear, rms_norm_bitlinear
from .rms_norm import rms_norm
from .rms_norm_quant import rms_norm_fake_quant, rms_norm_quant
from .ternary_matmul import ternary_matmul_dw, ternary_matmul_dx, ternary_matmul_fwd
from .weight_quant import fake_quantize_weights, quantize_weights

__all__ = [
    "quantize_activations",
    "fake_quantize_activations",
    "quantize_weights",
    "fake_quantize_weights",
    "rms_norm",
    "rms_norm_quant",
    "rms_norm_fake_quant",
    "ternary_matmul_fwd",
    "ternary_matmul_dx",
    "ternary_matmul_dw",
    "bitlinear",
    "rms_norm_bitlinear",
]
