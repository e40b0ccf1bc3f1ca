"""BitLinear with the fused kernels: BitNet b1.58 (arXiv 2402.17764) forward and STE backward.

Composes the ops of this package: absmean weight quantization (weight_quant), per-token int8
activations (activation_quant, or rms_norm_quant when a SubLN precedes the layer), the int8 x
ternary matmul with its `gamma / s` epilogue and the two backward matmuls (ternary_matmul).
Saved for backward: int8 activations, their per-row scales, int8 codes and gamma; never the
float input (with a fused SubLN also the norm's input and its rstd, which the norm needs anyway).
"""

from __future__ import annotations

import torch

from bitk.numerics.bitlinear import check_linear, linear_output_dtype

from .activation_quant import quantize_activations
from .rms_norm import rms_norm_bwd
from .rms_norm_quant import rms_norm_quant_fwd
from .ternary_matmul import ternary_matmul_dw, ternary_matmul_dx, ternary_matmul_fwd
from .utils import check_float_input
from .weight_quant import quantize_weights

__all__ = ["bitlinear", "rms_norm_bitlinear"]


def _check(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    check_linear(x, weight, bias)  # shapes, as the reference checks them
    check_float_input("x", x)
    check_float_input("weight", weight)
    if bias is not None:
        check_float_input("bias", bias)
    if x.device != weight.device or (bias is not None and bias.device != weight.device):
        raise ValueError(f"x, weight and bias must be on one device, got {x.device} and {weight.device}")


def _linear_forward(ctx, x, xq, s, weight, bias, weight_index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(y [..., N], codes, gamma) of BitLinear from x's int8 activations; notes on ``ctx`` what
    `_linear_backward` needs besides the saved tensors (``weight_index``: weight's argument index)."""
    codes, gamma = quantize_weights(weight.detach())
    y = ternary_matmul_fwd(xq, s, codes, gamma, bias, out_dtype=linear_output_dtype(x))
    ctx.x_shape, ctx.x_dtype, ctx.weight_dtype = x.shape, x.dtype, weight.dtype
    ctx.has_bias, ctx.bias_dtype, ctx.weight_index = bias is not None, getattr(bias, "dtype", None), weight_index
    return y.reshape(*x.shape[:-1], weight.shape[0]), codes, gamma


def _linear_backward(ctx, dy2, xq, s, codes, gamma, need_dn: bool):
    """Gradients of y = BitLinear(n): (d n, d W, d bias) from the saved int8 tensors and scales."""
    dn = dw = db = None
    if need_dn:
        dn = ternary_matmul_dx(dy2, codes, gamma, out_dtype=torch.float32)
    if ctx.needs_input_grad[ctx.weight_index]:
        dw = ternary_matmul_dw(dy2, xq, s, out_dtype=ctx.weight_dtype)
    if ctx.has_bias and ctx.needs_input_grad[ctx.weight_index + 1]:
        db = dy2.float().sum(dim=0).to(ctx.bias_dtype)
    return dn, dw, db


class BitLinearFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias):
        xq, s = quantize_activations(x.reshape(-1, x.shape[-1]).contiguous())
        y, codes, gamma = _linear_forward(ctx, x, xq, s, weight, bias, weight_index=1)
        ctx.save_for_backward(xq, s, codes, gamma)
        return y

    @staticmethod
    def backward(ctx, dy):
        xq, s, codes, gamma = ctx.saved_tensors
        dy2 = dy.reshape(-1, codes.shape[0]).contiguous()
        dn, dw, db = _linear_backward(ctx, dy2, xq, s, codes, gamma, ctx.needs_input_grad[0])
        dx = None if dn is None else dn.to(ctx.x_dtype).reshape(ctx.x_shape)
        return dx, dw, db


class RMSNormBitLinearFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, norm_weight, weight, bias, eps):
        x2 = x.reshape(-1, x.shape[-1]).contiguous()
        # The normalized activations exist only as int8 codes and per-row scales.
        xq, s, rstd = rms_norm_quant_fwd(x2, norm_weight, eps)
        y, codes, gamma = _linear_forward(ctx, x, xq, s, weight, bias, weight_index=2)
        ctx.save_for_backward(x2, norm_weight, rstd, xq, s, codes, gamma)
        return y

    @staticmethod
    def backward(ctx, dy):
        x2, norm_weight, rstd, xq, s, codes, gamma = ctx.saved_tensors
        dy2 = dy.reshape(-1, codes.shape[0]).contiguous()
        need_norm = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        # Straight-through: the gradient of the quantized norm output is that of the norm output.
        dn, dw, db = _linear_backward(ctx, dy2, xq, s, codes, gamma, need_norm)
        dx = dg = None
        if need_norm:
            dx2, dg = rms_norm_bwd(dn, x2, norm_weight, rstd)
            dx = dx2.to(ctx.x_dtype).reshape(ctx.x_shape) if ctx.needs_input_grad[0] else None
            dg = dg if ctx.needs_input_grad[1] else None
        return dx, dg, dw, db, None


def bitlinear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """BitLinear forward/backward with the fused kernels: x [..., in], weight [out, in] -> [..., out]."""
    _check(x, weight, bias)
    return BitLinearFunction.apply(x, weight, bias)


def rms_norm_bitlinear(
    x: torch.Tensor,
    norm_weight: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    eps: float = 1e-6,
) -> torch.Tensor:
    """``BitLinear(RMSNorm(x))`` (a SubLN and the projection after it) with the norm fused into
    the activation quantization: the normalized activations are never written in float."""
    _check(x, weight, bias)
    check_float_input("norm_weight", norm_weight)
    if norm_weight.shape != (x.shape[-1],):
        raise ValueError(f"norm_weight shape {tuple(norm_weight.shape)} must be ({x.shape[-1]},)")
    return RMSNormBitLinearFunction.apply(x, norm_weight, weight, bias, eps)
