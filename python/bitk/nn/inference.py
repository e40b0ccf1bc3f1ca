"""Evaluation numerics of BitLinear: as trained, as a runtime runs its GGUF tensor type, or in float.

- "train": the training forward (docs/numerics.md "BitLinear": per-token int8 with s in float32, ``* gamma / s``).
- "i2s": exactly what bitnet.cpp computes for an I2_S tensor (docs/numerics.md "Inference numerics"): s = (float)(127 /
  max|x|) in double, ``acc = sum(c * q)`` in int32, ``y = (float(acc) / s) * scale``. A model in
  this mode predicts the logits of its exported I2_S GGUF.
- "tq": what llama.cpp (ggml CPU) computes for a TQ1_0 / TQ2_0 tensor: Q8_K activations (int8 per
  block of 256 values, ``d = 1 / (-127 / max)``), ``y = sum over blocks of float(sumi) * (d * f16(gamma))``
  in float32; an in_features that is not a multiple of 256 counts as zero-padded to one (as the
  zero-padded file bitk-pack writes holds it).
- "f16": what the runtimes compute for an F16 tensor of the ternary model: weights ``f16(codes *
  gamma)``, activations rounded to float16, products summed in float32.
- "float": dequantized ternary weights ``codes * gamma`` times unquantized activations, what an
  F32 GGUF of the ternary model computes.
The modes other than "train" are for evaluation: weights count as fully ternary (warm-up lambda
is ignored), what each mode multiplies by is cached until the weight changes, and no gradient
reaches them. On the CPU, "i2s" keeps only the 2-bit packed weights (no int8 codes) and computes
in bitk's C++ kernels: activations quantized in one pass, int8 x 2-bit dot products; a
`bitk.nn.packed.PackedBitLinear` (what `bitk.gguf.load` builds) holds nothing else at all, and
multiplies an I2_S file's bytes as they are.
"""

from __future__ import annotations

import torch
from torch import nn

from bitk import numerics
from bitk.numerics.bitlinear import ggml_block_sum
from bitk.numerics.quant import QK_K

from . import cpu

__all__ = [
    "NUMERICS",
    "check_numerics",
    "bitlinear_i2s",
    "bitlinear_i2s_packed",
    "bitlinear_tq",
    "bitlinear_f16",
    "bitlinear_float",
    "frozen_weights",
]

NUMERICS = ("train", "i2s", "tq", "f16", "float")


def check_numerics(mode: str) -> str:
    """``mode`` if it is one of NUMERICS, else a ValueError naming them (`bitk.nn.set_numerics` checks with it)."""
    if mode not in NUMERICS:
        raise ValueError(f"numerics must be one of {', '.join(NUMERICS)}; got {mode!r}")
    return mode


def frozen_weights(layer: nn.Linear, codes: bool = True) -> dict:
    """The layer's cached weights until its weight changes: "gamma", and "codes" (int8), or without
    ``codes`` (CPU tensors, bitk's kernels) "packed" (2 bits each); plus what each mode derives from
    them ("tq", "f16", "dequantized")."""
    w = layer.weight
    key = (w.data_ptr(), w._version, w.device, w.dtype, tuple(w.shape))
    cache = getattr(layer, "_bitk_frozen", None)
    if cache is None or cache["key"] != key:
        cache = {"key": key}
        layer._bitk_frozen = cache
    if (codes and "codes" in cache) or (not codes and "packed" in cache):
        return cache
    new_codes = cache.get("codes")
    if new_codes is None:
        with torch.no_grad():
            if w.device.type == "cpu":
                new_codes, cache["gamma"] = cpu.quantize_weights(w)
            else:
                new_codes, cache["gamma"] = numerics.quantize_weights(w.float())
    if codes:
        cache["codes"] = new_codes
    else:  # the 2-bit form of bitk's CPU kernels only
        cache["packed"] = cpu._codecs().ternary_gemm_pack(new_codes.numpy())
    return cache


def _out(y: torch.Tensor, x: torch.Tensor, bias: torch.Tensor | None, out_features: int) -> torch.Tensor:
    if bias is not None:
        y = y + bias.float()
    return y.to(numerics.linear_output_dtype(x)).reshape(*x.shape[:-1], out_features)


def bitlinear_i2s_packed(
    x: torch.Tensor,
    packed: object,
    gamma: torch.Tensor,
    bias: torch.Tensor | None,
    out_features: int,
    layout: str = "panels",
) -> torch.Tensor:
    """`bitlinear_i2s` of a CPU ``x`` from the weights alone: their codes 2 bits each and 0-dim
    float32 ``gamma``, in bitk's C++ kernels (quantization and epilogue as bitnet.cpp's). ``layout``
    "panels": ``packed`` from ``ternary_gemm_pack``; "i2s": the bytes of the I2_S tensor (x86
    layout), multiplied as they are."""
    x2 = x.detach().reshape(-1, x.shape[-1])
    codecs = cpu._codecs()
    codecs.set_num_threads(torch.get_num_threads())
    xq, s = codecs.quantize_activations(x2.to(torch.float32).contiguous().numpy(), "bitnet")
    gemm = codecs.i2s_gemm_divide if layout == "i2s" else codecs.ternary_gemm_divide
    y = torch.from_numpy(gemm(xq, s, packed, out_features, gamma.item()))
    return _out(y, x, bias, out_features)


def bitlinear_i2s(x: torch.Tensor, layer: nn.Linear) -> torch.Tensor:
    """``layer``'s forward as bitnet.cpp computes its I2_S tensor (float32 math, x's dtype out)."""
    if x.device.type == "cpu" and cpu.matmul_engine() == "cpp":  # bitk's kernels from the 2-bit weights
        frozen = frozen_weights(layer, codes=False)
        return bitlinear_i2s_packed(x, frozen["packed"], frozen["gamma"], layer.bias, layer.out_features)
    x2 = x.detach().reshape(-1, x.shape[-1])
    if x.device.type == "cpu" and x2.shape[0] > 0:  # the exact integer product by another engine
        frozen = frozen_weights(layer)
        codes, gamma = frozen["codes"], frozen["gamma"]
        xq, s = numerics.quantize_activations_bitnet_cpp(x2)
        acc = cpu.int_matmul(xq.contiguous(), codes, cpu.matmul_engine())
        y = (acc / s) * gamma.to(torch.float32)
    else:
        frozen = frozen_weights(layer)
        y = numerics.bitlinear_bitnet_cpp(x2, frozen["codes"], frozen["gamma"].to(torch.float32))
    return _out(y, x, layer.bias, layer.out_features)


def bitlinear_tq(x: torch.Tensor, layer: nn.Linear) -> torch.Tensor:
    """``layer``'s forward as llama.cpp computes its TQ1_0 / TQ2_0 tensor (float32 math, x's dtype out).

    The values of `bitk.numerics.bitlinear_ggml_tq` bit for bit, faster: the codes are cached as
    float32 blocks and the per-block products run as one batched float32 matmul, which is exact
    (every partial sum is an integer of magnitude <= 127 * 256, far below 2^24; the int8 and
    ternary factors are exact even in TF32 or bfloat16 matmul precision).
    """
    k = layer.in_features
    pad = -k % QK_K  # zeros at the end, as in the zero-padded file
    frozen = frozen_weights(layer)
    if "tq" not in frozen:
        codes, gamma = frozen["codes"], frozen["gamma"]
        nb = (k + pad) // QK_K
        codes = torch.nn.functional.pad(codes.to(torch.float32), (0, pad))
        blocks = codes.reshape(codes.shape[0], nb, QK_K).permute(1, 2, 0)
        frozen["tq"] = (blocks.contiguous(), gamma.to(torch.float32).to(torch.float16).to(torch.float32))
    blocks, d_w = frozen["tq"]
    x2 = torch.nn.functional.pad(x.detach().reshape(-1, k).to(torch.float32), (0, pad))
    xq, d_x = numerics.quantize_activations_q8k(x2)
    with torch.autocast(x.device.type, enabled=False):
        sumi = torch.bmm(xq.to(torch.float32).reshape(-1, blocks.shape[0], blocks.shape[1]).transpose(0, 1), blocks)
    y = ggml_block_sum(sumi, d_x, d_w)
    return _out(y, x, layer.bias, layer.out_features)


def bitlinear_f16(x: torch.Tensor, layer: nn.Linear) -> torch.Tensor:
    """``layer``'s forward as the runtimes compute an F16 tensor of it (float32 math, x's dtype out).

    Weights ``f16(codes * gamma)`` (= ``codes * f16(gamma)``), activations taken as float32 and
    rounded to float16, products summed in float32.
    """
    frozen = frozen_weights(layer)
    if "f16" not in frozen:
        codes, gamma = frozen["codes"], frozen["gamma"]
        g16 = gamma.to(torch.float32).to(torch.float16).to(torch.float32)
        # Held in float32: the values of the F16 weights, exactly (codes are 0 or +-1).
        frozen["f16"] = cpu.dequantize_weights(codes, g16) if codes.device.type == "cpu" else codes.float() * g16
    with torch.autocast(x.device.type, enabled=False):
        x16 = x.detach().reshape(-1, x.shape[-1]).to(torch.float32).to(torch.float16).to(torch.float32)
        y = x16 @ frozen["f16"].T
    return _out(y, x, layer.bias, layer.out_features)


def bitlinear_float(x: torch.Tensor, layer: nn.Linear) -> torch.Tensor:
    """``layer``'s forward with dequantized ternary weights and unquantized activations (float32 math)."""
    frozen = frozen_weights(layer)
    if "dequantized" not in frozen:
        codes, gamma = frozen["codes"], frozen["gamma"]
        frozen["dequantized"] = (
            cpu.dequantize_weights(codes, gamma) if codes.device.type == "cpu" else codes.float() * gamma.float()
        )
    with torch.autocast(x.device.type, enabled=False):
        y = x.reshape(-1, x.shape[-1]).float() @ frozen["dequantized"].T
    return _out(y, x, layer.bias, layer.out_features)
