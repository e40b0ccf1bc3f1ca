"""Absmean ternary weight quantization of BitNet b1.58 (arXiv 2402.17764), with no host sync.

Per tensor: ``gamma = max(float32(sum|w| / numel), 1e-5)``, ``codes = clamp(round(w / gamma), -1, 1)``
(half to even, IEEE division), as `bitk.numerics.quantize_weights`. The sum runs in float64: per-program
partials, then one program adds them in a fixed order and writes gamma, all on the device.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .utils import check_float_input, is_interpreting, round_half_even

__all__ = ["FakeQuantizeWeightsFunction", "fake_quantize_weights", "quantize_weights"]

# Elements per program; the interpreter pays per program (about 10 ms), so it gets larger blocks.
_GPU_BLOCK = 4096
_BLOCK = 65536 if is_interpreting() else _GPU_BLOCK
_GAMMA_BLOCK = 1024


@triton.jit
def _abs_sum_partials_kernel(w_ptr, partial_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    w = tl.load(w_ptr + offs, mask=offs < n, other=0.0).to(tl.float64)
    tl.store(partial_ptr + tl.program_id(0), tl.sum(tl.abs(w), axis=0))


@triton.jit
def _gamma_kernel(partial_ptr, gamma_ptr, n_partials, n, BLOCK: tl.constexpr):
    acc = tl.zeros([BLOCK], dtype=tl.float64)
    for start in range(0, n_partials, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        acc += tl.load(partial_ptr + offs, mask=offs < n_partials, other=0.0)
    # float64 `/` is div.rn.f64 on GPU (unlike float32 `/`); the float32 rounding is to nearest even.
    mean = tl.sum(acc, axis=0) / tl.cast(n, tl.float64)
    tl.store(gamma_ptr, tl.maximum(mean.to(tl.float32), 1e-5))


@triton.jit
def _ternary_codes(w, gamma):
    return tl.clamp(round_half_even(tl.math.div_rn(w, gamma)), -1.0, 1.0)


@triton.jit
def _ternary_codes_kernel(
    w_ptr,
    gamma_ptr,
    gamma_out_ptr,
    codes_ptr,
    dq_ptr,
    n,
    BLOCK: tl.constexpr,
    STORE_CODES: tl.constexpr,
    STORE_DEQUANT: tl.constexpr,
):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    w = tl.load(w_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    codes = _ternary_codes(w, tl.load(gamma_ptr)).to(tl.int8)
    if STORE_CODES:
        tl.store(codes_ptr + offs, codes, mask=mask)
    if STORE_DEQUANT:
        # From the int8 code (a rounded -0.0 must give +0.0) times gamma already rounded to w's
        # dtype: exact, so the store is too (its float32 -> bfloat16 conversion truncates in the
        # interpreter).
        tl.store(dq_ptr + offs, codes.to(tl.float32) * tl.load(gamma_out_ptr).to(tl.float32), mask=mask)


def _check_weights(w: torch.Tensor) -> None:
    check_float_input("w", w)
    if w.numel() == 0:
        raise ValueError(f"w must not be empty, got shape {tuple(w.shape)}")
    if not w.is_cuda and not is_interpreting():
        raise ValueError(f"w must be a CUDA tensor (CPU tensors need TRITON_INTERPRET=1), got {w.device}")


def _gamma(w_flat: torch.Tensor) -> torch.Tensor:
    """0-dim float32 gamma of the contiguous 1-D ``w_flat``, computed on its device."""
    n = w_flat.numel()
    n_partials = triton.cdiv(n, _BLOCK)
    partials = torch.empty(n_partials, dtype=torch.float64, device=w_flat.device)
    _abs_sum_partials_kernel[(n_partials,)](w_flat, partials, n, BLOCK=_BLOCK, num_warps=8)
    gamma = torch.empty((), dtype=torch.float32, device=w_flat.device)
    _gamma_kernel[(1,)](partials, gamma, n_partials, n, BLOCK=_GAMMA_BLOCK, num_warps=4)
    return gamma


def _quantize_weights(
    w: torch.Tensor, store_codes: bool, store_dequant: bool
) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor | None]:
    """(int8 codes or None, gamma, dequantized codes * gamma in w's dtype or None) of any-shape w."""
    _check_weights(w)
    w_flat = w.reshape(-1).contiguous()
    n = w_flat.numel()
    gamma = _gamma(w_flat)
    codes = torch.empty(n, dtype=torch.int8, device=w.device) if store_codes else None
    dq = torch.empty(n, dtype=w.dtype, device=w.device) if store_dequant else None
    _ternary_codes_kernel[(triton.cdiv(n, _BLOCK),)](
        w_flat,
        gamma,
        gamma.to(w.dtype) if store_dequant else None,
        codes,
        dq,
        n,
        BLOCK=_BLOCK,
        STORE_CODES=store_codes,
        STORE_DEQUANT=store_dequant,
        num_warps=8,
        enable_fp_fusion=False,
    )
    return (
        codes.view(w.shape) if codes is not None else None,
        gamma,
        dq.view(w.shape) if dq is not None else None,
    )


def quantize_weights(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Absmean ternary quantization of a whole tensor w (float32/float16/bfloat16, not empty).

    Returns ``(codes, gamma)``: int8 codes in {-1, 0, 1} of w's shape and a 0-dim float32 gamma on
    w's device, never synchronizing with the host. gamma is within one float32 ulp of
    `bitk.numerics.quantize_weights` (its float64 sum runs in another order; in practice it is the
    same) and codes are exactly ``clamp(round(w / gamma), -1, 1)`` for this gamma.
    """
    codes, gamma, _ = _quantize_weights(w, store_codes=True, store_dequant=False)
    return codes, gamma


class FakeQuantizeWeightsFunction(torch.autograd.Function):
    """Forward ``(codes.float() * gamma).to(w.dtype)``; backward the straight-through identity."""

    @staticmethod
    def forward(ctx, w: torch.Tensor) -> torch.Tensor:
        _, _, dq = _quantize_weights(w, store_codes=False, store_dequant=True)
        return dq

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> torch.Tensor:
        return grad_output


def fake_quantize_weights(w: torch.Tensor) -> torch.Tensor:
    """STE fake quantization of weights; equals `bitk.numerics.fake_quantize_weights(w, 1.0)` for the same gamma."""
    return FakeQuantizeWeightsFunction.apply(w)
