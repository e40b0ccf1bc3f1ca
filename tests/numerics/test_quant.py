"""Tests of bitk.numerics.quant: hand-computed examples, numpy cross-checks, bitnet.cpp variant, STE."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from bitk.numerics import (
    fake_quantize_activations,
    fake_quantize_weights,
    quantize_activations,
    quantize_activations_bitnet_cpp,
    quantize_activations_q8k,
    quantize_weights,
    ste,
)

F32_EPS_1E5 = torch.tensor(1e-5, dtype=torch.float32)  # float32(1e-5), just below the double 1e-5


def _gen(seed):
    return torch.Generator().manual_seed(seed)


# --- weights -------------------------------------------------------------------------------------


def test_quantize_weights_hand_example():
    codes, gamma = quantize_weights(torch.tensor([[0.3, -0.9], [0.0, 1.8]]))
    assert gamma.dtype == torch.float32 and gamma.dim() == 0
    assert gamma == 0.75  # mean(|W|) = 3.0 / 4
    assert codes.dtype == torch.int8
    assert codes.tolist() == [[0, -1], [0, 1]]  # 0.4 -> 0, -1.2 -> -1, 2.4 -> clamp 1


def test_quantize_weights_ties_round_half_to_even():
    # sum|w| = 8 over 8 values: gamma = 1 exactly, so w / gamma is exact and 0.5 is a true tie.
    w = torch.tensor([0.5, -0.5, 1.5, -1.5, 1.0, -1.0, 0.0, 2.0])
    codes, gamma = quantize_weights(w)
    assert gamma == 1.0
    assert codes.tolist() == [0, 0, 1, -1, 1, -1, 0, 1]  # half away from zero would give 0.5 -> 1
    # gamma = 2: w / gamma = 0.5, 1.5, -0.5, -1.5.
    codes, gamma = quantize_weights(torch.tensor([1.0, 3.0, -1.0, -3.0]))
    assert gamma == 2.0
    assert codes.tolist() == [0, 1, 0, -1]


def test_quantize_weights_zero_and_tiny():
    codes, gamma = quantize_weights(torch.zeros(3, 4))
    assert torch.equal(gamma, F32_EPS_1E5)
    assert torch.equal(codes, torch.zeros(3, 4, dtype=torch.int8))
    # All |w| < 1e-5: gamma is clamped, then codes = round(w / 1e-5).
    codes, gamma = quantize_weights(torch.tensor([6e-6, -6e-6, 4e-6, 1e-7]))
    assert torch.equal(gamma, F32_EPS_1E5)
    assert codes.tolist() == [1, -1, 0, 0]


def test_quantize_weights_clamp_threshold_is_float32_1e5():
    below = torch.nextafter(F32_EPS_1E5, torch.tensor(0.0))
    above = torch.nextafter(F32_EPS_1E5, torch.tensor(1.0))
    assert torch.equal(quantize_weights(below.expand(4))[1], F32_EPS_1E5)
    assert torch.equal(quantize_weights(F32_EPS_1E5.expand(4))[1], F32_EPS_1E5)
    assert torch.equal(quantize_weights(above.expand(4))[1], above)  # above > double 1e-5: kept


def test_quantize_weights_float64_mean_rounded_once():
    # float32 accumulation of these would drift; the float64 mean rounded once does not.
    w = torch.full((1 << 20,), 0.1, dtype=torch.float32)
    w[::2] = 0.3
    _, gamma = quantize_weights(w)
    expected = np.float32((np.float64(np.float32(0.1)) + np.float64(np.float32(0.3))) / 2)
    assert gamma.item() == expected


@pytest.mark.parametrize("seed,shape,scale", [(0, (64, 48), 0.02), (1, (257,), 3.0), (2, (3, 5, 7), 1e-4)])
def test_quantize_weights_matches_numpy(seed, shape, scale):
    w = torch.randn(shape, generator=_gen(seed)) * scale
    codes, gamma = quantize_weights(w)
    wn = w.numpy()
    g32 = np.float32(np.abs(wn.astype(np.float64)).sum() / wn.size)  # the numpy/C++ definition
    g32 = max(g32, np.float32(1e-5))
    assert gamma.item() == g32
    np.testing.assert_array_equal(codes.numpy(), np.clip(np.rint(wn / g32), -1, 1).astype(np.int8))


def test_quantize_weights_float64_and_device():
    w = torch.randn(9, 4, generator=_gen(3), dtype=torch.float64)
    codes, gamma = quantize_weights(w)
    assert gamma.dtype == torch.float64 and gamma.device == w.device
    assert gamma.item() == w.abs().mean().item()
    assert torch.equal(codes, torch.round(w / gamma).clamp(-1, 1).to(torch.int8))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_quantize_weights_low_precision_equals_float32_upcast(dtype):
    w = (torch.randn(37, 29, generator=_gen(4)) * 0.05).to(dtype)
    codes, gamma = quantize_weights(w)
    codes32, gamma32 = quantize_weights(w.float())
    assert gamma.dtype == torch.float32
    assert torch.equal(gamma, gamma32) and torch.equal(codes, codes32)


def test_quantize_weights_rejects_bad_input():
    with pytest.raises(ValueError, match="floating point"):
        quantize_weights(torch.ones(3, dtype=torch.int32))
    with pytest.raises(ValueError, match="empty"):
        quantize_weights(torch.ones(0, 3))


# --- activations ---------------------------------------------------------------------------------


def test_quantize_activations_zero_row_and_shapes():
    x = torch.zeros(2, 3, 5)
    x[0, 1] = torch.tensor([1.0, -2.0, 0.5, 0.0, 0.25])
    xq, s = quantize_activations(x)
    assert xq.shape == (2, 3, 5) and xq.dtype == torch.int8
    assert s.shape == (2, 3, 1) and s.dtype == torch.float32
    zero_s = np.float32(127) / np.float32(1e-5)
    assert s[0, 0, 0].item() == zero_s and s[1, 2, 0].item() == zero_s
    assert xq[0, 0].abs().sum() == 0
    # Mixed signs: absmax 2 -> s = 63.5; 1.0 * 63.5 is a tie -> 64 (even), 0.5 * 63.5 = 31.75 -> 32.
    assert s[0, 1, 0].item() == 63.5
    assert xq[0, 1].tolist() == [64, -127, 32, 0, 16]


def test_quantize_activations_ties_half_to_even():
    # absmax 127 -> s = 1 exactly, so x * s = x: exact ties.
    xq, s = quantize_activations(torch.tensor([[127.0, 0.5, 1.5, 2.5, -0.5, -2.5, -3.5, 126.5]]))
    assert s.item() == 1.0
    assert xq.tolist() == [[127, 0, 2, 2, 0, -2, -4, 126]]
    # absmax 254 -> s = 0.5: 1 -> 0.5 -> 0, 3 -> 1.5 -> 2, 5 -> 2.5 -> 2.
    xq, s = quantize_activations(torch.tensor([[-254.0, 1.0, 3.0, 5.0]]))
    assert s.item() == 0.5
    assert xq.tolist() == [[-127, 0, 2, 2]]


def test_quantize_activations_absmax_maps_to_127():
    x = torch.randn(64, 100, generator=_gen(5)) * torch.exp(torch.randn(64, 1, generator=_gen(6)) * 4)
    xq, _ = quantize_activations(x)
    idx = x.abs().argmax(dim=-1, keepdim=True)
    assert torch.equal(xq.gather(-1, idx).abs(), torch.full((64, 1), 127, dtype=torch.int8))
    assert xq.min() >= -127  # -128 is only reachable through the clamp, never from |x| <= absmax


_finite_f32 = st.floats(width=32, allow_nan=False, allow_infinity=False)


@settings(max_examples=60, deadline=None)
@given(hnp.arrays(np.float32, hnp.array_shapes(min_dims=2, max_dims=2, max_side=9), elements=_finite_f32))
def test_quantize_activations_matches_numpy(xn):
    xq, s = quantize_activations(torch.from_numpy(xn))
    s_ref = np.float32(127) / np.maximum(np.abs(xn).max(axis=-1, keepdims=True), np.float32(1e-5))
    np.testing.assert_array_equal(s.numpy(), s_ref)
    np.testing.assert_array_equal(xq.numpy(), np.clip(np.rint(xn * s_ref), -128, 127).astype(np.int8))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_quantize_activations_low_precision_equals_float32_upcast(dtype):
    x = torch.randn(4, 7, 33, generator=_gen(7)).to(dtype)
    xq, s = quantize_activations(x)
    xq32, s32 = quantize_activations(x.float())
    assert s.dtype == torch.float32 and torch.equal(s, s32) and torch.equal(xq, xq32)


def test_quantize_activations_float64_stays_float64():
    x = torch.randn(3, 10, generator=_gen(8), dtype=torch.float64)
    xq, s = quantize_activations(x)
    assert s.dtype == torch.float64
    # numpy's 127.0 / array is the correctly rounded quotient (torch's `127.0 / t` is not).
    assert torch.equal(s, torch.from_numpy(127.0 / np.abs(x.numpy()).max(-1, keepdims=True)))
    assert torch.equal(xq, torch.round(x * s).to(torch.int8))


def test_quantize_activations_rejects_bad_input():
    with pytest.raises(ValueError):
        quantize_activations(torch.tensor(1.0))
    with pytest.raises(ValueError):
        quantize_activations(torch.ones(3, 0))
    with pytest.raises(ValueError):
        quantize_activations_bitnet_cpp(torch.ones(3, 4, dtype=torch.int8))


# --- bitnet.cpp variant --------------------------------------------------------------------------


def test_bitnet_cpp_variant_equals_training_variant_on_float32():
    # float32(127 / double(m)) is the correctly rounded float32 quotient (double rounding is
    # innocuous for division: 53 >= 2 * 24 + 2), and no float32 lies strictly between float32(1e-5)
    # and 1e-5, so on float32 input the two variants agree bit for bit, not merely within 1 ulp.
    g = _gen(9)
    x = torch.randn(256, 48, generator=g) * torch.exp(torch.randn(256, 1, generator=g) * 6)
    x[0] = 0.0
    x[1] = 3e-6
    x[2, 0] = F32_EPS_1E5
    xq, s = quantize_activations(x)
    xq_cpp, s_cpp = quantize_activations_bitnet_cpp(x)
    assert s_cpp.dtype == torch.float32 and s_cpp.shape == (256, 1)
    assert torch.equal(s, s_cpp) and torch.equal(xq, xq_cpp)


def test_bitnet_cpp_variant_every_mantissa():
    # Every float32 in [1, 2) as a one-element row: covers all mantissas of m (exponents only
    # shift the quotient, which stays normal for 1e-5 <= m <= FLT_MAX).
    m = torch.arange(0x3F800000, 0x40000000, dtype=torch.int32).view(torch.float32).unsqueeze(-1)
    _, s = quantize_activations(m)
    _, s_cpp = quantize_activations_bitnet_cpp(m)
    assert torch.equal(s, s_cpp)


def test_bitnet_cpp_variant_is_the_rounded_double_quotient():
    # `127 / t` in torch is reciprocal(t) * 127 in float32: two roundings, which differ from the
    # rounded double quotient for about 1 in 4 values. Find such an m and check both quantizers.
    m = (torch.rand(4096, generator=_gen(10)) * 100 + 1e-3).unsqueeze(-1)
    two_roundings = 127 / m
    double_then_round = torch.from_numpy((127.0 / m.double().numpy()).astype(np.float32))
    differs = (two_roundings != double_then_round).squeeze(-1)
    assert differs.any()
    x = torch.cat([m, -0.25 * m], dim=-1)[differs]
    _, s_cpp = quantize_activations_bitnet_cpp(x)
    _, s = quantize_activations(x)
    assert torch.equal(s_cpp, double_then_round[differs])
    assert torch.equal(s, double_then_round[differs])


def test_bitnet_cpp_variant_on_float64_input_rounds_s_to_float32():
    x = torch.randn(128, 16, generator=_gen(11), dtype=torch.float64)
    xq, s = quantize_activations(x)
    xq_cpp, s_cpp = quantize_activations_bitnet_cpp(x)
    assert s.dtype == torch.float64 and s_cpp.dtype == torch.float32
    # Two float32 roundings (of max|x|, then of the quotient), 2^-24 relative each.
    assert ((s_cpp.double() - s).abs() <= 2.0**-23 * s).all()
    assert not torch.equal(s_cpp.double(), s)
    assert (xq.int() - xq_cpp.int()).abs().max() <= 1


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_bitnet_cpp_variant_low_precision_equals_float32_upcast(dtype):
    x = torch.randn(5, 40, generator=_gen(12)).to(dtype)
    xq, s = quantize_activations_bitnet_cpp(x)
    xq32, s32 = quantize_activations_bitnet_cpp(x.float())
    assert torch.equal(s, s32) and torch.equal(xq, xq32)


# --- ggml Q8_K (TQ1_0 / TQ2_0 activations) -------------------------------------------------------


def _nearest_int(fval):
    """ggml's nearest_int: add 1.5 * 2^23 in float32 and read the low mantissa bits (half to even)."""
    val = np.float32(np.float32(fval) + np.float32(12582912.0))
    return int((val.view(np.int32) & 0x007FFFFF) - 0x00400000)


def _q8k_loop(x):
    """quantize_row_q8_K_ref transcribed line by line, one float32 scalar at a time: (qs, d) per row."""
    x = np.asarray(x, dtype=np.float32)
    qs = np.zeros(x.shape, dtype=np.int8)
    ds = np.zeros((*x.shape[:-1], x.shape[-1] // 256), dtype=np.float32)
    for row in np.ndindex(*x.shape[:-1]):
        for i in range(x.shape[-1] // 256):
            block = x[row][i * 256 : (i + 1) * 256]
            amax, vmax = np.float32(0), np.float32(0)
            for v in block:
                if abs(v) > amax:
                    amax, vmax = abs(v), v
            if not amax:
                continue  # codes 0, d = 0
            iscale = np.float32(np.float32(-127.0) / vmax)
            for j, v in enumerate(block):
                qs[row][i * 256 + j] = min(127, _nearest_int(np.float32(iscale * v)))
            ds[row][i] = np.float32(np.float32(1.0) / iscale)
    return qs, ds


def test_q8k_shapes_and_hand_example():
    x = torch.zeros(2, 3, 512)
    x[0, 0, :4] = torch.tensor([1.0, -2.0, 0.5, 4.0])
    xq, d = quantize_activations_q8k(x)
    assert xq.shape == (2, 3, 512) and xq.dtype == torch.int8
    assert d.shape == (2, 3, 2) and d.dtype == torch.float32
    # max = 4 -> iscale = -31.75: 1 -> -31.75 -> -32, -2 -> 63.5 -> 64 (tie to even), 0.5 -> -15.875 -> -16.
    assert xq[0, 0, :4].tolist() == [-32, 64, -16, -127]
    assert d[0, 0, 0].item() == np.float32(1) / np.float32(-31.75)
    # Every other block is all zeros: codes 0 and d = 0.
    assert xq.count_nonzero() == 4 and d.count_nonzero() == 1


def test_q8k_first_of_tied_maxima_wins_and_negative_max():
    x = torch.zeros(1, 768)
    x[0, 5], x[0, 10] = -3.0, 3.0  # block 0: -3 comes first -> max = -3, iscale = +127/3
    x[0, 256 + 5], x[0, 256 + 10] = 3.0, -3.0  # block 1: +3 comes first -> iscale = -127/3
    x[0, 512 + 7] = -127.0  # block 2: max -127 -> iscale = 1 exactly, so x * iscale = x
    x[0, 512 + 8 : 512 + 14] = torch.tensor([0.5, 1.5, 2.5, -0.5, -2.5, 126.5])
    xq, d = quantize_activations_q8k(x)
    assert xq[0, [5, 10, 261, 266]].tolist() == [-127, 127, -127, 127]
    assert d[0, 0].item() == np.float32(1) / np.float32(np.float32(127) / np.float32(3)) > 0
    assert d[0, 1].item() == -d[0, 0].item()
    assert d[0, 2].item() == 1.0
    assert xq[0, 519:526].tolist() == [-127, 0, 2, 2, 0, -2, 126]  # ties to even
    ref_q, ref_d = _q8k_loop(x.numpy())
    np.testing.assert_array_equal(xq.numpy(), ref_q)
    np.testing.assert_array_equal(d.numpy(), ref_d)


def test_q8k_matches_the_c_loop():
    g = _gen(21)
    x = torch.randn(3, 2, 1024, generator=g) * torch.exp(torch.randn(3, 2, 4, 1, generator=g) * 3).repeat_interleave(
        256, dim=2
    ).reshape(3, 2, 1024)
    x[0, 0, :256] = 0.0  # an all-zero block
    x[0, 1, 256:512] = -0.0  # negative zeros are zero too
    x[1, 0, 300] = -x[1, 0, 256:512].abs().max() - 1  # a negative maximum
    x[1, 1, 600] = x[1, 1, 512:768].abs().max() + 1  # tied maxima of both signs, + first
    x[1, 1, 700] = -x[1, 1, 600]
    x[2, 0, :256] = torch.randint(-8, 9, (256,), generator=g) * 0.5  # multiples of 0.5: ties after scaling
    x[2, 0, 17] = 127.0
    x[2, 1, :256] = torch.randint(-8, 9, (256,), generator=g) * 0.5
    x[2, 1, 3] = -127.0
    xq, d = quantize_activations_q8k(x)
    ref_q, ref_d = _q8k_loop(x.numpy())
    np.testing.assert_array_equal(xq.numpy(), ref_q)
    np.testing.assert_array_equal(d.numpy(), ref_d)
    assert (d[0, 0, 0], d[0, 1, 1]) == (0, 0) and d[1, 0, 1] > 0 and d[1, 1, 2] < 0
    # xq * d approximates x within half a step per block.
    err = (xq.float() * d.repeat_interleave(256, dim=-1) - x).abs()
    assert (err <= 0.5001 * d.abs().repeat_interleave(256, dim=-1)).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_q8k_takes_x_as_float32(dtype):
    x = torch.randn(4, 256, generator=_gen(22)).to(dtype)
    xq, d = quantize_activations_q8k(x)
    xq32, d32 = quantize_activations_q8k(x.float())
    assert d.dtype == torch.float32
    assert torch.equal(xq, xq32) and torch.equal(d, d32)


def test_q8k_rejects_bad_input():
    with pytest.raises(ValueError, match="multiple of 256, got 100"):
        quantize_activations_q8k(torch.randn(2, 100))
    with pytest.raises(ValueError, match="floating point"):
        quantize_activations_q8k(torch.ones(2, 256, dtype=torch.int8))


# --- straight-through estimators -----------------------------------------------------------------


def _heavy_tailed(shape, seed, dtype=torch.float32):
    g = _gen(seed)
    return (torch.randn(shape, generator=g) * torch.exp(torch.randn(shape, generator=g) * 3)).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_fake_quantize_lam1_is_exactly_dequantized(dtype):
    # Heavy tails: here w + (q - w) != q in float32 for some entries, so this checks exactness.
    w = _heavy_tailed((50, 40), 13).clamp(-6e4, 6e4).to(dtype)
    codes, gamma = quantize_weights(w)
    y = fake_quantize_weights(w)
    assert y.dtype == dtype
    assert torch.equal(y, (codes * gamma).to(dtype))
    xq, s = quantize_activations(w)
    y = fake_quantize_activations(w)
    assert y.dtype == dtype
    assert torch.equal(y, (xq / s).to(dtype))


@pytest.mark.parametrize("fake_quantize", [fake_quantize_weights, fake_quantize_activations])
@pytest.mark.parametrize("lam", [1.0, 0.5, torch.tensor(0.3), 0.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fake_quantize_gradient_is_identity(fake_quantize, lam, dtype):
    w = torch.randn(6, 11, generator=_gen(14)).to(dtype).requires_grad_()
    g = torch.randn(6, 11, generator=_gen(15)).to(dtype)
    y = fake_quantize(w, lam)
    (y * g).sum().backward()
    assert torch.equal(w.grad, g)


@pytest.mark.parametrize("fake_quantize", [fake_quantize_weights, fake_quantize_activations])
def test_fake_quantize_warmup_lambda(fake_quantize):
    w = _heavy_tailed((20, 30), 16)
    dq = fake_quantize(w, 1.0)
    assert not torch.equal(dq, w)
    assert torch.equal(fake_quantize(w, 0.0), w)
    mid = fake_quantize(w, 0.5)
    # lerp rounds twice; allow 2 ulps of the larger endpoint.
    assert ((mid - (w + dq) / 2).abs() <= 2.0**-22 * torch.maximum(w.abs(), dq.abs())).all()
    assert torch.equal(fake_quantize(w, torch.tensor(0.5)), mid)
    assert torch.equal(fake_quantize(w, torch.tensor(0.5, dtype=torch.float64)), mid)
    with pytest.raises(ValueError, match="0-dim"):
        fake_quantize(w, torch.tensor([0.5]))


def test_ste_forward_value_and_gradient():
    x = torch.tensor([3.0, -1e8, 1e-8], requires_grad=True)
    q = torch.tensor([1e-8, 2.0, 7.0], requires_grad=True)
    y = ste(x, q)
    assert torch.equal(y, q.detach())  # x + (q - x) would give 0 for the first entry
    y.backward(torch.tensor([1.0, 2.0, 3.0]))
    assert x.grad.tolist() == [1.0, 2.0, 3.0]
    assert q.grad is None


# --- no host syncs -------------------------------------------------------------------------------


def test_no_host_sync_guard_works(no_host_sync):
    t = torch.ones(1)
    with no_host_sync():
        with pytest.raises(AssertionError, match="host sync"):
            t.item()
        with pytest.raises(AssertionError, match="host sync"):
            bool(t)
        with pytest.raises(AssertionError, match="host sync"):
            float(t)


def test_quantizers_do_not_sync_host(no_host_sync):
    w = torch.randn(8, 16, generator=_gen(17), requires_grad=True)
    x = torch.randn(2, 3, 16, generator=_gen(18), requires_grad=True)
    with no_host_sync():
        quantize_weights(w)
        quantize_activations(x)
        quantize_activations_bitnet_cpp(x)
        quantize_activations_q8k(torch.randn(2, 512, generator=_gen(19)))
        fw = fake_quantize_weights(w, torch.tensor(0.7))
        fx = fake_quantize_activations(x, 0.3)
        (fw.sum() + fx.sum()).backward()
