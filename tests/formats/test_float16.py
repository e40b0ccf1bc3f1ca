"""The C++ float16 conversions (bitk._codecs.float_to_half / half_to_float) == numpy's astype.

TQ2_0/TQ1_0 store each block scale as float16, so the C++ codecs round it themselves; these must
be IEEE binary16 round-to-nearest-even exactly as numpy (and gguf-py, and ggml) do it. NaN payloads
are compared only for quiet NaNs: numpy may keep a signalling NaN signalling where the C++ quiets
it (and Python floats quiet it on the way in); no codec ever stores a NaN scale.
"""

from __future__ import annotations

import numpy as np
import pytest

from bitk import _codecs as cpp

ALL_HALVES = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)


def cpp_to_half(values: np.ndarray) -> np.ndarray:
    """float32 values -> uint16 half bits via the C++ conversion, one call per value."""
    return np.array([cpp.float_to_half(float(v)) for v in values.astype(np.float32)], np.uint16)


def numpy_to_half(values: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return values.astype(np.float32).astype(np.float16).view(np.uint16)


def assert_same_halves(values: np.ndarray) -> None:
    values = values.astype(np.float32)
    got, want = cpp_to_half(values), numpy_to_half(values)
    nan = np.isnan(values)
    bad = ~nan & (got != want)
    assert not bad.any(), [(float(v), hex(g), hex(w)) for v, g, w in zip(values[bad], got[bad], want[bad])][:10]
    # NaN in: NaN out, same sign; a quiet NaN keeps the top payload bits.
    half_nan = ((got & 0x7C00) == 0x7C00) & ((got & 0x03FF) != 0)
    assert half_nan[nan].all()
    assert np.array_equal(got[nan] >> 15, want[nan] >> 15)
    quiet = nan & ((values.view(np.uint32) & 0x00400000) != 0)
    np.testing.assert_array_equal(got[quiet], want[quiet])


def test_half_to_float_all_bit_patterns():
    got = np.array([cpp.half_to_float(int(h)) for h in ALL_HALVES], np.float64).astype(np.float32)
    want = ALL_HALVES.view(np.float16).astype(np.float32)
    nan = np.isnan(want)
    assert nan.sum() == 2 * 1023 * 2 // 2  # 2046 NaN halves: sign x 1023 non-zero mantissas
    np.testing.assert_array_equal(got.view(np.uint32)[~nan], want.view(np.uint32)[~nan])
    assert np.isnan(got[nan]).all()
    assert np.array_equal(np.signbit(got[nan]), np.signbit(want[nan]))
    quiet = nan & ((ALL_HALVES & 0x0200) != 0)
    np.testing.assert_array_equal(got.view(np.uint32)[quiet], want.view(np.uint32)[quiet])


def test_round_trip_all_bit_patterns():
    floats = ALL_HALVES.view(np.float16).astype(np.float32)
    back = cpp_to_half(floats)
    nan = np.isnan(floats)
    np.testing.assert_array_equal(back[~nan], ALL_HALVES[~nan])  # every non-NaN half, -0 and +-inf included
    assert_same_halves(floats)


def _midpoints() -> np.ndarray:
    """Exact float32 midpoints between consecutive finite halves (ties), and one ulp either side."""
    pos = np.arange(0, 0x7C00, dtype=np.uint16)  # 0 .. 65504
    lo = pos.view(np.float16).astype(np.float64)
    hi = (pos + 1).view(np.float16).astype(np.float64)  # 0x7C00 is inf: the last "midpoint" is 65520
    hi[-1] = 65536.0
    mid = ((lo + hi) / 2).astype(np.float32)
    assert np.array_equal(mid.astype(np.float64), (lo + hi) / 2)  # exact in float32
    up = np.nextafter(mid, np.float32(np.inf))
    down = np.nextafter(mid, np.float32(0))
    out = np.concatenate([mid, up, down])
    return np.concatenate([out, -out])


def test_ties_round_to_even():
    values = _midpoints()
    assert_same_halves(values)
    # Spot checks by hand: 1 + 2^-11 is halfway between 1 and 1 + 2^-10 -> even (1.0, 0x3C00);
    # 1 + 3 * 2^-11 -> 1 + 2^-9 (0x3C02); 2^-25 -> 0; 3 * 2^-25 -> 2 * 2^-24 (0x0002).
    assert cpp.float_to_half(1 + 2.0**-11) == 0x3C00
    assert cpp.float_to_half(1 + 3 * 2.0**-11) == 0x3C02
    assert cpp.float_to_half(2.0**-25) == 0x0000
    assert cpp.float_to_half(-(2.0**-25)) == 0x8000
    assert cpp.float_to_half(3 * 2.0**-25) == 0x0002
    assert cpp.float_to_half(2047.0 / 2048 * 2.0**-14 + 2.0**-25) == 0x0400  # rounds up into the normals


def test_edges_of_the_range():
    f32 = np.float32
    values = np.array(
        [
            65504.0,
            65505.0,
            65519.0,
            np.nextafter(f32(65520), f32(0)),
            65520.0,
            np.nextafter(f32(65520), f32(1e9)),
            65536.0,
            1e5,
            3.4028235e38,
            np.inf,
            -np.inf,
            0.0,
            -0.0,
            2.0**-14,
            np.nextafter(f32(2.0**-14), f32(0)),
            2.0**-24,
            2.0**-25,
            np.nextafter(f32(2.0**-25), f32(1)),
            np.nextafter(f32(2.0**-25), f32(0)),
            1.5 * 2.0**-24,
            2.5 * 2.0**-24,
            1e-8,
            1e-30,
            1e-40,
            1.4e-45,
            np.nan,
            -np.nan,
        ],
        np.float32,
    )
    assert_same_halves(values)
    assert_same_halves(-values)
    assert cpp.float_to_half(65519.99) == 0x7BFF
    assert cpp.float_to_half(65520.0) == 0x7C00
    assert cpp.float_to_half(-65520.0) == 0xFC00


@pytest.mark.parametrize("seed", range(3))
def test_random_float32_bit_patterns(seed):
    rng = np.random.default_rng(seed)
    bits = rng.integers(0, 1 << 32, 40000, dtype=np.uint64).astype(np.uint32)
    assert_same_halves(bits.view(np.float32))
    # And values in float16's range, where rounding matters most (normal and subnormal halves).
    exps = rng.integers(-30, 17, 40000)
    mags = (rng.random(40000) + 1.0) * 2.0**exps
    assert_same_halves((mags * rng.choice([-1, 1], 40000)).astype(np.float32))
