"""SubLN fused with per-token int8 activation quantization (BitNet b1.58 2B4T, arXiv 2504.12285).

One program per row of a contiguous [M, K] view: ``y = x / sqrt(mean(x^2) + eps) * g`` in float32
(rms_norm.py's statistics), then ``s = 127 / max(max|y|, 1e-5)`` and
``xq = clamp(round_half_even(y * s), -128, 127)``: int8 xq [M, K], float32 s [M, 1] and rstd [M].
y itself never reaches memory. The BitLinear after the norm passes its input gradient straight
through the quantizer, so the backward is rms_norm.py's.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .rms_norm import _as_rows, _check_rows_and_weight, _saved_rows_backward, _unit_stride, row_rms
from .utils import round_half_even, row_block

__all__ = ["RMSNormFakeQuantFunction", "rms_norm_fake_quant", "rms_norm_quant", "rms_norm_quant_fwd"]


@triton.jit
def _rms_norm_quant_fwd_kernel(
    X,
    W,
    XQ,
    S,
    RSTD,
    n_cols,
    stride_x,
    stride_xq,
    eps,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    x = tl.load(X + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    rms = row_rms(x, n_cols, eps)
    y = tl.math.div_rn(x, rms) * g  # masked lanes are 0, so they never raise amax
    amax = tl.max(tl.abs(y), axis=0)
    s = tl.math.div_rn(127.0, tl.maximum(amax, 1e-5))
    xq = tl.minimum(tl.maximum(round_half_even(y * s), -128.0), 127.0)
    tl.store(XQ + row * stride_xq + cols, xq.to(tl.int8), mask=mask)
    tl.store(S + row, s)
    tl.store(RSTD + row, tl.math.div_rn(1.0, rms))


def rms_norm_quant_fwd(
    x2d: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """RMSNorm of the rows of ``x2d`` [M, K] with gain ``weight`` [K], quantized per row to int8.

    Returns ``(xq, s, rstd)``: int8 xq [M, K], float32 s [M, 1] (the norm output is about xq / s)
    and float32 rstd = 1 / rms [M] for rms_norm_bwd.
    """
    _check_rows_and_weight(x2d, weight)
    x2d, weight = _unit_stride(x2d), weight.contiguous()
    n_rows, n_cols = x2d.shape
    xq = torch.empty((n_rows, n_cols), dtype=torch.int8, device=x2d.device)
    s = torch.empty((n_rows, 1), dtype=torch.float32, device=x2d.device)
    rstd = torch.empty(n_rows, dtype=torch.float32, device=x2d.device)
    if n_rows == 0:
        return xq, s, rstd
    block, num_warps = row_block(n_cols)
    # No FMA contraction (see rms_norm.py): round_half_even must see the rounded product y * s.
    _rms_norm_quant_fwd_kernel[(n_rows,)](
        x2d,
        weight,
        xq,
        s,
        rstd,
        n_cols,
        x2d.stride(0),
        xq.stride(0),
        float(eps),
        BLOCK=block,
        num_warps=num_warps,
        enable_fp_fusion=False,
    )
    return xq, s, rstd


class RMSNormFakeQuantFunction(torch.autograd.Function):
    """Forward: the dequantized quantized RMSNorm output ``xq / s`` in x's dtype. Backward: the
    RMSNorm backward of the incoming gradient (straight-through estimator for the quantizer)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
        x2d = _as_rows(x)
        xq, s, rstd = rms_norm_quant_fwd(x2d, weight, eps)
        ctx.save_for_backward(x2d, weight, rstd)
        return (xq.float() / s).to(x.dtype).view(x.shape)

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        return _saved_rows_backward(ctx, dy)


def rms_norm_quant(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused RMSNorm + int8 quantization of ``x`` [..., K] (no autograd): int8 xq of x's shape, float32 s [..., 1]."""
    xq, s, _ = rms_norm_quant_fwd(_as_rows(x), weight, eps)
    return xq.view(x.shape), s.view(*x.shape[:-1], 1)


def rms_norm_fake_quant(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Fused RMSNorm + fake int8 quantization with autograd (straight-through through the quantizer)."""
    return RMSNormFakeQuantFunction.apply(x, weight, eps)
