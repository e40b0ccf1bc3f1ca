"""BitLinear: a drop-in nn.Linear with ternary weights and int8 activations (BitNet b1.58).

The latent weights stay full precision (what the optimizer updates); every forward quantizes
them (absmean, per tensor) and the input (absmax, per token) and multiplies the integers; the
backward is the straight-through estimator. `quant_lambda` < 1 is quantization warm-up.
"""

from __future__ import annotations

import torch
from torch import nn

from bitk import numerics

from . import functional as F
from . import inference
from .norm import RMSNorm

__all__ = ["BitLinear", "set_numerics", "set_quant_lambda"]


class BitLinear(nn.Linear):
    """``nn.Linear`` with BitNet b1.58 quantization; same constructor, parameters and state dict.

    ``forward(x, norm=None)``: with ``norm`` (an RMSNorm/SubLN) computes ``self(norm(x))``, fused
    into one kernel on the Triton path. ``quant_lambda`` (default 1.0, plain BitNet) blends latent
    and quantized values during warm-up: ``W + lam * (Q(W) - W)``, likewise for activations.
    ``numerics`` ("train" default, "i2s", "tq", "f16", "float"; `bitk.nn.set_numerics`) selects the
    evaluation forward of `bitk.nn.inference`: as trained, as bitnet.cpp runs an I2_S file, as
    llama.cpp runs a TQ1_0 / TQ2_0 file, as the runtimes run an F16 projection, or in float.
    """

    numerics = "train"

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None) -> None:
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.quant_lambda = 1.0

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> BitLinear:
        """A BitLinear sharing ``linear``'s weight and bias Parameters (no copy)."""
        if not isinstance(linear, nn.Linear):
            raise ValueError(f"from_linear takes an nn.Linear, got {type(linear).__name__}")
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.in_features, new.out_features = linear.in_features, linear.out_features
        new.weight = linear.weight
        if linear.bias is None:
            new.register_parameter("bias", None)
        else:
            new.bias = linear.bias
        new.quant_lambda = 1.0
        return new

    def forward(self, x: torch.Tensor, norm: RMSNorm | None = None) -> torch.Tensor:
        if self.numerics != "train":
            if norm is not None:
                x = F.rms_norm(x, norm.weight, norm.eps)
            if self.numerics == "i2s":
                return inference.bitlinear_i2s(x, self)
            if self.numerics == "tq":
                return inference.bitlinear_tq(x, self)
            if self.numerics == "f16":
                return inference.bitlinear_f16(x, self)
            return inference.bitlinear_float(x, self)
        if norm is None:
            return F.bitlinear(x, self.weight, self.bias, lam=self.quant_lambda)
        return F.bitlinear(x, self.weight, self.bias, lam=self.quant_lambda, norm_weight=norm.weight, norm_eps=norm.eps)

    @torch.no_grad()
    def quantized_weight(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(int8 codes [out, in], 0-dim float32 gamma): what the forward multiplies by, and what exports write."""
        return numerics.quantize_weights(self.weight.float())

    def extra_repr(self) -> str:
        extra = f", numerics={self.numerics}" if self.numerics != "train" else ""
        return f"{super().extra_repr()}, quant_lambda={self.quant_lambda}{extra}"


def _bitlinears(module: nn.Module) -> list[BitLinear]:
    """Every BitLinear in ``module`` (itself included), subclasses such as BitLinearLRC too."""
    return [m for m in module.modules() if isinstance(m, BitLinear)]


def set_quant_lambda(module: nn.Module, lam: float) -> None:
    """Set the quantization warm-up ``lam`` in [0, 1] of every BitLinear in ``module``."""
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"quant lambda must be in [0, 1], got {lam}")
    for m in _bitlinears(module):
        m.quant_lambda = float(lam)


def set_numerics(module: nn.Module, mode: str) -> None:
    """Set the evaluation numerics of every BitLinear in ``module``: "train", "i2s", "tq", "f16" or "float"
    (`bitk.nn.inference`)."""
    inference.check_numerics(mode)
    for m in _bitlinears(module):
        m.numerics = mode
