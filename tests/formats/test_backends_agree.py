"""The C++ codecs (bitk._codecs) == the numpy reference (bitk.formats.reference), byte for byte.

Every function of both modules is run on the same inputs: results must be identical bits, and
inputs one backend rejects the other must reject too, with the same facts in the message (which
check failed, and where). The torch reference (bitk.numerics) must give the same absmean codes and
scale as bitk.formats.ternarize, for float32, float16 and bfloat16 input. Thread counts must not
change a single byte.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bitk.formats as fmt
import bitk.numerics as numerics
from bitk import _codecs as cpp  # no skip: a missing build must fail this module
from bitk.formats import reference as ref
from bitk_formats_testing import (
    I2S_LAYOUTS,
    bits32,
    f32_scales,
    i2s_layout_shapes,
    latent_matrices,
    random_latent,
    ternary_codes,
    ternary_tensors,
    tq_ternary_tensors,
)

# No deadline and no too_slow check: outcomes must not depend on the machine's speed.
EXAMPLES = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FEW = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MANY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --------------------------------------------------------------------------- helpers

_PHRASES = (
    "NaN or Inf",
    "not ternarized",
    "invalid code 3",
    "scale must be finite",
    "non-finite block scale",
    "not representable as float16",
    "codes must be in",
    "must be >= 0",
)
_FACTS = (
    r"first at (?:value )?\((\d+), (\d+)\)",
    r"(\d+) values are neither",
    r"\(block (\d+)\)",
    r"in block (\d+)",
)


def _error_facts(msg: str, with_position: bool = True) -> tuple:
    """The checkable content of an error message: which check failed and where (not the float repr)."""
    phrase = next((p for p in _PHRASES if p in msg), None)
    assert phrase is not None, f"error message names no known problem: {msg}"
    facts = [re.findall(p, msg) for p in _FACTS]
    return (phrase, *facts) if with_position else (phrase,)


def _outcome(fn, *args):
    try:
        return "ok", fn(*args)
    except ValueError as exc:
        return "error", str(exc)


def _same(a, b) -> None:
    """Same type, dtype, shape and bits (floats compared as bit patterns: -0.0 and NaN count)."""
    if isinstance(a, tuple):
        assert isinstance(b, tuple) and len(a) == len(b)
        for x, y in zip(a, b):
            _same(x, y)
    elif isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray)
        assert a.dtype == b.dtype and a.shape == b.shape
        if a.dtype == np.float32:
            np.testing.assert_array_equal(bits32(a), bits32(b))
        else:
            np.testing.assert_array_equal(a, b)
    else:
        assert isinstance(a, float) and isinstance(b, float)
        assert a.hex() == b.hex() or (np.isnan(a) and np.isnan(b)), (a, b)


def assert_backends_agree(name: str, *args, with_position: bool = True):
    """cpp.<name>(*args) and reference.<name>(*args): same result, or both ValueError with the same facts."""
    c = _outcome(getattr(cpp, name), *args)
    r = _outcome(getattr(ref, name), *args)
    assert c[0] == r[0], f"{name}: cpp {c[0]} vs numpy {r[0]}: {c[1] if c[0] == 'error' else r[1]}"
    if c[0] == "ok":
        _same(c[1], r[1])
    else:
        assert _error_facts(c[1], with_position) == _error_facts(r[1], with_position), (c[1], r[1])
    return c


# --------------------------------------------------------------------------- the build


def test_cpp_backend_is_built_and_default():
    assert "cpp" in fmt.available_backends()
    assert fmt.available_backends() == ("cpp", "numpy")
    env = os.environ.get("BITK_FORMATS_BACKEND", "").strip().lower()
    assert fmt.backend() == (env if env in ("cpp", "numpy") else "cpp")


@pytest.mark.parametrize(
    "env, expected",
    [(None, "cpp"), ("", "cpp"), ("numpy", "numpy"), ("cpp", "cpp"), (" NumPy ", "numpy"), ("bogus", "cpp")],
)
def test_default_backend_from_environment(env, expected):
    environ = {k: v for k, v in os.environ.items() if k != "BITK_FORMATS_BACKEND"}
    if env is not None:
        environ["BITK_FORMATS_BACKEND"] = env
    out = subprocess.run(
        [sys.executable, "-c", "import bitk.formats as f; print(f.backend(), ','.join(f.available_backends()))"],
        env=environ,
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.split() == [expected, "cpp,numpy"]
    if env == "bogus":  # an unknown name is ignored, loudly
        assert "BITK_FORMATS_BACKEND='bogus' is not a formats backend" in out.stderr


def test_both_modules_have_the_same_functions():
    names = [
        "abs_sum",
        "ternarize",
        "ternarize_bf16",
        "pack_i2s",
        "unpack_i2s",
        "quantize_i2s",
        "dequantize_i2s",
        "quantize_tq2_0",
        "dequantize_tq2_0",
        "quantize_tq1_0",
        "dequantize_tq1_0",
    ]
    for name in names:
        assert callable(getattr(cpp, name)) and callable(getattr(ref, name)), name


# --------------------------------------------------------------------------- abs_sum and ternarize


def _torch_abs_sum(w: np.ndarray) -> float:
    return float(numerics.abs_sum(torch.from_numpy(w)).item())


@EXAMPLES
@given(latent_matrices())
def test_abs_sum_agrees(w):
    s = ref.abs_sum(w)
    _same(cpp.abs_sum(w), s)
    _same(_torch_abs_sum(w), s)


@pytest.mark.parametrize("n", [65536, 65537, 3 * 65536 + 16, 5 * 65536 - 1, 1 << 20])
def test_abs_sum_agrees_over_several_chunks(n):
    w = random_latent(n, (1, n), "mixed")  # magnitudes 1e-30..1e30: a different order gives other bits
    s = ref.abs_sum(w)
    _same(cpp.abs_sum(w), s)
    _same(_torch_abs_sum(w), s)


def _canonical_cases():
    """Inputs whose sum depends on the pairing, with the value the documented order gives.

    1 + 2^-53 rounds (to even) back to 1, but 2^-53 + 2^-53 = 2^-52 survives: so the result tells
    which values were added first. The order (reference.abs_sum): rows of 16 lanes paired
    adjacently, then the 16 lanes paired adjacently, then 65536-value chunk totals paired adjacently.
    """
    t = 2.0**-53
    cases = []
    # Lanes of one row: ((x0 + x1) + (x2 + x3)).
    cases.append(("lanes (1,t),(t,0)", {0: 1.0, 1: t, 2: t}, 16, 1.0))
    cases.append(("lanes (1,0),(t,t)", {0: 1.0, 2: t, 3: t}, 16, 1.0 + 2 * t))
    # Rows within lane 0: rows 0..3 hold x0, x16, x32, x48.
    cases.append(("rows (1,t),(t,0)", {0: 1.0, 16: t, 32: t}, 64, 1.0))
    cases.append(("rows (1,0),(t,t)", {0: 1.0, 32: t, 48: t}, 64, 1.0 + 2 * t))
    # A short input pads to a power of two of rows: 3 rows pad to 4, so row 2 pairs with zeros.
    cases.append(("3 rows padded", {0: 1.0, 16: t, 32: t}, 48, 1.0))
    # Chunk totals: 4 chunks of 65536 values, paired (c0 + c1) + (c2 + c3).
    c = 65536
    cases.append(("chunks (1,t),(t,0)", {0: 1.0, c: t, 2 * c: t}, 4 * c, 1.0))
    cases.append(("chunks (1,0),(t,t)", {0: 1.0, 2 * c: t, 3 * c: t}, 4 * c, 1.0 + 2 * t))
    # 3 chunks pad to 4: (c0 + c1) + (c2 + 0).
    cases.append(("3 chunks padded", {0: 1.0, 2 * c: t, 2 * c + 16: t}, 3 * c, 1.0 + 2 * t))
    return cases


@pytest.mark.parametrize("name, values, n, expected", _canonical_cases(), ids=lambda v: v if isinstance(v, str) else "")
def test_abs_sum_follows_the_documented_order(name, values, n, expected):
    w = np.zeros((1, n), np.float32)
    for i, v in values.items():
        w[0, i] = -v if i % 3 else v  # signs do not matter: it sums |w|
    for impl in (ref.abs_sum, cpp.abs_sum, _torch_abs_sum):
        assert impl(w) == expected, (name, impl)


def test_abs_sum_order_is_not_the_naive_one():
    # Sensitivity of the agreement tests above: a left-to-right sum of the same input differs.
    t = 2.0**-53
    w = np.zeros((1, 64), np.float32)
    w[0, [0, 32, 48]] = [1.0, t, t]
    naive = 0.0
    for v in w.reshape(-1).astype(np.float64):
        naive += v
    assert naive == 1.0
    assert ref.abs_sum(w) == cpp.abs_sum(w) == 1.0 + 2 * t


@EXAMPLES
@given(latent_matrices())
def test_ternarize_agrees(w):
    c = assert_backends_agree("ternarize", w)
    codes, scale = c[1]
    assert codes.dtype == np.int8 and codes.shape == w.shape
    assert set(np.unique(codes)) <= {-1, 0, 1}
    assert scale == float(np.float32(scale)) and scale >= float(np.float32(1e-5))


def _bf16_bits(w: np.ndarray) -> np.ndarray:
    """The bfloat16 bits of w (truncated: any bit pattern is a valid input)."""
    return (np.ascontiguousarray(w, np.float32).view(np.uint32) >> 16).astype(np.uint16)


@EXAMPLES
@given(latent_matrices())
def test_ternarize_bf16_agrees_and_equals_ternarize_of_the_widened_weights(w):
    bits = _bf16_bits(w)
    c = assert_backends_agree("ternarize_bf16", bits)
    widened = (bits.astype(np.uint32) << 16).view(np.float32)
    codes, scale = ref.ternarize(widened)
    assert np.array_equal(c[1][0], codes) and c[1][1] == scale
    assert fmt.ternarize(widened)[1] == scale


@FEW
@given(latent_matrices(multiple=1, max_rows=4, max_cols=300), st.data())
def test_ternarize_bf16_rejects_non_finite_in_both(w, data):
    bits = _bf16_bits(w)
    k = data.draw(st.integers(0, bits.size - 1))
    bits.reshape(-1)[k] = data.draw(st.sampled_from([0x7FC0, 0x7F80, 0xFF80]))  # NaN, +Inf, -Inf
    c = assert_backends_agree("ternarize_bf16", bits)
    row, col = (int(i) for i in np.unravel_index(k, bits.shape))
    assert c[0] == "error" and f"(first at ({row}, {col}))" in c[1]


def test_ternarize_bf16_takes_uint16_matrices_only():
    with pytest.raises(ValueError, match="expected a uint16 numpy array of bfloat16 bits; got float32"):
        fmt.ternarize_bf16(np.ones((2, 4), np.float32))
    with pytest.raises(ValueError, match="2-D"):
        fmt.ternarize_bf16(np.ones(4, np.uint16))


def test_ternarize_ties_round_to_even_in_both_backends():
    # sum|w| = 8 per 8 values, so gamma = 1: w / gamma is exactly +-0.5 (-> 0, half to even) and
    # +-1.5 (-> +-2, clamped to +-1).
    w = np.tile(np.array([0.5, -0.5, 1.5, -1.5, 1.0, -1.0, 0.0, 2.0], np.float32), (3, 16))
    for impl in (ref, cpp):
        codes, scale = impl.ternarize(w)
        assert scale == 1.0
        assert codes[0, :8].tolist() == [0, 0, 1, -1, 1, -1, 0, 1]


@FEW
@given(latent_matrices(multiple=1, max_rows=4, max_cols=300), st.data())
def test_ternarize_rejects_non_finite_in_both(w, data):
    w = w.copy()
    k = data.draw(st.integers(0, w.size - 1))
    w.reshape(-1)[k] = data.draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    c = assert_backends_agree("ternarize", w)  # same message facts: the first position included
    assert c[0] == "error" and "NaN or Inf" in c[1]
    row, col = (int(i) for i in np.unravel_index(k, w.shape))
    assert f"(first at ({row}, {col}))" in c[1]


def test_ternarize_non_finite_position_matches_reference():
    # The first C++ build reported (0, flat index) here (ternarize got only n, not the row length).
    w = np.ones((4, 256), np.float32)
    w[1, 44] = np.nan
    with pytest.raises(ValueError, match=re.escape("(first at (1, 44))")):
        ref.ternarize(w)
    with pytest.raises(ValueError, match=re.escape("(first at (1, 44))")):
        cpp.ternarize(w)


# --------------------------------------------------------------------------- ternarize == torch reference


def _torch_from_numpy(w: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    return torch.from_numpy(w).to(dtype)


def _fits(w: np.ndarray, dtype: torch.dtype) -> np.ndarray:
    """Keep values inside the dtype's finite range (float16 tops out at 65504)."""
    if dtype == torch.float16:
        return np.clip(w, -60000, 60000).astype(np.float32)
    return w


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@EXAMPLES
@given(w=latent_matrices())
def test_torch_reference_equals_ternarize(dtype, w):
    wt = _torch_from_numpy(_fits(w, dtype), dtype)
    t_codes, t_gamma = numerics.quantize_weights(wt)
    assert t_gamma.dtype == torch.float32
    for name in ("cpp", "numpy"):
        with fmt.use_backend(name):
            codes, scale = fmt.ternarize(wt)
        assert isinstance(codes, torch.Tensor) and codes.dtype == torch.int8 and codes.device == wt.device
        assert torch.equal(codes, t_codes), name
        assert scale == t_gamma.item(), (name, scale, t_gamma.item())


def _numpy_half_inputs():
    # numpy has no bfloat16 of its own: ml_dtypes (in the test extras) provides the dtype users have.
    return [
        pytest.param(np.float16, torch.float16, id="numpy-float16"),
        pytest.param(ml_dtypes.bfloat16, torch.bfloat16, id="numpy-bfloat16"),
    ]


@pytest.mark.parametrize("np_dtype, torch_dtype", _numpy_half_inputs())
@FEW
@given(w=latent_matrices())
def test_numpy_half_inputs_equal_torch_reference(np_dtype, torch_dtype, w):
    w = _fits(w, torch_dtype)
    wh = w.astype(np_dtype)
    # The torch tensor of the same bits (torch has no numpy bfloat16 interop).
    wt = torch.from_numpy(wh.view(np.int16).copy()).view(torch_dtype)
    assert torch.equal(wt.float(), torch.from_numpy(wh.astype(np.float32)))
    t_codes, t_gamma = numerics.quantize_weights(wt)
    for name in ("cpp", "numpy"):
        with fmt.use_backend(name):
            codes, scale = fmt.ternarize(wh)
        assert isinstance(codes, np.ndarray)
        np.testing.assert_array_equal(codes, t_codes.numpy())
        assert scale == t_gamma.item()


# --------------------------------------------------------------------------- I2_S


@st.composite
def _i2s_cases(draw):
    layout = draw(st.sampled_from(I2S_LAYOUTS))
    w, codes, scale = draw(ternary_tensors(rows_multiple=4 if layout == "x86-1x4" else 1))
    return layout, w, codes, scale


@EXAMPLES
@given(_i2s_cases())
def test_quantize_i2s_agrees(case):
    layout, w, codes, scale = case
    kind, data = assert_backends_agree("quantize_i2s", w, layout)
    assert kind == "ok"
    assert data.dtype == np.uint8 and data.size == w.size // 4 + 32
    if codes.any():  # quantize == pack_i2s of the codes with the tensor's scale
        _same(data, cpp.pack_i2s(codes, scale, layout))
    assert_backends_agree("dequantize_i2s", data, *w.shape, layout)
    assert_backends_agree("unpack_i2s", data, *w.shape, layout)


@EXAMPLES
@given(
    st.sampled_from(I2S_LAYOUTS),
    ternary_codes(rows_multiple=4),
    st.one_of(st.sampled_from([0.0, -0.0]), f32_scales()),
)
def test_pack_i2s_agrees(layout, codes, scale):
    kind, data = assert_backends_agree("pack_i2s", codes, scale, layout)
    assert kind == "ok"
    back = assert_backends_agree("unpack_i2s", data, *codes.shape, layout)
    np.testing.assert_array_equal(back[1][0], codes)


@EXAMPLES
@given(latent_matrices(multiple=128), st.sampled_from(["x86", "arm"]))
def test_quantize_i2s_agrees_on_latent_input(w, layout):
    # Mostly not ternary: both must reject, naming the same count and first position.
    kind, _ = assert_backends_agree("quantize_i2s", w, layout)
    if kind == "ok":
        assert len(np.unique(np.abs(w[w != 0]))) <= 1


_VALID_I2S_BYTES = np.array([b for b in range(256) if all((b >> s) & 3 != 3 for s in (0, 2, 4, 6))], np.uint8)
_SPECIAL_F32 = [np.nan, -np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-45, -1e-45, 1e-40, 3.4028235e38, -1.5, 0.125]


@st.composite
def _random_i2s_bytes(draw):
    layout, (rows, cols) = draw(i2s_layout_shapes(max_rows=8, max_cols=512))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    n = rows * cols
    data = rng.choice(_VALID_I2S_BYTES, n // 4 + 32)
    code3 = draw(st.sampled_from([0, 0, 1, 3]))  # how many bytes get code 3 somewhere
    for i in rng.choice(n // 4, code3, replace=False):
        data[i] |= np.uint8(3 << int(2 * rng.integers(0, 4)))
    tail = draw(
        st.one_of(
            st.sampled_from(_SPECIAL_F32).map(lambda v: np.array([v], "<f4").view(np.uint8)),
            st.binary(min_size=4, max_size=4).map(lambda b: np.frombuffer(b, np.uint8)),
        )
    )
    data[n // 4 : n // 4 + 4] = tail
    data[n // 4 + 4 :] = rng.integers(0, 256, 28)  # padding: never read
    return layout, rows, cols, data.astype(np.uint8)


@MANY
@given(_random_i2s_bytes())
def test_unpack_and_dequantize_i2s_agree_on_arbitrary_bytes(case):
    layout, rows, cols, data = case
    assert_backends_agree("unpack_i2s", data, rows, cols, layout)
    assert_backends_agree("dequantize_i2s", data, rows, cols, layout)


@FEW
@given(i2s_layout_shapes(max_rows=8, max_cols=512), st.integers(0, 2**32 - 1))
def test_unpack_i2s_agrees_on_fully_random_bytes(layout_shape, seed):
    layout, (rows, cols) = layout_shape
    data = np.random.default_rng(seed).integers(0, 256, rows * cols // 4 + 32).astype(np.uint8)
    assert_backends_agree("unpack_i2s", data, rows, cols, layout)
    assert_backends_agree("dequantize_i2s", data, rows, cols, layout)


# --------------------------------------------------------------------------- TQ2_0 / TQ1_0


@pytest.mark.parametrize("qtype", ["tq2_0", "tq1_0"])
@EXAMPLES
@given(case=tq_ternary_tensors())
def test_quantize_tq_agrees(qtype, case):
    w, _, _ = case
    kind, data = assert_backends_agree(f"quantize_{qtype}", w)
    assert kind == "ok"
    assert_backends_agree(f"dequantize_{qtype}", data, *w.shape)


@pytest.mark.parametrize("qtype", ["tq2_0", "tq1_0"])
@EXAMPLES
@given(w=latent_matrices(multiple=256))
def test_quantize_tq_agrees_on_latent_input(qtype, w):
    assert_backends_agree(f"quantize_{qtype}", w)


@pytest.mark.parametrize("qtype", ["tq2_0", "tq1_0"])
@FEW
@given(case=tq_ternary_tensors(max_rows=4, max_cols=512), scale=st.sampled_from([1e5, 65520.0, 1e-9, 2.0**-25, 1e30]))
def test_quantize_tq_agrees_on_unstorable_block_scale(qtype, case, scale):
    w = case[0].copy()
    blocks = w.reshape(-1, 256)
    blocks[-1] = np.float32(scale) * np.where(np.arange(256) % 3 == 0, 1, -1).astype(np.float32)
    kind, msg = assert_backends_agree(f"quantize_{qtype}", w)
    assert kind == "error" and "not representable as float16" in msg


# inf, -inf, NaNs, zeros, subnormals, the smallest normal, +-65504, +-1.
_SPECIAL_F16 = [
    0x7C00,
    0xFC00,
    0x7E00,
    0x7C01,
    0xFE00,
    0x0000,
    0x8000,
    0x0001,
    0x8001,
    0x03FF,
    0x0400,
    0x7BFF,
    0xFBFF,
    0x3C00,
    0xBC00,
]


@st.composite
def _random_tq_bytes(draw, block_bytes: int, valid_bytes: np.ndarray | None):
    rows, cols = draw(st.integers(1, 6)), 256 * draw(st.integers(1, 3))
    nblocks = rows * cols // 256
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if valid_bytes is None:
        data = rng.integers(0, 256, (nblocks, block_bytes)).astype(np.uint8)
    else:
        data = rng.choice(valid_bytes, (nblocks, block_bytes))
        for _ in range(draw(st.sampled_from([0, 0, 1, 2]))):  # code 3 somewhere
            block, byte = rng.integers(0, nblocks), rng.integers(0, block_bytes - 2)
            data[block, byte] |= np.uint8(3 << int(2 * rng.integers(0, 4)))
    half_bits = st.one_of(st.sampled_from(_SPECIAL_F16), st.integers(0, 0xFFFF))
    scales = draw(st.lists(half_bits, min_size=nblocks, max_size=nblocks))
    data[:, -2:] = np.array(scales, "<u2").view(np.uint8).reshape(nblocks, 2)
    return rows, cols, data.reshape(-1)


@MANY
@given(_random_tq_bytes(66, _VALID_I2S_BYTES))
def test_dequantize_tq2_0_agrees_on_arbitrary_bytes(case):
    rows, cols, data = case
    assert_backends_agree("dequantize_tq2_0", data, rows, cols)


@MANY
@given(_random_tq_bytes(54, None))
def test_dequantize_tq1_0_agrees_on_arbitrary_bytes(case):
    rows, cols, data = case
    kind, out = assert_backends_agree("dequantize_tq1_0", data, rows, cols)
    if kind == "ok":  # every byte decodes to trits: no code 3 exists in TQ1_0
        d = data.reshape(-1, 54)[:, 52:54].copy().view("<f2").astype(np.float32).reshape(-1, 1)
        vals = out.reshape(-1, 256)
        assert np.all((vals == 0) | (vals == d) | (vals == -d))


@FEW
@given(st.integers(1, 4), st.integers(1, 2), st.integers(0, 2**32 - 1))
def test_dequantize_tq2_0_agrees_on_fully_random_bytes(rows, k, seed):
    data = np.random.default_rng(seed).integers(0, 256, rows * k * 66).astype(np.uint8)
    assert_backends_agree("dequantize_tq2_0", data, rows, 256 * k)


# --------------------------------------------------------------------------- input forms


@pytest.mark.parametrize(
    "qtype, layout", [("I2_S", "x86"), ("I2_S", "arm"), ("I2_S", "x86-1x4"), ("TQ2_0", None), ("TQ1_0", None)]
)
def test_non_contiguous_and_torch_inputs_give_the_same_bytes(backend_name, qtype, layout):
    codes, scale = fmt.ternarize(random_latent(7, (8, 1024)))
    w = codes.astype(np.float32) * np.float32(scale)
    expected = fmt.quantize(w, qtype, layout)
    fortran = np.asfortranarray(w)
    strided = np.zeros((8, 2048), np.float32)
    strided[:, ::2] = w
    for variant in (
        fortran,
        strided[:, ::2],
        w.astype(">f4"),
        torch.from_numpy(w),
        torch.from_numpy(w.T.copy()).T,
        torch.from_numpy(w).to(torch.float16),
    ):
        data = fmt.quantize(variant, qtype, layout)
        if isinstance(variant, torch.Tensor) and variant.dtype == torch.float16:
            # float16 rounds the scale: compare with the quantization of the rounded weights.
            _same(data, fmt.quantize(variant.float().numpy(), qtype, layout))
        else:
            _same(data, expected)
    for form in (bytes(expected), expected.view(np.int8), torch.from_numpy(expected), expected.reshape(-1, 2)):
        _same(fmt.dequantize(form, w.shape, qtype, layout), fmt.dequantize(expected, w.shape, qtype, layout))


# --------------------------------------------------------------------------- thread count

_THREAD_SCRIPT = r"""
import hashlib, json, sys
import numpy as np
impl = sys.argv[1]
if impl == "cpp":
    from bitk import _codecs as M
else:
    from bitk.formats import reference as M

def h(a):
    if isinstance(a, tuple):
        return [h(x) for x in a]
    if isinstance(a, float):
        return a.hex()
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()

def err(fn, *args):
    try:
        fn(*args)
    except ValueError as e:
        return "error: " + str(e)
    return "no error"

rng = np.random.default_rng(1234)
w = (rng.standard_normal((1024, 1024)) * 0.02).astype(np.float32)
w[::7] *= np.float32(1e6)  # mixed magnitudes: another summation order gives other bits
out = {"abs_sum": h(M.abs_sum(w))}
codes, s = M.ternarize(w)
out["ternarize"] = h((codes, s))
q = codes.astype(np.float32) * np.float32(s)
for lay in ("x86", "arm", "x86-1x4"):
    d = M.quantize_i2s(q, lay)
    out["i2s " + lay] = [h(d), h(M.pack_i2s(codes, s, lay)), h(M.unpack_i2s(d, 1024, 1024, lay)),
                         h(M.dequantize_i2s(d, 1024, 1024, lay))]
scales = (2.0 ** rng.uniform(-20, 15, 4096)).astype(np.float32)
tq = (codes.reshape(-1, 256) * scales[:, None]).reshape(1024, 1024).astype(np.float32)
for name in ("tq2_0", "tq1_0"):
    d = getattr(M, "quantize_" + name)(tq)
    out[name] = [h(d), h(getattr(M, "dequantize_" + name)(d, 1024, 1024))]
# Errors found in several threads' ranges must name the first position, whoever finds it.
bad = q.copy()
bad[1000, 3] = np.float32(0.5) * np.float32(s)
bad[300, 9] = np.float32(0.25) * np.float32(s)
bad[700, 1] = 3 * s
out["err i2s"] = err(M.quantize_i2s, bad, "x86")
out["err tq"] = err(M.quantize_tq2_0, bad)
nan = w.copy(); nan[900, 5] = np.nan; nan[200, 7] = np.inf
out["err nan i2s"] = err(M.quantize_i2s, nan, "x86")
out["err nan tq"] = err(M.quantize_tq1_0, nan)
big = tq.copy(); big[1000, :256] = 1e5; big[100, 256:512] = 1e5
out["err f16"] = err(M.quantize_tq2_0, big)
d = M.quantize_i2s(q, "x86").copy(); d[200000] |= 0xC0; d[9000] |= 0x03
out["err code3 i2s"] = err(M.unpack_i2s, d, 1024, 1024, "x86")
d = M.quantize_tq2_0(tq).copy(); d[66 * 4000 + 5] |= 0x30; d[66 * 7 + 40] |= 0x0C
out["err code3 tq"] = err(M.dequantize_tq2_0, d, 1024, 1024)
d = M.quantize_tq2_0(tq).copy(); d[66 * 4000 + 65] = 0x7C; d[66 * 70 + 65] = 0xFF
out["err scale tq"] = err(M.dequantize_tq2_0, d, 1024, 1024)
print(json.dumps(out))
"""


def _run_thread_script(impl: str, threads: int | None) -> dict:
    env = dict(os.environ)
    if threads is not None:
        env["BITK_NUM_THREADS"] = str(threads)
    out = subprocess.run(
        [sys.executable, "-c", _THREAD_SCRIPT, impl], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout)


def test_thread_count_does_not_change_results():
    one = _run_thread_script("cpp", 1)
    for threads in (2, 3):
        assert _run_thread_script("cpp", threads) == one, f"BITK_NUM_THREADS={threads} differs from 1"
    assert all(v.startswith("error") for k, v in one.items() if k.startswith("err")), one
    reference = _run_thread_script("numpy", None)
    for key, value in reference.items():
        if key.startswith("err"):
            assert _error_facts(one[key]) == _error_facts(value), key
        else:
            assert one[key] == value, key
