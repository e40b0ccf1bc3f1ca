"""Every bad input to bitk.formats raises ValueError naming the problem; backends switch cleanly.

Content checks (NaN/Inf, non-ternary input, code 3, scales) run inside the backends, so they are
tested under both; shape and dtype checks run in the public API before dispatch and are tested
under both anyway (the dispatch must not skip them).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import bitk.formats as fmt

W_I2S = np.ones((4, 128), np.float32)  # ternary: one scale
W_TQ = np.ones((2, 256), np.float32)


def i2s_bytes(rows=4, cols=128, layout="x86", scale=1.0):
    return fmt.pack_i2s(np.zeros((rows, cols), np.int8), scale, layout)


def tq_bytes(qtype, rows=2, cols=256):
    return fmt.quantize(np.ones((rows, cols), np.float32), qtype)


# --------------------------------------------------------------------------- dtypes and containers

BAD_ARRAYS = [
    pytest.param(np.ones((2, 256), np.int32), r"float32, float16 or bfloat16 array; got int32", id="int32"),
    pytest.param(np.ones((2, 256), np.int8), r"got int8", id="int8"),
    pytest.param(np.ones((2, 256), np.complex64), r"got complex64", id="complex64"),
    pytest.param([[1.0] * 256] * 2, r"expected a numpy array or torch tensor; got list", id="list"),
    pytest.param(1.0, r"expected a numpy array or torch tensor; got float", id="scalar"),
    pytest.param(
        torch.ones(2, 256, dtype=torch.int32), r"float32, float16 or bfloat16 tensor; got torch.int32", id="torch-int32"
    ),
    pytest.param(np.ones(256, np.float32), r"expected a 2-D matrix \[rows, cols\]; got shape \(256,\)", id="1-D"),
    pytest.param(np.ones((2, 2, 256), np.float32), r"2-D matrix.*got shape \(2, 2, 256\)", id="3-D"),
    pytest.param(np.ones((), np.float32), r"expected a 2-D matrix \[rows, cols\]; got shape \(\)", id="0-D"),
    pytest.param(torch.ones(256), r"2-D matrix", id="torch-1-D"),
    pytest.param(np.ones((0, 256), np.float32), r"the matrix is empty \(shape \(0, 256\)\)", id="empty-rows"),
    pytest.param(np.ones((2, 0), np.float32), r"the matrix is empty", id="empty-cols"),
]
FLOAT64 = [
    pytest.param(
        np.ones((2, 256), np.float64),
        r"expected a float32, float16 or bfloat16 array; got float64 "
        r"\(bitk never rounds silently: convert with \.astype\(np\.float32\)\)",
        id="float64",
    ),
    pytest.param(
        torch.ones(2, 256, dtype=torch.float64),
        r"float32, float16 or bfloat16 tensor; got torch.float64",
        id="torch-float64",
    ),
]


@pytest.mark.parametrize("w, match", BAD_ARRAYS + FLOAT64)
def test_ternarize_rejects(backend_name, w, match):
    with pytest.raises(ValueError, match=match):
        fmt.ternarize(w)


@pytest.mark.parametrize("qtype", ["I2_S", "TQ2_0", "TQ1_0"])
@pytest.mark.parametrize("w, match", BAD_ARRAYS)
def test_quantize_rejects_bad_weight_arrays(backend_name, qtype, w, match):
    with pytest.raises(ValueError, match=match):
        fmt.quantize(w, qtype)


@pytest.mark.parametrize("qtype", ["I2_S", "TQ2_0", "TQ1_0"])
@pytest.mark.parametrize("to_torch", [False, True])
def test_quantize_float64_only_when_exactly_float32(backend_name, qtype, to_torch):
    # quantize takes float64 `codes * scale` (numpy's default product) when nothing would be rounded.
    codes = np.tile(np.array([1, 0, -1, 1], np.int8), (2, 64))
    scale = float(np.float32(0.1))
    exact = codes * scale
    assert exact.dtype == np.float64
    expected = fmt.quantize(exact.astype(np.float32), qtype)
    w = torch.from_numpy(exact) if to_torch else exact
    np.testing.assert_array_equal(fmt.quantize(w, qtype), expected)
    inexact = codes * 0.1  # 0.1 is not a float32: converting would round
    w = torch.from_numpy(inexact) if to_torch else inexact
    with pytest.raises(
        ValueError,
        match=rf"quantize\({qtype}\): float64 input holds values that are not float32 "
        r"numbers; bitk never rounds silently",
    ):
        fmt.quantize(w, qtype)
    with pytest.raises(ValueError, match=r"not float32 numbers"):
        fmt.quantize(codes * 1e39, qtype)  # overflows float32


# --------------------------------------------------------------------------- shapes


@pytest.mark.parametrize(
    "qtype, layout, shape, match",
    [
        ("I2_S", None, (2, 64), r"I2_S needs the row length \(cols, ne0\) to be a multiple of 128; got \[2, 64\]"),
        ("I2_S", "arm", (2, 192), r"multiple of 128"),  # arm blocks are 64 values, rows still need 128
        ("I2_S", "x86-1x4", (4, 100), r"multiple of 128"),
        ("I2_S", "x86-1x4", (3, 128), r"x86-1x4 layout interleaves 4 rows; got 3 rows"),
        ("I2_S", "x86-1x4", (6, 256), r"interleaves 4 rows; got 6 rows"),
        ("TQ2_0", None, (2, 128), r"TQ2_0 needs the row length \(cols, ne0\) to be a multiple of 256; got \[2, 128\]"),
        ("TQ1_0", None, (1, 384), r"TQ1_0 needs the row length.*multiple of 256"),
    ],
)
def test_shapes_that_do_not_fit_are_rejected(backend_name, qtype, layout, shape, match):
    w = np.zeros(shape, np.float32)
    with pytest.raises(ValueError, match=match):
        fmt.quantize(w, qtype, layout)
    with pytest.raises(ValueError, match=match):
        fmt.dequantize(np.zeros(1, np.uint8), shape, qtype, layout)
    if qtype == "I2_S":
        with pytest.raises(ValueError, match=match):
            fmt.pack_i2s(np.zeros(shape, np.int8), 1.0, layout or "x86")
        with pytest.raises(ValueError, match=match):
            fmt.unpack_i2s(np.zeros(1, np.uint8), shape, layout or "x86")


@pytest.mark.parametrize(
    "shape, match",
    [
        ((128,), r"2-D matrix"),
        ((1, 2, 128), r"2-D matrix"),
        ((0, 128), r"the matrix is empty"),
        ((4, 0), r"the matrix is empty"),
        ((-4, 128), r"the matrix is empty"),
    ],
)
def test_dequantize_rejects_bad_shapes(backend_name, shape, match):
    for call in (
        lambda: fmt.dequantize(i2s_bytes(), shape, "I2_S"),
        lambda: fmt.dequantize(tq_bytes("TQ2_0"), shape, "TQ2_0"),
        lambda: fmt.unpack_i2s(i2s_bytes(), shape),
    ):
        with pytest.raises(ValueError, match=match):
            call()


@pytest.mark.parametrize("shape", [(4.7, 128), ("4", "128"), (4, 128.5), (True, 128)])
def test_dequantize_rejects_non_integer_shapes(backend_name, shape):
    with pytest.raises(ValueError, match="must be two integers"):
        fmt.dequantize(i2s_bytes(), shape, "I2_S")


# --------------------------------------------------------------------------- byte buffers


@pytest.mark.parametrize("qtype", ["I2_S", "TQ2_0", "TQ1_0"])
@pytest.mark.parametrize("delta", [-1, 1, -32, 66])
def test_wrong_byte_count(backend_name, qtype, delta):
    shape = (4, 256)
    good = fmt.quantize(np.ones(shape, np.float32), qtype)
    bad = np.zeros(good.size + delta, np.uint8)
    bad[: min(good.size, bad.size)] = good[: bad.size]
    expected = fmt.nbytes(qtype, *shape)
    with pytest.raises(ValueError, match=rf"{qtype} data has {bad.size} bytes; a \[4, 256\] tensor needs {expected}"):
        fmt.dequantize(bad, shape, qtype)
    if qtype == "I2_S":
        with pytest.raises(ValueError, match=r"data has \d+ bytes"):
            fmt.unpack_i2s(bad, shape)


def test_i2s_without_its_tail_is_rejected(backend_name):
    data = i2s_bytes(4, 128)
    with pytest.raises(ValueError, match=r"I2_S data has 128 bytes; a \[4, 128\] tensor needs 160"):
        fmt.dequantize(data[:128], (4, 128), "I2_S")


@pytest.mark.parametrize(
    "data, match",
    [
        (np.zeros(160, np.float32), r"expected uint8 bytes; got dtype float32"),
        (np.zeros(160, np.int16), r"expected uint8 bytes; got dtype int16"),
        ([0] * 160, r"expected a uint8 numpy array or bytes; got list"),
        ("x" * 160, r"expected a uint8 numpy array or bytes; got str"),
    ],
)
def test_byte_buffer_type(backend_name, data, match):
    with pytest.raises(ValueError, match=match):
        fmt.dequantize(data, (4, 128), "I2_S")
    with pytest.raises(ValueError, match=match):
        fmt.unpack_i2s(data, (4, 128))


# --------------------------------------------------------------------------- code 3 and scales in data


@pytest.mark.parametrize("layout", ["x86", "arm", "x86-1x4"])
@pytest.mark.parametrize("shift", [6, 4, 2, 0])
def test_i2s_code_3_is_rejected(backend_name, layout, shift):
    data = i2s_bytes(4, 128, layout).copy()
    data[37] |= np.uint8(3 << shift)
    # Where the value sits follows from the layout; the message names it.
    if layout == "x86-1x4":
        pos = ((6 - shift) // 2, 37)
    else:
        block, stride = {"x86": (128, 32), "arm": (64, 16)}[layout]
        flat = (37 // stride) * block + (6 - shift) // 2 * stride + 37 % stride
        pos = divmod(flat, 128)
    match = rf"I2_S data holds the invalid code 3 .*first at value \({pos[0]}, {pos[1]}\)"
    with pytest.raises(ValueError, match=match):
        fmt.dequantize(data, (4, 128), "I2_S", layout)
    with pytest.raises(ValueError, match=r"invalid code 3"):
        fmt.unpack_i2s(data, (4, 128), layout)


@pytest.mark.parametrize("shift", [0, 2, 4, 6])
def test_tq2_0_code_3_is_rejected(backend_name, shift):
    data = tq_bytes("TQ2_0").copy()
    data[66 + 40] |= np.uint8(3 << shift)  # block 1, half 1, j = 8
    col = 128 + 32 * (shift // 2) + 8
    with pytest.raises(ValueError, match=rf"TQ2_0 data holds the invalid code 3 .*first at value \(1, {col}\)"):
        fmt.dequantize(data, (2, 256), "TQ2_0")


@pytest.mark.parametrize(
    "scale_bits",
    [b"\x00\x00\xc0\x7f", b"\x00\x00\x80\x7f", b"\x00\x00\x80\xff", b"\x01\x00\x80\x7f"],
    ids=["nan", "inf", "-inf", "snan"],
)
def test_i2s_non_finite_tail_scale(backend_name, scale_bits):
    data = i2s_bytes().copy()
    data[128:132] = list(scale_bits)
    with pytest.raises(ValueError, match=r"I2_S scale must be finite; the I2_S tail holds"):
        fmt.dequantize(data, (4, 128), "I2_S")
    with pytest.raises(ValueError, match=r"I2_S scale must be finite"):
        fmt.unpack_i2s(data, (4, 128))


@pytest.mark.parametrize("qtype", ["TQ2_0", "TQ1_0"])
@pytest.mark.parametrize("half_bits", [0x7C00, 0xFC00, 0x7E00, 0x7C01])
def test_tq_non_finite_block_scale(backend_name, qtype, half_bits):
    data = tq_bytes(qtype).copy()
    size = fmt.nbytes(qtype, 1, 256)
    data[2 * size - 2 : 2 * size] = [half_bits & 0xFF, half_bits >> 8]  # block 1
    with pytest.raises(ValueError, match=rf"{qtype} data holds a non-finite block scale .* in block 1"):
        fmt.dequantize(data, (2, 256), qtype)


# --------------------------------------------------------------------------- weights: NaN/Inf, not ternary


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_weights(backend_name, bad):
    w = np.ones((4, 256), np.float32)
    w[2, 17] = bad
    with pytest.raises(ValueError, match=r"ternarize: input contains NaN or Inf"):
        fmt.ternarize(w)
    with pytest.raises(ValueError, match=r"ternarize: input contains NaN or Inf"):
        fmt.ternarize(torch.from_numpy(w))
    for qtype in ("I2_S", "TQ2_0", "TQ1_0"):
        with pytest.raises(ValueError, match=rf"quantize\({qtype}\): input contains NaN or Inf \(first at \(2, 17\)\)"):
            fmt.quantize(w, qtype)


def test_float16_overflow_is_not_a_non_finite_input(backend_name):
    # A torch float16 tensor cannot hold inf silently here: this one holds a real inf, which is rejected.
    w = torch.ones(2, 128, dtype=torch.float16)
    w[1, 3] = float("inf")
    with pytest.raises(ValueError, match=r"NaN or Inf"):
        fmt.ternarize(w)


def test_i2s_rejects_non_ternary(backend_name):
    w = np.ones((4, 128), np.float32)
    w[1, 5] = 0.5
    w[3, 0] = -0.25
    with pytest.raises(
        ValueError,
        match=r"quantize\(I2_S\): input is not ternarized: 2 values are neither 0 nor \+-1"
        r".*first at \(1, 5\).*ternarize first",
    ):
        fmt.quantize(w, "I2_S")


def test_i2s_rejects_two_scales_in_different_blocks(backend_name):
    # Fine for TQ (one scale per block), not for I2_S (one scale per tensor).
    w = np.ones((1, 512), np.float32)
    w[0, 256:] = 2.0
    with pytest.raises(ValueError, match=r"not ternarized: 256 values"):
        fmt.quantize(w, "I2_S")
    for qtype in ("TQ2_0", "TQ1_0"):
        np.testing.assert_array_equal(fmt.dequantize(fmt.quantize(w, qtype), w.shape, qtype), w)


@pytest.mark.parametrize("qtype", ["TQ2_0", "TQ1_0"])
def test_tq_rejects_two_magnitudes_in_one_block(backend_name, qtype):
    w = np.ones((2, 512), np.float32)
    w[1, 300] = 0.5  # block 3
    with pytest.raises(
        ValueError,
        match=rf"quantize\({qtype}\): input is not ternarized: 1 values are neither 0 nor "
        r"\+-d of their 256-value block \(first at \(1, 300\)",
    ):
        fmt.quantize(w, qtype)


@pytest.mark.parametrize("qtype", ["TQ2_0", "TQ1_0"])
@pytest.mark.parametrize("scale", [1e5, 65520.0, 3e38, 1e-9, 2.0**-25])
def test_tq_rejects_block_scales_float16_cannot_hold(backend_name, qtype, scale):
    w = np.ones((1, 768), np.float32)
    w[0, 512:] *= np.float32(scale)  # block 2
    with pytest.raises(
        ValueError,
        match=rf"quantize\({qtype}\): block scale .* \(block 2\) is not representable as "
        r"float16",
    ):
        fmt.quantize(w, qtype)


@pytest.mark.parametrize("qtype", ["TQ2_0", "TQ1_0"])
@pytest.mark.parametrize("scale", [65519.99, 65504.0, 2.0**-24, 3e-8])
def test_tq_accepts_the_edges_of_float16(backend_name, qtype, scale):
    w = np.full((1, 256), np.float32(scale))
    out = fmt.dequantize(fmt.quantize(w, qtype), w.shape, qtype)
    assert np.all(out == np.float32(np.float16(np.float32(scale))))
    assert np.all(out > 0)


# --------------------------------------------------------------------------- qtype and layout names


def test_unknown_qtype(backend_name):
    for call in (
        lambda: fmt.quantize(W_I2S, "Q4_0"),
        lambda: fmt.dequantize(i2s_bytes(), (4, 128), "I2S"),
        lambda: fmt.quantize(W_I2S, ""),
    ):
        with pytest.raises(ValueError, match=r"unknown ternary qtype .*; expected one of I2_S, TQ2_0, TQ1_0"):
            call()
    with pytest.raises(ValueError, match=r"unknown ternary qtype"):
        fmt.nbytes("Q8_0", 1, 256)


def test_unknown_layout(backend_name):
    for call in (
        lambda: fmt.quantize(W_I2S, "I2_S", "x86-2x2"),
        lambda: fmt.dequantize(i2s_bytes(), (4, 128), "I2_S", "ARM"),
        lambda: fmt.pack_i2s(np.zeros((4, 128), np.int8), 1.0, "neon"),
        lambda: fmt.unpack_i2s(i2s_bytes(), (4, 128), "x86_1x4"),
    ):
        with pytest.raises(ValueError, match=r"unknown I2_S layout .*; expected one of x86, arm, x86-1x4"):
            call()


@pytest.mark.parametrize("qtype", ["TQ2_0", "TQ1_0"])
@pytest.mark.parametrize("layout", ["x86", "arm"])
def test_layout_given_for_tq(backend_name, qtype, layout):
    with pytest.raises(ValueError, match=rf"{qtype} has a single layout; layout='{layout}' applies to I2_S only"):
        fmt.quantize(W_TQ, qtype, layout)
    with pytest.raises(ValueError, match=r"applies to I2_S only"):
        fmt.dequantize(tq_bytes(qtype), (2, 256), qtype, layout)


# --------------------------------------------------------------------------- pack_i2s arguments


@pytest.mark.parametrize("bad_code", [2, -2, 3, 127, -128])
def test_pack_i2s_codes_outside_ternary(backend_name, bad_code):
    codes = np.zeros((4, 128), np.int8)
    codes[2, 77] = bad_code
    with pytest.raises(ValueError, match=rf"pack_i2s: codes must be in \{{-1, 0, 1\}}; found {bad_code} at \(2, 77\)"):
        fmt.pack_i2s(codes, 1.0)


@pytest.mark.parametrize(
    "codes, match",
    [
        (np.zeros((4, 128), np.int16), r"codes must be int8 in \{-1, 0, 1\}; got dtype int16"),
        (np.zeros((4, 128), np.uint8), r"got dtype uint8"),
        (np.zeros((4, 128), np.float32), r"got dtype float32"),
        (np.zeros((4, 128), bool), r"got dtype bool"),
        ([[0] * 128] * 4, r"expected an int8 numpy array or torch tensor; got list"),
        (np.zeros(128, np.int8), r"2-D matrix"),
        (np.zeros((0, 128), np.int8), r"the matrix is empty"),
    ],
)
def test_pack_i2s_codes_type(backend_name, codes, match):
    with pytest.raises(ValueError, match=match):
        fmt.pack_i2s(codes, 1.0)


@pytest.mark.parametrize(
    "scale, match",
    [
        (-1.0, r"I2_S scale must be >= 0; got -1"),
        (-1e-30, r"must be >= 0"),
        (float("nan"), r"I2_S scale must be finite; got nan"),
        (float("inf"), r"must be finite"),
        (-float("inf"), r"must be finite"),
        (1e39, r"pack_i2s: scale 1e\+39 overflows float32, which I2_S stores"),
        ("abc", r"pack_i2s: scale must be a number; got 'abc'"),
        (None, r"scale must be a number; got None"),
        (np.array([1.0, 2.0]), r"scale must be a number"),
    ],
)
def test_pack_i2s_bad_scale(backend_name, scale, match):
    with pytest.raises(ValueError, match=match):
        fmt.pack_i2s(np.zeros((4, 128), np.int8), scale)


def test_pack_i2s_accepts_torch_codes(backend_name):
    codes = torch.tensor([[1, 0, -1, 0] * 32], dtype=torch.int8)
    np.testing.assert_array_equal(fmt.pack_i2s(codes, 0.5), fmt.pack_i2s(codes.numpy(), 0.5))
    with pytest.raises(ValueError, match=r"codes must be int8.*got dtype int64"):
        fmt.pack_i2s(codes.long(), 0.5)


# --------------------------------------------------------------------------- backends


@pytest.mark.parametrize("name", ["nope", "", "CPP", "torch", 1])
def test_set_backend_rejects_unknown_names(name):
    before = fmt.backend()
    with pytest.raises(ValueError, match=r"unknown formats backend .*; expected one of cpp, numpy"):
        fmt.set_backend(name)
    assert fmt.backend() == before


def test_set_backend_rejects_none():
    before = fmt.backend()
    try:
        with pytest.raises(ValueError, match=r"unknown formats backend"):
            fmt.set_backend(None)
        assert fmt.backend() == before
    finally:
        if fmt.backend() != before:
            fmt.set_backend(before)


def test_use_backend_switches_and_restores():
    before = fmt.backend()
    with fmt.use_backend("numpy"):
        assert fmt.backend() == "numpy"
        with fmt.use_backend("cpp"):
            assert fmt.backend() == "cpp"
        assert fmt.backend() == "numpy"
    assert fmt.backend() == before
    with pytest.raises(KeyError), fmt.use_backend("numpy"):
        raise KeyError("boom")
    assert fmt.backend() == before
    with pytest.raises(ValueError, match=r"unknown formats backend"), fmt.use_backend("nope"):
        pass  # pragma: no cover
    assert fmt.backend() == before


def test_set_backend_persists_until_changed():
    before = fmt.backend()
    try:
        fmt.set_backend("numpy")
        assert fmt.backend() == "numpy"
        fmt.set_backend("cpp")
        assert fmt.backend() == "cpp"
    finally:
        fmt.set_backend(before)


_NO_EXTENSION = textwrap.dedent(
    """
    import sys

    class NoCodecs:
        def find_spec(self, name, path=None, target=None):
            if name == "bitk._codecs":
                raise ImportError("bitk._codecs hidden by the test")
            return None

    sys.meta_path.insert(0, NoCodecs())

    import numpy as np
    import bitk.formats as fmt

    assert fmt.backend() == "numpy", fmt.backend()
    assert fmt.available_backends() == ("numpy",), fmt.available_backends()
    codes = np.array([[1, 0, -1, 1] * 32] * 4, np.int8)
    w = codes.astype(np.float32) * np.float32(0.5)
    c, s = fmt.ternarize(w)
    assert s == 0.375 and (c == codes).all(), (s, c)   # mean|w| = 0.375, 0.5 / 0.375 rounds to 1
    data = fmt.quantize(w, "I2_S")
    # Codes c = 2, 1, 0, 2 repeat every 4 values, so c[j] = c[j+32] = c[j+64] = c[j+96]: byte j is c[j] * 0x55.
    assert data[:32].tolist() == [0xAA, 0x55, 0x00, 0xAA] * 8, data[:32]
    assert (fmt.dequantize(data, w.shape, "I2_S") == w).all()
    tq = fmt.quantize(np.ones((1, 256), np.float32), "TQ2_0")
    assert tq[:64].tolist() == [0xAA] * 64 and tq[64:].tolist() == [0x00, 0x3C]
    try:
        fmt.set_backend("cpp")
    except RuntimeError as exc:
        print("RuntimeError:", exc)
    else:
        raise AssertionError("set_backend('cpp') worked without the extension")
    assert fmt.backend() == "numpy"
    print("OK")
    """
)


def test_package_works_without_the_extension():
    out = subprocess.run([sys.executable, "-c", _NO_EXTENSION], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[-1] == "OK"
    assert re.search(r"RuntimeError: the C\+\+ codecs \(bitk\._codecs\) are not built in this install", lines[0])
    assert "bitk._codecs hidden by the test" in lines[0] and "numpy backend" in lines[0]


def test_env_backend_cpp_without_the_extension_fails_on_use():
    # BITK_FORMATS_BACKEND=cpp with no extension: importing still works, using a codec says why it cannot.
    script = _NO_EXTENSION.split("import numpy as np")[0] + textwrap.dedent(
        """
        import numpy as np
        import bitk.formats as fmt
        try:
            fmt.ternarize(np.ones((1, 128), np.float32))
        except RuntimeError as exc:
            print("RuntimeError:", exc)
        """
    )
    env = dict(os.environ, BITK_FORMATS_BACKEND="cpp")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert "RuntimeError: the C++ codecs (bitk._codecs) are not built" in out.stdout
