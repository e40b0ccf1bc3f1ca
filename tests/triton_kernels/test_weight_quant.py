"""bitk.triton_kernels.weight_quant against bitk.numerics.

The kernel sums |w| in float64 in another order than the reference, so gamma may in principle
differ by one float32 ulp: gamma is checked to within 1 ulp, codes exactly against the kernel's own
gamma, and against the reference's codes whenever the gammas are equal (they are for every input
here).
"""

from __future__ import annotations

import pytest
import torch

from bitk import numerics
from bitk.triton_kernels.weight_quant import fake_quantize_weights, quantize_weights
from bitk_kernel_testing import DEVICE, DTYPES, ROW_SHAPES

MATRIX_SHAPES = ROW_SHAPES + ((31, 64), (256, 257))
SHAPES = MATRIX_SHAPES + ((2, 3, 64), (7,), ())


def make_weights(shape: tuple[int, ...], dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    """Gaussian weights of a trained layer's scale with a few large outliers and -0.0s."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g) * 0.02
    w.view(-1)[::97] *= 30.0
    w.view(-1)[1::13] = -0.0
    return w.to(dtype).to(DEVICE)


def bits(t: torch.Tensor) -> torch.Tensor:
    """The float tensor's bit patterns, so that comparisons tell -0.0 from +0.0."""
    return t.view({2: torch.int16, 4: torch.int32}[t.element_size()])


def codes_for(w: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    return torch.round(w.float() / gamma).clamp(-1, 1).to(torch.int8)


def check_gamma(gamma: torch.Tensor, w: torch.Tensor) -> bool:
    """gamma is a 0-dim float32 on w's device within 1 ulp of the reference; True if equal."""
    ref = numerics.quantize_weights(w)[1]
    assert gamma.shape == () and gamma.dtype == torch.float32 and gamma.device == w.device
    ulp = torch.nextafter(ref, torch.tensor(float("inf"), device=ref.device)) - ref
    assert (gamma - ref).abs() <= ulp, f"gamma {gamma.item()!r} vs reference {ref.item()!r}"
    return bool(gamma == ref)


def assert_codes(codes: torch.Tensor, gamma: torch.Tensor, w: torch.Tensor) -> None:
    assert codes.dtype == torch.int8 and codes.shape == w.shape
    assert torch.equal(codes, codes_for(w, gamma))
    if check_gamma(gamma, w):
        assert torch.equal(codes, numerics.quantize_weights(w)[0])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES)
def test_quantize_weights_matches_reference(shape, dtype):
    w = make_weights(shape, dtype, seed=sum(shape) + len(shape))
    codes, gamma = quantize_weights(w)
    assert_codes(codes, gamma, w)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", MATRIX_SHAPES[:-1] + ((2, 3, 64),))
def test_fake_quantize_weights_forward_and_ste_backward(shape, dtype):
    w = make_weights(shape, dtype, seed=7).requires_grad_()
    y = fake_quantize_weights(w)
    codes, gamma = quantize_weights(w.detach())
    assert y.dtype == dtype and y.shape == w.shape
    assert torch.equal(bits(y), bits((codes.float() * gamma).to(dtype)))
    if check_gamma(gamma, w.detach()):
        assert torch.equal(bits(y), bits(numerics.fake_quantize_weights(w.detach(), 1.0)))
    grad = torch.randn(shape, generator=torch.Generator().manual_seed(1)).to(dtype).to(DEVICE)
    y.backward(grad)
    assert w.grad.dtype == dtype
    assert torch.equal(w.grad, grad)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_all_zero_weights(dtype):
    w = torch.zeros(5, 7, dtype=dtype, device=DEVICE)
    codes, gamma = quantize_weights(w)
    assert torch.equal(gamma, torch.tensor(1e-5, device=DEVICE))
    assert not codes.any()
    assert not fake_quantize_weights(w).any()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_ties_round_half_to_even(dtype):
    # mean |w| = 1, so gamma = 1 and w / gamma is exactly w: 0.5 -> 0, 1.5 -> 2 -> 1, 1.75 -> 2 -> 1.
    w = torch.tensor([[0.5, 1.5, -0.5, -1.5], [1.0, -1.0, 0.25, 1.75]], dtype=dtype, device=DEVICE)
    codes, gamma = quantize_weights(w)
    assert gamma.item() == 1.0
    assert codes.tolist() == [[0, 1, 0, -1], [1, -1, 0, 1]]
    assert_codes(codes, gamma, w)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_large_magnitudes(dtype):
    w = (torch.randn(7, 33, generator=torch.Generator().manual_seed(5)) * (torch.finfo(dtype).max / 8)).to(dtype)
    w = w.to(DEVICE)
    codes, gamma = quantize_weights(w)
    assert_codes(codes, gamma, w)
    assert torch.equal(bits(fake_quantize_weights(w)), bits((codes.float() * gamma).to(dtype)))


@pytest.mark.parametrize("mode", ["codes", "fake"])
def test_no_host_sync(mode, monkeypatch):
    w = make_weights((33, 257), torch.bfloat16)

    def call() -> tuple[torch.Tensor, ...]:
        if mode == "fake":
            return (fake_quantize_weights(w),)
        return quantize_weights(w)

    expected = call()  # also compiles the kernels outside the checked region
    if DEVICE == "cuda":
        torch.cuda.set_sync_debug_mode("error")
        try:
            out = call()
        finally:
            torch.cuda.set_sync_debug_mode(0)
    else:
        # On CPU a sync cannot be observed, so forbid what would cause one on a GPU: reading a
        # tensor's value on the host. Triton's interpreter itself calls none of these (it reads
        # tensors through data_ptr and copies whole storages), so the check sees the launchers only.
        def forbidden(self, *args, **kwargs):
            raise AssertionError("host read of a tensor value")

        for name in ("item", "tolist", "numpy", "nonzero", "__bool__", "__float__", "__int__", "__index__"):
            monkeypatch.setattr(torch.Tensor, name, forbidden)
        out = call()
        monkeypatch.undo()
    assert all(torch.equal(a, b) for a, b in zip(out, expected, strict=True))


@pytest.mark.parametrize(
    "w",
    [
        torch.ones(3, 4, dtype=torch.int32),
        torch.ones(3, 4, dtype=torch.float64),
        torch.ones(0, 4),
        torch.ones(()),
    ],
    ids=["int32", "float64", "empty", "0-dim"],
)
def test_bad_inputs_raise(w):
    w = w.to(DEVICE)
    if w.dim() == 0:  # per-tensor codes of a 0-dim weight are fine
        assert quantize_weights(w)[0].shape == ()
        return
    with pytest.raises(ValueError):
        quantize_weights(w)
    with pytest.raises(ValueError):
        fake_quantize_weights(w)


def test_many_programs_and_partials(monkeypatch):
    # Small blocks make every kernel run several programs with a ragged last one, and the gamma
    # kernel loop over its partial sums, as large weights do on a GPU.
    from bitk.triton_kernels import weight_quant

    monkeypatch.setattr(weight_quant, "_BLOCK", 256)
    monkeypatch.setattr(weight_quant, "_GAMMA_BLOCK", 2)
    w = make_weights((5, 257), torch.float32, seed=11)
    codes, gamma = quantize_weights(w)
    assert_codes(codes, gamma, w)
    assert torch.equal(bits(fake_quantize_weights(w)), bits(codes.float() * gamma))
