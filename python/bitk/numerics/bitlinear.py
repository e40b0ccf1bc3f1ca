"""Reference BitLinear of BitNet b1.58 (arXiv 2402.17764, training-tips FAQ) and bitnet.cpp.

``y = (xq @ Wt^T) * (gamma / s) + bias`` with per-tensor absmean ternary weights (Wt, gamma) and
per-token absmax int8 activations (xq, s); straight-through backward ``dx = dy @ (Wt * gamma)``,
``dW = dy^T @ (xq / s)``. Three forms: the autograd.Function that saves only int8 codes and float
scales (the contract of the fused kernels), the fake-quant + F.linear form, the I2_S forward of
bitnet.cpp and the TQ1_0/TQ2_0 forward of llama.cpp (ggml's Q8_K activations, per-block scales).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from .quant import (
    QK_K,
    fake_quantize_activations,
    fake_quantize_weights,
    quantize_activations,
    quantize_activations_bitnet_cpp,
    quantize_activations_q8k,
    quantize_weights,
)

__all__ = [
    "bitlinear",
    "bitlinear_fake_quant",
    "bitlinear_bitnet_cpp",
    "bitlinear_ggml_tq",
    "check_linear",
    "empty_linear_outputs",
    "ggml_block_sum",
    "linear_output_dtype",
    "save_for_ste_backward",
    "ste_backward",
]


def check_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    """Raise ValueError unless x [..., in], weight [out, in] and bias [out] fit a linear layer."""
    if not x.is_floating_point():
        raise ValueError(f"x must be a floating point tensor, got dtype {x.dtype}")
    if not weight.is_floating_point():
        raise ValueError(f"weight must be a floating point tensor, got dtype {weight.dtype}")
    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-D [out, in], got shape {tuple(weight.shape)}")
    if x.dim() < 1 or x.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"x shape {tuple(x.shape)} does not match weight shape {tuple(weight.shape)}: "
            f"x's last dimension must equal in_features={weight.shape[1]}"
        )
    if weight.shape[1] == 0:
        raise ValueError(f"in_features must be > 0, got weight shape {tuple(weight.shape)}")
    if bias is not None:
        if not bias.is_floating_point():
            raise ValueError(f"bias must be a floating point tensor, got dtype {bias.dtype}")
        if bias.shape != (weight.shape[0],):
            raise ValueError(
                f"bias shape {tuple(bias.shape)} does not match out_features: expected ({weight.shape[0]},)"
            )


def empty_linear_outputs(x: torch.Tensor, weight: torch.Tensor, out_dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """Empty (y [..., N], xq [M, K] int8, s [M, 1], codes [N, K] int8, gamma []) of a BitLinear
    forward that saves its int8 tensors: the outputs of the fast paths' custom ops, for their fake
    (shape-only) implementations."""
    (n, k), m = weight.shape, x.numel() // x.shape[-1]
    return (
        x.new_empty((*x.shape[:-1], n), dtype=out_dtype),
        x.new_empty((m, k), dtype=torch.int8),
        x.new_empty((m, 1), dtype=torch.float32),
        x.new_empty((n, k), dtype=torch.int8),
        x.new_empty((), dtype=torch.float32),
    )


def linear_output_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype a BitLinear returns for input ``x``, whichever path (reference, CPU, Triton) computes it.

    Under autocast on x's device the autocast dtype, as ``nn.Linear`` returns; float64 ``x`` stays
    float64 under autocast too, as autocast leaves float64 ops alone (and the reference computes
    float64 input in float64); otherwise x's dtype. One rule, so that every path agrees.
    """
    dev = x.device.type
    if x.dtype != torch.float64 and torch.is_autocast_enabled(dev):
        return torch.get_autocast_dtype(dev)
    return x.dtype


def save_for_ste_backward(ctx, x, weight, bias, xq, s, codes, gamma) -> None:
    """Save on ``ctx`` what `ste_backward` reads: the int8 xq and codes with their scales (never x
    or W), x's shape and the dtypes of x, weight and bias (each gradient is returned in its input's)."""
    ctx.save_for_backward(xq, s, codes, gamma)
    ctx.x_shape = x.shape
    ctx.dtypes = (x.dtype, weight.dtype, None if bias is None else bias.dtype)


def ste_backward(ctx, dy: torch.Tensor, dequantize: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None):
    """(dx, dW, dbias) of a BitLinear by the straight-through formulas, from `save_for_ste_backward`'s ctx.

    ``dx = dy @ (codes * gamma)``, ``dW = dy^T @ (xq / s)``, ``dbias = sum(dy)``, computed in s's
    dtype (float32; float64 for float64 x); None where no gradient is needed. ``dequantize(codes,
    gamma)`` gives ``codes * gamma`` in that dtype (default the torch product; the products are
    exact, so a faster exact implementation, as the CPU path passes, changes nothing).
    """
    xq, s, codes, gamma = ctx.saved_tensors
    x_dtype, w_dtype, b_dtype = ctx.dtypes
    cd = s.dtype
    dy2 = dy.reshape(-1, codes.shape[0]).to(cd)
    dx = dw = db = None
    if ctx.needs_input_grad[0]:
        w = codes.to(cd) * gamma if dequantize is None else dequantize(codes, gamma)
        dx = (dy2 @ w).to(x_dtype).reshape(ctx.x_shape)
    if ctx.needs_input_grad[1]:
        dw = (dy2.T @ (xq.to(cd) / s)).to(w_dtype)
    if ctx.needs_input_grad[2]:
        db = dy2.sum(dim=0).to(b_dtype)
    return dx, dw, db


def _exact_int_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b^T`` of two small-integer (int8) matrices, exact, as float64.

    Every product has |a*b| <= 128 * 128 and every partial sum is an integer below 2^14 * K in
    magnitude; float64 holds all integers up to 2^53 exactly, so the result is exact in any
    summation order for K < 2^39 (float64 matmul also runs on every device, int64 does not).
    """
    return a.to(torch.float64) @ b.to(torch.float64).T


class _BitLinearFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias):
        cd = torch.float64 if x.dtype == torch.float64 else torch.float32
        # The compute dtype follows x; W is quantized in it too (a no-op cast for float32 W).
        codes, gamma = quantize_weights(weight.to(cd))
        xq, s = quantize_activations(x.reshape(-1, x.shape[-1]))
        y = _exact_int_matmul(xq, codes).to(cd) * (gamma / s)
        if bias is not None:
            y = y + bias.to(cd)
        save_for_ste_backward(ctx, x, weight, bias, xq, s, codes, gamma)
        return y.to(x.dtype).reshape(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, dy):
        return ste_backward(ctx, dy)


def bitlinear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Reference BitLinear: x [..., in], latent weight [out, in], optional bias [out] -> [..., out].

    The integer product is exact; scaling is in float32 (float64 for float64 x) and the result
    has x's dtype. Backward is the straight-through formula, computed from the saved int8 xq,
    per-row s, int8 codes and gamma (never x or W); each gradient has its input's dtype.
    """
    check_linear(x, weight, bias)
    return _BitLinearFunction.apply(x, weight, bias)


def bitlinear_fake_quant(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    lam: float | torch.Tensor = 1.0,
) -> torch.Tensor:
    """BitLinear written with the STE fake quantizers and ``F.linear`` (autograd backward).

    Equal to :func:`bitlinear` up to float rounding for lam = 1; lam < 1 is quantization warm-up.
    Computed in float32 (float64 for float64 x) whatever the input dtypes; result in x's dtype.
    """
    check_linear(x, weight, bias)
    cd = torch.float64 if x.dtype == torch.float64 else torch.float32
    xf = fake_quantize_activations(x.to(cd), lam)
    wf = fake_quantize_weights(weight.to(cd), lam)
    y = F.linear(xf, wf, None if bias is None else bias.to(cd))
    return y.to(x.dtype)


def _check_ternary_matmul(x: torch.Tensor, codes: torch.Tensor, scale: float | torch.Tensor) -> torch.Tensor:
    """ValueError for a bad (x, codes, scale) of a runtime's ternary matmul; the scale as a 0-dim float32 tensor."""
    if not x.is_floating_point():
        raise ValueError(f"x must be a floating point tensor, got dtype {x.dtype}")
    if codes.dtype != torch.int8 or codes.dim() != 2:
        raise ValueError(f"codes must be a 2-D int8 tensor [out, in], got {codes.dtype} of shape {tuple(codes.shape)}")
    if x.dim() < 1 or x.shape[-1] != codes.shape[1] or codes.shape[1] == 0:
        raise ValueError(
            f"x shape {tuple(x.shape)} does not match codes shape {tuple(codes.shape)}: "
            f"x's last dimension must equal in_features={codes.shape[1]} (> 0)"
        )
    scale = torch.as_tensor(scale, dtype=torch.float32)
    if scale.dim() != 0:
        raise ValueError(f"scale must be a float or a 0-dim tensor, got shape {tuple(scale.shape)}")
    return scale


def bitlinear_bitnet_cpp(x: torch.Tensor, codes: torch.Tensor, scale: float | torch.Tensor) -> torch.Tensor:
    """Forward of an I2_S matmul as bitnet.cpp computes it; float32 output [..., out].

    ``codes`` int8 [out, in] in {-1, 0, 1} (not checked: that would sync the host), ``scale`` the
    tensor's float32 scale. ``acc = sum((codes + 1) * q) - sum(q)`` exactly, then
    ``y = (float32(acc) / s) * scale`` in float32, in that order.
    """
    scale = _check_ternary_matmul(x, codes, scale)
    xq, s = quantize_activations_bitnet_cpp(x.reshape(-1, x.shape[-1]))
    # The runtime's unsigned-code form; c = codes + 1 in {0, 1, 2}, so acc == sum(codes * q).
    acc = _exact_int_matmul(xq, codes.to(torch.int16) + 1) - xq.to(torch.float64).sum(dim=-1, keepdim=True)
    y = (acc.to(torch.float32) / s) * scale
    return y.reshape(*x.shape[:-1], codes.shape[0])


def ggml_block_sum(sumi: torch.Tensor, d_x: torch.Tensor, d_w: torch.Tensor) -> torch.Tensor:
    """The float32 epilogue of ggml's TQ x Q8_K dot product, from exact per-block integer sums.

    ``sumi`` [nb, M, N] holds the exact integer block sums (any float dtype), ``d_x`` [M, nb] the
    float32 Q8_K scales, ``d_w`` the 0-dim float32 weight scale (the value of the file's float16).
    ``y = 0; for each block b in order: y += float32(sumi[b]) * (d_x[:, b] * d_w)``, each product
    and sum rounded to float32 (the runtime's generic order). Returns float32 [M, N].
    """
    d = d_x.to(torch.float32) * d_w.to(torch.float32)  # [M, nb], float32 products
    s32 = sumi.to(torch.float32)
    y = torch.zeros(s32.shape[1:], dtype=torch.float32, device=s32.device)
    for b in range(s32.shape[0]):
        y = y + s32[b] * d[:, b : b + 1]
    return y


def bitlinear_ggml_tq(x: torch.Tensor, codes: torch.Tensor, scale: float | torch.Tensor) -> torch.Tensor:
    """Forward of a TQ1_0 / TQ2_0 matmul as llama.cpp (ggml CPU) computes it; float32 output [..., out].

    ``codes`` int8 [out, in] in {-1, 0, 1} (not checked); an ``in`` that is not a multiple of 256
    is taken as zero-padded at the end to the next multiple, as a zero-padded file stores it
    (`bitk.models.padding`: zeros change no block's result). ``scale`` the tensor's scale, rounded
    here to float16 as the file stores it in every block (``d_w``). The activations are quantized
    per block of 256 by `quantize_activations_q8k` (``xq``, ``d_x``); per block
    ``sumi = sum(codes * xq)`` exactly, then ``y += float32(sumi) * (d_x * d_w)`` in float32,
    block after block (`ggml_block_sum`).
    """
    scale = _check_ternary_matmul(x, codes, scale)
    n_out, k = codes.shape
    d_w = scale.to(torch.float16).to(torch.float32)
    pad = -k % QK_K
    x2 = torch.nn.functional.pad(x.reshape(-1, k).to(torch.float32), (0, pad))
    codes = torch.nn.functional.pad(codes, (0, pad))
    xq, d_x = quantize_activations_q8k(x2)
    k += pad
    nb = k // QK_K
    # Per-block exact integer products (|sum| <= 127 * 256), batched over blocks: [nb, M, N].
    xb = xq.to(torch.float64).reshape(-1, nb, QK_K).transpose(0, 1)
    wb = codes.to(torch.float64).reshape(n_out, nb, QK_K).permute(1, 2, 0)
    y = ggml_block_sum(xb @ wb, d_x, d_w)
    return y.reshape(*x.shape[:-1], n_out)
