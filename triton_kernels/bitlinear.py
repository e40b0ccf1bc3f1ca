"""BitLinear with the fused kernels: BitNet b1.58 (arXiv 2402.17764) forward and STE backward.

Composes the ops of this package: absmean weight quantization (weight_quant), per-token int8
activations (activation_quant, or rms_norm_quant when a SubLN precedes the layer), the int8 x
ternary matmul with its `gamma / s` epilogue and the two backward matmuls (ternary_matmul).
Saved for backward: int8 activations, their per-row scales, int8 codes and gamma; never the
float input (with a fused SubLN also the norm's input and its rstd, which the norm needs anyway).
Both layers are torch.library custom ops with a registered autograd formula, as are the backward
matmuls, so that torch.compile sees ops instead of Triton launches (docs/kernels.md).
"""

from __future__ import annotations

import torch

from bitk.numerics.bitlinear import check_linear, empty_linear_outputs, linear_output_dtype

from .activation_quant import quantize_activations
from .rms_norm import _rms_norm_backward_op
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


# torch.library ops, so that torch.compile sees each layer as one op (not Triton launches inside
# an autograd.Function): the forwards also return what the backward saves; the backward matmuls
# are ops of their own.


@torch.library.custom_op("bitk::triton_ternary_matmul_dx", mutates_args=())
def _ternary_matmul_dx_op(dy: torch.Tensor, codes: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """float32 ``(dy @ codes) * gamma`` [M, K]: `ternary_matmul_dx`."""
    return ternary_matmul_dx(dy, codes, gamma, out_dtype=torch.float32)


@_ternary_matmul_dx_op.register_fake
def _(dy, codes, gamma):
    return dy.new_empty((dy.shape[0], codes.shape[1]), dtype=torch.float32)


@torch.library.custom_op("bitk::triton_ternary_matmul_dw", mutates_args=())
def _ternary_matmul_dw_op(dy: torch.Tensor, xq: torch.Tensor, s: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
    """``dy^T @ (xq / s)`` [N, K] in out_dtype: `ternary_matmul_dw`."""
    return ternary_matmul_dw(dy, xq, s, out_dtype=out_dtype)


@_ternary_matmul_dw_op.register_fake
def _(dy, xq, s, out_dtype):
    return dy.new_empty((dy.shape[1], xq.shape[1]), dtype=out_dtype)


def _linear_forward(x, xq, s, weight, bias, out_dtype):
    """(y [..., N], codes, gamma) of BitLinear from x's int8 activations."""
    codes, gamma = quantize_weights(weight)
    y = ternary_matmul_fwd(xq, s, codes, gamma, bias, out_dtype=out_dtype)
    return y.reshape(*x.shape[:-1], weight.shape[0]), codes, gamma


def _linear_setup_context(ctx, x, weight, bias, weight_index: int) -> None:
    """Notes on ``ctx`` what `_linear_backward` needs besides the saved tensors (``weight_index``:
    weight's argument index)."""
    ctx.x_shape, ctx.x_dtype, ctx.weight_dtype = x.shape, x.dtype, weight.dtype
    ctx.has_bias, ctx.bias_dtype, ctx.weight_index = bias is not None, getattr(bias, "dtype", None), weight_index


def _linear_backward(ctx, dy2, xq, s, codes, gamma, need_dn: bool):
    """Gradients of y = BitLinear(n): (d n, d W, d bias) from the saved int8 tensors and scales."""
    dn = dw = db = None
    if need_dn:
        dn = _ternary_matmul_dx_op(dy2, codes, gamma)
    if ctx.needs_input_grad[ctx.weight_index]:
        dw = _ternary_matmul_dw_op(dy2, xq, s, ctx.weight_dtype)
    if ctx.has_bias and ctx.needs_input_grad[ctx.weight_index + 1]:
        db = dy2.float().sum(dim=0).to(ctx.bias_dtype)
    return dn, dw, db


@torch.library.custom_op("bitk::triton_bitlinear", mutates_args=())
def _bitlinear_op(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, out_dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(y [..., N] out_dtype, xq int8 [M, K], s float32 [M, 1], codes int8 [N, K], gamma float32 [])."""
    xq, s = quantize_activations(x.reshape(-1, x.shape[-1]).contiguous())
    y, codes, gamma = _linear_forward(x, xq, s, weight, bias, out_dtype)
    return y, xq, s, codes, gamma


@_bitlinear_op.register_fake
def _(x, weight, bias, out_dtype):
    return empty_linear_outputs(x, weight, out_dtype)


def _bitlinear_setup_context(ctx, inputs, output) -> None:
    x, weight, bias, _ = inputs
    _, xq, s, codes, gamma = output
    ctx.mark_non_differentiable(xq, s, codes, gamma)
    ctx.save_for_backward(xq, s, codes, gamma)
    _linear_setup_context(ctx, x, weight, bias, weight_index=1)


def _bitlinear_backward(ctx, dy, *_):
    xq, s, codes, gamma = ctx.saved_tensors
    dy2 = dy.reshape(-1, codes.shape[0]).contiguous()
    dn, dw, db = _linear_backward(ctx, dy2, xq, s, codes, gamma, ctx.needs_input_grad[0])
    dx = None if dn is None else dn.to(ctx.x_dtype).reshape(ctx.x_shape)
    return dx, dw, db, None


_bitlinear_op.register_autograd(_bitlinear_backward, setup_context=_bitlinear_setup_context)


@torch.library.custom_op("bitk::triton_rms_norm_bitlinear", mutates_args=())
def _rms_norm_bitlinear_op(
    x: torch.Tensor,
    norm_weight: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    eps: float,
    out_dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(y, xq, s, codes, gamma) as `bitk::triton_bitlinear`, then the norm's float32 rstd [M]."""
    # The normalized activations exist only as int8 codes and per-row scales.
    xq, s, rstd = rms_norm_quant_fwd(x.reshape(-1, x.shape[-1]).contiguous(), norm_weight, eps)
    y, codes, gamma = _linear_forward(x, xq, s, weight, bias, out_dtype)
    return y, xq, s, codes, gamma, rstd


@_rms_norm_bitlinear_op.register_fake
def _(x, norm_weight, weight, bias, eps, out_dtype):
    outputs = empty_linear_outputs(x, weight, out_dtype)
    return *outputs, x.new_empty(outputs[1].shape[:1], dtype=torch.float32)


def _rms_norm_bitlinear_setup_context(ctx, inputs, output) -> None:
    x, norm_weight, weight, bias, _, _ = inputs
    _, xq, s, codes, gamma, rstd = output
    ctx.mark_non_differentiable(xq, s, codes, gamma, rstd)
    # With the norm's input x and its rstd (which the norm's backward needs anyway).
    ctx.save_for_backward(x, norm_weight, rstd, xq, s, codes, gamma)
    _linear_setup_context(ctx, x, weight, bias, weight_index=2)


def _rms_norm_bitlinear_backward(ctx, dy, *_):
    x, norm_weight, rstd, xq, s, codes, gamma = ctx.saved_tensors
    dy2 = dy.reshape(-1, codes.shape[0]).contiguous()
    need_norm = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
    # Straight-through: the gradient of the quantized norm output is that of the norm output.
    dn, dw, db = _linear_backward(ctx, dy2, xq, s, codes, gamma, need_norm)
    dx = dg = None
    if need_norm:
        x2 = x.reshape(-1, x.shape[-1]).contiguous()
        dx2, dg = _rms_norm_backward_op(dn, x2, norm_weight, rstd)
        dx = dx2.to(ctx.x_dtype).reshape(ctx.x_shape) if ctx.needs_input_grad[0] else None
        dg = dg if ctx.needs_input_grad[1] else None
    return dx, dg, dw, db, None, None


_rms_norm_bitlinear_op.register_autograd(_rms_norm_bitlinear_backward, setup_context=_rms_norm_bitlinear_setup_context)


def bitlinear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """BitLinear forward/backward with the fused kernels: x [..., in], weight [out, in] -> [..., out]."""
    _check(x, weight, bias)
    return _bitlinear_op(x, weight, bias, linear_output_dtype(x))[0]


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
    return _rms_norm_bitlinear_op(x, norm_weight, weight, bias, float(eps), linear_output_dtype(x))[0]
