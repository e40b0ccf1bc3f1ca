"""Fused SubLN + int8 activation quantization (bitk.triton_kernels.rms_norm_quant) against the
pure-torch reference ``quantize_activations(rms_norm(x.float(), w.float(), eps))``.

The rule for xq and s is derived, not guessed. Kernel and reference both compute in float32
``y = (x / rms) * g`` (2 roundings), ``amax = max|y|``, ``s = 127 / max(amax, 1e-5)`` (1 rounding)
and ``v = y * s`` (1 rounding), then round v half to even; only their sums of squares (so rms)
differ in order. Without the 1e-5 clamp, rms cancels in ``v = 127 * y / amax``: each side's v is
within about 6 float32 rounding units u = 2^-24 (relative) of the exact ``127 x g / max|x g|``,
so the two differ by at most 12 u |v|. With the clamp active s is the same constant on both sides
and v is proportional to 1 / rms, so the relative gap between the two rms values adds in; it is
measured per row as ``gap = |1 / (rstd * rms_ref) - 1| + u`` (the kernel's rstd = 1 / rms is
itself rounded once). With a margin the rule is

    tol = |v_ref| * (16 u + 2 gap):  xq == xq_ref wherever v_ref is farther than tol from a tie
    k + 0.5, and |xq - xq_ref| <= 1 where it is closer;
    |s - s_ref| <= s_ref * (gap + 8 u)   (s = 127 / amax is proportional to rms).

The positions near a tie are rare (about 2 * tol of the values): test_tie_exceptions_are_rare.
"""

from __future__ import annotations

import pytest
import torch

from bitk.numerics import quantize_activations
from bitk.numerics import rms_norm as rms_norm_ref
from bitk.triton_kernels.rms_norm import rms_norm, rms_norm_fwd
from bitk.triton_kernels.rms_norm_quant import rms_norm_fake_quant, rms_norm_quant, rms_norm_quant_fwd
from bitk_kernel_testing import DEVICE, DTYPES, ROW_SHAPES, assert_derived_close


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


SHAPES = ROW_SHAPES + ((2, 3, 5), (2, 1, 97), (3, 2, 64))
# Every x dtype with every weight dtype; the mixed pairs on a few shapes (the weight dtype only
# changes one load), the matching pairs on all of them.
MIXED_PAIRS = [(xd, wd) for xd in DTYPES for wd in DTYPES if xd != wd]
MIXED_IDS = [f"x_{_name(a)}-w_{_name(b)}" for a, b in MIXED_PAIRS]
MIXED_SHAPES = ((5, 257), (2, 1, 97))
U = 2.0**-24  # float32 unit roundoff
S_CLAMPED = torch.div(127.0, torch.tensor(1e-5)).item()  # s of a row whose amax is below 1e-5


def _inputs(shape, x_dtype, w_dtype, seed=0, scale=2.0, w_scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen) * scale
    w = (1.0 + 0.5 * torch.randn(shape[-1], generator=gen)) * w_scale
    dy = torch.randn(shape, generator=gen)
    return x.to(DEVICE, x_dtype), w.to(DEVICE, w_dtype), dy.to(DEVICE, x_dtype)


def _reference(x2d, w, eps):
    """(xq, s, v, rms) of the reference: v = y * s is quantize_activations' value before rounding
    and rms that of rms_norm, bit for bit (the same torch ops on the same tensors)."""
    xf, wf = x2d.float(), w.float()
    y = rms_norm_ref(xf, wf, eps)
    xq, s = quantize_activations(y)
    rms = torch.sqrt(xf.square().mean(dim=-1, keepdim=True) + eps)
    return xq, s, y * s, rms


def _check_quant(x, w, eps):
    """Checks the launcher against the rule of the module docstring; returns the numbers of
    positions near a tie and of positions that differ from the reference."""
    x2d = x.reshape(-1, x.shape[-1])
    xq, s, rstd = rms_norm_quant_fwd(x2d, w, eps)
    assert xq.dtype == torch.int8 and xq.shape == x2d.shape
    assert s.dtype == torch.float32 and s.shape == (x2d.shape[0], 1)
    assert rstd.dtype == torch.float32 and rstd.shape == (x2d.shape[0],)
    xq_ref, s_ref, v_ref, rms_ref = _reference(x2d, w, eps)
    gap = (1.0 / (rstd.double()[:, None] * rms_ref.double()) - 1.0).abs() + U

    s_err = (s.double() - s_ref.double()).abs()
    assert (s_err <= s_ref.double() * (gap + 8 * U)).all(), f"s off by {(s_err / s_ref.double()).max():.3g} (rel)"
    x64, w64 = x2d.double(), w.double()
    y64 = x64 / torch.sqrt(x64.square().mean(-1, keepdim=True) + eps) * w64
    s64 = 127.0 / y64.abs().amax(-1, keepdim=True).clamp_min(1e-5)
    assert_derived_close(s, s64, s_ref, "s")
    assert_derived_close(rstd, 1.0 / torch.sqrt(x64.square().mean(-1) + eps), 1.0 / rms_ref[:, 0], "rstd")

    v = v_ref.double()
    near_tie = ((v - v.floor()) - 0.5).abs() <= v.abs() * (16 * U + 2 * gap)
    diff = xq.int() - xq_ref.int()
    assert (diff.abs() <= 1).all(), "xq differs from the reference by more than 1"
    far = diff[~near_tie]
    assert (far == 0).all(), f"{(far != 0).sum().item()} xq values differ away from a rounding tie"
    return near_tie.sum().item(), (diff != 0).sum().item()


@pytest.mark.parametrize("dtype", DTYPES, ids=_name)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_forward(shape, dtype):
    x, w, _ = _inputs(shape, dtype, dtype)
    _check_quant(x, w, 1e-6)


@pytest.mark.parametrize("x_dtype,w_dtype", MIXED_PAIRS, ids=MIXED_IDS)
@pytest.mark.parametrize("shape", MIXED_SHAPES, ids=str)
def test_forward_mixed_dtypes(shape, x_dtype, w_dtype):
    x, w, _ = _inputs(shape, x_dtype, w_dtype)
    _check_quant(x, w, 1e-6)


@pytest.mark.parametrize("x_dtype", [torch.float32, torch.bfloat16], ids=_name)
def test_tie_exceptions_are_rare(x_dtype):
    # 64 * 1024 values: near-tie positions are about 2 * 16 u * |v| <= 3e-4 of them.
    x, w, _ = _inputs((64, 1024), x_dtype, torch.float32, seed=11)
    near, differ = _check_quant(x, w, 1e-6)
    assert near < 0.01 * x.numel() and differ < 0.01 * x.numel(), (near, differ)


@pytest.mark.parametrize("dtype", DTYPES, ids=_name)
def test_exact_ties_round_half_even(dtype):
    # sum(x^2) = 16384 = 16 * 32^2 and eps = 0, so rms = 32 and every step is exact: y = x / 32,
    # s = 127 / max|y| = 32 and v = x. The ties must round half to even like torch.round, with no exemption.
    row = [127.0, 0.5, 1.5, 2.5, 3.5, 4.5, 5.5, -0.5, -1.5, -2.5, -3.5, 12.5, 2.5, 0.0, 0.0, 0.0]
    x = torch.tensor([row, [v / 8 for v in row]], device=DEVICE).to(dtype)  # rms 4, the same y
    w = torch.ones(16, device=DEVICE, dtype=dtype)
    xq, s = rms_norm_quant(x, w, 0.0)
    expected = [127, 0, 2, 2, 4, 4, 6, 0, -2, -2, -4, 12, 2, 0, 0, 0]
    assert xq.tolist() == [expected, expected] and s[:, 0].tolist() == [32.0, 32.0]
    xq_ref, s_ref, _, _ = _reference(x, w, 0.0)
    assert torch.equal(xq, xq_ref) and torch.equal(s, s_ref)


def test_functional_shapes():
    x, w, _ = _inputs((2, 3, 40), torch.bfloat16, torch.float32, seed=1)
    xq, s = rms_norm_quant(x, w, 1e-5)
    xq2d, s2d, _ = rms_norm_quant_fwd(x.reshape(-1, 40), w, 1e-5)
    assert xq.shape == x.shape and xq.dtype == torch.int8 and s.shape == (2, 3, 1) and s.dtype == torch.float32
    assert torch.equal(xq.reshape(-1, 40), xq2d) and torch.equal(s.reshape(-1, 1), s2d)


@pytest.mark.parametrize("dtype", DTYPES, ids=_name)
def test_zero_rows(dtype):
    x, w, _ = _inputs((5, 33), dtype, dtype, seed=2)
    x[0] = 0
    x[3] = 0
    _check_quant(x, w, 1e-6)
    xq, s = rms_norm_quant(x, w)
    assert (xq[[0, 3]] == 0).all() and (s[[0, 3]] == S_CLAMPED).all()


def test_amax_clamp():
    # Tiny gains: every |y| < 1e-5, so s is the clamped constant and v follows 1 / rms.
    x, w, _ = _inputs((6, 50), torch.float32, torch.float32, seed=3, w_scale=1e-7)
    _check_quant(x, w, 1e-6)
    _, s = rms_norm_quant(x, w)
    assert (s == S_CLAMPED).all()


@pytest.mark.parametrize("eps", [0.0, 1e-5, 0.5])
def test_eps(eps):
    x, w, _ = _inputs((7, 40), torch.float32, torch.float16, seed=4, scale=1e-2)
    _check_quant(x, w, eps)


@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (5, 257), (2, 3, 5)], ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=_name)
def test_fake_quant(shape, dtype):
    # Forward: xq / s of the fused kernel in x's dtype. Backward: the straight-through estimator
    # passes the incoming gradient to the RMSNorm backward, so the gradients are rms_norm's.
    x, w, dy = _inputs(shape, dtype, dtype, seed=5)
    x2d = x.reshape(-1, shape[-1])
    xq, s, rstd = rms_norm_quant_fwd(x2d, w, 1e-6)
    # The same statistics as rms_norm_fwd, so the shared backward sees the same rstd.
    assert torch.equal(rstd, rms_norm_fwd(x2d, w, 1e-6)[1])
    xg, wg = x.clone().requires_grad_(), w.clone().requires_grad_()
    out = rms_norm_fake_quant(xg, wg, 1e-6)
    assert out.dtype == x.dtype and out.shape == x.shape
    assert torch.equal(out.detach(), (xq.float() / s).to(x.dtype).view(shape))
    dx, dw = torch.autograd.grad(out, (xg, wg), dy)
    xn, wn = x.clone().requires_grad_(), w.clone().requires_grad_()
    dx_norm, dw_norm = torch.autograd.grad(rms_norm(xn, wn, 1e-6), (xn, wn), dy)
    assert dx.dtype == x.dtype and dw.dtype == w.dtype
    assert torch.equal(dx, dx_norm) and torch.equal(dw, dw_norm)


def test_fake_quant_backward_vs_reference():
    # Against float64 autograd of the reference RMSNorm (the STE makes the quantizer the identity).
    x, w, dy = _inputs((4, 3, 129), torch.float32, torch.float32, seed=6)
    grads = []
    for fn, (xa, wa, dya) in [
        (rms_norm_fake_quant, (x, w, dy)),
        (rms_norm_ref, (x.double(), w.double(), dy.double())),
        (rms_norm_ref, (x, w, dy)),
    ]:
        xa, wa = xa.clone().requires_grad_(), wa.clone().requires_grad_()
        grads.append(torch.autograd.grad(fn(xa, wa, 1e-6), (xa, wa), dya))
    (dx, dw), (dx64, dw64), (dx32, dw32) = grads
    assert_derived_close(dx, dx64, dx32, "dx")
    assert_derived_close(dw, dw64, dw32, "dweight")


@pytest.mark.parametrize("shape", [(0, 16), (2, 0, 16)], ids=str)
def test_zero_size_rows(shape):
    x, w, _ = _inputs(shape, torch.float16, torch.float32)
    xq, s = rms_norm_quant(x, w)
    assert xq.shape == shape and xq.dtype == torch.int8 and s.shape == (*shape[:-1], 1)
    xg, wg = x.clone().requires_grad_(), w.clone().requires_grad_()
    out = rms_norm_fake_quant(xg, wg)
    assert out.shape == shape and out.dtype == x.dtype
    out.sum().backward()
    assert xg.grad.shape == shape and torch.equal(wg.grad, torch.zeros_like(w))


def _bad_calls():
    x, w, _ = _inputs((4, 8), torch.float32, torch.float32)
    return {
        "int x": lambda: rms_norm_quant(x.to(torch.int32), w),
        "float64 x": lambda: rms_norm_quant(x.double(), w),
        "float64 weight": lambda: rms_norm_quant(x, w.double()),
        "int weight": lambda: rms_norm_quant(x, w.to(torch.int8)),
        "weight too short": lambda: rms_norm_quant(x, w[:7]),
        "0-dim x": lambda: rms_norm_quant(x[0, 0], w[:1]),
        "no features": lambda: rms_norm_quant(x[:, :0], w[:0]),
        "3-D x2d": lambda: rms_norm_quant_fwd(x[None], w, 1e-6),
        "fake quant float64": lambda: rms_norm_fake_quant(x.double(), w),
        "fake quant weight shape": lambda: rms_norm_fake_quant(x, torch.ones(9, device=DEVICE)),
    }


@pytest.mark.parametrize("case", list(_bad_calls()))
def test_bad_inputs_raise(case):
    with pytest.raises(ValueError):
        _bad_calls()[case]()
