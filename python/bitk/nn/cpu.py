"""The CPU fast path of BitLinear: exact integer products, the reference's numbers, less time.

The forward's int8 x ternary product is exact, so any engine that computes it exactly gives the
reference's output bit for bit: bitk's C++ kernels (`bitk._codecs`: activations quantized in one
pass, weights kept 2 bits each, integer dot products by AVX-512 VNNI, AVX2 or a scalar loop, the
variant picked at run time by the CPU's features), torch's int8 GEMM (`torch._int_mm`), or a
float32 GEMM of the integer-valued codes (exact for K <= 2^17, see `_float_engine`).
Weights are ternarized by the C++ codecs (bit-identical to `bitk.numerics.quantize_weights`); a
weight that does not change (no gradient: evaluation, generation, a frozen layer) is ternarized
and packed once and kept in its 2-bit form only (`packed_weights`).
The backward (`backward_precision`, docs/kernels.md) by default computes dx in int8 from per-token
quantized gradients on bitk's ternary GEMM and dW in bfloat16 where the CPU multiplies bfloat16
natively (AVX-512 BF16, AMX), in float32 elsewhere (SwitchBack's split: "switchback"). "bf16" and
"float32" run both GEMMs so (float32: the reference's formulas, bit for bit); "int8" quantizes dW's
product too: faster still, with about 1% error on the gradients. The layer is a
torch.library custom op (`bitk::cpu_bitlinear`; its backward dequantizes with
`bitk::cpu_dequantize_weights`), so torch.compile takes it as one op.
"""

from __future__ import annotations

import functools
import os
import threading
import weakref

import torch

from bitk import formats, numerics
from bitk.nn.cpu_extension import holds_data
from bitk.nn.eager import autograd_twin, traced
from bitk.numerics.bitlinear import (
    check_linear,
    empty_linear_outputs,
    linear_output_dtype,
    save_for_ste_backward,
    ste_backward,
)

__all__ = [
    "BACKWARD_PRECISIONS",
    "ENGINES",
    "backward_precision",
    "bitlinear",
    "check_environment",
    "cpu_flags",
    "dequantize_weights",
    "int_matmul",
    "kernel_variant",
    "kernel_variants",
    "matmul_engine",
    "packed_weights",
    "quantize_weights",
    "scaled_int_matmul",
    "set_backward_precision",
    "set_kernel_variant",
]

ENGINES = ("cpp", "int_mm", "float")
BACKWARD_PRECISIONS = ("auto", "float32", "bf16", "switchback", "int8")
# The int8 backward's weight gradient sums int8 x int8 products over the tokens in int32: at most
# this many tokens per product (|q| <= 127, |xq| <= 128), more in chunks.
_INT32_TOKENS = (2**31 - 1) // (127 * 128)


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as Linux names them (/proc/cpuinfo), empty where unknown."""
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
    return _codecs if hasattr(_codecs, "quantize_activations") else None


def kernel_variants() -> list[str]:
    """The C++ kernel variants this CPU runs, baseline first ("scalar", "avx2", "avx_vnni",
    "avx512_vnni"); empty without the extension."""
    codecs = _codecs()
    return list(codecs.cpu_kernels()) if codecs is not None else []


def kernel_variant() -> str | None:
    """The C++ kernel variant in use (None without the extension): BITK_CPU_KERNEL or
    `set_kernel_variant`, else the best this CPU supports."""
    codecs = _codecs()
    if codecs is None:
        return None
    _check_kernel_request(os.environ.get("BITK_CPU_KERNEL", ""))
    return codecs.cpu_kernel()


@functools.cache
def _check_kernel_request(value: str) -> None:
    """ValueError unless BITK_CPU_KERNEL's ``value`` is empty, "auto" or a variant this CPU runs
    (the extension itself falls back to the best variant without a word)."""
    requested = value.strip().lower()
    codecs = _codecs()
    if requested and requested != "auto" and requested not in codecs.cpu_kernels():
        known = ("scalar", "avx2", "avx_vnni", "avx512_vnni")
        what = "is not one of " + ", ".join(known) if requested not in known else "is not supported by this CPU"
        raise ValueError(f"BITK_CPU_KERNEL={requested!r} {what} (this CPU runs {', '.join(codecs.cpu_kernels())})")


def check_environment() -> None:
    """ValueError for a BITK_CPU_MATMUL, BITK_CPU_KERNEL or BITK_CPU_BACKWARD value bitk cannot run
    here, so a command refuses it before it starts."""
    try:
        matmul_engine()
    except RuntimeError as e:  # BITK_CPU_MATMUL=cpp without the extension
        raise ValueError(str(e)) from None
    kernel_variant()
    backward_precision()


def set_kernel_variant(name: str) -> None:
    """Run bitk's C++ kernels with variant ``name`` ("auto": BITK_CPU_KERNEL, else the best);
    ValueError for a variant this CPU cannot run."""
    codecs = _codecs()
    if codecs is None:
        raise RuntimeError("bitk._codecs is not built: reinstall with `pip install -e .`")
    codecs.set_cpu_kernel(name)


def matmul_engine() -> str:
    """The engine of the forward's integer product: BITK_CPU_MATMUL if set, else "cpp" (bitk's
    kernels) when the extension is built, else torch's int8 GEMM where the CPU has int8 dot
    products (VNNI, AMX), else the exact float GEMM."""
    requested = os.environ.get("BITK_CPU_MATMUL", "").strip().lower()
    if requested:
        if requested not in ENGINES:
            raise ValueError(f"BITK_CPU_MATMUL={requested!r} is not one of {', '.join(ENGINES)}")
        if requested == "cpp" and _codecs() is None:
            raise RuntimeError("BITK_CPU_MATMUL=cpp but bitk._codecs is not built: reinstall with `pip install -e .`")
        return requested
    if _codecs() is not None:
        return "cpp"
    return "int_mm" if cpu_flags() & {"avx512_vnni", "avx_vnni", "amx_int8"} else "float"


_backward_override: str | None = None


def _dense_precision() -> str:
    """bf16 where the CPU has bfloat16 dot products (AVX-512 BF16 or AMX), float32 elsewhere (where
    bf16 GEMMs are slower)."""
    return "bf16" if cpu_flags() & {"avx512_bf16", "amx_bf16"} else "float32"


def backward_precision() -> str:
    """ "switchback", "bf16", "float32" or "int8": how BitLinear's two backward GEMMs run on the CPU.

    `set_backward_precision`, else BITK_CPU_BACKWARD (auto, float32, bf16, switchback, int8).
    "switchback": dx in int8 from dy quantized per token, on bitk's ternary GEMM; dW in bf16 where
    the CPU has bfloat16 dot products (AVX-512 BF16 or AMX), else float32. "bf16" / "float32": both
    GEMMs so ("float32": the reference's gradients). "int8": dW in int8 too. "auto" (the default) is
    switchback where bitk's C++ kernels are built, else bf16 or float32 as the CPU has bfloat16 dot
    products. "int8" is never chosen by itself: it quantizes dW's sum over tokens too
    (docs/kernels.md, "The CPU path").
    """
    requested = _backward_override or os.environ.get("BITK_CPU_BACKWARD", "").strip().lower() or "auto"
    if requested not in BACKWARD_PRECISIONS:
        raise ValueError(f"BITK_CPU_BACKWARD={requested!r} is not one of {', '.join(BACKWARD_PRECISIONS)}")
    if requested == "auto":
        return "switchback" if _codecs() is not None else _dense_precision()
    return requested


def set_backward_precision(name: str | None) -> None:
    """Run BitLinear's CPU backward in ``name`` (one of BACKWARD_PRECISIONS; None: BITK_CPU_BACKWARD
    again); ValueError for another name."""
    global _backward_override
    if name is not None and name not in BACKWARD_PRECISIONS:
        raise ValueError(f"backward precision must be one of {', '.join(BACKWARD_PRECISIONS)}; got {name!r}")
    _backward_override = name


def _threads(codecs) -> None:
    """The C++ kernels use as many threads as torch's intra-op pool (torch.set_num_threads); a
    BITK_CPU_KERNEL this CPU cannot run is refused (ValueError) rather than silently replaced."""
    _check_kernel_request(os.environ.get("BITK_CPU_KERNEL", ""))
    codecs.set_num_threads(torch.get_num_threads())


def quantize_weights(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 codes, 0-dim float32 gamma) of a 2-D CPU weight, as `bitk.numerics.quantize_weights`."""
    if weight.dim() == 2 and formats.backend() == "cpp":
        codes, scale = formats.ternarize(weight.detach())
        return codes, torch.tensor(scale, dtype=torch.float32)
    return numerics.quantize_weights(weight.detach().float())


# Ternarized weights of tensors that do not change, by id(); each entry dies with its tensor.
_packed: dict[int, dict] = {}


def packed_weights(weight: torch.Tensor, keep_codes: bool = False) -> dict:
    """``{"gamma", "packed", "codes"}`` of a 2-D CPU weight: its float32 scale, its codes packed 2
    bits each for ``ternary_gemm`` and (with ``keep_codes``, else None) its int8 codes.

    Kept until the weight changes (its storage or version), so an unchanging weight is ternarized
    and packed once; without ``keep_codes`` only the 2-bit form stays in memory.
    """
    codecs = _codecs()
    key = (weight.data_ptr(), weight._version, weight.dtype, tuple(weight.shape))
    entry = _packed.get(id(weight))
    hit = entry is not None and entry["ref"]() is weight and entry["key"] == key
    if hit and (not keep_codes or entry["codes"] is not None):
        return entry
    codes, gamma = quantize_weights(weight)
    _threads(codecs)
    entry = {
        "ref": weakref.ref(weight),
        "key": key,
        "gamma": gamma,
        "packed": codecs.ternary_gemm_pack(codes.numpy()),
        "codes": codes if keep_codes else None,
    }
    if id(weight) not in _packed:
        weakref.finalize(weight, _packed.pop, id(weight), None)
    _packed[id(weight)] = entry
    return entry


def dequantize_weights(codes: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """float32 ``codes * gamma`` (exact products), multi-threaded in C++ when the extension is built."""
    codecs = _codecs()
    if codecs is None:
        return codes.float() * gamma
    _threads(codecs)
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
        _threads(codecs)
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
        _threads(codecs)
        packed = codecs.ternary_gemm_pack(codes.numpy())
        y = codecs.ternary_gemm(xq.numpy(), s.reshape(-1).numpy(), packed, codes.shape[0], gamma.item())
        return torch.from_numpy(y)
    return int_matmul(xq, codes, engine) * (gamma / s)


def _forward(
    x2: torch.Tensor, weight: torch.Tensor, keep: bool, frozen: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """(y float32 [M, N], xq int8 [M, K], s float32 [M, 1], codes int8 [N, K] or None, gamma) of
    float32 x2 [M, K]; ``keep``: the codes are needed (the backward), else only the 2-bit form;
    ``frozen``: the weight gets no gradient, so it does not change between calls: packed once, kept."""
    engine = matmul_engine()
    if engine != "cpp":
        codes, gamma = quantize_weights(weight)
        xq, s = numerics.quantize_activations(x2)
        return scaled_int_matmul(xq.contiguous(), s, codes, gamma, engine), xq, s, codes, gamma
    codecs = _codecs()
    if frozen:
        entry = packed_weights(weight, keep_codes=keep)
        gamma, packed = entry["gamma"].clone(), entry["packed"]
        # A copy: what the custom op returns must not alias what outlives the call.
        codes = entry["codes"].clone() if keep else None
    else:
        codes, gamma = quantize_weights(weight)
        _threads(codecs)
        packed = codecs.ternary_gemm_pack(codes.numpy())
    _threads(codecs)
    xq, s = codecs.quantize_activations(x2.numpy(), "train")
    y = codecs.ternary_gemm(xq, s, packed, weight.shape[0], gamma.item())
    return torch.from_numpy(y), torch.from_numpy(xq), torch.from_numpy(s).reshape(-1, 1), codes, gamma


# The layer as torch.library ops, so that torch.compile sees one opaque op (it cannot trace the C++
# codecs through numpy): the forward also returns what the STE backward saves, and the backward is
# the reference's `ste_backward` with the dequantization an op too. Eager calls run the same
# functions as a torch.autograd.Function (`bitk.nn.eager`).


@torch.library.custom_op("bitk::cpu_dequantize_weights", mutates_args=(), device_types="cpu")
def _dequantize_weights_op(codes: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    return dequantize_weights(codes, gamma)


@_dequantize_weights_op.register_fake
def _(codes, gamma):
    return codes.new_empty(codes.shape, dtype=torch.float32)


def _bitlinear_outputs(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, out_dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(y [..., N] out_dtype, xq int8 [M, K], s float32 [M, 1], codes int8 [N, K], gamma float32 [])."""
    # Autocast would run the exact float GEMM in bf16: the layer does its own precision.
    with torch.autocast("cpu", enabled=False):
        # Never from the cache here: under torch.compile the op gets fresh aliases of the weight
        # whose identity and version say nothing about its contents.
        x2 = x.reshape(-1, x.shape[-1]).float().contiguous()
        y, xq, s, codes, gamma = _forward(x2, weight, keep=True, frozen=False)
        if bias is not None:
            y = y + bias.float()
    return y.to(out_dtype).reshape(*x.shape[:-1], weight.shape[0]), xq, s, codes, gamma


_bitlinear_op = torch.library.custom_op("bitk::cpu_bitlinear", _bitlinear_outputs, mutates_args=(), device_types="cpu")


@_bitlinear_op.register_fake
def _(x, weight, bias, out_dtype):
    return empty_linear_outputs(x, weight, out_dtype)


def _bitlinear_setup_context(ctx, inputs, output) -> None:
    x, weight, bias, _ = inputs
    _, xq, s, codes, gamma = output
    ctx.mark_non_differentiable(xq, s, codes, gamma)
    save_for_ste_backward(ctx, x, weight, bias, xq, s, codes, gamma)


def _bf16(codecs, t: torch.Tensor, divisor: torch.Tensor | None = None) -> torch.Tensor:
    """bfloat16 ``t`` (``t / divisor`` [rows, 1]) in one multi-threaded pass in C++ (torch's own
    conversions are slower); the same bits. Traced (torch.compile hands fake tensors, which have no
    data) or without the extension, torch's conversions."""
    if codecs is None or not holds_data(t):
        return (t if divisor is None else t / divisor).to(torch.bfloat16)
    if t.dtype == torch.int8:
        return torch.from_numpy(codecs.int8_to_bf16(t.numpy())).view(torch.bfloat16)
    d = None if divisor is None else divisor.reshape(-1).numpy()
    return torch.from_numpy(codecs.float_to_bf16(t.numpy(), d)).view(torch.bfloat16)


def _widen(codecs, t: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
    """float32 bfloat16 ``t`` (times scale, one float32 rounding): in C++, multi-threaded, as torch
    computes it."""
    if codecs is None or not holds_data(t):
        return t.float() if scale is None else t.float() * scale
    bits = t.contiguous().view(torch.int16).numpy().view("uint16")
    return torch.from_numpy(codecs.bf16_to_float(bits, None if scale is None else scale.item()))


def _dx_bf16(codecs, dy2, codes, gamma) -> torch.Tensor:
    """``bf16(dy) @ bf16(codes) * gamma`` (codes are exact in bf16), float32."""
    return _widen(codecs, _bf16(codecs, dy2) @ _bf16(codecs, codes), gamma)


# One bf16 buffer per thread for the weight gradient's GEMM when it is widened to float32 right
# after: a fresh weight-sized buffer at every backward costs a fifth of the GEMM again in page
# faults at 2B4T width.
_workspace = threading.local()


def _bf16_workspace(rows: int, cols: int) -> torch.Tensor:
    """A bf16 [rows, cols] view of this thread's workspace (grown as needed, never shrunk)."""
    buf = getattr(_workspace, "buf", None)
    if buf is None or buf.numel() < rows * cols:
        buf = _workspace.buf = torch.empty(rows * cols, dtype=torch.bfloat16)
    return buf[: rows * cols].view(rows, cols)


def _dw_bf16(codecs, dy2, xq, s, w_dtype) -> torch.Tensor:
    """``bf16(dy / s)^T @ bf16(xq)`` (int8 values are exact in bf16), in w_dtype."""
    a, b = _bf16(codecs, dy2, s).T, _bf16(codecs, xq)
    if w_dtype != torch.float32 or codecs is None or not holds_data(a):
        g = a @ b
        return _widen(codecs, g) if w_dtype == torch.float32 else g.to(w_dtype)
    # widened at once into a new tensor: the product may live in the workspace
    return _widen(codecs, torch.mm(a, b, out=_bf16_workspace(a.shape[0], b.shape[1])))


def _dw_float32(dy2, xq, s, w_dtype) -> torch.Tensor:
    """The reference's ``dy^T @ (xq / s)`` in float32."""
    return (dy2.T @ (xq.float() / s)).to(w_dtype)


def _quantize_gradient(g: torch.Tensor, dim: int, factor: torch.Tensor | None = None):
    """(q int8, step float32) of float32 ``h = g * factor`` (factor [rows, 1]) quantized per row
    (dim 1) or per column (dim 0), as bitk._codecs.quantize_gradient_rows / _columns compute it:
    scale = 127 / max|h| (0 where not finite), q = round(h * scale), step = max|h| / 127 (0 with
    scale 0, NaN for a group holding a non-finite value)."""
    codecs = _codecs()
    if codecs is not None and holds_data(g):
        if dim == 1:
            q, step = codecs.quantize_gradient_rows(g.numpy())
        else:
            q, step = codecs.quantize_gradient_columns(g.numpy(), factor.reshape(-1).numpy())
        return torch.from_numpy(q), torch.from_numpy(step)
    # torch's ops, the same bits (traced by torch.compile, or without the extension)
    h = g if factor is None else g * factor
    amax = h.abs().amax(dim=dim)
    scale = torch.full_like(amax, 127) / amax  # (a division: torch's 127 / amax is 127 * (1 / amax))
    usable = torch.isfinite(scale) & (scale > 0)  # (max|h| infinite: scale 0)
    step = torch.where(usable, amax / 127, torch.where(torch.isfinite(amax), 0.0, float("nan")))
    scale = torch.where(usable, scale, 0.0)
    h = torch.where(torch.isfinite(h), h, 0.0)  # (a group with a NaN has step NaN: its codes do not matter)
    q = torch.round(h * scale.unsqueeze(dim)).to(torch.int8)
    return q, step


def _dequantize_int32(acc: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
    """float32 ``float(acc) * step[r]`` of int32 acc [R, C], in acc's own memory when the extension
    is built."""
    codecs = _codecs()
    if codecs is not None and holds_data(acc):
        codecs.dequantize_int32_rows(acc.numpy(), step.numpy())
        return acc.view(torch.float32)
    return acc.float() * step.unsqueeze(1)


def _int_mm_tokens(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` of int8 a [N, M] and b [M, K] exactly: int32, or for more tokens M than an int32
    sum holds, the int64 sum of int32 products of chunks."""
    m = a.shape[1]
    if m <= _INT32_TOKENS:
        return torch._int_mm(a, b)
    chunks = range(0, m, _INT32_TOKENS)
    return sum(torch._int_mm(a[:, i : i + _INT32_TOKENS], b[i : i + _INT32_TOKENS]).long() for i in chunks)


def _dx_int8(codecs, dy2, codes, gamma) -> torch.Tensor:
    """``(q_r(dy) @ codes) * (step_r * gamma)`` with dy quantized per token (row), by bitk's ternary
    GEMM on codes^T (torch's `_int_mm` where the extension is missing or traced), float32."""
    q, step = _quantize_gradient(dy2, 1)
    factor = step * gamma  # float32 [M]
    if codecs is not None and holds_data(q):
        packed = codecs.ternary_gemm_pack_transposed(codes.numpy())
        return torch.from_numpy(codecs.ternary_gemm_rows(q.numpy(), factor.numpy(), packed, codes.shape[1]))
    return torch._int_mm(q, codes).float() * factor.unsqueeze(1)


def _dw_int8(dy2, xq, s, w_dtype) -> torch.Tensor:
    """``(q_c(dy * (1 / s))^T @ xq) * step_c`` with dy / s quantized per output feature (column), an
    int8 x int8 product by `torch._int_mm` (oneDNN's VNNI / AMX kernels), in w_dtype."""
    q, step = _quantize_gradient(dy2, 0, 1 / s)
    acc = _int_mm_tokens(q.T, xq)
    if acc.dtype == torch.int64:  # more tokens than int32 sums hold: converted by torch
        return (acc.float() * step.unsqueeze(1)).to(w_dtype)
    return _dequantize_int32(acc, step).to(w_dtype)


def _bitlinear_backward(ctx, dy, *_):
    """The STE backward, its two GEMMs in `backward_precision`'s forms (docs/kernels.md): dx from
    the ternary codes, dW from the quantized activations; ``dbias = sum(dy)`` in float32. In float32,
    the reference's formulas and gradients. Returns None for out_dtype."""
    precision = backward_precision()
    if precision == "float32":
        return *ste_backward(ctx, dy, dequantize=_dequantize_weights_op if traced(dy) else dequantize_weights), None
    dx_form = "int8" if precision in ("int8", "switchback") else "bf16"
    dw_form = {"int8": "int8", "bf16": "bf16", "switchback": _dense_precision()}[precision]
    xq, s, codes, gamma = ctx.saved_tensors
    x_dtype, w_dtype, b_dtype = ctx.dtypes
    dy2 = dy.reshape(-1, codes.shape[0]).float().contiguous()
    codecs = _codecs()
    if codecs is not None:
        _threads(codecs)
    dx = dw = db = None
    with torch.autocast("cpu", enabled=False):
        if ctx.needs_input_grad[0]:
            dx = _dx_int8(codecs, dy2, codes, gamma) if dx_form == "int8" else _dx_bf16(codecs, dy2, codes, gamma)
            dx = dx.to(x_dtype).reshape(ctx.x_shape)
        if ctx.needs_input_grad[1]:
            if dw_form == "int8":
                dw = _dw_int8(dy2, xq, s, w_dtype)
            elif dw_form == "bf16":
                dw = _dw_bf16(codecs, dy2, xq, s, w_dtype)
            else:
                dw = _dw_float32(dy2, xq, s, w_dtype)
        if ctx.needs_input_grad[2]:
            db = dy2.sum(dim=0).to(b_dtype)
    return dx, dw, db, None


_bitlinear_op.register_autograd(_bitlinear_backward, setup_context=_bitlinear_setup_context)
_bitlinear_eager = autograd_twin("CpuBitLinear", _bitlinear_outputs, _bitlinear_setup_context, _bitlinear_backward)


def bitlinear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """BitLinear on CPU tensors: the reference's forward values and gradients, computed faster."""
    check_linear(x, weight, bias)
    if x.device.type != "cpu" or weight.device.type != "cpu":
        raise ValueError(f"the CPU BitLinear path takes CPU tensors, got {x.device} and {weight.device}")
    if x.dtype == torch.float64 or weight.dtype == torch.float64:
        return numerics.bitlinear(x, weight, bias)  # the reference computes float64 input in float64
    out_dtype = linear_output_dtype(x)
    # Traced, always the op: Dynamo reading the inputs' requires_grad changes the compiled graph.
    if traced(x, weight, bias):
        return _bitlinear_op(x, weight, bias, out_dtype)[0]
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias)):
        return _bitlinear_eager(x, weight, bias, out_dtype)[0]  # the op's functions, called directly
    # Nothing to differentiate (evaluation, generation): the forward alone, no saved tensors.
    with torch.autocast("cpu", enabled=False):
        y = _forward(x.reshape(-1, x.shape[-1]).float().contiguous(), weight, keep=False, frozen=True)[0]
        if bias is not None:
            y = y + bias.float()
    return y.to(out_dtype).reshape(*x.shape[:-1], weight.shape[0])
