"""RMSNorm forward and backward (BitNet b1.58, arXiv 2402.17764; kernel layout after Liger-Kernel).

Rows of a contiguous [M, K] view, one row per forward program: statistics in float32 whatever the
input dtype, ``rms = sqrt(mean(x^2) + eps)`` with IEEE-rounded divide and square root, then
``y = x / rms * g`` in the reference's operation order (bitk.numerics.rms_norm defines the result).
The backward keeps the gain gradient deterministic: per-program float32 partial sums over blocks of
rows, then one ``.sum(0)``. Launches pass ``enable_fp_fusion=False``: every product is rounded as
written, as in the interpreter and the torch reference (a contracted ``y * s - floor(y * s)`` would
break round_half_even in rms_norm_quant, and both forward kernels must sum squares alike).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .utils import cast_rne, check_float_input, row_block

__all__ = ["rms_norm", "rms_norm_bwd", "rms_norm_fwd"]


@triton.jit
def row_rms(x, n_cols, eps):
    """``sqrt(mean(x^2) + eps)`` of one float32 row whose masked lanes hold 0.

    mean = sum / n rounded once (torch's CPU mean; on CUDA torch multiplies by 1/n), then
    sqrt_rn: Triton's plain ``/`` and ``tl.sqrt`` are approximate on NVIDIA GPUs. In the
    interpreter div_rn, sqrt_rn and sqrt are all numpy's correctly rounded float32 ops, while
    torch 2.13's CPU float32 sqrt is 1 ulp off for about 1 input in 6: bit equality with the CPU
    reference is not to be had, and the sums of squares differ in order anyway. Shared with
    rms_norm_quant so both kernels save the same rstd for the one backward.
    """
    mean_sq = tl.math.div_rn(tl.sum(x * x, axis=0), tl.cast(n_cols, tl.float32))
    return tl.math.sqrt_rn(mean_sq + eps)


@triton.jit
def _rms_norm_fwd_kernel(
    X,
    W,
    Y,
    RSTD,
    n_cols,
    stride_x,
    stride_y,
    eps,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    # Load and convert at once: bf16 arithmetic is wrong in the interpreter.
    x = tl.load(X + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    rms = row_rms(x, n_cols, eps)
    y = tl.math.div_rn(x, rms) * g
    tl.store(Y + row * stride_y + cols, cast_rne(y, Y.dtype.element_ty), mask=mask)
    tl.store(RSTD + row, tl.math.div_rn(1.0, rms))


@triton.jit
def _rms_norm_bwd_kernel(
    DY,
    X,
    W,
    RSTD,
    DX,
    DW_PARTIAL,
    n_rows,
    n_cols,
    rows_per_program,
    stride_dy,
    stride_x,
    stride_dx,
    stride_dw,
    BLOCK: tl.constexpr,
):
    # dx = rstd * (dy*g - xhat * mean(dy*g*xhat)), dg = sum over rows of dy * xhat, xhat = x * rstd.
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    g = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    dg = tl.zeros([BLOCK], dtype=tl.float32)
    row_start = pid * rows_per_program
    row_end = tl.minimum(row_start + rows_per_program, n_rows)
    # Pointers advance by one row per step (64-bit pointer arithmetic: no int32 overflow of row * stride).
    start64 = row_start.to(tl.int64)
    x_ptr = X + start64 * stride_x + cols
    dy_ptr = DY + start64 * stride_dy + cols
    dx_ptr = DX + start64 * stride_dx + cols
    rstd_ptr = RSTD + start64
    for _ in range(row_start, row_end):
        x = tl.load(x_ptr, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(dy_ptr, mask=mask, other=0.0).to(tl.float32)
        rstd = tl.load(rstd_ptr)
        xhat = x * rstd
        gdy = dy * g
        c = tl.math.div_rn(tl.sum(gdy * xhat, axis=0), tl.cast(n_cols, tl.float32))
        dx = (gdy - xhat * c) * rstd
        tl.store(dx_ptr, cast_rne(dx, DX.dtype.element_ty), mask=mask)
        dg += dy * xhat
        x_ptr += stride_x
        dy_ptr += stride_dy
        dx_ptr += stride_dx
        rstd_ptr += 1
    tl.store(DW_PARTIAL + pid.to(tl.int64) * stride_dw + cols, dg, mask=mask)


def _check_rows_and_weight(x2d: torch.Tensor, weight: torch.Tensor, name: str = "x2d") -> None:
    check_float_input(name, x2d)
    check_float_input("weight", weight)
    if x2d.dim() != 2 or x2d.shape[1] == 0:
        raise ValueError(f"{name} must be 2-D [rows, features] with features > 0, got shape {tuple(x2d.shape)}")
    if weight.shape != (x2d.shape[1],):
        raise ValueError(f"weight shape {tuple(weight.shape)} does not match {name}: expected ({x2d.shape[1]},)")
    if weight.device != x2d.device:
        raise ValueError(f"weight is on {weight.device} but {name} is on {x2d.device}")


def _unit_stride(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def _num_partials(n_rows: int, device: torch.device) -> int:
    """Programs of the backward, one float32 partial gain gradient each: one per SM on a GPU; a
    few in the interpreter, where more programs only cost time but several exercise the reduction."""
    n = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 4
    return max(1, min(n_rows, n))


def rms_norm_fwd(x2d: torch.Tensor, weight: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """RMSNorm of the rows of ``x2d`` [M, K] with gain ``weight`` [K].

    Returns ``(y, rstd)``: y [M, K] in x's dtype and rstd = 1 / rms, float32 [M], for the backward.
    """
    _check_rows_and_weight(x2d, weight)
    x2d, weight = _unit_stride(x2d), weight.contiguous()
    n_rows, n_cols = x2d.shape
    y = torch.empty_like(x2d, memory_format=torch.contiguous_format)
    rstd = torch.empty(n_rows, dtype=torch.float32, device=x2d.device)
    if n_rows == 0:
        return y, rstd
    block, num_warps = row_block(n_cols)
    _rms_norm_fwd_kernel[(n_rows,)](
        x2d,
        weight,
        y,
        rstd,
        n_cols,
        x2d.stride(0),
        y.stride(0),
        float(eps),
        BLOCK=block,
        num_warps=num_warps,
        enable_fp_fusion=False,
    )
    return y, rstd


def rms_norm_bwd(
    dy2d: torch.Tensor, x2d: torch.Tensor, weight: torch.Tensor, rstd: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of RMSNorm: ``(dx, dweight)`` from the output gradient ``dy2d`` [M, K], the input
    ``x2d`` [M, K], the gain ``weight`` [K] and the forward's float32 ``rstd`` [M].

    dx has x's dtype, dweight weight's dtype (summed in float32, rounded once).
    """
    _check_rows_and_weight(x2d, weight)
    check_float_input("dy2d", dy2d)
    if dy2d.shape != x2d.shape:
        raise ValueError(f"dy2d shape {tuple(dy2d.shape)} does not match x2d shape {tuple(x2d.shape)}")
    if not isinstance(rstd, torch.Tensor) or rstd.dtype != torch.float32 or rstd.shape != (x2d.shape[0],):
        raise ValueError(
            f"rstd must be a float32 tensor of shape ({x2d.shape[0]},), got "
            f"{getattr(rstd, 'dtype', type(rstd).__name__)} {tuple(getattr(rstd, 'shape', ()))}"
        )
    if dy2d.device != x2d.device or rstd.device != x2d.device:
        raise ValueError(f"dy2d ({dy2d.device}), x2d ({x2d.device}) and rstd ({rstd.device}) must share a device")
    dy2d, x2d, weight, rstd = _unit_stride(dy2d), _unit_stride(x2d), weight.contiguous(), rstd.contiguous()
    n_rows, n_cols = x2d.shape
    dx = torch.empty_like(x2d, memory_format=torch.contiguous_format)
    if n_rows == 0:
        return dx, torch.zeros_like(weight)
    n_programs = _num_partials(n_rows, x2d.device)
    rows_per_program = triton.cdiv(n_rows, n_programs)
    n_programs = triton.cdiv(n_rows, rows_per_program)
    dw_partial = torch.empty((n_programs, n_cols), dtype=torch.float32, device=x2d.device)
    block, num_warps = row_block(n_cols)
    _rms_norm_bwd_kernel[(n_programs,)](
        dy2d,
        x2d,
        weight,
        rstd,
        dx,
        dw_partial,
        n_rows,
        n_cols,
        rows_per_program,
        dy2d.stride(0),
        x2d.stride(0),
        dx.stride(0),
        dw_partial.stride(0),
        BLOCK=block,
        num_warps=num_warps,
        enable_fp_fusion=False,
    )
    return dx, dw_partial.sum(0).to(weight.dtype)


def _as_rows(x: torch.Tensor) -> torch.Tensor:
    """x [..., K] as rows [M, K], a view where possible."""
    check_float_input("x", x)
    if x.dim() < 1 or x.shape[-1] == 0:
        raise ValueError(f"x must have a non-empty last (feature) dimension, got shape {tuple(x.shape)}")
    return x.reshape(-1, x.shape[-1])


# torch.library ops, so that torch.compile sees the norm as one op (not Triton launches inside an
# autograd.Function): the forward also returns the rstd its backward needs; the backward is an op.


@torch.library.custom_op("bitk::triton_rms_norm_backward", mutates_args=())
def _rms_norm_backward_op(
    dy2d: torch.Tensor, x2d: torch.Tensor, weight: torch.Tensor, rstd: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(dx [M, K] in x's dtype, dweight [K] in weight's dtype): `rms_norm_bwd`."""
    return rms_norm_bwd(dy2d, x2d, weight, rstd)


@_rms_norm_backward_op.register_fake
def _(dy2d, x2d, weight, rstd):
    return torch.empty_like(x2d, memory_format=torch.contiguous_format), weight.new_empty(weight.shape)


def _saved_rows_backward(ctx, dy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
    """(dx, dweight, None for eps) of an RMSNorm over ``x`` [..., K] whose ctx saved (x2d, weight,
    rstd): `rms_norm_bwd` of ``dy``. Shared with rms_norm_quant's straight-through Function."""
    x2d, weight, rstd = ctx.saved_tensors
    dx, dweight = _rms_norm_backward_op(dy.reshape(x2d.shape), x2d, weight, rstd)
    return dx.view(dy.shape), dweight, None


@torch.library.custom_op("bitk::triton_rms_norm", mutates_args=())
def _rms_norm_op(x: torch.Tensor, weight: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(y of x's shape and dtype, float32 rstd [M]): `rms_norm_fwd` over the rows of ``x`` [..., K]."""
    y, rstd = rms_norm_fwd(_as_rows(x), weight, eps)
    return y.view(x.shape), rstd


@_rms_norm_op.register_fake
def _(x, weight, eps):
    rstd = x.new_empty((x.numel() // x.shape[-1],), dtype=torch.float32)
    return torch.empty_like(x, memory_format=torch.contiguous_format), rstd


def _rms_norm_setup_context(ctx, inputs, output) -> None:
    x, weight, _ = inputs
    ctx.mark_non_differentiable(output[1])
    ctx.save_for_backward(_as_rows(x), weight, output[1])


def _rms_norm_backward(ctx, dy, _drstd):
    return _saved_rows_backward(ctx, dy)  # rstd is not differentiable


_rms_norm_op.register_autograd(_rms_norm_backward, setup_context=_rms_norm_setup_context)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Triton RMSNorm with autograd; same signature and result as ``bitk.numerics.rms_norm``."""
    _as_rows(x)  # x's checks, before the op sees it
    return _rms_norm_op(x, weight, float(eps))[0]
