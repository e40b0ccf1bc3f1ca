"""The CPU fast path of RMSNorm: the reference's bits in fewer passes over memory.

Autograd on the reference (`bitk.numerics.rms_norm`: ``y = x / rms * w``, ``rms = sqrt(mean(x^2)
+ eps)``) makes a dozen passes over [tokens, features] tensors per backward, and `bitk.nn`
recomputes the forward for it besides, to keep only the input. Here the statistics stay torch's own
reductions (the mean of squares; rms's and w's gradients summed over a row and over the rows), and
everything elementwise runs in three C++ passes (`bitk._codecs.rms_norm_*`): ``(x / rms) * w``
forward; the two sums' terms; x's two gradient terms. Each elementwise value is the float32
operations of autograd's formulas in their order, so forward and gradients equal the reference's
bit for bit (tests/nn/test_cpu_norm.py). It saves only x and rms for the backward.

The layer is a pair of torch.library custom ops (``bitk::cpu_rms_norm`` and its backward), so
torch.compile takes each as one op; eager calls run the same functions as a
torch.autograd.Function (`bitk.nn.eager`). Traced, or without the extension, the same formulas run as torch
ops: the reference's bits still, and only x and rms kept.
"""

from __future__ import annotations

import torch

from .cpu_extension import codecs as _extension
from .cpu_extension import contiguous_data, dense_float32_cpu
from .cpu_extension import numpy_view as _np
from .eager import autograd_twin, traced

__all__ = ["applies", "rms_norm"]


def _codecs():
    """bitk._codecs on torch's threads, or None without the extension."""
    return _extension("rms_norm_apply")


def applies(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """True when this path computes RMSNorm of ``x`` with gain ``weight``: contiguous float32 CPU
    tensors, x with a feature dimension (without bitk's C++ kernels, by torch's ops)."""
    return dense_float32_cpu(x, weight) and x.dim() >= 1 and weight.shape == (x.shape[-1],)


def _rms(x: torch.Tensor, eps: float) -> torch.Tensor:
    """The reference's ``sqrt(mean(x^2) + eps)`` [..., 1], by the same torch ops."""
    return torch.sqrt(x.square().mean(dim=-1, keepdim=True) + eps)


def _apply(x: torch.Tensor, weight: torch.Tensor, rms: torch.Tensor) -> torch.Tensor:
    """``(x / rms) * weight``: one C++ pass over real contiguous tensors, else torch's ops."""
    codecs = _codecs()
    if codecs is None or not contiguous_data(x, weight, rms):
        return x / rms * weight
    cols = x.shape[-1]
    y = codecs.rms_norm_apply(_np(x.reshape(-1, cols)), _np(rms.reshape(-1)), _np(weight))
    return torch.from_numpy(y).view(x.shape)


# x enters the op twice (the same tensor): its gradient's two terms (from the division and from the
# square) go back as two gradients, which autograd adds to x's gradient one after the other, after
# what reached x before them, as it does on the reference's graph. One summed term would change the
# order of that sum where x feeds other ops too (a residual stream), and with it the last bits.
def _rms_norm_outputs(
    x: torch.Tensor, x_again: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(y [...], rms [..., 1]) of float32 x [...] (``x_again``: x itself) and weight [features]."""
    with torch.autocast("cpu", enabled=False):
        rms = _rms(x, eps)
        return _apply(x, weight, rms), rms


_rms_norm_op = torch.library.custom_op("bitk::cpu_rms_norm", _rms_norm_outputs, mutates_args=(), device_types="cpu")


@_rms_norm_op.register_fake
def _(x, x_again, weight, eps):
    return torch.empty_like(x), x.new_empty((*x.shape[:-1], 1))


def _rms_norm_backward_terms(
    g: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, rms: torch.Tensor, x_grad: bool, w_grad: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x's gradient terms from the division and from the square, weight's gradient; empty tensors
    where not asked) of RMSNorm for the output gradient g: autograd's formulas on the reference
    (module doc), in the same order."""
    with torch.autocast("cpu", enabled=False):
        return _backward(g, x, weight, rms, x_grad, w_grad)


_rms_norm_backward_op = torch.library.custom_op(
    "bitk::cpu_rms_norm_backward", _rms_norm_backward_terms, mutates_args=(), device_types="cpu"
)


@_rms_norm_backward_op.register_fake
def _(g, x, weight, rms, x_grad, w_grad):
    dx = (torch.empty_like(x), torch.empty_like(x)) if x_grad else (x.new_empty(0), x.new_empty(0))
    return *dx, (torch.empty_like(weight) if w_grad else x.new_empty(0))


def _backward(g, x, weight, rms, x_grad: bool, w_grad: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    # Autograd on y = (x / rms) * w, rms = sqrt(mean(x^2) + eps), for the output gradient g:
    #   MulBackward: gq = g * w; w's gradient sum_rows(g * q), q = x / rms
    #   DivBackward: x gets gq / rms; rms gets sum_row(-gq * ((x / rms) / rms))
    #   SqrtBackward, AddBackward, MeanBackward: mean(x^2) gets (grad_rms / (2 rms)) / features
    #   PowBackward (square): x gets that * (2 x); autograd adds x's two terms in this order.
    lead = tuple(range(x.dim() - 1))
    features = x.shape[-1]
    codecs = _codecs()
    fused = codecs is not None and contiguous_data(g, x, weight, rms)
    if fused:
        shape, flat = x.shape, (-1, features)
        t, p = codecs.rms_norm_backward_terms(
            _np(g.reshape(flat)), _np(x.reshape(flat)), _np(rms.reshape(-1)), _np(weight), x_grad, w_grad
        )
        t = torch.from_numpy(t).view(shape) if x_grad else None
        p = torch.from_numpy(p).view(shape) if w_grad else None
    else:
        gq = g * weight
        t = (-gq) * ((x / rms) / rms) if x_grad else None
        p = g * (x / rms) if w_grad else None
    if w_grad:  # (autograd sums over the leading dimensions, and a 1-D x has none)
        dw = p.sum(lead, keepdim=True).view(features) if lead else p
    else:
        dw = x.new_empty(0)
    if not x_grad:
        return x.new_empty(0), x.new_empty(0), dw
    coef = (t.sum(-1, keepdim=True) / (2 * rms)) / features
    if fused:
        d, s = codecs.rms_norm_backward_input(
            _np(g.reshape(flat)), _np(x.reshape(flat)), _np(rms.reshape(-1)), _np(weight), _np(coef.reshape(-1))
        )
        return torch.from_numpy(d).view(shape), torch.from_numpy(s).view(shape), dw
    return (g * weight) / rms, coef * (2 * x), dw


def _setup_context(ctx, inputs, output) -> None:
    x, _, weight, _ = inputs
    _, rms = output
    ctx.mark_non_differentiable(rms)
    ctx.save_for_backward(x, weight, rms)


def _rms_norm_backward(ctx, dy, _drms):
    x, weight, rms = ctx.saved_tensors
    x_grad, w_grad = ctx.needs_input_grad[0], ctx.needs_input_grad[2]
    terms = _rms_norm_backward_op if traced(dy, x, weight, rms) else _rms_norm_backward_terms
    from_div, from_square, dw = terms(dy, x, weight, rms, x_grad, w_grad)
    if not x_grad:
        return None, None, dw, None
    return from_div, from_square, (dw if w_grad else None), None


_rms_norm_op.register_autograd(_rms_norm_backward, setup_context=_setup_context)
_rms_norm_eager = autograd_twin("CpuRMSNorm", _rms_norm_outputs, _setup_context, _rms_norm_backward)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """The reference RMSNorm's values and gradients for tensors where `applies` holds."""
    if traced(x, weight):
        return _rms_norm_op(x, x, weight, eps)[0]
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        return _rms_norm_eager(x, x, weight, eps)[0]
    with torch.autocast("cpu", enabled=False):  # nothing to differentiate: no op, no saved tensors
        return _apply(x, weight, _rms(x, eps))
