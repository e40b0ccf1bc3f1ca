"""Per-token absmax int8 activation quantization of BitNet b1.58 (arXiv 2402.17764), fused.

Each row of the flattened [M, K] input: ``s = 127 / max(max|x|, 1e-5)``, ``xq = clamp(round(x * s),
-128, 127)`` (half to even), all in float32, bit-identical to `bitk.numerics.quantize_activations`.
Outputs: int8 ``xq`` of x's shape and float32 ``s`` of shape [..., 1]. The fake quantizer writes the
dequantized ``xq / s`` in x's dtype in the same pass and passes gradients straight through.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .utils import cast_rne, check_float_input, is_interpreting, round_half_even, row_block

__all__ = ["FakeQuantizeActivationsFunction", "fake_quantize_activations", "quantize_activations"]

# Short rows are batched so a program holds about this many elements; the interpreter pays per
# program (about 10 ms), so it gets larger tiles.
_GPU_TILE = 4096
_TILE = 16384 if is_interpreting() else _GPU_TILE


@triton.jit
def _quantize_activations_kernel(
    x_ptr,
    xq_ptr,
    s_ptr,
    dq_ptr,
    M,
    K,
    stride_x,
    BLOCK_M: tl.constexpr,
    BLOCK_K: tl.constexpr,
    STORE_CODES: tl.constexpr,
    STORE_DEQUANT: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_K)
    row_mask = rows < M
    mask = row_mask[:, None] & (cols[None, :] < K)
    rows = rows.to(tl.int64)
    x = tl.load(x_ptr + rows[:, None] * stride_x + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    amax = tl.maximum(tl.max(tl.abs(x), axis=1), 1e-5)
    # Correctly rounded like torch.div; Triton's `/` on float32 is div.full (approximate) on GPU.
    s = tl.math.div_rn(127.0, amax)
    xq = tl.clamp(round_half_even(x * s[:, None]), -128.0, 127.0).to(tl.int8)
    tl.store(s_ptr + rows, s, mask=row_mask)
    if STORE_CODES:
        tl.store(xq_ptr + rows[:, None] * K + cols[None, :], xq, mask=mask)
    if STORE_DEQUANT:
        # From the int8 code, as the reference: a rounded -0.0 must dequantize to +0.0.
        dq = tl.math.div_rn(xq.to(tl.float32), s[:, None])
        tl.store(dq_ptr + rows[:, None] * K + cols[None, :], cast_rne(dq, dq_ptr.dtype.element_ty), mask=mask)


def _launch_blocks(m: int, k: int, tile: int = _TILE) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_K, num_warps) of the launch over x viewed as [m, k]: whole rows, batched up to ``tile``."""
    block_k, _ = row_block(k)
    block_m = min(max(tile // block_k, 1), triton.next_power_of_2(m))
    _, num_warps = row_block(block_m * block_k)
    return block_m, block_k, num_warps


def _check_device(name: str, t: torch.Tensor) -> None:
    if not t.is_cuda and not is_interpreting():
        raise ValueError(f"{name} must be a CUDA tensor (CPU tensors need TRITON_INTERPRET=1), got {t.device}")


def _quantize_activations(
    x: torch.Tensor, store_codes: bool, store_dequant: bool
) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor | None]:
    """Launch the kernel on x viewed as [M, K]; returns (xq or None, s, dequantized or None)."""
    check_float_input("x", x)
    if x.dim() < 1 or x.shape[-1] == 0:
        raise ValueError(f"x must have a non-empty last (feature) dimension, got shape {tuple(x.shape)}")
    _check_device("x", x)
    K = x.shape[-1]
    row_block(K)  # rejects rows too long for one program
    x2 = x.reshape(-1, K)
    if x2.stride(1) != 1:
        x2 = x2.contiguous()
    M = x2.shape[0]
    xq = torch.empty((M, K), dtype=torch.int8, device=x.device) if store_codes else None
    s = torch.empty(M, dtype=torch.float32, device=x.device)
    dq = torch.empty((M, K), dtype=x.dtype, device=x.device) if store_dequant else None
    if M > 0:
        block_m, block_k, num_warps = _launch_blocks(M, K)
        _quantize_activations_kernel[(triton.cdiv(M, block_m),)](
            x2,
            xq,
            s,
            dq,
            M,
            K,
            x2.stride(0),
            BLOCK_M=block_m,
            BLOCK_K=block_k,
            STORE_CODES=store_codes,
            STORE_DEQUANT=store_dequant,
            num_warps=num_warps,
            # No fma contraction: x * s must be rounded before round_half_even subtracts its floor.
            enable_fp_fusion=False,
        )
    return (
        xq.view(x.shape) if xq is not None else None,
        s.view(*x.shape[:-1], 1),
        dq.view(x.shape) if dq is not None else None,
    )


def quantize_activations(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token absmax int8 quantization of x [..., K] (float32/float16/bfloat16, CUDA or interpreted).

    Returns ``(xq, s)``: int8 ``xq`` of x's shape and float32 ``s`` of shape [..., 1], bit-identical
    to `bitk.numerics.quantize_activations`; the dequantized activations are ``xq / s``. Rows of up
    to 65536 features are supported.
    """
    xq, s, _ = _quantize_activations(x, store_codes=True, store_dequant=False)
    return xq, s


class FakeQuantizeActivationsFunction(torch.autograd.Function):
    """Forward ``(xq.float() / s).to(x.dtype)`` in one pass; backward the straight-through identity."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        _, _, dq = _quantize_activations(x, store_codes=False, store_dequant=True)
        return dq

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> torch.Tensor:
        return grad_output


def fake_quantize_activations(x: torch.Tensor) -> torch.Tensor:
    """STE fake quantization of activations; equals `bitk.numerics.fake_quantize_activations(x, 1.0)`."""
    return FakeQuantizeActivationsFunction.apply(x)
