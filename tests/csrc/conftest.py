"""Shared helpers of the C++ GEMM tests (imported as `bitk_csrc_testing`).

`kernel_variant`: a fixture running a test once per kernel variant this CPU supports (scalar,
AVX2, AVX-VNNI, AVX-512 VNNI), each forced in turn, here and in the subprocesses it starts; a
module takes it for all its tests with ``pytestmark = pytest.mark.usefixtures("kernel_variant")``.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

from bitk import _codecs as C

sys.modules["bitk_csrc_testing"] = sys.modules[__name__]


@pytest.fixture(params=C.cpu_kernels())
def kernel_variant(request, monkeypatch):
    monkeypatch.setenv("BITK_CPU_KERNEL", request.param)
    C.set_cpu_kernel(request.param)
    assert C.cpu_kernel() == request.param
    yield request.param
    C.set_cpu_kernel("auto")


def reference_acc(xq: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """xq @ codes.T in exact integers (float64 BLAS: every partial sum is an integer far below 2^53)."""
    return (xq.astype(np.float64) @ codes.astype(np.float64).T).astype(np.int64)


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a.view(np.uint32), b.view(np.uint32))


def random_case(seed: int, m: int, k: int, n: int, density: float = 0.6):
    """(xq int8 [m, k], codes int8 [n, k] with the given share of non-zeros, s float32 [m], a float32 scale)."""
    rng = np.random.default_rng(seed)
    xq = rng.integers(-128, 128, (m, k), dtype=np.int8)
    codes = (rng.random((n, k)) < density) * rng.choice(np.array([-1, 1], np.int8), (n, k))
    s = (2.0 ** rng.uniform(-8, 8, m)).astype(np.float32)
    scale = float(np.float32(rng.uniform(0.01, 2.0)))
    return xq, codes.astype(np.int8), s, scale
