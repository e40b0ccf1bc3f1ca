"""Evaluation numerics of BitLinear: as trained, as bitnet.cpp runs an I2_S file, or in float.

- "train": the training forward (docs/numerics.md "BitLinear": per-token int8 with s in float32, ``* gamma / s``).
- "i2s": exactly what bitnet.cpp computes for an I2_S tensor (docs/numerics.md "Inference numerics"): s = (float)(127 /
  max|x|) in double, ``acc = sum(c * q)`` in int32, ``y = (float(acc) / s) * scale``. A model in
  this mode predicts the logits of its exported I2_S GGUF.
- "float": dequantized ternary weights ``codes * gamma`` times unquantized activations, what an
  F32/F16 GGUF of the ternary model computes.
The modes other than "train" are for evaluation: weights count as fully ternary (warm-up lambda
is ignored), their codes are cached until the weight changes, and no gradient reaches them.
"""

from __future__ import annotations

import torch
from torch import nn

from bitk import numerics

from . import cpu

__all__ = ["NUMERICS", "check_numerics", "bitlinear_i2s", "bitlinear_float", "frozen_weights"]

NUMERICS = ("train", "i2s", "float")


def check_numerics(mode: str) -> str:
    """``mode`` if it is one of NUMERICS, else a ValueError naming them (`bitk.nn.set_numerics` checks with it)."""
    if mode not in NUMERICS:
        raise ValueError(f"numerics must be one of {', '.join(NUMERICS)}; got {mode!r}")
    return mode


def frozen_weights(layer: nn.Linear) -> dict:
    """The layer's (codes, gamma[, packed codes, dequantized weight]) cached until its weight changes."""
    w = layer.weight
    key = (w.data_ptr(), w._version, w.device, w.dtype, tuple(w.shape))
    cache = getattr(layer, "_bitk_frozen", None)
    if cache is None or cache["key"] != key:
        with torch.no_grad():
            if w.device.type == "cpu":
                codes, gamma = cpu.quantize_weights(w)
            else:
                codes, gamma = numerics.quantize_weights(w.float())
        cache = {"key": key, "codes": codes, "gamma": gamma}
        layer._bitk_frozen = cache
    return cache


def _out(y: torch.Tensor, x: torch.Tensor, bias: torch.Tensor | None, out_features: int) -> torch.Tensor:
    if bias is not None:
        y = y + bias.float()
    return y.to(numerics.linear_output_dtype(x)).reshape(*x.shape[:-1], out_features)


def bitlinear_i2s(x: torch.Tensor, layer: nn.Linear) -> torch.Tensor:
    """``layer``'s forward as bitnet.cpp computes its I2_S tensor (float32 math, x's dtype out)."""
    frozen = frozen_weights(layer)
    codes, gamma = frozen["codes"], frozen["gamma"]
    x2 = x.detach().reshape(-1, x.shape[-1])
    if x.device.type == "cpu" and x2.shape[0] > 0:  # the exact integer product by the fastest engine here
        engine = cpu.matmul_engine()
        if engine == "cpp" and "packed" not in frozen:
            frozen["packed"] = cpu._codecs().ternary_gemm_pack(codes.numpy())
        xq, s = numerics.quantize_activations_bitnet_cpp(x2)
        acc = cpu.int_matmul(xq.contiguous(), codes, engine, packed=frozen.get("packed"))
        y = (acc / s) * gamma.to(torch.float32)
    else:
        y = numerics.bitlinear_bitnet_cpp(x2, codes, gamma.to(torch.float32))
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
