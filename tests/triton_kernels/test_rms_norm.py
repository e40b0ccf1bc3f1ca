"""Triton RMSNorm (bitk.triton_kernels.rms_norm) against the pure-torch bitk.numerics.rms_norm.

Tolerances are derived (bitk_kernel_testing.assert_derived_close): against a float64 reference
computed from the same low-precision inputs, the kernel may err at most 2x as much as the
reference itself run in x's dtype (statistics in float32), and never less than 2 ulps of the
output dtype at the largest reference magnitude. Forward y and rstd, backward dx and dweight.
"""

from __future__ import annotations

import pytest
import torch

from bitk.numerics import rms_norm as rms_norm_ref
from bitk.triton_kernels.rms_norm import rms_norm, rms_norm_bwd, rms_norm_fwd
from bitk_kernel_testing import DEVICE, DTYPES, ROW_SHAPES, assert_derived_close


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


# ROW_SHAPES (M = 1, odd and prime K, K = 1) plus leading batch dimensions, prime sizes included.
SHAPES = ROW_SHAPES + ((2, 3, 5), (2, 1, 97), (3, 2, 64))
# Every x dtype with every weight dtype; the mixed pairs on a few shapes (the weight dtype only
# changes one load), the matching pairs on all of them.
MIXED_PAIRS = [(xd, wd) for xd in DTYPES for wd in DTYPES if xd != wd]
MIXED_IDS = [f"x_{_name(a)}-w_{_name(b)}" for a, b in MIXED_PAIRS]
MIXED_SHAPES = ((5, 257), (2, 1, 97))


def _inputs(shape, x_dtype, w_dtype, seed=0, scale=2.0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen) * scale
    w = 1.0 + 0.5 * torch.randn(shape[-1], generator=gen)
    dy = torch.randn(shape, generator=gen)
    return x.to(DEVICE, x_dtype), w.to(DEVICE, w_dtype), dy.to(DEVICE, x_dtype)


def _grads(fn, x, w, dy, eps):
    x = x.detach().requires_grad_()
    w = w.detach().requires_grad_()
    y = fn(x, w, eps)
    dx, dw = torch.autograd.grad(y, (x, w), dy)
    return y.detach(), dx, dw


def _check_forward(x, w, eps):
    # One launch gives y and rstd; the functional API (shape restore, autograd) runs in the backward tests.
    x2d = x.reshape(-1, x.shape[-1])
    y2d, rstd = rms_norm_fwd(x2d, w, eps)
    assert y2d.dtype == x.dtype and y2d.shape == x2d.shape
    assert_derived_close(y2d.view(x.shape), rms_norm_ref(x.double(), w.double(), eps), rms_norm_ref(x, w, eps), "y")
    # rstd = 1 / sqrt(mean(x^2) + eps), against the same statistics computed by torch in float32.
    assert rstd.dtype == torch.float32 and rstd.shape == (x2d.shape[0],)
    rstd64 = 1.0 / torch.sqrt(x2d.double().square().mean(-1) + eps)
    rstd32 = 1.0 / torch.sqrt(x2d.float().square().mean(-1) + eps)
    assert_derived_close(rstd, rstd64, rstd32, "rstd")


def _assert_dx_close(dx, dx64, dx_lowp, x, w, dy, eps):
    if x.shape[-1] > 1:
        assert_derived_close(dx, dx64, dx_lowp, "dx")
        return
    # K = 1: dx = rstd * g * dy * (1 - xhat^2) = g * dy * eps / (x^2 + eps)^1.5 is the difference of two
    # terms of size |rstd * g * dy| that agree to about eps / x^2. Any float32 evaluation errs by a few
    # float32 rounding units of those terms (torch's own error can be far smaller by chance), so the
    # bound is 8 units of the largest term, plus the rounding of dx to its dtype (subnormals included).
    x64, w64, dy64 = x.double(), w.double(), dy.double()
    terms = (w64 * dy64 / torch.sqrt(x64.square() + eps)).abs().max().item()
    fi = torch.finfo(dx.dtype)
    bound = 8 * 2.0**-24 * terms + fi.eps * (dx64.abs().max().item() + fi.tiny)
    err = (dx.double() - dx64).abs().max().item()
    assert err <= bound, f"dx (K = 1): max error {err:.3g} > bound {bound:.3g}"


def _check_backward(x, w, dy, eps):
    y, dx, dw = _grads(rms_norm, x, w, dy, eps)
    assert y.dtype == x.dtype and y.shape == x.shape
    assert dx.dtype == x.dtype and dx.shape == x.shape
    assert dw.dtype == w.dtype and dw.shape == w.shape
    y64, dx64, dw64 = _grads(rms_norm_ref, x.double(), w.double(), dy.double(), eps)
    y_lowp, dx_lowp, dw_lowp = _grads(rms_norm_ref, x, w, dy, eps)
    assert_derived_close(y, y64, y_lowp, "y")
    _assert_dx_close(dx, dx64, dx_lowp, x, w, dy, eps)
    assert_derived_close(dw, dw64, dw_lowp, "dweight")


@pytest.mark.parametrize("dtype", DTYPES, ids=_name)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_forward(shape, dtype):
    x, w, _ = _inputs(shape, dtype, dtype)
    _check_forward(x, w, 1e-6)


@pytest.mark.parametrize("x_dtype,w_dtype", MIXED_PAIRS, ids=MIXED_IDS)
@pytest.mark.parametrize("shape", MIXED_SHAPES, ids=str)
def test_forward_mixed_dtypes(shape, x_dtype, w_dtype):
    x, w, _ = _inputs(shape, x_dtype, w_dtype)
    _check_forward(x, w, 1e-6)


@pytest.mark.parametrize("dtype", DTYPES, ids=_name)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_backward(shape, dtype):
    x, w, dy = _inputs(shape, dtype, dtype, seed=1)
    _check_backward(x, w, dy, 1e-6)


@pytest.mark.parametrize("x_dtype,w_dtype", MIXED_PAIRS, ids=MIXED_IDS)
def test_backward_mixed_dtypes(x_dtype, w_dtype):
    x, w, dy = _inputs((2, 9, 130), x_dtype, w_dtype, seed=2)
    _check_backward(x, w, dy, 1e-6)


@pytest.mark.parametrize("dtype", DTYPES, ids=_name)
def test_zero_rows(dtype):
    # All-zero rows: y = 0, rstd = 1 / sqrt(eps), dx = rstd * dy * g, no dweight contribution.
    x, w, dy = _inputs((6, 33), dtype, dtype, seed=3)
    x[1] = 0
    x[4] = 0
    _check_forward(x, w, 1e-6)
    _check_backward(x, w, dy, 1e-6)
    y = rms_norm(x, w, 1e-6)
    assert (y[1] == 0).all() and (y[4] == 0).all()


@pytest.mark.parametrize("eps", [0.0, 1e-5, 0.5])
def test_eps(eps):
    # Small inputs so that eps matters (x^2 ~ 1e-4 against eps); eps = 0 is plain x / rms(x).
    x, w, dy = _inputs((7, 40), torch.float32, torch.float32, seed=4, scale=1e-2)
    _check_forward(x, w, eps)
    _check_backward(x, w, dy, eps)


@pytest.mark.parametrize("shape", [(0, 16), (2, 0, 16)], ids=str)
def test_zero_size_rows(shape):
    x, w, _ = _inputs(shape, torch.float32, torch.bfloat16)
    x.requires_grad_()
    w.requires_grad_()
    y = rms_norm(x, w)
    assert y.shape == shape and y.dtype == x.dtype
    y.sum().backward()
    assert x.grad.shape == shape
    assert w.grad.dtype == torch.bfloat16 and torch.equal(w.grad, torch.zeros_like(w))


def test_non_contiguous_input_and_grad():
    base, _, _ = _inputs((5, 2, 48), torch.float32, torch.float32, seed=5)
    x = base[:, 1, ::2]  # feature stride 2
    w = torch.linspace(0.5, 1.5, x.shape[-1], device=DEVICE)
    dy = torch.randn(x.shape[::-1], generator=torch.Generator().manual_seed(6)).to(DEVICE).t()
    _check_forward(x, w, 1e-6)
    _check_backward(x, w, dy, 1e-6)


def test_backward_deterministic():
    x, w, dy = _inputs((37, 100), torch.float32, torch.float32, seed=7)
    first = _grads(rms_norm, x, w, dy, 1e-6)
    second = _grads(rms_norm, x, w, dy, 1e-6)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def _bad_calls():
    x, w, dy = _inputs((4, 8), torch.float32, torch.float32)
    rstd = torch.ones(4, device=DEVICE)
    return {
        "int x": lambda: rms_norm(x.to(torch.int32), w),
        "int8 x": lambda: rms_norm(x.to(torch.int8), w),
        "float64 x": lambda: rms_norm(x.double(), w),
        "float64 weight": lambda: rms_norm(x, w.double()),
        "int weight": lambda: rms_norm(x, w.to(torch.int32)),
        "weight too long": lambda: rms_norm(x, torch.ones(9, device=DEVICE)),
        "2-D weight": lambda: rms_norm(x, w[None]),
        "0-dim x": lambda: rms_norm(x[0, 0], w[:1]),
        "no features": lambda: rms_norm(x[:, :0], w[:0]),
        "3-D x2d": lambda: rms_norm_fwd(x[None], w, 1e-6),
        "dy shape": lambda: rms_norm_bwd(dy[:3], x, w, rstd),
        "int dy": lambda: rms_norm_bwd(dy.to(torch.int32), x, w, rstd),
        "rstd dtype": lambda: rms_norm_bwd(dy, x, w, rstd.double()),
        "rstd shape": lambda: rms_norm_bwd(dy, x, w, rstd[:3]),
    }


@pytest.mark.parametrize("case", list(_bad_calls()))
def test_bad_inputs_raise(case):
    with pytest.raises(ValueError):
        _bad_calls()[case]()
