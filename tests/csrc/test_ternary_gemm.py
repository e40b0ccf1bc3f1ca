"""bitk._codecs.ternary_gemm: the exact ternary matmul of BitLinear's forward, bit for bit.

Every test runs once per kernel variant this CPU supports (scalar, AVX2, AVX-512 VNNI), each
forced in turn (subprocesses through BITK_CPU_KERNEL).

The reference is y = float32(acc) * (float32(gamma) / s) with acc = xq @ codes.T in exact integers
(float64 BLAS: every product and partial sum is an integer far below 2^53). The packed weight layout
is checked byte for byte against a numpy packer written from the header's description. The shapes
cover the kernel's edges: 6-row tiles (and 1..5-row tails), 16-column panels in groups of 4,
16-value groups (and a partial last one), 1024-value k slices, the 64-step int16 accumulation
(K = 40000 with extreme values) and several row blocks; for the VNNI kernel, 8-row tiles (and
1..7-row tails), pairs of panels (and a single last one) and blocks of 12 tiles.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from bitk import _codecs as C
from bitk_csrc_testing import random_case, reference_acc, same_bits

pytestmark = pytest.mark.usefixtures("kernel_variant")  # every test on each kernel variant


def reference_y(xq: np.ndarray, s: np.ndarray, codes: np.ndarray, gamma: float) -> np.ndarray:
    factor = np.float32(gamma) / s.astype(np.float32)
    return reference_acc(xq, codes).astype(np.float32) * factor[:, None]


def reference_pack(codes: np.ndarray) -> np.ndarray:
    """The layout of csrc/ternary_gemm.h, in numpy."""
    n, k = codes.shape
    panels, groups = -(-n // 16), -(-k // 16)
    c = np.zeros((panels * 16, groups * 16), np.uint8)
    c[:n, :k] = codes.astype(np.int16) + 1
    c = c.reshape(panels, 16, groups, 4, 4)  # [panel, row, group, t, q]: column 16 g + 4 t + q
    byte = c[..., 0, :] | (c[..., 1, :] << 2) | (c[..., 2, :] << 4) | (c[..., 3, :] << 6)
    return byte.transpose(0, 2, 1, 3).reshape(-1)  # [panel, group, row, q]


@pytest.mark.parametrize("m", range(1, 14))
def test_every_tile_height(m):
    check(*random_case(m, m, 80, 40))


def check(xq, codes, s, gamma):
    n = codes.shape[0]
    packed = C.ternary_gemm_pack(codes)
    assert packed.dtype == np.uint8 and packed.shape == (C.ternary_gemm_packed_size(*codes.shape),)
    np.testing.assert_array_equal(packed, reference_pack(codes))
    acc = C.ternary_gemm_int32(xq, packed, n)
    np.testing.assert_array_equal(acc, reference_acc(xq, codes))
    y = C.ternary_gemm(xq, s, packed, n, gamma)
    expected = reference_y(xq, s, codes, gamma)
    assert same_bits(y, expected), np.argwhere(y.view(np.uint32) != expected.view(np.uint32))[:5]
    # bitnet.cpp's epilogue: (float32(acc) / s) * scale
    y = C.ternary_gemm_divide(xq, s, packed, n, gamma)
    expected = (reference_acc(xq, codes).astype(np.float32) / s.astype(np.float32)[:, None]) * np.float32(gamma)
    assert same_bits(y, expected), np.argwhere(y.view(np.uint32) != expected.view(np.uint32))[:5]
    # a given float32 factor per row, and the packing of a transpose (codes = (codes^T)^T)
    factor = (s * np.float32(1.5)).astype(np.float32)
    y = C.ternary_gemm_rows(xq, factor, packed, n)
    assert same_bits(y, reference_acc(xq, codes).astype(np.float32) * factor[:, None])
    np.testing.assert_array_equal(C.ternary_gemm_pack_transposed(np.ascontiguousarray(codes.T)), packed)


SHAPES = [  # (m, k, n)
    (1, 1, 1),
    (1, 2560, 97),  # decode: one row
    (0, 64, 16),
    (5, 64, 0),
    (3, 0, 5),  # empty sum: y = 0 * factor
    (2, 1, 33),
    (7, 3, 17),
    (6, 16, 16),
    (13, 333, 131),  # odd k, prime n, a partial 6-row tile
    (12, 1024, 48),  # exactly one k slice
    (11, 1025, 31),  # one value past a k slice
    (19, 2049, 61),
    (36, 777, 1),
    (3, 47, 20),
    (10, 1500, 16),  # a 6-row and a 4-row tile
    (100, 3001, 40),  # two row blocks (the activation block is ~384 KiB)
    (300, 5000, 70),  # four row blocks of 12-13 tiles
    (48, 128, 200),
    (25, 100, 48),  # VNNI: three 8-row tiles and a 1-row tail; a panel pair and a single panel
    (23, 200, 16),  # VNNI: two 8-row tiles and a 7-row tail
    (97, 300, 96),  # VNNI: a second block of 12 tiles (96 rows)
    (9, 64, 1000),  # VNNI: many panel pairs, chunked for the threads
]


@pytest.mark.parametrize("m,k,n", SHAPES)
def test_matches_reference(m, k, n):
    check(*random_case(m * 7919 + k * 31 + n, m, k, n))


@pytest.mark.parametrize("density", [0.0, 0.05, 1.0])
def test_code_densities(density):
    check(*random_case(int(density * 100), 17, 1100, 35, density))


@pytest.mark.parametrize("x_value", [-128, 127])
@pytest.mark.parametrize("code", [-1, 0, 1])
def test_extremes_do_not_overflow(x_value, code):
    """K = 40000 constant rows: the int16 accumulators see 64 steps of the largest pair sums."""
    m, k, n = 7, 40000, 21
    xq = np.full((m, k), x_value, np.int8)
    xq[3] = -x_value - 1 if x_value == 127 else 127  # one row of the other extreme
    codes = np.full((n, k), code, np.int8)
    codes[5] = -code  # one row of the other sign
    s = np.full(m, 0.5, np.float32)
    acc = C.ternary_gemm_int32(xq, C.ternary_gemm_pack(codes), n)
    assert acc[0, 0] == x_value * code * k
    check(xq, codes, s, 1.0)


def test_mixed_extremes_large_k():
    rng = np.random.default_rng(5)
    m, k, n = 9, 40000, 19
    xq = rng.choice(np.array([-128, 127], np.int8), (m, k))
    codes = rng.choice(np.array([-1, 1], np.int8), (n, k))
    check(xq, codes, np.ones(m, np.float32), 0.25)


def test_epilogue_edge_scales():
    """gamma / s is one float32 division: huge, tiny, subnormal and zero s, negative gamma."""
    xq, codes, _, _ = random_case(11, 8, 200, 24)
    xq[1] = 0  # acc = 0 with an infinite factor: NaN, as in numpy
    s = np.array([1e-30, 0.0, 3e38, 1e-45, 1.0, 1.0 / 3.0, 7.0, 2.0**-20], np.float32)
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        for gamma in (1.0, -0.3, 3e38, 1e-40):
            check(xq, codes, s, gamma)


def test_out_argument_and_torch_views():
    xq, codes, s, gamma = random_case(3, 20, 300, 50)
    xq_t, codes_t, s_t = torch.from_numpy(xq), torch.from_numpy(codes), torch.from_numpy(s)
    packed = C.ternary_gemm_pack(codes_t.numpy())
    out = torch.empty(20, 50)
    result = C.ternary_gemm(xq_t.numpy(), s_t.numpy(), packed, 50, gamma, out=out.numpy())
    assert np.shares_memory(result, out.numpy())
    expected = (xq_t.double() @ codes_t.double().T).float() * (torch.tensor(gamma, dtype=torch.float32) / s_t)[:, None]
    assert torch.equal(out.view(torch.int32), expected.view(torch.int32))
    acc_out = np.empty((20, 50), np.int32)
    assert C.ternary_gemm_int32(xq, packed, 50, out=acc_out) is acc_out
    np.testing.assert_array_equal(acc_out, reference_acc(xq, codes))


# --------------------------------------------------------------------------- thread count

_THREAD_SCRIPT = r"""
import hashlib, sys
import numpy as np
from bitk import _codecs as C
rng = np.random.default_rng(7)
m, k, n = 100, 3001, 300
xq = rng.integers(-128, 128, (m, k), dtype=np.int8)
codes = rng.integers(-1, 2, (n, k), dtype=np.int8)
s = (2.0 ** rng.uniform(-8, 8, m)).astype(np.float32)
packed = C.ternary_gemm_pack(codes)
y = C.ternary_gemm(xq, s, packed, n, 0.7)
acc = C.ternary_gemm_int32(xq[:1], packed, n)
print(" ".join(hashlib.sha256(a.tobytes()).hexdigest() for a in (packed, y, acc)))
"""


def _run_threads(threads: int) -> str:
    env = dict(os.environ, BITK_NUM_THREADS=str(threads))
    return subprocess.run(
        [sys.executable, "-c", _THREAD_SCRIPT], env=env, capture_output=True, text=True, check=True
    ).stdout


def test_thread_count_does_not_change_results():
    one = _run_threads(1)
    for threads in (2, 3):
        assert _run_threads(threads) == one, f"BITK_NUM_THREADS={threads} differs from 1"
    rng = np.random.default_rng(7)
    m, k, n = 100, 3001, 300
    xq = rng.integers(-128, 128, (m, k), dtype=np.int8)
    codes = rng.integers(-1, 2, (n, k), dtype=np.int8)
    s = (2.0 ** rng.uniform(-8, 8, m)).astype(np.float32)
    expected = [reference_pack(codes), reference_y(xq, s, codes, 0.7), reference_acc(xq[:1], codes).astype(np.int32)]
    assert one.split() == [hashlib.sha256(a.tobytes()).hexdigest() for a in expected]


# --------------------------------------------------------------------------- bad input

XQ = np.zeros((4, 40), np.int8)
S = np.ones(4, np.float32)
CODES = np.zeros((20, 40), np.int8)
PACKED = C.ternary_gemm_pack(CODES)


@pytest.mark.parametrize(
    "call,error,match",
    [
        (lambda: C.ternary_gemm_pack(CODES.astype(np.int16)), TypeError, "codes must have dtype int8, got int16"),
        (lambda: C.ternary_gemm_pack(CODES.view(np.uint8)), TypeError, "codes must have dtype int8"),
        (lambda: C.ternary_gemm_pack(CODES.tolist()), TypeError, "codes must be a numpy array"),
        (lambda: C.ternary_gemm_pack(torch.from_numpy(CODES)), TypeError, "codes must be a numpy array"),
        (lambda: C.ternary_gemm_pack(CODES[0]), ValueError, r"codes must be 2-D, got shape \(40,\)"),
        (lambda: C.ternary_gemm_pack(CODES[:, ::2]), ValueError, "codes must be C-contiguous"),
        (lambda: C.ternary_gemm(XQ.astype(np.float32), S, PACKED, 20, 1.0), TypeError, "xq must have dtype int8"),
        (lambda: C.ternary_gemm(XQ, S.astype(np.float64), PACKED, 20, 1.0), TypeError, "s must have dtype float32"),
        (lambda: C.ternary_gemm(XQ, S.astype(">f4"), PACKED, 20, 1.0), TypeError, "s must have dtype float32"),
        (lambda: C.ternary_gemm(XQ, S, PACKED.view(np.int8), 20, 1.0), TypeError, "packed must have dtype uint8"),
        (lambda: C.ternary_gemm(XQ.T, S, PACKED, 20, 1.0), ValueError, "xq must be C-contiguous"),
        (lambda: C.ternary_gemm(XQ[None], S, PACKED, 20, 1.0), ValueError, "xq must be 2-D"),
        (lambda: C.ternary_gemm(XQ, S[:3], PACKED, 20, 1.0), ValueError, r"s has shape \(3,\); expected \(4,\)"),
        (lambda: C.ternary_gemm(XQ, S[None], PACKED, 20, 1.0), ValueError, "s must be 1-D"),
        (lambda: C.ternary_gemm(XQ, S, PACKED, 40, 1.0), ValueError, "packed has 384 bytes; n=40 and k=40"),
        (
            lambda: C.ternary_gemm(XQ[:, :8].copy(), S, PACKED, 20, 1.0),
            ValueError,
            "packed has 384 bytes; n=20 and k=8",
        ),
        (lambda: C.ternary_gemm(XQ, S, PACKED[:-1], 20, 1.0), ValueError, "packed has 383 bytes"),
        (lambda: C.ternary_gemm(XQ, S, PACKED, -1, 1.0), ValueError, "n must be >= 0"),
        (
            lambda: C.ternary_gemm(XQ, S, PACKED, 20, 1.0, out=np.empty((4, 21), np.float32)),
            ValueError,
            r"out has shape \(4, 21\); expected \(4, 20\)",
        ),
        (
            lambda: C.ternary_gemm(XQ, S, PACKED, 20, 1.0, out=np.empty((4, 20), np.float64)),
            TypeError,
            "out must have dtype float32",
        ),
        (
            lambda: C.ternary_gemm(XQ, S, PACKED, 20, 1.0, out=np.empty((20, 4), np.float32).T),
            ValueError,
            "out must be C-contiguous",
        ),
        (
            lambda: C.ternary_gemm(XQ, S, PACKED, 20, 1.0, out=np.broadcast_to(np.float32(0), (4, 20))),
            ValueError,
            "out must be",
        ),
        (
            lambda: C.ternary_gemm_int32(XQ, PACKED, 20, out=np.empty((4, 20), np.int64)),
            TypeError,
            "out must have dtype int32",
        ),
        (lambda: C.ternary_gemm_rows(XQ, S[:3], PACKED, 20), ValueError, r"factor has shape \(3,\); expected \(4,\)"),
        (
            lambda: C.ternary_gemm_pack_transposed(np.zeros((2**23 + 1, 1), np.int8)),
            ValueError,
            "exceeds the supported",
        ),
        (lambda: C.ternary_gemm_pack_transposed(XQ.astype(np.int16)), TypeError, "codes must have dtype int8"),
        (lambda: C.ternary_gemm_packed_size(1, 2**23 + 1), ValueError, "exceeds the supported"),
        (lambda: C.ternary_gemm_packed_size(-1, 16), ValueError, "negative size"),
    ],
)
def test_bad_input_raises(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_read_only_out_raises():
    out = np.empty((4, 20), np.float32)
    out.flags.writeable = False
    with pytest.raises(ValueError, match="out must be writeable"):
        C.ternary_gemm(XQ, S, PACKED, 20, 1.0, out=out)


@pytest.mark.parametrize("shape", [(0, 5), (1, 1), (7, 33), (640, 1031)])
@pytest.mark.parametrize("gamma", [0.02, 1e-5, 3.0e38])
def test_ternary_scale_is_codes_times_gamma(shape, gamma):
    codes = np.random.default_rng(0).integers(-1, 2, shape, dtype=np.int8)
    out = C.ternary_scale(codes, gamma)
    want = codes.astype(np.float32) * np.float32(gamma)
    assert out.dtype == np.float32 and out.shape == shape
    assert np.array_equal(out.view(np.uint32), want.view(np.uint32))  # +0.0 for zero codes, like torch


def test_ternary_scale_bad_input():
    with pytest.raises(TypeError, match="int8"):
        C.ternary_scale(np.zeros((2, 2), np.int16), 1.0)
    with pytest.raises(ValueError, match="codes"):
        C.ternary_scale(np.zeros(4, np.int8), 1.0)
