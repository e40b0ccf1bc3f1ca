"""bitk.nn.cpu_gate: BitNet's gated ReLU^2 on the CPU gives torch's values and gradients bit for bit."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bitk.nn import cpu as cpu_path
from bitk.nn import cpu_gate, functional
from bitk_testing import assert_same_bits

codecs = pytest.importorskip("bitk._codecs")

SHAPES = [(33,), (3, 5, 7), (2, 64, 768), (1, 1), (4, 33), (0, 16)]
NEEDS = [(True, True), (True, False), (False, True)]


def _inputs(shape, seed=0):
    gen = torch.Generator().manual_seed(seed)
    gate, up, gh = (torch.randn(shape, generator=gen) * 2 for _ in range(3))
    flat = gate.view(-1)
    specials = torch.tensor([0.0, -0.0, float("nan"), float("inf"), -float("inf"), 1e-45])
    flat[: min(flat.numel(), specials.numel())] = specials[: flat.numel()]
    return gate, up, gh


def _run(fn, gate, up, gh, needs):
    g, u = gate.clone().requires_grad_(needs[0]), up.clone().requires_grad_(needs[1])
    h = fn(g, u)
    h.backward(gh)
    return [h.detach(), g.grad, u.grad]


def _torch(gate, up):
    return torch.square(F.relu(gate)) * up


@pytest.mark.parametrize("variant", cpu_path.kernel_variants())
@pytest.mark.parametrize("shape", SHAPES)
def test_values_and_gradients_are_torchs_bit_for_bit(variant, shape):
    gate, up, gh = _inputs(shape)
    assert cpu_gate.applies(gate, up)
    cpu_path.set_kernel_variant(variant)
    try:
        for needs in NEEDS:
            assert_same_bits(_run(functional.relu2_gate, gate, up, gh, needs), _run(_torch, gate, up, gh, needs))
    finally:
        cpu_path.set_kernel_variant("auto")


def test_without_the_extension_torchs_ops_give_the_same_bits(monkeypatch):
    monkeypatch.setattr(cpu_gate, "_codecs", lambda: None)
    gate, up, gh = _inputs((6, 40), seed=1)
    for needs in NEEDS:
        assert_same_bits(_run(functional.relu2_gate, gate, up, gh, needs), _run(_torch, gate, up, gh, needs))


def test_a_gradient_that_is_not_contiguous_gives_the_same_bits():
    gate, up, _ = _inputs((12, 48), seed=2)
    gh = torch.randn(48, 12).T
    assert_same_bits(_run(functional.relu2_gate, gate, up, gh, (True, True)), _run(_torch, gate, up, gh, (True, True)))


def test_only_gate_and_up_are_kept_for_the_backward():
    gate, up = torch.randn(8, 32, requires_grad=True), torch.randn(8, 32, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        functional.relu2_gate(gate, up)
    assert sum(t.numel() for t in saved) == 2 * 8 * 32


def test_without_gradients_no_op_runs(monkeypatch):
    gate, up, _ = _inputs((5, 64), seed=3)
    monkeypatch.setattr(cpu_gate, "_relu2_gate_op", None)
    with torch.no_grad():
        torch.testing.assert_close(functional.relu2_gate(gate, up), _torch(gate, up), rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize(
    ("gate", "up"),
    [
        (torch.randn(4, 8, dtype=torch.bfloat16), torch.randn(4, 8, dtype=torch.bfloat16)),
        (torch.randn(8, 4).T, torch.randn(4, 8)),  # not contiguous (a chunk of a fused gate/up)
        (torch.randn(4, 8), torch.randn(4, 1)),  # broadcast
    ],
)
def test_other_inputs_take_torchs_ops(gate, up):
    assert not cpu_gate.applies(gate, up)
    torch.testing.assert_close(functional.relu2_gate(gate, up), _torch(gate, up), rtol=0, atol=0)


def test_the_cxx_passes_check_their_inputs():
    a = torch.randn(4, 8)
    with pytest.raises(ValueError, match="up has shape"):
        codecs.relu2_gate(a.numpy(), torch.randn(4, 9).numpy())
    with pytest.raises(TypeError, match="float32"):
        codecs.relu2_gate(a.double().numpy(), a.double().numpy())
    with pytest.raises(ValueError, match="gh has shape"):
        codecs.relu2_gate_backward(a.numpy(), a.numpy(), torch.ones(3, 8).numpy())
    gg, gu = codecs.relu2_gate_backward(a.numpy(), a.numpy(), a.numpy(), want_up=False)
    assert gu is None and gg.shape == (4, 8)
