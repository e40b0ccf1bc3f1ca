"""Bit placement of I2_S, TQ2_0 and TQ1_0, checked against docs/formats.md's diagrams, not reference.py.

Expected bytes here come from hand-made patterns and tiny explicit loops over the spec's formulas
(code c = w + 1; I2_S: `byte = c[j] << 6 | c[j+32] << 4 | c[j+64] << 2 | c[j+96]` per 128-value
block; arm: the same over 64-value blocks with stride 16; x86-1x4:
`out[g*ne0 + col] = c[4g][col] << 6 | c[4g+1][col] << 4 | c[4g+2][col] << 2 | c[4g+3][col]`; a
32-byte tail starting with the float32 scale; TQ2_0 least significant bits first; TQ1_0 base-3).
"""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bitk.formats as fmt
from bitk_formats_testing import I2S_LAYOUTS, bits32, ternary_tensors

ZERO_BYTE = 0b01_01_01_01  # four zeros: code 1 in every pair


# --------------------------------------------------------------------------- spec formulas, by hand


def spec_i2s_codes_bytes(c: np.ndarray, layout: str) -> list[int]:
    """The n/4 code bytes of I2_S for codes c (values 0..2, shape [rows, cols]), loop by loop."""
    rows, cols = c.shape
    out = []
    if layout == "x86-1x4":
        for g in range(rows // 4):
            for col in range(cols):
                out.append(
                    int(c[4 * g][col]) << 6
                    | int(c[4 * g + 1][col]) << 4
                    | int(c[4 * g + 2][col]) << 2
                    | int(c[4 * g + 3][col])
                )
        return out
    block, stride = {"x86": (128, 32), "arm": (64, 16)}[layout]
    flat = [int(v) for v in c.reshape(-1)]  # row-major, ne0 fastest
    for start in range(0, len(flat), block):
        b = flat[start : start + block]
        for j in range(stride):
            out.append(b[j] << 6 | b[j + stride] << 4 | b[j + 2 * stride] << 2 | b[j + 3 * stride])
    return out


def spec_tq2_0_qs(c: list[int]) -> list[int]:
    """TQ2_0 qs[64] of one 256-value block: qs[32h + j] = c[128h+j] | c[128h+32+j] << 2 | ..."""
    qs = [0] * 64
    for h in range(2):
        for j in range(32):
            qs[32 * h + j] = (
                c[128 * h + j] | c[128 * h + 32 + j] << 2 | c[128 * h + 64 + j] << 4 | c[128 * h + 96 + j] << 6
            )
    return qs


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def spec_tq1_0_bytes(c: list[int]) -> list[int]:
    """TQ1_0 qs[48] + qh[4] of one block: five trits per byte, first trit most significant."""
    out = []
    for m in range(32):  # qs[0..31]: x[m + 32n], n = 0..4
        t = sum(c[m + 32 * n] * 3 ** (4 - n) for n in range(5))
        out.append(_ceil_div(t * 256, 243))
    for m in range(16):  # qs[32..47]: x[160 + m + 16n]
        t = sum(c[160 + m + 16 * n] * 3 ** (4 - n) for n in range(5))
        out.append(_ceil_div(t * 256, 243))
    for j in range(4):  # qh[j]: x[240 + j + 4m], m = 0..3, then a last trit 0
        t = sum(c[240 + j + 4 * m] * 3 ** (4 - m) for m in range(4))
        out.append(_ceil_div(t * 256, 243))
    return out


def f32_le(x: float) -> list[int]:
    return list(struct.pack("<f", x))


def f16_le(x: float) -> list[int]:
    return list(struct.pack("<e", x))


# --------------------------------------------------------------------------- I2_S: single values


@pytest.mark.parametrize("sign", [1, -1])
def test_i2s_single_value_lands_in_the_right_bit_pair(backend_name, sign):
    # cols 256: two x86 blocks per row, rows 2: four blocks. A single +-1 at every position.
    for row in (0, 1):
        for col in range(256):
            codes = np.zeros((2, 256), np.int8)
            codes[row, col] = sign
            data = fmt.pack_i2s(codes, 1.0)
            p = row * 256 + col  # flat position
            block, k = divmod(p, 128)
            pair, j = divmod(k, 32)  # value k = 32 * pair + j sits in byte j, pair 0 in the top bits
            expected = [ZERO_BYTE] * 128
            shift = 6 - 2 * pair
            expected[32 * block + j] = ZERO_BYTE & ~(3 << shift) | (sign + 1) << shift
            assert data[:128].tolist() == expected, (row, col)


def test_i2s_single_value_literal_bytes(backend_name):
    codes = np.zeros((1, 128), np.int8)
    codes[0, 0] = 1
    assert fmt.pack_i2s(codes, 1.0)[0] == 0b10_01_01_01  # c[0] = 2 in bits 7..6
    codes[0, 0] = 0
    codes[0, 96] = -1
    assert fmt.pack_i2s(codes, 1.0)[0] == 0b01_01_01_00  # c[96] = 0 in bits 1..0
    codes[0, 96] = 0
    codes[0, 33] = 1
    assert fmt.pack_i2s(codes, 1.0)[1] == 0b01_10_01_01  # c[33] = 2 in bits 5..4 of byte 1
    assert fmt.pack_i2s(np.zeros((1, 128), np.int8), 1.0)[:32].tolist() == [0x55] * 32
    assert fmt.pack_i2s(np.ones((1, 128), np.int8), 1.0)[:32].tolist() == [0xAA] * 32
    assert fmt.pack_i2s(-np.ones((1, 128), np.int8), 1.0)[:32].tolist() == [0x00] * 32


@pytest.mark.parametrize("layout", ["arm", "x86-1x4"])
def test_other_layouts_single_value(backend_name, layout):
    rows, cols = 4, 128
    for p in range(rows * cols):
        codes = np.zeros((rows, cols), np.int8)
        codes.reshape(-1)[p] = 1
        data = fmt.pack_i2s(codes, 1.0, layout)
        if layout == "arm":  # 64-value blocks into 16 bytes, stride 16
            block, k = divmod(p, 64)
            pair, j = divmod(k, 16)
            byte = 16 * block + j
        else:  # row 4g + pair, column col -> byte g * cols + col
            row, col = divmod(p, cols)
            g, pair = divmod(row, 4)
            byte = g * cols + col
        expected = [ZERO_BYTE] * (rows * cols // 4)
        shift = 6 - 2 * pair
        expected[byte] = ZERO_BYTE & ~(3 << shift) | 2 << shift
        assert data[: rows * cols // 4].tolist() == expected, p


# --------------------------------------------------------------------------- I2_S: whole patterns


def _pattern(rows: int, cols: int, layout: str) -> np.ndarray:
    """Codes (0..2) where value k of each block is k % 3 (x86-1x4: of each row), shifted per block."""
    block = {"x86": 128, "arm": 64, "x86-1x4": cols}[layout]
    flat = np.arange(rows * cols)
    return ((flat % block + flat // block) % 3).reshape(rows, cols).astype(np.int8)


@pytest.mark.parametrize("layout", I2S_LAYOUTS)
@pytest.mark.parametrize("rows, cols", [(4, 128), (8, 384), (4, 1024)])
def test_i2s_pattern_matches_spec_loop(backend_name, layout, rows, cols):
    c = _pattern(rows, cols, layout)
    codes = c - 1
    data = fmt.pack_i2s(codes, 0.25, layout)
    assert data.size == rows * cols // 4 + 32
    assert data[: rows * cols // 4].tolist() == spec_i2s_codes_bytes(c, layout)
    # quantize of the same ternary weights writes the same code bytes and the scale.
    w = codes.astype(np.float32) * np.float32(0.25)
    q = fmt.quantize(w, "I2_S", layout)
    assert q[: rows * cols // 4].tolist() == spec_i2s_codes_bytes(c, layout)
    assert q[rows * cols // 4 : rows * cols // 4 + 4].tolist() == f32_le(0.25)


def test_layouts_differ_on_the_same_codes(backend_name):
    # A check that the three layouts really are three: a mix-up of two would pass the loops above only by accident.
    c = _pattern(4, 256, "x86")
    outs = {lay: fmt.pack_i2s(c - 1, 1.0, lay).tobytes() for lay in I2S_LAYOUTS}
    assert len(set(outs.values())) == 3


@pytest.mark.parametrize("layout", I2S_LAYOUTS)
def test_i2s_x86_1x4_formula_literal(backend_name, layout):
    # Rows 0..3 are all -1, all 0, all +1, all 0 (codes 0, 1, 2, 1).
    codes = np.repeat(np.array([-1, 0, 1, 0], np.int8)[:, None], 128, axis=1)
    data = fmt.pack_i2s(codes, 1.0, layout)[:128]
    if layout == "x86-1x4":
        assert data.tolist() == [0 << 6 | 1 << 4 | 2 << 2 | 1] * 128  # one byte column per input column
    else:  # each row is its own block(s): a constant byte per row
        per_row = 32
        assert data.tolist() == [0x00] * per_row + [0x55] * per_row + [0xAA] * per_row + [0x55] * per_row


# --------------------------------------------------------------------------- I2_S: tail and size


@pytest.mark.parametrize("layout", I2S_LAYOUTS)
@pytest.mark.parametrize("scale", [1.0, 0.0123, 1e-30, 1.5e-42, 3.4e38, 0.0])
def test_i2s_tail_holds_the_float32_scale(backend_name, layout, scale):
    rows, cols = 4, 256
    codes = np.tile(np.array([1, 0, -1, 1], np.int8), (rows, cols // 4))
    for data in (
        fmt.pack_i2s(codes, scale, layout),
        fmt.quantize(codes.astype(np.float32) * np.float32(scale), "I2_S", layout),
    ):
        assert data.dtype == np.uint8
        assert data.size == rows * cols // 4 + 32 == fmt.nbytes("I2_S", rows, cols)
        tail = data[rows * cols // 4 :].tolist()
        assert len(tail) == 32
        assert tail[:4] == f32_le(float(np.float32(scale)))
        # The other 28 bytes are padding: zeros or the scale repeated (docs/formats.md allows both).
        assert tail[4:] == [0] * 28 or tail[4:] == tail[:4] * 7


@pytest.mark.parametrize("layout", I2S_LAYOUTS)
def test_i2s_readers_ignore_the_tail_padding(backend_name, layout):
    codes = _pattern(4, 256, layout) - 1
    data = fmt.pack_i2s(codes, 0.5, layout)
    n4 = codes.size // 4
    garbage = data.copy()
    garbage[n4 + 4 :] = np.arange(28, dtype=np.uint8) * 9 + 3  # would be NaN/garbage floats if read
    garbage[n4 + 4 : n4 + 8] = [0, 0, 0xC0, 0x7F]  # a NaN right after the scale
    back, scale = fmt.unpack_i2s(garbage, codes.shape, layout)
    assert scale == 0.5
    np.testing.assert_array_equal(back, codes)
    np.testing.assert_array_equal(
        fmt.dequantize(garbage, codes.shape, "I2_S", layout), codes.astype(np.float32) * np.float32(0.5)
    )


def test_i2s_reads_the_scale_little_endian_from_the_first_tail_bytes(backend_name):
    codes = np.zeros((1, 128), np.int8)
    codes[0, 5] = 1
    data = fmt.pack_i2s(codes, 1.0)
    data[32:36] = list(struct.pack("<f", -2.75))  # a negative scale is readable (only writers refuse it)
    back, scale = fmt.unpack_i2s(data, (1, 128))
    assert scale == -2.75 and back[0, 5] == 1
    out = fmt.dequantize(data, (1, 128), "I2_S")
    assert out[0, 5] == -2.75 and out[0, 4] == 0


@pytest.mark.parametrize("layout", I2S_LAYOUTS)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_i2s_round_trips(layout, data):
    w, codes, scale = data.draw(ternary_tensors(rows_multiple=4 if layout == "x86-1x4" else 1))
    for name in ("cpp", "numpy"):
        with fmt.use_backend(name):
            packed = fmt.pack_i2s(codes, scale, layout)
            back, s = fmt.unpack_i2s(packed, codes.shape, layout)
            assert back.dtype == np.int8 and back.shape == codes.shape
            np.testing.assert_array_equal(back, codes)
            assert s == scale
            q = fmt.quantize(w, "I2_S", layout)
            out = fmt.dequantize(q, w.shape, "I2_S", layout)
            assert out.dtype == np.float32 and out.shape == w.shape
            # Exact, and no -0.0 invented: a zero stays +0 (codes carry no sign of zero).
            expected = codes.astype(np.float32) * np.float32(scale if codes.any() else 0.0)
            np.testing.assert_array_equal(bits32(out), bits32(expected))
            assert np.array_equal(out, w)


# --------------------------------------------------------------------------- TQ2_0 vs I2_S bit order


def test_tq2_0_single_value_is_lsb_first(backend_name):
    for p in range(256):
        w = np.zeros((1, 256), np.float32)
        w[0, p] = 1.0
        data = fmt.quantize(w, "TQ2_0")
        h, k = divmod(p, 128)
        pair, j = divmod(k, 32)
        expected = [ZERO_BYTE] * 64
        expected[32 * h + j] = ZERO_BYTE & ~(3 << 2 * pair) | 2 << 2 * pair  # value 32k + j in bits 2k..2k+1
        assert data[:64].tolist() == expected, p
        assert data[64:].tolist() == f16_le(1.0)


def test_tq2_0_and_i2s_use_opposite_bit_orders(backend_name):
    c = [(k * 5 + k // 7) % 3 for k in range(256)]  # codes 0..2, irregular
    w = (np.array(c, np.float32) - 1).reshape(1, 256) * np.float32(0.5)
    tq = fmt.quantize(w, "TQ2_0")
    i2 = fmt.quantize(w, "I2_S")
    assert tq[:64].tolist() == spec_tq2_0_qs(c)
    assert tq[64:66].tolist() == f16_le(0.5)
    assert i2[:64].tolist() == spec_i2s_codes_bytes(np.array(c).reshape(1, 256), "x86")

    def reverse_pairs(b: int) -> int:
        return (b & 3) << 6 | (b >> 2 & 3) << 4 | (b >> 4 & 3) << 2 | b >> 6

    # Same grouping (stride 32 inside 128 values), mirrored bit pairs.
    assert [reverse_pairs(b) for b in tq[:64].tolist()] == i2[:64].tolist()
    assert tq[:64].tolist() != i2[:64].tolist()


# --------------------------------------------------------------------------- TQ1_0 by hand


@pytest.mark.parametrize(
    "code, qs_byte, qh_byte",
    [
        (2, 255, 253),  # t = 242 -> ceil(242 * 256 / 243) = 255; qh t = 240 -> 253
        (1, 128, 127),  # t = 121 -> ceil(127.47) = 128; qh t = 120 -> ceil(126.42) = 127
        (0, 0, 0),
    ],
)
def test_tq1_0_constant_blocks(backend_name, code, qs_byte, qh_byte):
    scale = 0.0 if code == 1 else 2.0
    w = np.full((1, 256), (code - 1) * scale, np.float32)
    data = fmt.quantize(w, "TQ1_0")
    assert data.size == 54
    assert data[:48].tolist() == [qs_byte] * 48
    assert data[48:52].tolist() == [qh_byte] * 4
    assert data[52:54].tolist() == f16_le(scale)
    np.testing.assert_array_equal(fmt.dequantize(data, (1, 256), "TQ1_0"), w)


def test_tq1_0_single_values_follow_the_spec(backend_name):
    for p in range(256):
        c = [1] * 256
        c[p] = 2
        w = (np.array(c, np.float32) - 1).reshape(1, 256) * np.float32(3.0)
        data = fmt.quantize(w, "TQ1_0")
        assert data[:52].tolist() == spec_tq1_0_bytes(c), p
        assert data[52:].tolist() == f16_le(3.0)
        np.testing.assert_array_equal(fmt.dequantize(data, (1, 256), "TQ1_0"), w)


def test_tq1_0_pattern_follows_the_spec(backend_name):
    c = [(k * 7 + k // 5) % 3 for k in range(256)]
    w = (np.array(c, np.float32) - 1).reshape(1, 256) * np.float32(0.1)  # 0.1 is not float16-exact
    data = fmt.quantize(w, "TQ1_0")
    assert data[:52].tolist() == spec_tq1_0_bytes(c)
    assert data[52:].tolist() == f16_le(float(np.float16(0.1)))
    # Spot values of the formula, worked by hand: qs[0] holds x[0], x[32], x[64], x[96], x[128].
    t0 = c[0] * 81 + c[32] * 27 + c[64] * 9 + c[96] * 3 + c[128]
    assert data[0] == -(-t0 * 256 // 243)


def test_tq1_0_decodes_bytes_by_the_spec_formula(backend_name):
    # trit n of byte b = ((b * 3^n) mod 256) * 3 >> 8; bytes not written by a quantizer still decode.
    rng = np.random.default_rng(11)
    data = rng.integers(0, 256, 54).astype(np.uint8)
    data[52:54] = f16_le(1.0)
    out = fmt.dequantize(data, (1, 256), "TQ1_0")[0]

    def trit(b: int, n: int) -> int:
        return ((b * 3**n) % 256) * 3 >> 8

    expected = [0] * 256
    for m in range(32):
        for n in range(5):
            expected[m + 32 * n] = trit(int(data[m]), n) - 1
    for m in range(16):
        for n in range(5):
            expected[160 + m + 16 * n] = trit(int(data[32 + m]), n) - 1
    for j in range(4):
        for m in range(4):
            expected[240 + j + 4 * m] = trit(int(data[48 + j]), m) - 1
    assert out.tolist() == [float(v) for v in expected]


def test_tq_sizes(backend_name):
    w = np.zeros((3, 512), np.float32)
    assert fmt.quantize(w, "TQ2_0").size == 6 * 66 == fmt.nbytes("TQ2_0", 3, 512)
    assert fmt.quantize(w, "TQ1_0").size == 6 * 54 == fmt.nbytes("TQ1_0", 3, 512)
    assert fmt.quantize(np.zeros((4, 128), np.float32), "I2_S").size == 4 * 128 // 4 + 32
