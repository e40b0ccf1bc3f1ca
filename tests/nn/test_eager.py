"""bitk.nn.eager: a custom op's functions as an autograd.Function in eager code, the op when traced."""

from __future__ import annotations

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from bitk.nn import cpu, cpu_gate, cpu_norm, functional, use_backend
from bitk.nn.eager import autograd_twin, traced


def _scaled(x: torch.Tensor, factor: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(x * factor, x's row sums): a second output that gets no gradient."""
    return x * factor, x.sum(dim=-1)


def _setup(ctx, inputs, output) -> None:
    ctx.mark_non_differentiable(output[1])
    ctx.factor = inputs[1]


def test_the_twin_runs_the_ops_functions_and_hands_none_for_outputs_without_gradient():
    seen = []

    def backward(ctx, dy, dsums):
        seen.append(dsums)
        return dy * ctx.factor, None

    scaled = autograd_twin("Scaled", _scaled, _setup, backward)
    x = torch.randn(3, 4, requires_grad=True)
    y, sums = scaled(x, 2.5)
    assert torch.equal(y, x.detach() * 2.5) and torch.equal(sums, x.detach().sum(-1))
    assert y.grad_fn is not None and type(y.grad_fn).__name__ == "ScaledBackward"
    assert not sums.requires_grad
    y.backward(torch.ones_like(y))
    assert seen == [None]  # not a tensor of zeros
    assert torch.equal(x.grad, torch.full((3, 4), 2.5))


def test_plain_tensors_are_not_traced_fake_ones_are():
    assert not traced(torch.randn(2), torch.nn.Parameter(torch.randn(2)), None)
    with FakeTensorMode():
        fake = torch.empty(2)
    assert traced(torch.randn(2), fake)


def test_under_torch_compile_everything_is_traced():
    compiled = torch.compile(lambda t: t + 1 if traced(t) else t - 1, backend="eager", fullgraph=True)
    try:
        assert torch.equal(compiled(torch.zeros(3)), torch.ones(3))
    finally:
        torch._dynamo.reset()
    assert not traced(torch.zeros(3))


def _no_op(*args, **kwargs):
    raise AssertionError("eager code called the custom op")


@pytest.mark.parametrize("precision", ["switchback", "float32"])
def test_eager_training_calls_no_custom_op(monkeypatch, precision):
    pytest.importorskip("bitk._codecs")
    for module, name in [
        (cpu, "_bitlinear_op"),
        (cpu, "_dequantize_weights_op"),
        (cpu_norm, "_rms_norm_op"),
        (cpu_norm, "_rms_norm_backward_op"),
        (cpu_gate, "_relu2_gate_op"),
        (cpu_gate, "_relu2_gate_backward_op"),
    ]:
        monkeypatch.setattr(module, name, _no_op)
    cpu.set_backward_precision(precision)
    try:
        x = torch.randn(2, 5, 64, requires_grad=True)
        w = torch.nn.Parameter(torch.randn(96, 64))
        g = torch.nn.Parameter(torch.rand(64) + 0.5)
        with use_backend("cpu"):
            h = functional.bitlinear(x, w, norm_weight=g)
            out = functional.relu2_gate(h[..., :48].contiguous(), h[..., 48:].contiguous())
            out.sum().backward()
    finally:
        cpu.set_backward_precision(None)
    assert x.grad is not None and w.grad is not None and g.grad is not None
