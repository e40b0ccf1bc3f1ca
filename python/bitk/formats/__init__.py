"""Ternary weight codecs: absmean ternarization and the I2_S, TQ2_0 and TQ1_0 byte layouts.

    codes, scale = ternarize(w)                       # absmean, numerics.md
    data = quantize(codes * scale, "I2_S")            # bytes exactly as bitnet.cpp reads them
    w2 = dequantize(data, w.shape, "I2_S")            # == codes * scale (float32)

Two backends compute the same bytes: the numpy reference (`bitk.formats.reference`, the
definition) and the compiled C++ extension (`bitk._codecs`, the default when built). `backend()`
names the active one; `set_backend` / `use_backend` choose, and BITK_FORMATS_BACKEND sets the
default. Layouts and byte diagrams: docs/formats.md. No torch import is needed here.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np

from bitk.formats import reference
from bitk.formats.constants import (
    ABSMEAN_EPS,
    I2S_DEFAULT_LAYOUT,
    I2S_LAYOUTS,
    I2S_ROWS_INTERLEAVED,
    QTYPES,
    bits_per_weight,
    nbytes,
    row_multiple,
)

try:
    from bitk import _codecs
except ImportError as exc:  # the extension is optional: the numpy reference takes over
    _codecs = None
    _CPP_IMPORT_ERROR: ImportError | None = exc
else:
    _CPP_IMPORT_ERROR = None

__all__ = [
    "QTYPES",
    "I2S_LAYOUTS",
    "ternarize",
    "ternarize_bf16",
    "latent_weights",
    "quantize",
    "dequantize",
    "pack_i2s",
    "unpack_i2s",
    "nbytes",
    "bits_per_weight",
    "backend",
    "available_backends",
    "set_backend",
    "use_backend",
]

_BACKEND_NAMES = ("cpp", "numpy")


def _default_backend() -> str:
    requested = os.environ.get("BITK_FORMATS_BACKEND", "").strip().lower()
    if requested and requested not in _BACKEND_NAMES:
        warnings.warn(
            f"BITK_FORMATS_BACKEND={requested!r} is not a formats backend ({', '.join(_BACKEND_NAMES)}); ignoring it",
            stacklevel=3,
        )
        requested = ""
    # An explicit "cpp" without the extension stays requested: the first codec call says why it fails.
    return requested or ("cpp" if _codecs is not None else "numpy")


_active = _default_backend()


# --------------------------------------------------------------------------- backends


def available_backends() -> tuple[str, ...]:
    """The backends that can run here: ("cpp", "numpy") when the extension is built, else ("numpy",)."""
    return ("cpp", "numpy") if _codecs is not None else ("numpy",)


def backend() -> str:
    """Name of the active backend: "cpp" (the compiled extension) or "numpy" (the reference)."""
    return _active


def set_backend(name: str) -> None:
    """Make `name` ("cpp" or "numpy") the active backend for this process."""
    global _active
    if name not in _BACKEND_NAMES:
        raise ValueError(f"unknown formats backend {name!r}; expected one of {', '.join(_BACKEND_NAMES)}")
    _impl(name)  # raises if it cannot run here
    _active = name


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Run a block with another backend: `with use_backend("numpy"): ...`."""
    previous = _active
    set_backend(name)
    try:
        yield
    finally:
        set_backend(previous)


def _impl(name: str | None = None) -> Any:
    name = _active if name is None else name
    assert name in _BACKEND_NAMES, name  # set_backend and _default_backend admit only these
    if name == "numpy":
        return reference
    if _codecs is None:
        raise RuntimeError(
            "the C++ codecs (bitk._codecs) are not built in this install "
            f"({_CPP_IMPORT_ERROR}); reinstall with `pip install -e .` or use the numpy backend"
        )
    return _codecs


# --------------------------------------------------------------------------- input checks


def _is_torch(x: Any) -> bool:
    return type(x).__module__.split(".")[0] == "torch"


def _float_matrix(w: Any, what: str, exact_float64: bool = False) -> np.ndarray:
    """A float32/float16/bfloat16 2-D numpy array or torch tensor -> C-contiguous float32 numpy.

    With `exact_float64`, float64 input is taken too when every value is a float32 (as
    `codes * scale` is): converting it loses nothing. Otherwise float64 is refused, never rounded.
    """
    if _is_torch(w):
        import torch

        # np.from_dlpack, not Tensor.numpy(): .numpy() marks the storage non-resizable for good,
        # which breaks FSDP2's freeing of sharded parameters (they pass through here every forward).
        if exact_float64 and w.dtype == torch.float64:
            w = np.from_dlpack(w.detach().cpu())
        elif w.dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise ValueError(f"{what}: expected a float32, float16 or bfloat16 tensor; got {w.dtype}")
        else:
            w = np.from_dlpack(w.detach().to(device="cpu", dtype=torch.float32).contiguous())
    if isinstance(w, np.ndarray):
        if exact_float64 and w.dtype == np.float64:
            with np.errstate(over="ignore"):
                w32 = w.astype(np.float32)
            if not np.array_equal(w32, w, equal_nan=True):
                raise ValueError(
                    f"{what}: float64 input holds values that are not float32 numbers; bitk never rounds "
                    "silently: ternarize float32 weights, or convert with .astype(np.float32) first"
                )
            w = w32
        elif w.dtype.name not in ("float32", "float16", "bfloat16"):
            hint = " (bitk never rounds silently: convert with .astype(np.float32))" if w.dtype == np.float64 else ""
            raise ValueError(f"{what}: expected a float32, float16 or bfloat16 array; got {w.dtype}{hint}")
        _check_matrix_shape(w.shape, what)  # before ascontiguousarray, which makes 0-D input 1-D
        w = np.ascontiguousarray(w, dtype=np.float32)
    else:
        raise ValueError(f"{what}: expected a numpy array or torch tensor; got {type(w).__name__}")
    _check_matrix_shape(w.shape, what)
    return w


def _check_matrix_shape(shape: tuple[int, ...], what: str) -> tuple[int, int]:
    if len(shape) != 2:
        raise ValueError(f"{what}: expected a 2-D matrix [rows, cols]; got shape {tuple(shape)}")
    if not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in shape):
        raise ValueError(f"{what}: the shape must be two integers [rows, cols]; got {tuple(shape)}")
    rows, cols = (int(s) for s in shape)
    if rows <= 0 or cols <= 0:
        raise ValueError(f"{what}: the matrix is empty (shape {(rows, cols)})")
    return rows, cols


def _qtype(qtype: str) -> str:
    q = str(qtype).upper()
    if q not in QTYPES:
        raise ValueError(f"unknown ternary qtype {qtype!r}; expected one of {', '.join(QTYPES)}")
    return q


def _layout(qtype: str, layout: str | None) -> str | None:
    if qtype != "I2_S":
        if layout is not None:
            raise ValueError(f"{qtype} has a single layout; layout={layout!r} applies to I2_S only")
        return None
    layout = I2S_DEFAULT_LAYOUT if layout is None else layout
    if layout not in I2S_LAYOUTS:
        raise ValueError(f"unknown I2_S layout {layout!r}; expected one of {', '.join(I2S_LAYOUTS)}")
    return layout


def _check_fits(qtype: str, layout: str | None, rows: int, cols: int, what: str) -> None:
    multiple = row_multiple(qtype)
    if cols % multiple:
        raise ValueError(
            f"{what}: {qtype} needs the row length (cols, ne0) to be a multiple of {multiple}; got "
            f"[{rows}, {cols}]. A row that is not a whole number of blocks cannot be stored in {qtype} "
            "(keep the tensor in F16/F32)"
        )
    if layout == "x86-1x4" and rows % I2S_ROWS_INTERLEAVED:
        raise ValueError(f"{what}: the I2_S x86-1x4 layout interleaves 4 rows; got {rows} rows (not a multiple of 4)")


def _byte_buffer(data: Any, expected: int, qtype: str, shape: tuple[int, int]) -> np.ndarray:
    if isinstance(data, (bytes, bytearray, memoryview)):
        data = np.frombuffer(data, dtype=np.uint8)
    elif _is_torch(data):
        data = data.detach().cpu().numpy()
    if not isinstance(data, np.ndarray):
        raise ValueError(f"{qtype} data: expected a uint8 numpy array or bytes; got {type(data).__name__}")
    if data.dtype not in (np.uint8, np.int8):
        raise ValueError(f"{qtype} data: expected uint8 bytes; got dtype {data.dtype}")
    data = np.ascontiguousarray(data).reshape(-1).view(np.uint8)
    if data.size != expected:
        raise ValueError(f"{qtype} data has {data.size} bytes; a {list(shape)} tensor needs {expected}")
    return data


# --------------------------------------------------------------------------- public API


def ternarize(w: Any) -> tuple[Any, float]:
    """Absmean ternarization (BitNet b1.58): `(codes, scale)` with W ~ codes * scale.

    `w`: a 2-D float32/float16/bfloat16 numpy array or torch tensor. Codes are int8 in {-1, 0, 1}
    (a torch tensor on w's device for torch input, else numpy); scale is a python float:
    gamma = max(mean|W|, 1e-5), codes = clamp(round_half_even(W / gamma), -1, 1), the same codes as
    `bitk.numerics.quantize_weights` for the same input. NaN/Inf raise ValueError.
    """
    w32 = _float_matrix(w, "ternarize")
    codes, scale = _impl().ternarize(w32)
    if _is_torch(w):
        import torch

        return torch.from_numpy(codes).to(w.device), scale
    return codes, scale


def ternarize_bf16(bits: np.ndarray) -> tuple[np.ndarray, float]:
    """`ternarize` of a 2-D bfloat16 matrix given as its uint16 bits (a safetensors BF16 buffer).

    The same codes and scale as `ternarize` of the widened float32 matrix; the C++ backend reads the
    16-bit values directly instead of materializing that float32 copy.
    """
    if not isinstance(bits, np.ndarray) or bits.dtype != np.uint16:
        raise ValueError(
            f"ternarize_bf16: expected a uint16 numpy array of bfloat16 bits; got "
            f"{getattr(bits, 'dtype', type(bits).__name__)}"
        )
    _check_matrix_shape(bits.shape, "ternarize_bf16")
    return _impl().ternarize_bf16(np.ascontiguousarray(bits))


def latent_weights(codes: Any, scale: float) -> np.ndarray:
    """float32 latent weights whose `ternarize` gives exactly `(codes, float32(scale))` back.

    For weights that arrive already ternary (a GGUF tensor, a packed Hugging Face checkpoint): a
    bitk model re-ternarizes its latent weights every forward, and `codes * scale` would not
    survive that (its absmean is scale times the non-zero fraction, not scale). Here every
    non-zero code becomes ``c * a`` with ``a ~ scale * n / nnz`` (some of them one ulp larger, and
    where that cannot land on the scale, one zero code holds a small value below scale / 2), so
    the absmean is the scale again and every ratio rounds back to its code; the float32 gamma that
    `ternarize` computes is the scale bit for bit, and the result is checked by ternarizing it.
    All-zero codes give zeros (the scale then multiplies nothing).
    """
    if _is_torch(codes):
        codes = codes.detach().cpu().numpy()
    codes = np.asarray(codes)
    if codes.dtype != np.int8 or codes.ndim != 2 or codes.size == 0:
        raise ValueError(f"latent_weights: codes must be a non-empty 2-D int8 array; got {codes.dtype} {codes.shape}")
    if codes.min() < -1 or codes.max() > 1:
        raise ValueError("latent_weights: codes must be in {-1, 0, 1}")
    s = np.float32(scale)
    if not np.isfinite(s) or s < np.float32(ABSMEAN_EPS):
        raise ValueError(
            f"latent_weights: scale must be finite and >= {ABSMEAN_EPS} (the absmean floor); got {scale!r}"
        )
    n, nnz = codes.size, int(np.count_nonzero(codes))
    if nnz == 0:
        return np.zeros(codes.shape, np.float32)

    # Magnitudes a (and its float32 successor for the first k non-zeros): every partial sum is a
    # whole number of ulp(a) below 2^53 of them, so sum|W| = nnz*a + k*ulp(a) exactly in float64
    # and the gamma of `ternarize` is float32(sum / n). Pick a with gamma(k=0) <= s <= gamma(k=nnz),
    # then the k (monotone) that hits s.
    def gamma_of(total: float) -> np.float32:
        return np.float32(total / n)

    a = np.float32(np.float64(s) * n / nnz)
    for _ in range(64):
        up = np.nextafter(a, np.float32(np.inf))
        if gamma_of(nnz * np.float64(a)) > s:
            a = np.nextafter(a, np.float32(-np.inf))
        elif gamma_of(nnz * np.float64(up)) < s:
            a = up
        else:
            break
    else:
        raise ValueError(f"latent_weights: no float32 latent magnitude reproduces scale {scale!r}")
    ulp = np.float64(np.nextafter(a, np.float32(np.inf))) - np.float64(a)
    lo, hi = 0, nnz
    while lo < hi:
        mid = (lo + hi) // 2
        if gamma_of(nnz * np.float64(a) + mid * ulp) < s:
            lo = mid + 1
        else:
            hi = mid
    fill = gamma_of(nnz * np.float64(a) + lo * ulp) != s and nnz < n
    if fill:
        # No whole number of ulp(a) lands on the scale (few non-zeros in many values): stay below
        # it, and a latent value on a zero code, under gamma / 2 so it still rounds to 0, makes up
        # the difference.
        lo = max(lo - 1, 0)
    w = codes.astype(np.float32) * a
    if lo:
        flat = w.reshape(-1)
        first = np.flatnonzero(flat)[:lo]
        flat[first] = np.sign(flat[first]) * np.nextafter(a, np.float32(np.inf))
    if fill:
        total = nnz * np.float64(a) + lo * ulp
        delta = np.float32(np.float64(s) * n - total)
        for _ in range(64):
            if gamma_of(total + np.float64(delta)) < s:
                delta = np.nextafter(delta, np.float32(np.inf))
            elif gamma_of(total + np.float64(delta)) > s:
                delta = np.nextafter(delta, np.float32(-np.inf))
            else:
                break
        if 0 <= delta < s / 2:
            w.reshape(-1)[np.flatnonzero(codes.reshape(-1) == 0)[0]] = delta
    back, gamma = ternarize(w)
    if np.float32(gamma) != s or not np.array_equal(back, codes):
        raise ValueError(f"latent_weights: cannot reproduce scale {scale!r} for these codes exactly")
    return w


def quantize(w: Any, qtype: str, layout: str | None = None) -> np.ndarray:
    """Already-ternary weights -> the bytes of one GGUF tensor of type `qtype` (flat uint8).

    qtype: "I2_S" (layout "x86" default, "arm", "x86-1x4"), "TQ2_0" or "TQ1_0". The input must
    already be ternary: {-s, 0, +s} with one s per tensor for I2_S, one per 256-value block for TQ
    types (e.g. `codes * scale` from `ternarize`); anything else raises ValueError instead of being
    rounded. TQ bytes equal `gguf.quants.quantize(w, ...)`. float64 input (numpy's `codes * scale`)
    is accepted when every value is exactly a float32.
    """
    q = _qtype(qtype)
    lay = _layout(q, layout)
    w32 = _float_matrix(w, f"quantize({q})", exact_float64=True)
    _check_fits(q, lay, *w32.shape, f"quantize({q})")
    impl = _impl()
    if q == "I2_S":
        return impl.quantize_i2s(w32, lay)
    return impl.quantize_tq2_0(w32) if q == "TQ2_0" else impl.quantize_tq1_0(w32)


def dequantize(data: Any, shape: tuple[int, int], qtype: str, layout: str | None = None) -> np.ndarray:
    """Bytes of one tensor -> float32 weights of `shape` ([rows, cols], cols = ne0).

    Raises ValueError for a wrong byte count, code 3, or a non-finite scale.
    """
    q = _qtype(qtype)
    lay = _layout(q, layout)
    rows, cols = _check_matrix_shape(tuple(shape), f"dequantize({q})")
    _check_fits(q, lay, rows, cols, f"dequantize({q})")
    buf = _byte_buffer(data, nbytes(q, rows, cols), q, (rows, cols))
    impl = _impl()
    if q == "I2_S":
        return impl.dequantize_i2s(buf, rows, cols, lay)
    return impl.dequantize_tq2_0(buf, rows, cols) if q == "TQ2_0" else impl.dequantize_tq1_0(buf, rows, cols)


def pack_i2s(codes: Any, scale: float, layout: str = I2S_DEFAULT_LAYOUT) -> np.ndarray:
    """int8 codes [rows, cols] in {-1, 0, 1} and one scale -> I2_S bytes (rows*cols/4 + 32)."""
    lay = _layout("I2_S", layout)
    if _is_torch(codes):
        codes = codes.detach().cpu().numpy()
    if not isinstance(codes, np.ndarray):
        raise ValueError(f"pack_i2s: expected an int8 numpy array or torch tensor; got {type(codes).__name__}")
    if codes.dtype != np.int8:
        raise ValueError(f"pack_i2s: codes must be int8 in {{-1, 0, 1}}; got dtype {codes.dtype}")
    rows, cols = _check_matrix_shape(codes.shape, "pack_i2s")
    _check_fits("I2_S", lay, rows, cols, "pack_i2s")
    try:
        scale = float(scale)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"pack_i2s: scale must be a number; got {scale!r}") from exc
    with np.errstate(over="ignore"):
        overflows = np.isfinite(scale) and np.isinf(np.float32(scale))
    if overflows:
        raise ValueError(f"pack_i2s: scale {scale!r} overflows float32, which I2_S stores")
    return _impl().pack_i2s(np.ascontiguousarray(codes), scale, lay)


def unpack_i2s(data: Any, shape: tuple[int, int], layout: str = I2S_DEFAULT_LAYOUT) -> tuple[np.ndarray, float]:
    """I2_S bytes -> (int8 codes of `shape` in {-1, 0, 1}, float scale). Rejects code 3."""
    lay = _layout("I2_S", layout)
    rows, cols = _check_matrix_shape(tuple(shape), "unpack_i2s")
    _check_fits("I2_S", lay, rows, cols, "unpack_i2s")
    buf = _byte_buffer(data, nbytes("I2_S", rows, cols), "I2_S", (rows, cols))
    return _impl().unpack_i2s(buf, rows, cols, lay)
