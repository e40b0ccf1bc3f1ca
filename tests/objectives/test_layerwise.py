"""Layer-wise distillation: MSE of L2-normalised hidden states, uniform or depth weights."""

from __future__ import annotations

import pytest
import torch

from bitk.objectives.layerwise import layer_weights, layerwise_loss

# one token, hidden 2: student (3, 4) -> (0.6, 0.8), teacher (1, 0): MSE ((0.6-1)^2 + 0.8^2) / 2 = 0.4
S, T = torch.tensor([[[3.0, 4.0]]]), torch.tensor([[[1.0, 0.0]]])
EMB_S, EMB_T = torch.tensor([[[7.0, -1.0]]]), torch.tensor([[[-2.0, 5.0]]])


def test_hand_computed_normalised_mse():
    assert layerwise_loss((EMB_S, S), (EMB_T, T)).item() == pytest.approx(0.4, rel=1e-6)
    # only directions count, and the embedding output (index 0) is not a layer
    assert layerwise_loss((EMB_T, 10 * S), (EMB_S, 0.5 * T)).item() == pytest.approx(0.4, rel=1e-6)


def test_uniform_and_depth_weights():
    student, teacher = (EMB_S, S, T), (EMB_T, T, T)  # layer 1 loss 0.4, layer 2 loss 0
    assert layerwise_loss(student, teacher).item() == pytest.approx(0.2, rel=1e-6)
    assert layerwise_loss(student, teacher, weighting="depth").item() == pytest.approx(0.4 / 3, rel=1e-6)
    student, teacher = (EMB_S, T, S), (EMB_T, T, T)  # now the deeper layer carries the loss
    assert layerwise_loss(student, teacher, weighting="depth").item() == pytest.approx(0.8 / 3, rel=1e-6)
    assert layer_weights(4, "depth") == pytest.approx([0.1, 0.2, 0.3, 0.4])
    assert layer_weights(4) == pytest.approx([0.25] * 4)


def test_zero_for_equal_states_and_gradient_to_the_student_only():
    states = tuple(torch.randn(2, 5, 8) for _ in range(3))
    assert layerwise_loss(states, states).item() == pytest.approx(0.0, abs=1e-7)
    student = tuple(s.clone().requires_grad_(True) for s in states)
    teacher = tuple(torch.randn(2, 5, 8, requires_grad=True) for _ in range(3))
    layerwise_loss(student, teacher).backward()
    assert student[0].grad is None and student[2].grad.abs().sum() > 0 and teacher[2].grad is None


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="same depth"):
        layerwise_loss((EMB_S, S, S), (EMB_T, T))
    with pytest.raises(ValueError, match="differ in shape"):
        layerwise_loss((EMB_S, S), (EMB_T, torch.zeros(1, 1, 3)))
    with pytest.raises(ValueError, match="output_hidden_states=True"):
        layerwise_loss(None, (EMB_T, T))
    with pytest.raises(ValueError, match="weighting"):
        layerwise_loss((EMB_S, S), (EMB_T, T), weighting="linear")
