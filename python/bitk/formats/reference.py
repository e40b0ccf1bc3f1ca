"""Plain numpy reference codecs: the definition of every ternary byte bitk writes.

Layouts follow docs/formats.md: I2_S as bitnet.cpp reads it (three layouts), TQ2_0 and
TQ1_0 as upstream llama.cpp reads them (gguf-py's `gguf.quants` is the byte-exact oracle).
Functions here take already-validated arrays (2-D, C-contiguous, right dtype and shape; the public
`bitk.formats` API checks those) and check the *contents* themselves, raising `ValueError`.
The C++ backend (`bitk._codecs`) implements the same functions and is tested byte for byte
against this module.
"""

from __future__ import annotations

import numpy as np

from bitk.formats.constants import (
    ABS_SUM_CHUNK,
    ABS_SUM_LANES,
    ABSMEAN_EPS,
    I2S_BLOCK,
    I2S_ROWS_INTERLEAVED,
    I2S_TAIL_BYTES,
    QK_K,
    TQ1_0_BLOCK_BYTES,
    TQ1_0_QH_BYTES,
    TQ1_0_QS_BYTES,
    TQ2_0_BLOCK_BYTES,
)

_TRIT_WEIGHTS5 = np.array([81, 27, 9, 3, 1], dtype=np.uint16)  # first trit most significant
_TRIT_WEIGHTS4 = _TRIT_WEIGHTS5[:4]  # qh: a five-trit number whose last trit is 0
_POW3 = np.array([1, 3, 9, 27, 81], dtype=np.uint16)


# --------------------------------------------------------------------------- ternarization


def abs_sum(w: np.ndarray) -> float:
    """Sum of |w| in float64, in the one order all bitk backends use (numpy, C++, torch).

    The flat array, zero-padded, is cut into chunks of ABS_SUM_CHUNK values, each viewed as rows
    of ABS_SUM_LANES; rows are summed by an adjacent-pair tree (x[0::2] + x[1::2], repeated) lane by
    lane, then the lanes by the same tree, then the chunk totals (zero-padded to a power of two).
    Every step adds two numbers, so the result does not depend on the machine or thread count.
    Zero padding never changes the sum, so a short input may use a smaller power-of-two chunk.
    """
    x = np.abs(w.reshape(-1)).astype(np.float64)
    rows = -(-x.size // ABS_SUM_LANES)
    chunk_rows = min(ABS_SUM_CHUNK // ABS_SUM_LANES, _next_pow2(rows))
    chunk = chunk_rows * ABS_SUM_LANES
    x = np.pad(x, (0, -x.size % chunk)).reshape(-1, chunk_rows, ABS_SUM_LANES)
    while x.shape[1] > 1:
        x = x[:, 0::2] + x[:, 1::2]
    x = x[:, 0]
    while x.shape[1] > 1:
        x = x[:, 0::2] + x[:, 1::2]
    t = np.pad(x[:, 0], (0, _next_pow2(x.shape[0]) - x.shape[0]))
    while t.size > 1:
        t = t[0::2] + t[1::2]
    return float(t[0])


def ternarize_bf16(bits: np.ndarray) -> tuple[np.ndarray, float]:
    """`ternarize` of bfloat16 weights given as their uint16 bits (widened exactly to float32 first)."""
    wide = np.empty(bits.shape, np.uint32)
    np.left_shift(bits, 16, out=wide, dtype=np.uint32)
    return ternarize(wide.view(np.float32))


def _next_pow2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def ternarize(w: np.ndarray) -> tuple[np.ndarray, float]:
    """Absmean ternarization of a float32 matrix: (int8 codes in {-1, 0, 1}, float32 scale).

    gamma = max(mean|W|, 1e-5) with the sum from `abs_sum` (float64, fixed order) divided by n and
    rounded once to float32, so every backend gets the same gamma bit for bit; codes are
    clamp(round_half_even(W / gamma), -1, 1) with the division in float32.
    """
    total = abs_sum(w)
    if not np.isfinite(total):
        raise ValueError(f"ternarize: input contains NaN or Inf (first at {_first(~np.isfinite(w))})")
    gamma = max(np.float32(total / w.size), np.float32(ABSMEAN_EPS))
    codes = np.clip(np.rint(w / gamma), -1, 1).astype(np.int8)
    return codes, float(gamma)


# --------------------------------------------------------------------------- I2_S


def _i2s_groups(flat_or_2d: np.ndarray, rows: int, cols: int, layout: str) -> np.ndarray:
    """View codes as [groups, 4, width]: the four values that share one byte lie along axis 1."""
    if layout == "x86-1x4":
        return flat_or_2d.reshape(rows // I2S_ROWS_INTERLEAVED, I2S_ROWS_INTERLEAVED, cols)
    block = I2S_BLOCK[layout]
    return flat_or_2d.reshape(-1, 4, block // 4)


def pack_i2s(codes: np.ndarray, scale: float, layout: str) -> np.ndarray:
    """int8 codes [rows, cols] in {-1, 0, 1} and one scale -> I2_S bytes (n/4 + 32)."""
    rows, cols = codes.shape
    _check_codes(codes)
    _check_scale(scale)
    c = _i2s_groups((codes + 1).astype(np.uint8), rows, cols, layout)
    # Most significant bits first: the first of the four values lands in bits 7..6.
    packed = (c[:, 0] << 6) | (c[:, 1] << 4) | (c[:, 2] << 2) | c[:, 3]
    tail = np.zeros(I2S_TAIL_BYTES // 4, dtype="<f4")
    tail[:] = np.float32(scale)  # the reader uses the first float; the rest repeat it
    return np.concatenate([packed.reshape(-1), tail.view(np.uint8)])


def unpack_i2s(data: np.ndarray, rows: int, cols: int, layout: str) -> tuple[np.ndarray, float]:
    """I2_S bytes -> (int8 codes [rows, cols], float32 scale). Rejects code 3 and a non-finite scale."""
    n = rows * cols
    packed = data[: n // 4]
    scale = float(data[n // 4 : n // 4 + 4].view("<f4")[0])
    _check_scale(scale, reading=True)
    shifts = np.array([6, 4, 2, 0], dtype=np.uint8)
    if layout == "x86-1x4":
        groups = packed.reshape(rows // I2S_ROWS_INTERLEAVED, 1, cols)
    else:
        groups = packed.reshape(-1, 1, I2S_BLOCK[layout] // 4)
    # [groups, 4, width] in value order for every layout, so a reshape restores [rows, cols].
    c = ((groups >> shifts.reshape(1, 4, 1)) & 3).reshape(rows, cols)
    _check_no_code3(c, "I2_S")
    return c.astype(np.int8) - 1, scale


def quantize_i2s(w: np.ndarray, layout: str) -> np.ndarray:
    """Already-ternary float32 matrix ({-s, 0, +s}, one s) -> I2_S bytes."""
    scale = float(np.abs(w).max())
    if not np.isfinite(scale):
        raise ValueError(f"quantize(I2_S): input contains NaN or Inf (first at {_first(~np.isfinite(w))})")
    absw = np.abs(w)
    bad = (absw != 0) & (absw != np.float32(scale))
    if bad.any():
        raise ValueError(
            f"quantize(I2_S): input is not ternarized: {int(bad.sum())} values are neither 0 nor "
            f"+-{scale!r} (first at {_first(bad)}: {float(w[_first(bad)])!r}); I2_S holds one scale "
            "per tensor, so ternarize first (bitk.formats.ternarize)"
        )
    return pack_i2s(np.sign(w).astype(np.int8), scale, layout)


def dequantize_i2s(data: np.ndarray, rows: int, cols: int, layout: str) -> np.ndarray:
    codes, scale = unpack_i2s(data, rows, cols, layout)
    return codes.astype(np.float32) * np.float32(scale)


# --------------------------------------------------------------------------- TQ2_0 / TQ1_0


def _tq_codes_and_scales(w: np.ndarray, qtype: str) -> tuple[np.ndarray, np.ndarray]:
    """Per 256-value block: (uint8 codes 0..2 [blocks, 256], float16 scales d = max|x| [blocks])."""
    blocks = w.reshape(-1, QK_K)
    absb = np.abs(blocks)
    d = absb.max(axis=1)
    if not np.isfinite(d).all():
        raise ValueError(f"quantize({qtype}): input contains NaN or Inf (first at {_first(~np.isfinite(w))})")
    bad = (absb != 0) & (absb != d[:, None])
    if bad.any():
        flat = int(np.flatnonzero(bad.reshape(-1))[0])
        at = np.unravel_index(flat, w.shape)
        raise ValueError(
            f"quantize({qtype}): input is not ternarized: {int(bad.sum())} values are neither 0 nor "
            f"+-d of their 256-value block (first at {tuple(int(i) for i in at)}: {float(w[at])!r}, "
            f"block scale {float(d[flat // QK_K])!r}); ternarize first (bitk.formats.ternarize)"
        )
    with np.errstate(over="ignore"):
        d16 = d.astype(np.float16)
    lost = ~np.isfinite(d16) | ((d16 == 0) & (d != 0))
    if lost.any():
        i = int(np.flatnonzero(lost)[0])
        raise ValueError(
            f"quantize({qtype}): block scale {float(d[i])!r} (block {i}) is not representable as "
            "float16, which TQ types store; rescale the weights"
        )
    codes = (np.sign(blocks) + 1).astype(np.uint8)
    return codes, d16


def quantize_tq2_0(w: np.ndarray) -> np.ndarray:
    codes, d16 = _tq_codes_and_scales(w, "TQ2_0")
    # Each half of 128 values: qs[32h + j] holds c[128h + j + 32k] in bits 2k..2k+1 (LSB first).
    c = codes.reshape(-1, 2, 4, 32)
    qs = c[:, :, 0] | (c[:, :, 1] << 2) | (c[:, :, 2] << 4) | (c[:, :, 3] << 6)
    out = np.concatenate([qs.reshape(-1, 64), d16.reshape(-1, 1).view(np.uint8)], axis=1)
    return out.reshape(-1)


def dequantize_tq2_0(data: np.ndarray, rows: int, cols: int) -> np.ndarray:
    blocks = data.reshape(-1, TQ2_0_BLOCK_BYTES)
    d = _read_f16_scales(blocks[:, -2:], "TQ2_0")  # every TQ block ends with its float16 scale
    qs = blocks[:, :-2].reshape(-1, 2, 1, 32)
    c = (qs >> np.array([0, 2, 4, 6], dtype=np.uint8).reshape(1, 1, 4, 1)) & 3
    _check_no_code3(c.reshape(rows, cols), "TQ2_0")
    values = d[:, None] * (c.reshape(-1, QK_K).astype(np.float32) - 1)
    return values.reshape(rows, cols)


def _encode_trits(c: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """c [..., k, width] of trits (first trit most significant along axis -2) -> bytes [..., width].

    A byte stores ceil(t * 256 / 243) of the base-3 number t, so that (byte * 3^n mod 256) * 3 >> 8
    recovers trit n (llama.cpp's TQ1_0).
    """
    t = (c.astype(np.uint16) * weights.reshape(-1, 1)).sum(axis=-2, dtype=np.uint16)
    return ((t * 256 + 242) // 243).astype(np.uint8)


def quantize_tq1_0(w: np.ndarray) -> np.ndarray:
    codes, d16 = _tq_codes_and_scales(w, "TQ1_0")
    qs0 = _encode_trits(codes[:, :160].reshape(-1, 5, 32), _TRIT_WEIGHTS5)  # x[m + 32n]
    qs1 = _encode_trits(codes[:, 160:240].reshape(-1, 5, 16), _TRIT_WEIGHTS5)  # x[160 + m + 16n]
    qh = _encode_trits(codes[:, 240:].reshape(-1, 4, 4), _TRIT_WEIGHTS4)  # x[240 + j + 4m]
    out = np.concatenate([qs0, qs1, qh, d16.reshape(-1, 1).view(np.uint8)], axis=1)
    return out.reshape(-1)


def _decode_trits(b: np.ndarray, k: int) -> np.ndarray:
    """bytes [..., width] -> trits [..., k, width]; trit n = ((b * 3^n) mod 256) * 3 >> 8."""
    v = (b[..., None, :].astype(np.uint16) * _POW3[:k].reshape(-1, 1)) & 0xFF
    return ((v * 3) >> 8).astype(np.uint8)


def dequantize_tq1_0(data: np.ndarray, rows: int, cols: int) -> np.ndarray:
    blocks = data.reshape(-1, TQ1_0_BLOCK_BYTES)
    d = _read_f16_scales(blocks[:, -2:], "TQ1_0")
    qs, qh = blocks[:, :TQ1_0_QS_BYTES], blocks[:, TQ1_0_QS_BYTES : TQ1_0_QS_BYTES + TQ1_0_QH_BYTES]
    c0 = _decode_trits(qs[:, :32], 5).reshape(-1, 160)
    c1 = _decode_trits(qs[:, 32:], 5).reshape(-1, 80)
    ch = _decode_trits(qh, 4).reshape(-1, 16)
    c = np.concatenate([c0, c1, ch], axis=1)
    values = d[:, None] * (c.astype(np.float32) - 1)
    return values.reshape(rows, cols)


# --------------------------------------------------------------------------- checks


def _first(mask: np.ndarray) -> tuple[int, ...]:
    return tuple(int(i) for i in np.unravel_index(int(np.argmax(mask)), mask.shape))


def _check_codes(codes: np.ndarray) -> None:
    bad = (codes < -1) | (codes > 1)
    if bad.any():
        at = _first(bad)
        raise ValueError(f"pack_i2s: codes must be in {{-1, 0, 1}}; found {int(codes[at])} at {at}")


def _check_scale(scale: float, reading: bool = False) -> None:
    if not np.isfinite(scale):
        where = "the I2_S tail holds" if reading else "got"
        raise ValueError(f"I2_S scale must be finite; {where} {scale!r}")
    if not reading and scale < 0:
        raise ValueError(f"I2_S scale must be >= 0; got {scale!r}")


def _check_no_code3(c: np.ndarray, qtype: str) -> None:
    bad = c == 3
    if bad.any():
        raise ValueError(
            f"{qtype} data holds the invalid code 3 ({int(bad.sum())} times, first at value "
            f"{_first(bad)}); the tensor is corrupt or not {qtype}"
        )


def _read_f16_scales(raw: np.ndarray, qtype: str) -> np.ndarray:
    d = np.ascontiguousarray(raw).view("<f2").reshape(-1).astype(np.float32)
    if not np.isfinite(d).all():
        i = int(np.flatnonzero(~np.isfinite(d))[0])
        raise ValueError(f"{qtype} data holds a non-finite block scale {float(d[i])!r} in block {i}")
    return d
