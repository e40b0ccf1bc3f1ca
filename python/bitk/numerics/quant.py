"""Reference quantizers of BitNet b1.58 (arXiv 2402.17764) and its training-tips FAQ.

Weights: per-tensor absmean ternary codes (int8 in {-1, 0, 1}) and one scale gamma. Activations:
per-token absmax int8 with a per-row scale s, plus the bitnet.cpp-faithful variant used at I2_S
inference and ggml's Q8_K (int8 per block of 256, used with TQ1_0/TQ2_0 weights). The fake
quantizers are the straight-through estimators with optional warm-up lambda. Everything stays on
the tensors' device (no host syncs); the formulas are those of docs/numerics.md.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bitk.formats.constants import ABS_SUM_CHUNK, ABS_SUM_LANES

__all__ = [
    "abs_sum",
    "quantize_weights",
    "quantize_activations",
    "quantize_activations_bitnet_cpp",
    "quantize_activations_q8k",
    "fake_quantize_weights",
    "fake_quantize_activations",
    "ste",
]

_EPS = 1e-5
_QMAX = 127.0
QK_K = 256  # values per block of ggml's K-quants (Q8_K, TQ1_0, TQ2_0)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _check_float(name: str, t: torch.Tensor) -> None:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise ValueError(f"{name} must be a floating point tensor, got dtype {t.dtype}")


def _check_rows(name: str, x: torch.Tensor) -> None:
    _check_float(name, x)
    if x.dim() < 1 or x.shape[-1] == 0:
        raise ValueError(f"{name} must have a non-empty last (feature) dimension, got shape {tuple(x.shape)}")


def _next_pow2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def abs_sum(w: torch.Tensor) -> torch.Tensor:
    """Sum of |w| in float64 in bitk's one fixed order, as a 0-dim tensor on w's device.

    The order of `bitk.formats.reference.abs_sum` (and of the C++ codecs): chunks of
    ABS_SUM_CHUNK values viewed as rows of ABS_SUM_LANES, summed by adjacent-pair trees over rows,
    then lanes, then chunk totals. Each step adds two numbers, so CPU and CUDA, numpy and C++ all
    get the same bits, and the absmean scale of a tensor is the same wherever it is computed.
    """
    x = w.reshape(-1).to(torch.float64).abs()
    n = x.numel()
    chunk_rows = min(ABS_SUM_CHUNK // ABS_SUM_LANES, _next_pow2(-(-n // ABS_SUM_LANES)))
    chunk = chunk_rows * ABS_SUM_LANES
    x = F.pad(x, (0, -n % chunk)).view(-1, chunk_rows, ABS_SUM_LANES)
    while x.shape[1] > 1:
        x = x[:, 0::2] + x[:, 1::2]
    x = x[:, 0]
    while x.shape[1] > 1:
        x = x[:, 0::2] + x[:, 1::2]
    t = x[:, 0]
    t = F.pad(t, (0, _next_pow2(t.numel()) - t.numel()))
    while t.numel() > 1:
        t = t[0::2] + t[1::2]
    return t[0]


def quantize_weights(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Absmean ternary quantization of a whole tensor.

    Returns ``(codes, gamma)``: int8 codes in {-1, 0, 1} of w's shape and a 0-dim gamma of the
    compute dtype (float32, or float64 for float64 input) on w's device, with
    ``codes = clamp(round(w / gamma), -1, 1)`` (half to even) and ``gamma = max(mean|w|, 1e-5)``.
    """
    _check_float("w", w)
    if w.numel() == 0:
        raise ValueError(f"w must not be empty, got shape {tuple(w.shape)}")
    cd = _compute_dtype(w.dtype)
    # The float64 sum in bitk's fixed order, divided and rounded once, equals the numpy / C++
    # gamma bit for bit (bitk.formats.ternarize). The clamp compares against cd(1e-5).
    gamma = (abs_sum(w) / w.numel()).to(cd).clamp_min(_EPS)
    codes = torch.round(w.to(cd) / gamma).clamp_(-1, 1).to(torch.int8)
    return codes, gamma


def quantize_activations(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token absmax int8 quantization (last dim = features).

    Returns ``(xq, s)``: int8 ``xq = clamp(round(x * s), -128, 127)`` of x's shape and
    ``s = 127 / max(max|x|, 1e-5)`` of shape ``[..., 1]``, both computed in float32 (float64 for
    float64 input); the dequantized activations are ``xq / s``.
    """
    _check_rows("x", x)
    xc = x.to(_compute_dtype(x.dtype))
    amax = xc.abs().amax(dim=-1, keepdim=True).clamp_min(_EPS)
    # torch.div, not `127 / amax`: Tensor.__rtruediv__ is reciprocal() * 127, rounded twice.
    s = torch.div(_QMAX, amax)
    xq = torch.round(xc * s).clamp_(-128, 127).to(torch.int8)
    return xq, s


def quantize_activations_bitnet_cpp(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token int8 quantization exactly as bitnet.cpp's I2_S matmul does it.

    ``s = (float)(127 / max((double)max|x|, 1e-5))`` (quotient in float64, rounded to float32),
    ``xq = clamp(round_half_even(x_f32 * s), -128, 127)`` with the product in float32. x is
    always taken as float32 (the runtime's activation type); s is float32 of shape ``[..., 1]``.
    """
    _check_rows("x", x)
    xf = x.to(torch.float32)
    amax = xf.abs().amax(dim=-1, keepdim=True).to(torch.float64).clamp_min(_EPS)
    s = torch.div(_QMAX, amax).to(torch.float32)
    xq = torch.round(xf * s).clamp_(-128, 127).to(torch.int8)
    return xq, s


def quantize_activations_q8k(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Int8 quantization per block of 256 values, exactly as ggml's Q8_K (``quantize_row_q8_K_ref``).

    x is taken as float32 (the runtime's activation type); its last dimension, cut into blocks of
    256, must be a multiple of 256. Per block: ``max`` is the signed value of the first element of
    largest magnitude; ``iscale = -127 / max`` (float32), ``xq = min(127, round_half_even(iscale * x))``
    with the product in float32, ``d = 1 / iscale`` (float32); an all-zero block gets codes 0 and
    ``d = 0``. The block's largest value maps to -127 (so ``d`` has the opposite sign of ``max``)
    and ``xq * d`` approximates x. Returns ``(xq, d)``: int8 of x's shape and float32 ``[..., n // 256]``.
    """
    _check_rows("x", x)
    n = x.shape[-1]
    if n % QK_K:
        raise ValueError(
            f"Q8_K quantizes blocks of {QK_K} values: x's last dimension must be a multiple of {QK_K}, "
            f"got {n} (shape {tuple(x.shape)})"
        )
    xb = x.to(torch.float32).reshape(*x.shape[:-1], n // QK_K, QK_K)
    ax = xb.abs()
    amax = ax.amax(dim=-1, keepdim=True)
    # The first index holding the block's largest |x| (the runtime scans with a strict `>`).
    pos = torch.arange(QK_K, device=x.device)
    first = torch.where(ax == amax, pos, QK_K).amin(dim=-1, keepdim=True).clamp_max_(QK_K - 1)
    top = xb.gather(-1, first)
    nonzero = amax != 0
    iscale = torch.div(-_QMAX, torch.where(nonzero, top, 1.0))
    xq = torch.round(xb * iscale).clamp_(max=_QMAX)
    xq = torch.where(nonzero, xq, 0.0).to(torch.int8).reshape(x.shape)
    d = torch.where(nonzero, torch.div(1.0, iscale), 0.0).squeeze(-1)
    return xq, d


def ste(x: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Straight-through estimator: forward value ``q``, gradient passed to ``x`` unchanged.

    Written ``(x - x.detach()) + q.detach()``, the same as ``x + (q - x).detach()`` in exact
    arithmetic and for autograd, but its forward value is exactly ``q`` in floating point
    (``x - x`` is exactly 0 for finite x), where ``x + (q - x)`` can be off by rounding.
    """
    return (x - x.detach()) + q.detach()


def _warmup_target(xc: torch.Tensor, dq: torch.Tensor, lam: float | torch.Tensor) -> torch.Tensor:
    if isinstance(lam, torch.Tensor):
        if lam.dim() != 0:
            raise ValueError(f"lam must be a python float or a 0-dim tensor, got shape {tuple(lam.shape)}")
        lam = lam.to(device=xc.device, dtype=xc.dtype)
    # torch.lerp is exact at both ends: lam=0 gives xc, lam=1 gives dq bit for bit.
    return torch.lerp(xc, dq, lam)


def fake_quantize_weights(w: torch.Tensor, lam: float | torch.Tensor = 1.0) -> torch.Tensor:
    """STE fake quantization of weights with warm-up: ``w + lam * (codes * gamma - w).detach()``.

    The dequantized weights are formed in the compute dtype; the result has w's dtype and, with
    lam = 1, equals ``(codes * gamma).to(w.dtype)`` exactly. The gradient w.r.t. w is the identity.
    """
    codes, gamma = quantize_weights(w)
    wc = w.detach().to(gamma.dtype)
    target = _warmup_target(wc, codes.to(gamma.dtype) * gamma, lam)
    return ste(w, target.to(w.dtype))


def fake_quantize_activations(x: torch.Tensor, lam: float | torch.Tensor = 1.0) -> torch.Tensor:
    """STE fake quantization of activations with warm-up: ``x + lam * (xq / s - x).detach()``.

    Same conventions as :func:`fake_quantize_weights`, per token instead of per tensor.
    """
    xq, s = quantize_activations(x)
    xc = x.detach().to(s.dtype)
    target = _warmup_target(xc, xq.to(s.dtype) / s, lam)
    return ste(x, target.to(x.dtype))
