"""bitk._codecs.i2s_gemm_*: the exact ternary matmul straight from I2_S bytes, bit for bit.

Every test runs once per kernel variant this CPU supports (scalar, AVX2, AVX-512 VNNI), each
forced in turn. The bytes are `bitk.formats.pack_i2s`'s (the x86 layout a GGUF file holds); the
reference is acc = xq @ codes.T in exact integers (float64 BLAS: every partial sum is an integer
far below 2^53) and bitnet.cpp's epilogue y = (float32(acc) / s) * scale, which must also equal
what the panel kernel (`ternary_gemm_divide`) gives bit for bit. The shapes cover the kernels'
edges: 4-row activation tiles and their 1..3-row tails, 4 (VNNI) or 2 (AVX2) weight rows at a
time and their tails, the AVX2 int16 partial sums widened every 8 blocks (k = 1024 and beyond),
64-row units in both directions and one-row decoding.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from bitk import _codecs as C
from bitk import formats
from bitk_csrc_testing import random_case, reference_acc, same_bits

pytestmark = pytest.mark.usefixtures("kernel_variant")  # every test on each kernel variant


def check(xq, codes, s, scale):
    n, k = codes.shape
    if codes.size:
        data = formats.pack_i2s(codes, scale)  # the tensor's bytes, 32-byte tail included
    else:  # (no I2_S tensor is empty: the tail alone)
        data = np.frombuffer(np.full(8, scale, np.float32).tobytes(), np.uint8).copy()
    assert data.size == n * k // 4 + 32
    acc = C.i2s_gemm_int32(xq, data, n)
    assert acc.dtype == np.int32 and acc.shape == (xq.shape[0], n)
    np.testing.assert_array_equal(acc, reference_acc(xq, codes))
    np.testing.assert_array_equal(C.i2s_gemm_int32(xq, data[:-32], n), acc)  # the tail is not read
    y = C.i2s_gemm_divide(xq, s, data, n, scale)
    expected = (reference_acc(xq, codes).astype(np.float32) / s.astype(np.float32)[:, None]) * np.float32(scale)
    assert same_bits(y, expected), np.argwhere(y.view(np.uint32) != expected.view(np.uint32))[:5]
    assert same_bits(y, C.ternary_gemm_divide(xq, s, C.ternary_gemm_pack(codes), n, scale))


SHAPES = [  # (m, k, n)
    (1, 128, 1),
    (1, 2560, 97),  # decode: one row
    (0, 128, 16),
    (5, 256, 0),
    (3, 0, 5),  # empty sum: y = 0 / s * scale
    (2, 128, 3),
    (4, 384, 4),  # one whole tile
    (5, 640, 6),
    (7, 1024, 9),  # exactly 8 blocks: one widening of the AVX2 int16 sums
    (6, 1152, 7),  # 9 blocks
    (9, 2176, 13),
    (65, 256, 70),  # two row blocks, two weight chunks, with tails
    (130, 768, 129),
    (3, 6912, 11),
]


@pytest.mark.parametrize("m,k,n", SHAPES)
def test_matches_reference(m, k, n):
    check(*random_case(m * 7919 + k * 31 + n, m, k, n))


@pytest.mark.parametrize("m", range(1, 10))
@pytest.mark.parametrize("n", [1, 2, 3, 5, 8])
def test_every_tile_shape(m, n):
    check(*random_case(100 * m + n, m, 256, n))


@pytest.mark.parametrize("density", [0.0, 0.05, 1.0])
def test_code_densities(density):
    check(*random_case(int(density * 100), 17, 1280, 35, density))


@pytest.mark.parametrize("x_value", [-128, 127])
@pytest.mark.parametrize("code", [-1, 0, 1])
def test_extremes_do_not_overflow(x_value, code):
    """Constant rows over k = 40960: every int16 partial sum of the AVX2 kernel at its largest."""
    m, k, n = 6, 40960, 9
    xq = np.full((m, k), x_value, np.int8)
    xq[3] = -x_value - 1 if x_value == 127 else 127  # one row of the other extreme
    codes = np.full((n, k), code, np.int8)
    codes[5] = -code  # one row of the other sign
    acc = C.i2s_gemm_int32(xq, formats.pack_i2s(codes, 1.0), n)
    assert acc[0, 0] == x_value * code * k
    check(xq, codes, np.full(m, 0.5, np.float32), 1.0)


def test_out_argument():
    xq, codes, s, scale = random_case(3, 20, 384, 50)
    data = formats.pack_i2s(codes, scale)
    out = np.empty((20, 50), np.float32)
    assert C.i2s_gemm_divide(xq, s, data, 50, scale, out=out) is out
    acc_out = np.empty((20, 50), np.int32)
    assert C.i2s_gemm_int32(xq, data, 50, out=acc_out) is acc_out
    np.testing.assert_array_equal(acc_out, reference_acc(xq, codes))


_THREAD_SCRIPT = r"""
import hashlib
import numpy as np
from bitk import _codecs as C, formats
rng = np.random.default_rng(7)
m, k, n = 150, 1280, 300
xq = rng.integers(-128, 128, (m, k), dtype=np.int8)
data = formats.pack_i2s(rng.integers(-1, 2, (n, k), dtype=np.int8), 0.5)
s = (2.0 ** rng.uniform(-8, 8, m)).astype(np.float32)
y = C.i2s_gemm_divide(xq, s, data, n, 0.7)
acc = C.i2s_gemm_int32(xq[:1], data, n)
print(" ".join(hashlib.sha256(a.tobytes()).hexdigest() for a in (y, acc)))
"""


def test_thread_count_does_not_change_results():
    runs = set()
    for threads in (1, 2, 3, 8):
        env = dict(os.environ, BITK_NUM_THREADS=str(threads))
        out = subprocess.run([sys.executable, "-c", _THREAD_SCRIPT], env=env, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        runs.add(out.stdout.strip())
    assert len(runs) == 1


BAD = [
    (
        lambda: C.i2s_gemm_int32(np.zeros((2, 100), np.int8), np.zeros(25 * 3, np.uint8), 3),
        ValueError,
        "multiple of 128",
    ),
    (lambda: C.i2s_gemm_int32(np.zeros((2, 128), np.int8), np.zeros(95, np.uint8), 3), ValueError, "has 96 bytes"),
    (lambda: C.i2s_gemm_int32(np.zeros((2, 128), np.int8), np.zeros(97, np.uint8), 3), ValueError, "128 with its"),
    (lambda: C.i2s_gemm_int32(np.zeros((2, 128), np.int8), np.zeros(96, np.uint8), -1), ValueError, "n must be"),
    (lambda: C.i2s_gemm_int32(np.zeros((2, 128), np.int16), np.zeros(96, np.uint8), 3), TypeError, "int8"),
    (lambda: C.i2s_gemm_int32(np.zeros((2, 128), np.int8), np.zeros(96, np.int8), 3), TypeError, "uint8"),
    (
        lambda: C.i2s_gemm_divide(np.zeros((2, 128), np.int8), np.ones(3, np.float32), np.zeros(96, np.uint8), 3, 1.0),
        ValueError,
        "s has shape",
    ),
    (
        lambda: C.i2s_gemm_int32(np.zeros((2, 1 << 22), np.int8), np.zeros(3 << 20, np.uint8), 3),
        ValueError,
        "exceeds",
    ),
]


@pytest.mark.parametrize("call,error,match", BAD)
def test_bad_input_raises(call, error, match):
    with pytest.raises(error, match=match):
        call()
