"""bitk.triton_kernels.activation_quant against bitk.numerics: codes and scales bit for bit.

The reference runs on the same device as the kernel; every comparison is exact, to the bit, since
the computation is one max, one correctly rounded division and one product per element.
"""

from __future__ import annotations

import pytest
import torch

from bitk import numerics
from bitk.triton_kernels.activation_quant import fake_quantize_activations, quantize_activations
from bitk_kernel_testing import DEVICE, DTYPES, ROW_SHAPES

SHAPES = ROW_SHAPES + ((2, 3, 64), (4, 1, 33), (1, 5, 7))


def make_rows(shape: tuple[int, ...], dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    """Gaussian rows with per-row magnitudes over six decades, an outlier in the first row and -0.0s."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g)
    x = x * 10.0 ** (6.0 * torch.rand((*shape[:-1], 1), generator=g) - 3.0)
    x.view(-1)[0] *= 20.0
    x.view(-1)[1::13] = -0.0
    return x.to(dtype).to(DEVICE)


def bits(t: torch.Tensor) -> torch.Tensor:
    """The float tensor's bit patterns, so that comparisons tell -0.0 from +0.0."""
    return t.view({2: torch.int16, 4: torch.int32}[t.element_size()])


def assert_matches_reference(x: torch.Tensor) -> None:
    xq, s = quantize_activations(x)
    ref_xq, ref_s = numerics.quantize_activations(x)
    assert xq.dtype == torch.int8 and xq.shape == x.shape
    assert s.dtype == torch.float32 and s.shape == (*x.shape[:-1], 1)
    assert torch.equal(bits(s), bits(ref_s))
    assert torch.equal(xq, ref_xq)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES)
def test_quantize_activations_matches_reference(shape, dtype):
    assert_matches_reference(make_rows(shape, dtype, seed=len(shape) * 1000 + shape[-1]))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES)
def test_fake_quantize_activations_forward_and_ste_backward(shape, dtype):
    x = make_rows(shape, dtype, seed=shape[0]).requires_grad_()
    y = fake_quantize_activations(x)
    xq, s = numerics.quantize_activations(x.detach())
    assert y.dtype == dtype and y.shape == x.shape
    assert torch.equal(bits(y), bits((xq.float() / s).to(dtype)))
    assert torch.equal(bits(y), bits(numerics.fake_quantize_activations(x.detach(), 1.0)))
    grad = torch.randn(shape, generator=torch.Generator().manual_seed(1)).to(dtype).to(DEVICE)
    y.backward(grad)
    assert x.grad.dtype == dtype
    assert torch.equal(x.grad, grad)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_all_zero_rows(dtype):
    x = make_rows((4, 33), dtype)
    x[1] = 0.0
    x[3] = 0.0
    xq, s = quantize_activations(x)
    assert torch.equal(s[1], torch.div(127.0, torch.tensor([1e-5], device=DEVICE)))
    assert not xq[1].any() and not xq[3].any()
    assert not fake_quantize_activations(x)[[1, 3]].any()
    assert_matches_reference(x)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_ties_round_half_to_even(dtype):
    # Row 0: amax 127 gives s = 1, row 1: amax 254 gives s = 0.5; each x * s is exactly k + 0.5.
    row0 = [0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 126.5, -126.5, 127.0]
    row1 = [1.0, 3.0, 5.0, -1.0, -3.0, -5.0, 253.0, -253.0, 254.0]
    x = torch.tensor([row0, row1], dtype=dtype, device=DEVICE)
    xq, s = quantize_activations(x)
    assert s.flatten().tolist() == [1.0, 0.5]
    expected = [0, 2, 2, 0, -2, -2, 126, -126, 127]
    assert xq.tolist() == [expected, expected]
    assert_matches_reference(x)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("magnitude", ["huge", "tiny"])
def test_extreme_magnitudes(dtype, magnitude):
    # huge: amax near half the dtype's largest value (s near the float32 normal range's bottom for
    # bf16); tiny: amax below the 1e-5 clamp, so s = 127 / 1e-5 and the codes stay small.
    scale = torch.finfo(dtype).max / 8 if magnitude == "huge" else 1e-6
    x = (torch.randn(5, 257, generator=torch.Generator().manual_seed(3)) * scale).to(dtype).to(DEVICE)
    assert_matches_reference(x)
    assert torch.equal(bits(fake_quantize_activations(x)), bits(numerics.fake_quantize_activations(x, 1.0)))


@pytest.mark.parametrize("shape", [(0, 16), (2, 0, 8)])
def test_zero_rows(shape):
    x = torch.zeros(shape, device=DEVICE, requires_grad=True)
    xq, s = quantize_activations(x)
    assert xq.shape == shape and xq.dtype == torch.int8
    assert s.shape == (*shape[:-1], 1)
    y = fake_quantize_activations(x)
    assert y.shape == shape
    y.sum().backward()
    assert x.grad.shape == shape


def test_strided_input():
    base = make_rows((6, 40), torch.float32)
    assert_matches_reference(base[::2, 3:37])
    assert_matches_reference(base.t())


@pytest.mark.parametrize(
    "x",
    [
        torch.ones(3, 4, dtype=torch.int32),
        torch.ones(3, 4, dtype=torch.float64),
        torch.tensor(1.0),
        torch.ones(3, 0),
        torch.ones(1, 65537),
    ],
    ids=["int32", "float64", "0-dim", "no-features", "row-too-long"],
)
def test_bad_inputs_raise(x):
    x = x.to(DEVICE)
    with pytest.raises(ValueError):
        quantize_activations(x)
    with pytest.raises(ValueError):
        fake_quantize_activations(x)


def test_not_a_tensor_raises():
    with pytest.raises(ValueError, match="torch.Tensor"):
        quantize_activations([[1.0, 2.0]])
