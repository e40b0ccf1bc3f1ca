"""Tests of bitk.numerics.rms_norm: hand examples, float64 reference, float32 statistics."""

import math

import pytest
import torch

from bitk.numerics import rms_norm


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _rms_norm64(x, w, eps):
    xd = x.double()
    return xd / torch.sqrt(xd.square().mean(-1, keepdim=True) + eps) * w.double()


def test_rms_norm_hand_examples():
    # mean(x^2) = 4, sqrt = 2: every step is exact.
    y = rms_norm(torch.tensor([[2.0, -2.0, 2.0, -2.0]]), torch.tensor([1.0, 0.5, 2.0, -1.0]), eps=0.0)
    assert y.tolist() == [[1.0, -0.5, 2.0, 1.0]]
    # mean(x^2) = 12.5.
    y = rms_norm(torch.tensor([[3.0, 4.0]]), torch.tensor([1.0, 2.0]), eps=0.0)
    expected = torch.tensor([[3 / math.sqrt(12.5), 8 / math.sqrt(12.5)]])
    torch.testing.assert_close(y, expected, rtol=2e-7, atol=0)
    # eps matters for a small row: mean(x^2) = 1e-6, eps = 1e-6 -> divide by sqrt(2e-6).
    y = rms_norm(torch.tensor([[1e-3, -1e-3]], dtype=torch.float64), torch.ones(2, dtype=torch.float64))
    torch.testing.assert_close(y, torch.tensor([[1 / math.sqrt(2), -1 / math.sqrt(2)]], dtype=torch.float64))


@pytest.mark.parametrize("shape", [(1, 7), (64, 300), (2, 3, 4096)])
def test_rms_norm_float32_against_float64(shape):
    g = _gen(0)
    x = torch.randn(shape, generator=g) * 3
    w = torch.randn(shape[-1], generator=g)
    y = rms_norm(x, w, eps=1e-5)
    ref = _rms_norm64(x, w, 1e-5)
    # About 6 roundings plus the mean's log2(K) of 2^-24 each: allow 16 units of 2^-24, relative.
    assert ((y.double() - ref).abs() <= 2.0**-20 * ref.abs()).all()


def test_rms_norm_float64_stays_float64():
    x = torch.randn(5, 33, generator=_gen(1), dtype=torch.float64)
    w = torch.randn(33, generator=_gen(2), dtype=torch.float64)
    y = rms_norm(x, w)
    assert y.dtype == torch.float64
    torch.testing.assert_close(y, _rms_norm64(x, w, 1e-6), rtol=1e-15, atol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_rms_norm_low_precision_uses_float32_statistics(dtype):
    x = torch.randn(8, 96, generator=_gen(3)).to(dtype)
    w = (1 + 0.1 * torch.randn(96, generator=_gen(4))).to(dtype)
    y = rms_norm(x, w)
    assert y.dtype == dtype
    assert torch.equal(y, rms_norm(x.float(), w.float()).to(dtype))


def test_rms_norm_float16_does_not_overflow():
    # x^2 = 4e6 overflows float16 (max 65504); statistics in float32 do not.
    x = torch.full((2, 16), 2000.0, dtype=torch.float16)
    x[1, ::2] = -2000.0
    y = rms_norm(x, torch.ones(16, dtype=torch.float16))
    assert torch.isfinite(y).all()
    assert torch.equal(y.abs(), torch.ones(2, 16, dtype=torch.float16))


def test_rms_norm_gradcheck():
    x = torch.randn(3, 6, generator=_gen(5), dtype=torch.float64, requires_grad=True)
    w = torch.randn(6, generator=_gen(6), dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: rms_norm(a, b, eps=1e-5), (x, w))


def test_rms_norm_bfloat16_backward_dtypes():
    x = torch.randn(4, 32, generator=_gen(7)).to(torch.bfloat16).requires_grad_()
    w = torch.ones(32, dtype=torch.bfloat16, requires_grad=True)
    rms_norm(x, w).float().square().sum().backward()
    assert x.grad.dtype == torch.bfloat16 and w.grad.dtype == torch.bfloat16
    assert torch.isfinite(x.grad.float()).all()


def test_rms_norm_does_not_sync_host(no_host_sync):
    x = torch.randn(2, 3, 16, generator=_gen(8), requires_grad=True)
    w = torch.randn(16, generator=_gen(9), requires_grad=True)
    with no_host_sync():
        y = rms_norm(x, w)
        y.backward(torch.ones_like(y))


def test_rms_norm_rejects_bad_shapes():
    with pytest.raises(ValueError, match="weight shape"):
        rms_norm(torch.ones(2, 8), torch.ones(7))
    with pytest.raises(ValueError, match="floating point"):
        rms_norm(torch.ones(2, 8, dtype=torch.int64), torch.ones(8))
