"""TQ2_0 / TQ1_0 bytes == gguf-py's reference quantizers (gguf.quants), for both backends.

docs/formats.md names gguf.quants' TQ1_0/TQ2_0 `quantize_blocks` as the byte-exact oracle of what
upstream llama.cpp reads. On already-ternary input (one {-d, 0, +d} per 256-value block) bitk must
write exactly gguf's bytes, and read any well-formed bytes exactly as gguf does.
"""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType
from gguf import quants as gq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bitk.formats as fmt
from bitk_formats_testing import BACKENDS, TQ_TYPES, bits32, tq_ternary_tensors

EXAMPLES = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
GGML = {"TQ2_0": GGMLQuantizationType.TQ2_0, "TQ1_0": GGMLQuantizationType.TQ1_0}
BLOCK_BYTES = {"TQ2_0": 66, "TQ1_0": 54}


def gguf_quantize(w: np.ndarray, qtype: str) -> np.ndarray:
    return np.asarray(gq.quantize(w, GGML[qtype])).ravel()


def gguf_dequantize(data: np.ndarray, shape: tuple[int, int], qtype: str) -> np.ndarray:
    return np.asarray(gq.dequantize(data.reshape(shape[0], -1), GGML[qtype])).reshape(shape)


def check_parity(w: np.ndarray, qtype: str, backend: str) -> np.ndarray:
    """quantize == gguf bytes, dequantize == gguf's dequantize (bits); returns the dequantized weights."""
    with fmt.use_backend(backend):
        data = fmt.quantize(w, qtype)
        expected = gguf_quantize(w, qtype)
        assert data.dtype == np.uint8 and data.shape == expected.shape
        np.testing.assert_array_equal(data, expected)
        out = fmt.dequantize(data, w.shape, qtype)
    assert out.dtype == np.float32 and out.shape == w.shape
    np.testing.assert_array_equal(bits32(out), bits32(gguf_dequantize(data, w.shape, qtype)))
    return out


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("qtype", TQ_TYPES)
@EXAMPLES
@given(case=tq_ternary_tensors())
def test_quantize_and_dequantize_match_gguf(backend, qtype, case):
    w, codes, scales = case
    out = check_parity(w, qtype, backend)
    # What TQ stores: codes times the block scale rounded to float16.
    d16 = scales.astype(np.float16).astype(np.float32)
    expected = (codes.reshape(-1, 256).astype(np.float32) * d16[:, None]).reshape(w.shape)
    assert np.array_equal(out, expected)
    exact = (d16 == scales)[:, None] | (codes.reshape(-1, 256) == 0).all(axis=1, keepdims=True)
    roundtrip = (out.reshape(-1, 256) == w.reshape(-1, 256)).all(axis=1, keepdims=True)
    assert np.all(roundtrip[exact]), "float16-exact scales must round-trip exactly"


def _block(codes_fn, scale: float) -> np.ndarray:
    return (np.array([codes_fn(i) for i in range(256)], np.float32) * np.float32(scale)).reshape(1, 256)


def _named_cases():
    rng = np.random.default_rng(5)
    dense = rng.integers(-1, 2, (4, 512)).astype(np.float32)
    per_block = (
        dense.reshape(-1, 256)
        * np.array([0.1, 3.0, 1e-7, 65504.0, 2.5e-5, 1.0 / 3.0, 7.0, 65519.99], np.float32)[:, None]
    )
    neg_zero = dense * np.float32(0.5)
    neg_zero[neg_zero == 0] = np.float32(-0.0)
    half_zero = dense.copy()
    half_zero[:, :256] = 0
    return {
        "all zero": np.zeros((2, 512), np.float32),
        "all negative zero": np.full((1, 256), -0.0, np.float32),
        "negative zeros": neg_zero,
        "zero blocks next to full ones": half_zero,
        "per-block scales, several not float16-exact": per_block.reshape(4, 512),
        "one scale 0.1 (not float16-exact)": dense * np.float32(0.1),
        "subnormal float16 scale": dense * np.float32(3 * 2.0**-24),
        "scale rounding to the largest half": dense * np.float32(65519.99),
        "all +d": _block(lambda i: 1, 2.0),
        "all -d": _block(lambda i: -1, 2.0),
        "i % 3 - 1": _block(lambda i: i % 3 - 1, 0.75),
        "single value": _block(lambda i: int(i == 200), 1.5),
    }


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("qtype", TQ_TYPES)
@pytest.mark.parametrize("name", list(_named_cases()))
def test_named_cases_match_gguf(backend, qtype, name):
    w = _named_cases()[name]
    out = check_parity(w, qtype, backend)
    d = np.abs(w.reshape(-1, 256)).max(axis=1)
    if np.all(d.astype(np.float16).astype(np.float32) == d):
        assert np.array_equal(out, w)  # == ignores the sign of zero: stored codes have none


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("qtype", TQ_TYPES)
def test_gguf_output_is_not_trivially_equal(backend, qtype):
    # Sensitivity: a different scale or one flipped code changes gguf's bytes, so equality means something.
    w = _named_cases()["i % 3 - 1"]
    with fmt.use_backend(backend):
        data = fmt.quantize(w, qtype)
    other = w.copy()
    other[0, 17] = -other[0, 17] if other[0, 17] else np.float32(0.75)
    assert not np.array_equal(data, gguf_quantize(other, qtype))
    assert not np.array_equal(data, gguf_quantize(w * np.float32(2), qtype))


_NO_CODE3 = np.array([b for b in range(256) if all((b >> s) & 3 != 3 for s in (0, 2, 4, 6))], np.uint8)


@st.composite
def well_formed_tq_bytes(draw, qtype: str):
    """Bytes gguf can read: finite float16 scales (any sign), TQ2_0 codes without 3, TQ1_0 any bytes."""
    rows, cols = draw(st.integers(1, 6)), 256 * draw(st.integers(1, 3))
    nblocks = rows * cols // 256
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    nbytes = BLOCK_BYTES[qtype]
    if qtype == "TQ2_0":
        data = rng.choice(_NO_CODE3, (nblocks, nbytes))
    else:  # includes bytes no quantizer writes (not ceil(t * 256 / 243)): readers must still agree
        data = rng.integers(0, 256, (nblocks, nbytes)).astype(np.uint8)
    halves = draw(
        st.lists(st.floats(width=16, allow_nan=False, allow_infinity=False), min_size=nblocks, max_size=nblocks)
    )
    data[:, -2:] = np.array(halves, "<f2").view(np.uint8).reshape(nblocks, 2)
    return (rows, cols), data.reshape(-1)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("qtype", TQ_TYPES)
@EXAMPLES
@given(data=st.data())
def test_dequantize_matches_gguf_on_well_formed_bytes(backend, qtype, data):
    shape, raw = data.draw(well_formed_tq_bytes(qtype))
    with fmt.use_backend(backend):
        out = fmt.dequantize(raw, shape, qtype)
    np.testing.assert_array_equal(bits32(out), bits32(gguf_dequantize(raw, shape, qtype)))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("qtype", TQ_TYPES)
def test_sizes_match_gguf(backend, qtype):
    from gguf.constants import GGML_QUANT_SIZES

    block, type_size = GGML_QUANT_SIZES[GGML[qtype]]
    assert (block, type_size) == (256, BLOCK_BYTES[qtype])
    assert fmt.nbytes(qtype, 3, 768) == 3 * 3 * type_size
    with fmt.use_backend(backend):
        assert fmt.quantize(np.zeros((3, 768), np.float32), qtype).size == 9 * type_size
