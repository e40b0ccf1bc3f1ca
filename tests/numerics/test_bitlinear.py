"""Tests of bitk.numerics bitlinear, bitlinear_fake_quant, bitlinear_bitnet_cpp and bitlinear_ggml_tq."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bitk.numerics import (
    bitlinear,
    bitlinear_bitnet_cpp,
    bitlinear_fake_quant,
    bitlinear_ggml_tq,
    linear_output_dtype,
    quantize_activations,
    quantize_activations_bitnet_cpp,
    quantize_activations_q8k,
    quantize_weights,
)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


EPS32 = 2.0**-23

# x dtype -> unit roundoff of the final cast to that dtype, the one rounding both forms add to
# their float32 result (dx is cast too; dW and dbias stay float32 with float32 W and bias).
OUT_ROUNDOFF = {
    torch.float32: 0.0,
    torch.float16: 2.0**-11,
    torch.bfloat16: 2.0**-8,
}

SHAPES = [  # (x shape, out_features)
    ((1, 7), 5),  # M = 1, odd K
    ((4, 33), 13),  # odd K, prime N
    ((2, 3, 64), 31),  # leading dims, prime N
    ((17, 128), 8),
]


def _check_against_float64(name, got, ref, err_torch32, roundoff):
    """|got - ref| <= 2 * (torch's own float32 error) + the final cast's rounding (+ 1 ulp floor)."""
    ref_mag = ref.abs()
    bound = 2 * err_torch32 + roundoff * ref_mag + EPS32 * ref_mag.max()
    excess = (got.double() - ref).abs() - bound
    assert (excess <= 0).all(), f"{name}: exceeds the derived tolerance by {excess.max():.3g}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("x_shape,n_out", SHAPES)
@pytest.mark.parametrize("with_bias", [False, True])
def test_bitlinear_matches_fake_quant_and_float64(dtype, x_shape, n_out, with_bias):
    g = _gen(31 * sum(x_shape) + n_out)
    k = x_shape[-1]
    x0 = torch.randn(x_shape, generator=g).to(dtype)
    w0 = torch.randn(n_out, k, generator=g) * 0.05
    b0 = torch.randn(n_out, generator=g) if with_bias else None
    dy = torch.randn(*x_shape[:-1], n_out, generator=g).to(dtype)

    def run(fn):
        x = x0.clone().requires_grad_()
        w = w0.clone().requires_grad_()
        b = b0.clone().requires_grad_() if with_bias else None
        y = fn(x, w, b)
        y.backward(dy)
        return y, x.grad, w.grad, None if b is None else b.grad

    y, dx, dw, db = run(bitlinear)
    y_fq, dx_fq, dw_fq, db_fq = run(bitlinear_fake_quant)
    assert y.dtype == dtype and y.shape == (*x_shape[:-1], n_out)
    assert dx.dtype == dtype and dw.dtype == torch.float32

    # float64 ground truth from the quantized operands, and torch's float32 error on the same math.
    codes, gamma = quantize_weights(w0)
    xq, s = quantize_activations(x0.reshape(-1, k))
    w_dq32, x_dq32 = codes.float() * gamma, xq.float() / s
    dy2 = dy.reshape(-1, n_out)
    b32 = b0 if with_bias else torch.zeros(n_out)
    y_ref = x_dq32.double() @ w_dq32.double().T + b32.double()
    dx_ref = dy2.double() @ w_dq32.double()
    dw_ref = dy2.double().T @ x_dq32.double()
    err_y = (F.linear(x_dq32, w_dq32, b32).double() - y_ref).abs().max()
    err_dx = ((dy2.float() @ w_dq32).double() - dx_ref).abs().max()
    err_dw = ((dy2.float().T @ x_dq32).double() - dw_ref).abs().max()

    u = OUT_ROUNDOFF[dtype]
    for impl, (yy, dxx, dww) in {"bitlinear": (y, dx, dw), "fake_quant": (y_fq, dx_fq, dw_fq)}.items():
        _check_against_float64(f"{impl} y", yy.reshape(-1, n_out), y_ref, err_y, u)
        _check_against_float64(f"{impl} dx", dxx.reshape(-1, k), dx_ref, err_dx, u)
        _check_against_float64(f"{impl} dW", dww, dw_ref, err_dw, 0.0)
    if with_bias:
        db_ref = dy2.double().sum(0)
        err_db = (dy2.float().sum(0).double() - db_ref).abs().max()
        _check_against_float64("bitlinear dbias", db, db_ref, err_db, 0.0)
        _check_against_float64("fake_quant dbias", db_fq, db_ref, err_db, 0.0)


def test_bitlinear_forward_is_exact_integer_product_then_scale():
    g = _gen(1)
    x = torch.randn(5, 3, 96, generator=g) * torch.exp(torch.randn(5, 3, 1, generator=g))
    w = torch.randn(40, 96, generator=g)
    codes, gamma = quantize_weights(w)
    xq, s = quantize_activations(x)
    expected = (xq.double() @ codes.double().T).float() * (gamma / s)
    assert torch.equal(bitlinear(x, w), expected)
    # float64 x: scaled in float64, W quantized in float64.
    x64, w64 = x.double(), w.double()
    codes, gamma = quantize_weights(w64)
    xq, s = quantize_activations(x64)
    y64 = bitlinear(x64, w64)
    assert y64.dtype == torch.float64
    assert torch.equal(y64, (xq.double() @ codes.double().T) * (gamma / s))


def test_bitlinear_backward_formula():
    g = _gen(2)
    x = torch.randn(6, 20, generator=g, requires_grad=True)
    w = torch.randn(9, 20, generator=g, requires_grad=True)
    b = torch.randn(9, generator=g, requires_grad=True)
    dy = torch.randn(6, 9, generator=g)
    bitlinear(x, w, b).backward(dy)
    codes, gamma = quantize_weights(w.detach())
    xq, s = quantize_activations(x.detach())
    torch.testing.assert_close(x.grad, dy @ (codes.float() * gamma), rtol=0, atol=1e-6)
    torch.testing.assert_close(w.grad, dy.T @ (xq.float() / s), rtol=0, atol=1e-6)
    assert torch.equal(b.grad, dy.sum(0))
    # Only the requested gradients are produced.
    x2 = x.detach().requires_grad_()
    bitlinear(x2, w.detach(), b.detach()).backward(dy)
    assert torch.equal(x2.grad, x.grad)


def test_bitlinear_saves_only_int8_codes_and_scales():
    g = _gen(3)
    x = torch.randn(2, 3, 16, generator=g).to(torch.bfloat16).requires_grad_()
    w = torch.randn(8, 16, generator=g, requires_grad=True)
    b = torch.randn(8, generator=g, requires_grad=True)
    packed = []

    def pack(t):
        packed.append((t.dtype, tuple(t.shape)))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = bitlinear(x, w, b)
    expected = [
        (torch.int8, (6, 16)),  # xq
        (torch.float32, (6, 1)),  # s
        (torch.int8, (8, 16)),  # ternary codes
        (torch.float32, ()),  # gamma
    ]
    assert sorted(packed, key=str) == sorted(expected, key=str)
    y.float().sum().backward()
    assert x.grad.dtype == torch.bfloat16 and w.grad.dtype == torch.float32


def test_bitlinear_fake_quant_warmup():
    g = _gen(4)
    x = torch.randn(3, 12, generator=g)
    w = torch.randn(7, 12, generator=g)
    b = torch.randn(7, generator=g)
    assert torch.equal(bitlinear_fake_quant(x, w, b, lam=0.0), F.linear(x, w, b))
    y_half = bitlinear_fake_quant(x, w, b, lam=torch.tensor(0.5))
    assert not torch.allclose(y_half, F.linear(x, w, b)) and not torch.allclose(y_half, bitlinear(x, w, b))


def test_bitlinear_rejects_bad_shapes():
    x, w = torch.randn(4, 8), torch.randn(3, 8)
    with pytest.raises(ValueError, match="in_features=8"):
        bitlinear(torch.randn(4, 7), w)
    with pytest.raises(ValueError, match="2-D"):
        bitlinear(x, torch.randn(8))
    with pytest.raises(ValueError, match="bias shape"):
        bitlinear(x, w, torch.randn(4))
    with pytest.raises(ValueError, match="in_features=8"):
        bitlinear_fake_quant(torch.randn(4, 7), w)
    with pytest.raises(ValueError, match="int8"):
        bitlinear_bitnet_cpp(x, torch.zeros(3, 8, dtype=torch.int32), 1.0)
    with pytest.raises(ValueError, match="in_features=8"):
        bitlinear_bitnet_cpp(torch.randn(4, 7), torch.zeros(3, 8, dtype=torch.int8), 1.0)
    with pytest.raises(ValueError, match="0-dim"):
        bitlinear_bitnet_cpp(x, torch.zeros(3, 8, dtype=torch.int8), torch.ones(3))


# --- bitnet.cpp I2_S forward ---------------------------------------------------------------------


def test_bitlinear_bitnet_cpp_hand_example():
    x = torch.tensor([[1.0, -2.0, 0.5, 4.0]])
    codes = torch.tensor([[1, 0, -1, 1], [0, 0, 0, 0], [-1, -1, 1, 1]], dtype=torch.int8)
    # absmax 4 -> s = 31.75; q = round(31.75, -63.5, 15.875, 127) = 32, -64 (tie to even), 16, 127.
    xq, s = quantize_activations_bitnet_cpp(x)
    assert s.item() == 31.75 and xq.tolist() == [[32, -64, 16, 127]]
    # acc = 32 - 16 + 127 = 143; 0; -32 + 64 + 16 + 127 = 175.
    acc = np.array([143, 0, 175], dtype=np.float32)
    expected = (acc / np.float32(31.75)) * np.float32(0.5)
    y = bitlinear_bitnet_cpp(x, codes, 0.5)
    assert y.dtype == torch.float32 and y.shape == (1, 3)
    np.testing.assert_array_equal(y.numpy()[0], expected)


def test_bitlinear_bitnet_cpp_matches_int64_formula():
    g = _gen(5)
    x = torch.randn(2, 5, 256, generator=g) * torch.exp(torch.randn(2, 5, 1, generator=g) * 3)
    x[0, 0] = 0.0
    codes = torch.randint(-1, 2, (24, 256), generator=g, dtype=torch.int8)
    scale = torch.tensor(0.0123)
    xq, s = quantize_activations_bitnet_cpp(x.reshape(-1, 256))
    q = xq.long()
    acc = ((codes.long() + 1)[None] * q[:, None, :]).sum(-1) - q.sum(-1, keepdim=True)
    expected = ((acc.float() / s) * scale).reshape(2, 5, 24)
    y = bitlinear_bitnet_cpp(x, codes, scale)
    assert torch.equal(y, expected)
    assert torch.equal(bitlinear_bitnet_cpp(x, codes, 0.0123), y)  # python float scale
    # Given the training quantizer's codes and gamma, it is the training forward up to float32
    # rounding: the activation quantization agrees bit for bit, only the scaling order differs.
    w = torch.randn(24, 256, generator=g)
    codes, gamma = quantize_weights(w)
    torch.testing.assert_close(bitlinear_bitnet_cpp(x, codes, gamma), bitlinear(x, w), rtol=4 * EPS32, atol=0)


# --- llama.cpp TQ1_0 / TQ2_0 forward -------------------------------------------------------------


def _tq_dot_loop(xq, d_x, codes, d_w, dtype):
    """ggml_vec_dot_tq2_0_q8_K_generic for every (row, output), with the float math in ``dtype``:
    per block the exact integer sum, then ``sumf += (float)sumi * (d_x * d_w)``."""
    xq, codes = xq.numpy().astype(np.int64), codes.numpy().astype(np.int64)
    d_x, d_w = d_x.numpy().astype(dtype), dtype(d_w)
    out = np.zeros((xq.shape[0], codes.shape[0]), dtype=dtype)
    for m in range(xq.shape[0]):
        for n in range(codes.shape[0]):
            sumf = dtype(0)
            for i in range(xq.shape[1] // 256):
                sumi = int(np.dot(xq[m, i * 256 : (i + 1) * 256], codes[n, i * 256 : (i + 1) * 256]))
                sumf = dtype(sumf + dtype(dtype(sumi) * dtype(d_x[m, i] * d_w)))
            out[m, n] = sumf
    return out


def test_bitlinear_ggml_tq_hand_example():
    x = torch.zeros(1, 256)
    x[0, :4] = torch.tensor([1.0, -2.0, 0.5, 4.0])
    codes = torch.zeros(2, 256, dtype=torch.int8)
    codes[0, :4] = torch.tensor([1, 0, -1, 1])
    codes[1, :4] = torch.tensor([-1, -1, 1, 1])
    # Q8_K: iscale = -31.75, q = -32, 64, -16, -127; d_x = 1 / -31.75.
    # sumi = -32 + 16 - 127 = -143 and 32 - 64 - 16 - 127 = -175; d_w = f16(0.1).
    d_x = np.float32(1) / np.float32(-31.75)
    d_w = np.float32(np.float16(0.1))
    expected = np.array([-143, -175], dtype=np.float32) * np.float32(d_x * d_w)
    y = bitlinear_ggml_tq(x, codes, 0.1)
    assert y.dtype == torch.float32 and y.shape == (1, 2)
    np.testing.assert_array_equal(y.numpy()[0], expected)


def test_bitlinear_ggml_tq_matches_the_c_loop():
    g = _gen(7)
    x = torch.randn(2, 3, 768, generator=g) * torch.exp(torch.randn(2, 3, 1, generator=g) * 3)
    x[0, 0, 256:512] = 0.0  # an all-zero block
    codes = torch.randint(-1, 2, (5, 768), generator=g, dtype=torch.int8)
    scale = torch.tensor(0.0123)
    y = bitlinear_ggml_tq(x, codes, scale)
    assert y.shape == (2, 3, 5) and y.dtype == torch.float32
    xq, d_x = quantize_activations_q8k(x.reshape(-1, 768))
    d_w = np.float16(0.0123)  # the file's float16 scale
    # float32 in the generic order: bit for bit; in float64: within float32 rounding.
    np.testing.assert_array_equal(y.reshape(6, 5).numpy(), _tq_dot_loop(xq, d_x, codes, d_w, np.float32))
    ref64 = _tq_dot_loop(xq, d_x, codes, d_w, np.float64)
    np.testing.assert_allclose(y.reshape(6, 5).numpy(), ref64, rtol=1e-6, atol=1e-6 * np.abs(ref64).max())
    assert torch.equal(bitlinear_ggml_tq(x, codes, 0.0123), y)  # python float scale
    assert torch.equal(bitlinear_ggml_tq(x.double(), codes, scale), y)  # x taken as float32


def test_bitlinear_ggml_tq_is_close_to_the_float_forward():
    g = _gen(8)
    x = torch.randn(16, 512, generator=g)
    w = torch.randn(32, 512, generator=g) * 0.02
    codes, gamma = quantize_weights(w)
    y = bitlinear_ggml_tq(x, codes, gamma)
    ref = x @ (codes.float() * gamma).T
    err = (y - ref).abs().max() / ref.abs().max()
    assert 0 < err < 0.02  # activation rounding (per block of 256) and the float16 scale


def test_bitlinear_ggml_tq_rejects_bad_input():
    codes = torch.zeros(3, 256, dtype=torch.int8)
    with pytest.raises(ValueError, match="int8"):
        bitlinear_ggml_tq(torch.randn(2, 256), codes.int(), 1.0)
    with pytest.raises(ValueError, match="in_features=256"):
        bitlinear_ggml_tq(torch.randn(2, 255), codes, 1.0)
    with pytest.raises(ValueError, match="0-dim"):
        bitlinear_ggml_tq(torch.randn(2, 256), codes, torch.ones(3))


def test_bitlinears_do_not_sync_host(no_host_sync):
    g = _gen(6)
    x = torch.randn(2, 3, 16, generator=g, requires_grad=True)
    w = torch.randn(8, 16, generator=g, requires_grad=True)
    b = torch.randn(8, generator=g, requires_grad=True)
    codes = torch.randint(-1, 2, (8, 16), generator=g, dtype=torch.int8)
    with no_host_sync():
        bitlinear(x, w, b).sum().backward()
        bitlinear_fake_quant(x, w, b, lam=torch.tensor(0.5)).sum().backward()
        bitlinear_bitnet_cpp(x.detach(), codes, torch.tensor(0.25))
        bitlinear_bitnet_cpp(x.detach(), codes, 0.25)
        codes256 = torch.randint(-1, 2, (8, 256), generator=g, dtype=torch.int8)
        bitlinear_ggml_tq(torch.randn(3, 256, generator=g), codes256, torch.tensor(0.25))
        bitlinear_ggml_tq(torch.randn(3, 256, generator=g), codes256, 0.25)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64], ids=str)
def test_linear_output_dtype_is_the_input_dtype_without_autocast(dtype):
    x = torch.zeros(2, 3, dtype=dtype)
    assert linear_output_dtype(x) == dtype
    with torch.autocast("cpu", enabled=False):
        assert linear_output_dtype(x) == dtype


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64], ids=str)
def test_linear_output_dtype_under_autocast_is_what_nn_linear_returns(dtype):
    # The autocast dtype, except that float64 stays float64 (autocast leaves float64 ops alone).
    x, w = torch.zeros(2, 3, dtype=dtype), torch.zeros(4, 3, dtype=dtype)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = linear_output_dtype(x)
        assert got == (torch.float64 if dtype == torch.float64 else torch.bfloat16)
        assert got == F.linear(x, w).dtype
    assert linear_output_dtype(x) == dtype  # the rule reads the autocast state at the call
