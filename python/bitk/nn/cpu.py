"""The CPU fast path of BitLinear: exact integer products, the reference's numbers, less time.

The forward's int8 x ternary product is exact, so any engine that computes it exactly gives the
reference's output bit for bit: bitk's AVX2 kernel (`bitk._codecs.ternary_gemm`), torch's int8
GEMM (`torch._int_mm`, fast where the CPU has VNNI/AMX int8 dot products, very slow without), or a
float32 GEMM of the integer-valued codes (exact for K <= 2^17, see `_float_engine`).
Weights are ternarized by the C++ codecs (bit-identical to `bitk.numerics.quantize_weights`).
The backward is the reference's: two float32 GEMMs from the saved int8 tensors and scales.
The layer is a torch.library custom op (`bitk::cpu_bitlinear`; its backward dequantizes with
`bitk::cpu_dequantize_weights`), so torch.compile takes it as one op.
"""

from __future__ import annotations

import functools
import os

import torch

from bitk import formats, numerics
from bitk.numerics.bitlinear import (
    check_linear,
    empty_linear_outputs,
    linear_output_dtype,
    save_for_ste_backward,
    ste_backward,
)

__all__ = [
    "ENGINES",
    "bitlinear",
    "dequantize_weights",
    "int_matmul",
    "matmul_engine",
    "quantize_weights",
    "scaled_int_matmul",
]

ENGINES = ("cpp", "int_mm", "float")


@functools.cache
def _cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def _codecs():
    try:
        from bitk import _codecs
    except ImportError:
        return None
    return _codecs if hasattr(_codecs, "ternary_gemm") else None


def matmul_engine() -> str:
    """The engine of the forward's integer product: BITK_CPU_MATMUL if set, else the fastest here.

    torch's int8 GEMM where the CPU has int8 dot-product instructions (VNNI or AMX), else bitk's
    AVX2 kernel when the extension is built, else the exact float GEMM.
    """
    requested = os.environ.get("BITK_CPU_MATMUL", "").strip().lower()
    if requested:
        if requested not in ENGINES:
            raise ValueError(f"BITK_CPU_MATMUL={requested!r} is not one of {', '.join(ENGINES)}")
        if requested == "cpp" and _codecs() is None:
            raise RuntimeError(
                "BITK_CPU_MATMUL=cpp but bitk._codecs has no ternary_gemm: reinstall with `pip install -e .`"
            )
        return requested
    if _cpu_flags() & {"avx512_vnni", "avx_vnni", "amx_int8"}:
        return "int_mm"
    return "cpp" if _codecs() is not None else "float"


def quantize_weights(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 codes, 0-dim float32 gamma) of a 2-D CPU weight, as `bitk.numerics.quantize_weights`."""
    if weight.dim() == 2 and formats.backend() == "cpp":
        codes, scale = formats.ternarize(weight.detach())
        return codes, torch.tensor(scale, dtype=torch.float32)
    return numerics.quantize_weights(weight.detach().float())


def dequantize_weights(codes: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """float32 ``codes * gamma`` (exact products), multi-threaded in C++ when the extension is built."""
    codecs = _codecs()
    if codecs is None:
        return codes.float() * gamma
    return torch.from_numpy(codecs.ternary_scale(codes.numpy(), gamma.item()))


def _float_engine(xq: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    # Every partial sum is an integer of magnitude <= 128 * K; float32 holds integers up to 2^24
    # exactly, so the float32 GEMM is exact (in any summation order) for K <= 2^17; else float64.
    dt = torch.float32 if xq.shape[1] <= 1 << 17 else torch.float64
    return (xq.to(dt) @ codes.to(dt).T).to(torch.float32)


def int_matmul(xq: torch.Tensor, codes: torch.Tensor, engine: str | None = None, packed: object = None) -> torch.Tensor:
    """``xq @ codes^T`` exactly, as float32 [M, N] holding the int32 accumulators (any engine).

    ``packed``: the codes already packed by ``ternary_gemm_pack`` (the cpp engine; packed here
    when None).
    """
    engine = engine or matmul_engine()
    if engine == "cpp":
        codecs = _codecs()
        packed = codecs.ternary_gemm_pack(codes.numpy()) if packed is None else packed
        return torch.from_numpy(codecs.ternary_gemm_int32(xq.contiguous().numpy(), packed, codes.shape[0])).to(
            torch.float32
        )
    if engine == "int_mm":
        return torch._int_mm(xq, codes.T).to(torch.float32)
    return _float_engine(xq, codes)


def scaled_int_matmul(
    xq: torch.Tensor, s: torch.Tensor, codes: torch.Tensor, gamma: torch.Tensor, engine: str | None = None
) -> torch.Tensor:
    """``float32(xq @ codes^T) * (gamma / s)`` (float32 [M, N]) with an exact integer product."""
    engine = engine or matmul_engine()
    if engine == "cpp":  # the scales applied inside the kernel, in the same order
        codecs = _codecs()
        packed = codecs.ternary_gemm_pack(codes.numpy())
        y = codecs.ternary_gemm(xq.numpy(), s.reshape(-1).numpy(), packed, codes.shape[0], gamma.item())
        return torch.from_numpy(y)
    return int_matmul(xq, codes, engine) * (gamma / s)


# The layer as torch.library ops, so that torch.compile sees one opaque op (it cannot trace the C++
# codecs through numpy): the forward also returns what the STE backward saves, and the backward is
# the reference's `ste_backward` with the dequantization an op too.


@torch.library.custom_op("bitk::cpu_dequantize_weights", mutates_args=(), device_types="cpu")
def _dequantize_weights_op(codes: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    return dequantize_weights(codes, gamma)


@_dequantize_weights_op.register_fake
def _(codes, gamma):
    return codes.new_empty(codes.shape, dtype=torch.float32)


@torch.library.custom_op("bitk::cpu_bitlinear", mutates_args=(), device_types="cpu")
def _bitlinear_op(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, out_dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(y [..., N] out_dtype, xq int8 [M, K], s float32 [M, 1], codes int8 [N, K], gamma float32 [])."""
    # Autocast would run the exact float GEMM in bf16: the layer does its own precision.
    with torch.autocast("cpu", enabled=False):
        codes, gamma = quantize_weights(weight)
        xq, s = numerics.quantize_activations(x.reshape(-1, x.shape[-1]).float())
        xq = xq.contiguous()
        y = scaled_int_matmul(xq, s, codes, gamma)
        if bias is not None:
            y = y + bias.float()
    return y.to(out_dtype).reshape(*x.shape[:-1], weight.shape[0]), xq, s, codes, gamma


@_bitlinear_op.register_fake
def _(x, weight, bias, out_dtype):
    return empty_linear_outputs(x, weight, out_dtype)


def _bitlinear_setup_context(ctx, inputs, output) -> None:
    x, weight, bias, _ = inputs
    _, xq, s, codes, gamma = output
    ctx.mark_non_differentiable(xq, s, codes, gamma)
    save_for_ste_backward(ctx, x, weight, bias, xq, s, codes, gamma)


def _bitlinear_backward(ctx, dy, *_):
    # The reference's formulas, so the CPU path's gradients are the reference's (None for out_dtype).
    return *ste_backward(ctx, dy, dequantize=_dequantize_weights_op), None


_bitlinear_op.register_autograd(_bitlinear_backward, setup_context=_bitlinear_setup_context)


def bitlinear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """BitLinear on CPU tensors: the reference's forward values and gradients, computed faster."""
    check_linear(x, weight, bias)
    if x.device.type != "cpu" or weight.device.type != "cpu":
        raise ValueError(f"the CPU BitLinear path takes CPU tensors, got {x.device} and {weight.device}")
    if x.dtype == torch.float64 or weight.dtype == torch.float64:
        return numerics.bitlinear(x, weight, bias)  # the reference computes float64 input in float64
    return _bitlinear_op(x, weight, bias, linear_output_dtype(x))[0]
