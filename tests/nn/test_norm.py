"""RMSNorm / SubLN modules: the reference's numbers on every path."""

from __future__ import annotations

import pytest
import torch

from bitk import numerics
from bitk.nn import RMSNorm, SubLN, use_backend
from bitk_testing import assert_derived_close


@pytest.mark.parametrize("backend", ["reference", "cpu", "triton"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_norm_matches_the_reference(backend, dtype):
    torch.manual_seed(0)
    norm = RMSNorm(96, eps=1e-5)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    x = (torch.randn(2, 7, 96) * 3).to(dtype).requires_grad_()
    with use_backend(backend):
        y = norm(x)
    dy = torch.randn_like(y)
    y.backward(dy)
    x64 = x.detach().double().requires_grad_()
    w64 = norm.weight.detach().double().requires_grad_()
    y64 = numerics.rms_norm(x64, w64, 1e-5)
    y64.backward(dy.double())
    xr = x.detach().clone().requires_grad_()
    wr = norm.weight.detach().clone().requires_grad_()
    yr = numerics.rms_norm(xr, wr, 1e-5)
    yr.backward(dy)
    assert y.dtype == dtype
    assert_derived_close(y, y64, yr, "y")
    assert_derived_close(x.grad, x64.grad, xr.grad, "dx")
    assert_derived_close(norm.weight.grad, w64.grad, wr.grad, "dweight")


def test_subln_is_an_rmsnorm_with_unit_gain():
    norm = SubLN(32)
    assert isinstance(norm, RMSNorm) and torch.equal(norm.weight, torch.ones(32))
    assert norm.eps == 1e-5 and "32, eps=1e-05" in repr(norm)
    with pytest.raises(ValueError, match="dim"):
        SubLN(0)
    with pytest.raises(ValueError, match="eps"):
        SubLN(8, eps=0.0)
