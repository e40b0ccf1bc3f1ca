"""Tests of bitk.triton_kernels.ternary_matmul against bitk.numerics.bitlinear's formulas.

Forward: the float32 output is bit-identical to the reference; fp16/bf16 outputs are exactly that
result cast (the kernels round bf16 on the bits, so the interpreter's truncating cast never shows). Backward:
dx and dW against float64, within twice the error of torch doing the same in dy's dtype
(bitk_kernel_testing.assert_derived_close). On CPU the kernels run in Triton's interpreter.
"""

from __future__ import annotations

import pytest
import torch

from bitk.numerics import bitlinear, quantize_activations, quantize_weights
from bitk.triton_kernels.ternary_matmul import ternary_matmul_dw, ternary_matmul_dx, ternary_matmul_fwd
from bitk_kernel_testing import DEVICE, DTYPES, assert_derived_close

# (M, K, N): M = 1, odd K, prime N, a K tail, M over one interpreter tile. Kept small: interpreted.
SHAPES = ((1, 64, 5), (7, 33, 13), (17, 128, 31), (64, 256, 97), (130, 96, 67))
LOWP = (torch.float16, torch.bfloat16)


def _case(m, k, n, seed=0, bias_dtype=None):
    """(x, w, bias, xq, s, codes, gamma) on DEVICE; xq/s and codes/gamma from the reference quantizers."""
    g = torch.Generator().manual_seed(seed)
    # Rows of different magnitudes give different per-token scales s.
    x = (torch.randn(m, k, generator=g) * torch.rand(m, 1, generator=g) * 4).to(DEVICE)
    w = (torch.randn(n, k, generator=g) * 0.02).to(DEVICE)
    bias = None if bias_dtype is None else torch.randn(n, generator=g).to(DEVICE, bias_dtype)
    xq, s = quantize_activations(x)
    codes, gamma = quantize_weights(w)
    return x, w, bias, xq, s, codes, gamma


def _dy(m, n, dtype, seed=1):
    return torch.randn(m, n, generator=torch.Generator().manual_seed(seed)).to(DEVICE, dtype)


@pytest.mark.parametrize("bias_dtype", (None, torch.float32, torch.bfloat16), ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_fwd_float32_bit_identical(shape, bias_dtype):
    m, k, n = shape
    x, w, bias, xq, s, codes, gamma = _case(m, k, n, bias_dtype=bias_dtype)
    y = ternary_matmul_fwd(xq, s, codes, gamma, bias)
    # The formula, spelled out: exact integer product via float64, then the float32 epilogue.
    ref = (xq.double() @ codes.double().T).float() * (gamma / s)
    if bias is not None:
        ref = ref + bias.float()
    assert y.dtype == torch.float32 and y.shape == (m, n)
    assert torch.equal(y, ref)
    assert torch.equal(y, bitlinear(x, w, bias))  # and the reference function itself


@pytest.mark.parametrize("has_bias", (False, True), ids=("nobias", "bias"))
@pytest.mark.parametrize("out_dtype", LOWP, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_fwd_low_precision_is_float32_cast(shape, out_dtype, has_bias):
    m, k, n = shape
    _, _, bias, xq, s, codes, gamma = _case(m, k, n, bias_dtype=out_dtype if has_bias else None)
    y = ternary_matmul_fwd(xq, s, codes, gamma, bias, out_dtype=out_dtype)
    ref = ternary_matmul_fwd(xq, s, codes, gamma, bias).to(out_dtype)
    assert y.dtype == out_dtype
    assert torch.equal(y, ref)


def _dx_refs(dy, codes, gamma):
    ref64 = dy.double() @ (codes.double() * gamma.double())
    torch_lowp = dy @ (codes * gamma).to(dy.dtype)
    return ref64, torch_lowp


def _dw_refs(dy, xq, s):
    ref64 = dy.double().T @ (xq.double() / s.double())
    torch_lowp = dy.T @ (xq.to(dy.dtype) / s.to(dy.dtype))
    return ref64, torch_lowp


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_dx(shape, dtype):
    m, k, n = shape
    _, _, _, _, _, codes, gamma = _case(m, k, n)
    dy = _dy(m, n, dtype)
    dx = ternary_matmul_dx(dy, codes, gamma, dtype)
    assert dx.dtype == dtype and dx.shape == (m, k)
    assert_derived_close(dx, *_dx_refs(dy, codes, gamma), what=f"dx {dtype}")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_dw(shape, dtype):
    m, k, n = shape
    _, _, _, xq, s, _, _ = _case(m, k, n)
    dy = _dy(m, n, dtype)
    dw = ternary_matmul_dw(dy, xq, s, dtype)
    assert dw.dtype == dtype and dw.shape == (n, k)
    assert_derived_close(dw, *_dw_refs(dy, xq, s), what=f"dW {dtype}")


@pytest.mark.parametrize("dtype", LOWP, ids=str)
def test_backward_low_precision_dy_float32_out(dtype):
    m, k, n = 64, 256, 97
    _, _, _, xq, s, codes, gamma = _case(m, k, n)
    dy = _dy(m, n, dtype)
    dx = ternary_matmul_dx(dy, codes, gamma, torch.float32)
    dw = ternary_matmul_dw(dy, xq, s, torch.float32)
    assert dx.dtype == dw.dtype == torch.float32
    assert_derived_close(dx, *_dx_refs(dy, codes, gamma), what=f"dx {dtype} -> float32")
    assert_derived_close(dw, *_dw_refs(dy, xq, s), what=f"dW {dtype} -> float32")


def test_backward_float32_follows_allow_tf32():
    # With TF32 allowed the kernels may use it, as torch's own float32 matmuls then do (CUDA only;
    # the interpreter and CPU torch stay IEEE float32).
    m, k, n = 64, 256, 97
    _, _, _, xq, s, codes, gamma = _case(m, k, n)
    dy = _dy(m, n, torch.float32)
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        dx = ternary_matmul_dx(dy, codes, gamma, torch.float32)
        dw = ternary_matmul_dw(dy, xq, s, torch.float32)
        dx_refs, dw_refs = _dx_refs(dy, codes, gamma), _dw_refs(dy, xq, s)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved
    assert_derived_close(dx, *dx_refs, what="dx tf32")
    assert_derived_close(dw, *dw_refs, what="dW tf32")


def test_no_tokens():
    k, n = 33, 13
    _, _, bias, xq, s, codes, gamma = _case(0, k, n, bias_dtype=torch.float32)
    assert ternary_matmul_fwd(xq, s, codes, gamma, bias).shape == (0, n)
    dy = _dy(0, n, torch.float32)
    assert ternary_matmul_dx(dy, codes, gamma, torch.float32).shape == (0, k)
    # No tokens: the weight gradient is a sum over nothing, zeros.
    assert torch.equal(
        ternary_matmul_dw(dy, xq, s, torch.bfloat16), torch.zeros(n, k, dtype=torch.bfloat16, device=DEVICE)
    )


def test_zero_codes():
    m, k, n = 7, 33, 13
    _, _, bias, xq, s, codes, gamma = _case(m, k, n, bias_dtype=torch.float32)
    codes = torch.zeros_like(codes)
    assert torch.equal(ternary_matmul_fwd(xq, s, codes, gamma), torch.zeros(m, n, device=DEVICE))
    assert torch.equal(ternary_matmul_fwd(xq, s, codes, gamma, bias), bias.expand(m, n))
    dx = ternary_matmul_dx(_dy(m, n, torch.bfloat16), codes, gamma, torch.bfloat16)
    assert torch.equal(dx, torch.zeros(m, k, dtype=torch.bfloat16, device=DEVICE))


def test_vector_scale_and_non_contiguous_inputs():
    m, k, n = 17, 128, 31
    _, _, bias, xq, s, codes, gamma = _case(m, k, n, bias_dtype=torch.float32)
    dy = _dy(m, n, torch.float32)
    y = ternary_matmul_fwd(xq, s, codes, gamma, bias)
    dx = ternary_matmul_dx(dy, codes, gamma, torch.float32)
    dw = ternary_matmul_dw(dy, xq, s, torch.float32)
    # Same values in transposed storage (non-contiguous views): copied, same results.
    xq_t, codes_t, dy_t = xq.T.contiguous().T, codes.T.contiguous().T, dy.T.contiguous().T
    assert not (xq_t.is_contiguous() or codes_t.is_contiguous() or dy_t.is_contiguous())
    assert torch.equal(ternary_matmul_fwd(xq_t, s.reshape(m), codes_t, gamma, bias), y)
    assert torch.equal(ternary_matmul_dx(dy_t, codes_t, gamma, torch.float32), dx)
    assert torch.equal(ternary_matmul_dw(dy_t, xq_t, s.reshape(m), torch.float32), dw)


def _bad_calls():
    m, k, n = 7, 33, 13
    _, _, bias, xq, s, codes, gamma = _case(m, k, n, bias_dtype=torch.float32)
    dy = _dy(m, n, torch.float32)
    f32 = torch.float32
    return {
        "fwd xq float": lambda: ternary_matmul_fwd(xq.float(), s, codes, gamma),
        "fwd xq 1-D": lambda: ternary_matmul_fwd(xq[0], s[:1], codes, gamma),
        "fwd codes int32": lambda: ternary_matmul_fwd(xq, s, codes.int(), gamma),
        "fwd codes K": lambda: ternary_matmul_fwd(xq, s, codes[:, 1:], gamma),
        "fwd s float64": lambda: ternary_matmul_fwd(xq, s.double(), codes, gamma),
        "fwd s rows": lambda: ternary_matmul_fwd(xq, s[1:], codes, gamma),
        "fwd gamma float64": lambda: ternary_matmul_fwd(xq, s, codes, gamma.double()),
        "fwd gamma 2 values": lambda: ternary_matmul_fwd(xq, s, codes, gamma.expand(2)),
        "fwd bias shape": lambda: ternary_matmul_fwd(xq, s, codes, gamma, bias[1:]),
        "fwd bias int": lambda: ternary_matmul_fwd(xq, s, codes, gamma, bias.int()),
        "fwd out float64": lambda: ternary_matmul_fwd(xq, s, codes, gamma, out_dtype=torch.float64),
        "dx dy int8": lambda: ternary_matmul_dx(dy.to(torch.int8), codes, gamma, f32),
        "dx dy float64": lambda: ternary_matmul_dx(dy.double(), codes, gamma, f32),
        "dx dy 3-D": lambda: ternary_matmul_dx(dy[None], codes, gamma, f32),
        "dx codes N": lambda: ternary_matmul_dx(dy, codes[1:], gamma, f32),
        "dx codes float": lambda: ternary_matmul_dx(dy, codes.float(), gamma, f32),
        "dx out int8": lambda: ternary_matmul_dx(dy, codes, gamma, torch.int8),
        "dw xq rows": lambda: ternary_matmul_dw(dy, xq[1:], s, f32),
        "dw xq float": lambda: ternary_matmul_dw(dy, xq.float(), s, f32),
        "dw s shape": lambda: ternary_matmul_dw(dy, xq, s.T, f32),
        "dw dy float64": lambda: ternary_matmul_dw(dy.double(), xq, s, f32),
    }


@pytest.mark.parametrize("name", list(_bad_calls()))
def test_bad_inputs_raise_value_error(name):
    with pytest.raises(ValueError):
        _bad_calls()[name]()
