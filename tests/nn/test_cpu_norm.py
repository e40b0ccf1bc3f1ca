"""bitk.nn.cpu_norm: RMSNorm's CPU path gives autograd-on-the-reference's bits, on every kernel variant."""

from __future__ import annotations

import collections

import pytest
import torch

from bitk import numerics
from bitk.nn import RMSNorm, cpu_norm, functional, use_backend
from bitk.nn import cpu as cpu_path
from bitk_testing import assert_same_bits

codecs = pytest.importorskip("bitk._codecs")

# (shape, scale): tokens in 1-3 leading dimensions, features not a multiple of any vector width,
# one feature, no tokens; tiny, unit and large values.
CASES = [
    ((33,), 1.0),
    ((3, 5, 7), 1.0),
    ((2, 64, 256), 1.0),
    ((7, 768), 30.0),
    ((1, 1), 1.0),
    ((4, 33), 1e-3),
    ((2, 3, 4, 65), 3.0),
]
NEEDS = [(True, True), (True, False), (False, True)]


def _reference(x, w, g, eps, needs):
    xr, wr = x.clone().requires_grad_(needs[0]), w.clone().requires_grad_(needs[1])
    y = numerics.rms_norm(xr, wr, eps)
    y.backward(g)
    return y.detach(), xr.grad, wr.grad


def _bitk(x, w, g, eps, needs):
    xb, wb = x.clone().requires_grad_(needs[0]), w.clone().requires_grad_(needs[1])
    y = functional.rms_norm(xb, wb, eps)
    y.backward(g)
    return y.detach(), xb.grad, wb.grad


@pytest.mark.parametrize("variant", cpu_path.kernel_variants())
@pytest.mark.parametrize(("shape", "scale"), CASES)
def test_values_and_gradients_are_the_references_bit_for_bit(variant, shape, scale):
    gen = torch.Generator().manual_seed(len(shape) * 100 + shape[-1])
    x = torch.randn(shape, generator=gen) * scale
    w = torch.rand(shape[-1], generator=gen) + 0.5
    g = torch.randn(shape, generator=gen)
    assert cpu_norm.applies(x, w)
    cpu_path.set_kernel_variant(variant)
    try:
        for needs in NEEDS:
            for eps in (1e-5, 1e-6):
                assert_same_bits(_bitk(x, w, g, eps, needs), _reference(x, w, g, eps, needs))
    finally:
        cpu_path.set_kernel_variant("auto")


def _residual_block_gradients(backend: str) -> list[torch.Tensor]:
    torch.manual_seed(0)
    norm, final, mix = RMSNorm(64), RMSNorm(64), torch.nn.Linear(64, 64)
    h = (torch.randn(4, 16, 64) * 2).requires_grad_()
    with use_backend(backend):
        out = h + torch.tanh(mix(norm(h)))  # h feeds the norm and the residual
        final(out).pow(2).sum().backward()
    return [h.grad, norm.weight.grad, final.weight.grad, mix.weight.grad]


def test_a_residual_streams_gradient_is_the_references_bit_for_bit():
    # h's gradient has three terms (the residual's, the norm's two): autograd adds them in one order
    # on the reference's graph, and the op hands the norm's two back separately to keep it.
    for got, want in zip(_residual_block_gradients("cpu"), _residual_block_gradients("reference"), strict=True):
        assert torch.equal(got, want)


def test_extreme_rows_give_the_references_values():
    # a zero row (rms = sqrt(eps)), one whose squares overflow (rms inf), one holding NaN, one inf
    x = torch.randn(6, 40)
    x[1] = 0.0
    x[2, :5] = 3e38
    x[3, 7] = float("nan")
    x[4, 2] = float("inf")
    w, g = torch.rand(40) + 0.5, torch.randn(6, 40)
    for needs in NEEDS:
        assert_same_bits(_bitk(x, w, g, 1e-5, needs), _reference(x, w, g, 1e-5, needs))


def test_a_gradient_that_is_not_contiguous_gives_the_same_bits():
    x, w = torch.randn(12, 48), torch.rand(48) + 0.5
    g = torch.randn(48, 12).T  # as a transposing op's backward may hand it
    assert not g.is_contiguous()
    assert_same_bits(_bitk(x, w, g, 1e-5, (True, True)), _reference(x, w, g, 1e-5, (True, True)))


class _CountingCodecs:
    """bitk._codecs, counting the calls of each function."""

    def __init__(self):
        self.calls = collections.Counter()

    def __getattr__(self, name):
        fn = getattr(codecs, name)

        def call(*args, **kwargs):
            self.calls[name] += 1
            return fn(*args, **kwargs)

        return call


def test_a_modules_gain_parameter_takes_the_cxx_passes(monkeypatch):
    # An RMSNorm's gain is an nn.Parameter (a Tensor subclass with its own memory): the C++ passes
    # read it as they read a plain tensor, in training and in evaluation.
    spy = _CountingCodecs()
    monkeypatch.setattr(cpu_norm, "_codecs", lambda: spy)
    norm = RMSNorm(64)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    x, g = torch.randn(4, 16, 64), torch.randn(4, 16, 64)
    xb = x.clone().requires_grad_()
    with use_backend("cpu"):
        y = norm(xb)
        y.backward(g)
        with torch.no_grad():
            norm(x)
    got = (y.detach(), xb.grad, norm.weight.grad)
    assert spy.calls == {"rms_norm_apply": 2, "rms_norm_backward_terms": 1, "rms_norm_backward_input": 1}
    assert_same_bits(got, _reference(x, norm.weight.detach(), g, norm.eps, (True, True)))


def test_without_the_extension_torchs_ops_give_the_same_bits(monkeypatch):
    monkeypatch.setattr(cpu_norm, "_codecs", lambda: None)
    x, w, g = torch.randn(3, 9, 80), torch.rand(80) + 0.5, torch.randn(3, 9, 80)
    for needs in NEEDS:
        assert_same_bits(_bitk(x, w, g, 1e-5, needs), _reference(x, w, g, 1e-5, needs))
    with torch.no_grad():
        assert torch.equal(functional.rms_norm(x, w, 1e-5), numerics.rms_norm(x, w, 1e-5))


def test_without_gradients_no_op_runs_and_the_values_are_the_references(monkeypatch):
    x, w = torch.randn(5, 64), torch.rand(64) + 0.5
    monkeypatch.setattr(cpu_norm, "_rms_norm_op", None)  # the no-grad path must not reach it
    with torch.no_grad():
        assert torch.equal(functional.rms_norm(x, w, 1e-5), numerics.rms_norm(x, w, 1e-5))
    assert torch.equal(functional.rms_norm(x, w, 1e-5), numerics.rms_norm(x, w, 1e-5))  # nothing requires grad


def test_the_backward_keeps_only_x_and_rms():
    x, w = torch.randn(16, 96, requires_grad=True), torch.rand(96, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        functional.rms_norm(x, w, 1e-5)
    assert sum(t.numel() for t in saved) == x.numel() + 16 + 96  # x, rms [16, 1], w


@pytest.mark.parametrize(
    ("x", "w"),
    [
        (torch.randn(4, 8, dtype=torch.bfloat16), torch.ones(8)),  # bf16: the reference's float32 statistics path
        (torch.randn(8, 4).T, torch.ones(8)),  # not contiguous
        (torch.randn(4, 8), torch.ones(8, dtype=torch.bfloat16)),
        (torch.randn(4, 8), torch.ones(7)),  # a mismatched gain: the reference's error
        (torch.randn(4, 8), torch.ones(16)[::2]),  # a strided gain
    ],
)
def test_other_inputs_take_the_reference(x, w):
    assert not cpu_norm.applies(x, w)


def test_the_cxx_passes_check_their_inputs():
    x, rms, w = torch.randn(4, 8), torch.ones(4), torch.ones(8)
    with pytest.raises(ValueError, match="rms has shape"):
        codecs.rms_norm_apply(x.numpy(), torch.ones(5).numpy(), w.numpy())
    with pytest.raises(ValueError, match="w has shape"):
        codecs.rms_norm_apply(x.numpy(), rms.numpy(), torch.ones(7).numpy())
    with pytest.raises(TypeError, match="float32"):
        codecs.rms_norm_apply(x.double().numpy(), rms.numpy(), w.numpy())
    with pytest.raises(ValueError, match="g has shape"):
        codecs.rms_norm_backward_terms(torch.ones(4, 9).numpy(), x.numpy(), rms.numpy(), w.numpy())
    with pytest.raises(ValueError, match="coef has shape"):
        codecs.rms_norm_backward_input(x.numpy(), x.numpy(), rms.numpy(), w.numpy(), torch.ones(3).numpy())
    t, p = codecs.rms_norm_backward_terms(x.numpy(), x.numpy(), rms.numpy(), w.numpy(), want_t=False)
    assert t is None and p.shape == (4, 8)


def test_the_tensors_storage_stays_resizable():
    # FSDP2 frees its unsharded parameters by resizing their storage to 0 after each forward.
    x, w = torch.randn(4, 16, requires_grad=True), torch.rand(16, requires_grad=True)
    functional.rms_norm(x, w, 1e-5).sum().backward()
    with torch.no_grad():
        functional.rms_norm(x, w, 1e-5)
    for t in (x, w):
        t.untyped_storage().resize_(0)
