"""Shared strategies and fixtures of the bitk.formats tests.

Matrices come from a hypothesis-drawn seed plus a few drawn knobs (shape, scale, density, sign of
zero) rather than element by element: a 12 x 1024 matrix drawn value by value is slow to generate
and shrinks no better. Every strategy still draws its edge cases deliberately (all-zero tensors,
exact ties, subnormals, scales that float16 cannot hold).
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import bitk.formats as fmt

# The test modules import these helpers as `bitk_formats_testing`: a plain `from conftest import`
# picks whichever conftest.py was imported last once other test folders have their own.
sys.modules["bitk_formats_testing"] = sys.modules[__name__]

# Both backends, always: a missing C++ build must fail these tests (use_backend("cpp") raises
# RuntimeError), not shrink the parametrization the way available_backends() would.
BACKENDS = ("cpp", "numpy")
I2S_LAYOUTS = ("x86", "arm", "x86-1x4")
TQ_TYPES = ("TQ2_0", "TQ1_0")

F16_MAX = 65504.0
F16_TINY = 2.0**-24  # smallest float16 subnormal; 2**-25 rounds (to even) to 0
F32_MAX = float(np.finfo(np.float32).max)
F32_TINY = float(np.finfo(np.float32).smallest_subnormal)
LATENT_MAX = float(np.float32(1e30))  # latent weights are bounded: |x| <= 1e30


@pytest.fixture(params=BACKENDS)
def backend_name(request):
    """Runs the test once per backend with that backend active; restores the previous one."""
    with fmt.use_backend(request.param):
        yield request.param


# --------------------------------------------------------------------------- shapes


def shapes(multiple: int, max_rows: int = 12, max_cols: int = 1024, rows_multiple: int = 1):
    """(rows, cols): rows 1..max_rows (a multiple of rows_multiple), cols a multiple of `multiple`."""
    return st.tuples(
        st.integers(1, max_rows // rows_multiple).map(lambda r: r * rows_multiple),
        st.integers(1, max_cols // multiple).map(lambda c: c * multiple),
    )


def i2s_layout_shapes(max_rows: int = 12, max_cols: int = 1024):
    """(layout, (rows, cols)) with rows % 4 == 0 for x86-1x4."""
    return st.sampled_from(I2S_LAYOUTS).flatmap(
        lambda lay: st.tuples(st.just(lay), shapes(128, max_rows, max_cols, 4 if lay == "x86-1x4" else 1))
    )


# --------------------------------------------------------------------------- scales


def f16_exact_scales():
    """Positive scales that float16 holds exactly (normal and subnormal halves, 65504 included)."""
    return st.floats(min_value=F16_TINY, max_value=F16_MAX, width=16, allow_subnormal=True)


def f32_scales(min_value: float = F32_TINY, max_value: float = F32_MAX):
    """Positive float32 scales: arbitrary ones plus tiny, subnormal, huge and boundary values."""
    edges = [
        v
        for v in (F32_TINY, 1e-38, 2.0**-126, 1e-30, 1e-5, 0.1, 1.0, 1.0 / 3.0, 1e30, F32_MAX)
        if min_value <= v <= max_value
    ]
    return st.one_of(
        st.floats(
            min_value=float(np.float32(min_value)),
            max_value=float(np.float32(max_value)),
            width=32,
            allow_subnormal=True,
        ),
        st.sampled_from(edges).map(lambda v: float(np.float32(v))),
    )


def tq_scales():
    """Positive block scales that survive float16 storage (not inf, not 0) but often are not exact in it."""
    boundary = [3e-8, 2.0**-24, 1.5 * 2.0**-24, 6.1e-5, 2.0**-14, 0.1, 1.0 / 3.0, 1000.1, F16_MAX, 65519.99]
    return st.one_of(
        f16_exact_scales(),
        st.floats(min_value=float(np.float32(3e-8)), max_value=float(np.float32(65519.99)), width=32),
        st.sampled_from(boundary).map(lambda v: float(np.float32(v))),
    )


# --------------------------------------------------------------------------- ternary matrices


def _codes(rng: np.random.Generator, shape: tuple[int, int], density: float) -> np.ndarray:
    nonzero = rng.random(shape) < density
    signs = np.where(rng.random(shape) < 0.5, -1, 1)
    return (nonzero * signs).astype(np.int8)


densities = st.sampled_from([0.0, 0.05, 0.5, 0.69, 1.0])


def _signed_zeros(rng: np.random.Generator, w: np.ndarray, neg_zero: bool) -> np.ndarray:
    if neg_zero:
        w = w.copy()
        w[(w == 0) & (rng.random(w.shape) < 0.5)] = np.float32(-0.0)
    return w


@st.composite
def ternary_codes(draw, multiple: int = 128, max_rows: int = 12, max_cols: int = 1024, rows_multiple: int = 1):
    """int8 codes in {-1, 0, 1} of a drawn shape."""
    shape = draw(shapes(multiple, max_rows, max_cols, rows_multiple))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    return _codes(rng, shape, draw(densities))


@st.composite
def ternary_tensors(
    draw, multiple: int = 128, scales=None, max_rows: int = 12, max_cols: int = 1024, rows_multiple: int = 1
):
    """(w, codes, scale): float32 w = codes * scale with one scale per tensor (I2_S input)."""
    codes = draw(ternary_codes(multiple, max_rows, max_cols, rows_multiple))
    scale = draw(scales if scales is not None else st.one_of(f16_exact_scales(), f32_scales()))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    w = _signed_zeros(rng, codes.astype(np.float32) * np.float32(scale), draw(st.booleans()))
    return w, codes, float(np.float32(scale))


@st.composite
def tq_ternary_tensors(draw, max_rows: int = 12, max_cols: int = 1024):
    """(w, codes, block_scales): float32 w ternary per 256-value block (TQ input).

    Modes: one scale for the whole tensor, or one per block; blocks may be all zero (d = 0), zeros
    may be negative, scales often are not float16-exact (TQ stores them rounded).
    """
    rows, cols = draw(shapes(256, max_rows, max_cols))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    codes = _codes(rng, (rows, cols), draw(densities))
    nblocks = rows * cols // 256
    if draw(st.booleans()):
        scales = np.full(nblocks, draw(tq_scales()), dtype=np.float32)
    else:
        scales = np.array(draw(st.lists(tq_scales(), min_size=nblocks, max_size=nblocks)), dtype=np.float32)
    blocks = codes.reshape(nblocks, 256)
    zero_blocks = rng.random(nblocks) < draw(st.sampled_from([0.0, 0.25]))
    blocks[zero_blocks] = 0
    w = (blocks.astype(np.float32) * scales[:, None]).reshape(rows, cols)
    w = _signed_zeros(rng, w, draw(st.booleans()))
    return w, blocks.reshape(rows, cols).copy(), scales


# --------------------------------------------------------------------------- latent matrices


def _exact_ties(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Values +-0.5 g and +-1.5 g in equal numbers, so gamma = g exactly and w / gamma hits 0.5."""
    n = shape[0] * shape[1]
    # g with a spare low mantissa bit, so 1.5 g is exact; any power of two scaling keeps that.
    g = np.float32(rng.integers(1, 2**22) * 2) * np.float32(2.0 ** int(rng.integers(-30, -10)))
    mags = np.where(np.arange(n) % 2 == 0, np.float32(0.5) * g, np.float32(1.5) * g).astype(np.float32)
    signs = np.where(rng.random(n) < 0.5, -1, 1).astype(np.float32)
    return rng.permutation(mags * signs).reshape(shape)


def _latent(rng: np.random.Generator, shape: tuple[int, int], mode: str) -> np.ndarray:
    if mode == "normal":
        return (rng.standard_normal(shape) * 10.0 ** rng.uniform(-6, 6)).astype(np.float32)
    if mode == "zeros":
        return np.zeros(shape, np.float32)
    if mode == "ties":
        return _exact_ties(rng, shape)
    if mode == "near_ties":
        w = _exact_ties(rng, shape)
        nudge = rng.integers(-1, 2, shape)
        w = np.where(nudge > 0, np.nextafter(w, np.float32(np.inf)), w)
        return np.where(nudge < 0, np.nextafter(w, np.float32(-np.inf)), w).astype(np.float32)
    if mode == "subnormal":
        bits = rng.integers(0, 1 << 23, shape, dtype=np.uint32) | (rng.integers(0, 2, shape, dtype=np.uint32) << 31)
        return bits.view(np.float32)
    if mode == "mixed":  # magnitudes 1e-30 .. 1e30 side by side: the summation order matters
        mags = 10.0 ** rng.uniform(-30, 30, shape)
        return (mags * rng.choice([-1.0, 1.0], shape)).astype(np.float32)
    if mode == "sparse":
        w = (rng.standard_normal(shape)).astype(np.float32)
        return np.where(rng.random(shape) < 0.9, np.float32(0), w).astype(np.float32)
    if mode == "bits":  # arbitrary finite float32 bit patterns, |x| <= 1e30
        bits = rng.integers(0, 1 << 32, shape, dtype=np.uint64).astype(np.uint32)
        w = bits.view(np.float32)
        return np.where(np.isfinite(w) & (np.abs(w) <= 1e30), w, np.float32(1.0)).astype(np.float32)
    raise AssertionError(mode)


LATENT_MODES = ("normal", "zeros", "ties", "near_ties", "subnormal", "mixed", "sparse", "bits")


@st.composite
def latent_matrices(draw, multiple: int = 1, max_rows: int = 12, max_cols: int = 1024):
    """Float32 latent (unquantized) weights; cols a multiple of `multiple` (1: any width)."""
    if draw(st.integers(0, 4)) == 0:  # element by element, small: hypothesis picks the floats
        rows = draw(st.integers(1, 3))
        cols = draw(st.integers(1, 4)) * max(multiple, 1) if multiple > 1 else draw(st.integers(1, 300))
        elements = st.floats(
            min_value=-LATENT_MAX, max_value=LATENT_MAX, width=32, allow_nan=False, allow_infinity=False
        )
        return draw(hnp.arrays(np.float32, (rows, cols), elements=elements))
    if multiple > 1:
        rows, cols = draw(shapes(multiple, max_rows, max_cols))
    else:
        rows, cols = draw(st.integers(1, max_rows)), draw(st.integers(1, max_cols))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    mode = draw(st.sampled_from(LATENT_MODES))
    if mode == "ties" and (rows * cols) % 2:
        cols += 1 if multiple <= 1 else 0
        if (rows * cols) % 2:
            mode = "normal"
    return _latent(rng, (rows, cols), mode)


def random_latent(seed: int, shape: tuple[int, int], mode: str = "normal") -> np.ndarray:
    """A deterministic latent matrix for plain (non-hypothesis) tests."""
    return _latent(np.random.default_rng(seed), shape, mode)


def bits32(x: np.ndarray) -> np.ndarray:
    """Bit patterns of a float32 array: compares -0.0 and NaN payloads, which == does not."""
    return np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
