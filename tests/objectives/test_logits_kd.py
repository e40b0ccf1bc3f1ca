"""Logits KD (BitDistill, arXiv 2510.13998): beta * tau^2 * KL(teacher || student) per token, hand-checked."""

from __future__ import annotations

import math

import pytest
import torch

from bitk.objectives.logits_kd import logits_kd_loss


def test_hand_computed_kl_with_temperature_and_beta():
    # teacher (0, 0)/tau -> (1/2, 1/2); student (2 ln 3, 0)/2 -> (3/4, 1/4).
    # KL = 1/2 ln(2/3) + 1/2 ln 2 = 1/2 ln(4/3); times tau^2 = 4 and beta = 0.5: ln(4/3).
    student = torch.tensor([[[2 * math.log(3.0), 0.0]]])
    teacher = torch.zeros(1, 1, 2)
    loss = logits_kd_loss(student, teacher, temperature=2.0, beta=0.5)
    assert loss.item() == pytest.approx(math.log(4.0 / 3.0), rel=1e-6)
    assert logits_kd_loss(student / 2, teacher, temperature=1.0).item() == pytest.approx(
        0.5 * math.log(4.0 / 3.0), rel=1e-6
    )


def test_direction_is_teacher_to_student():
    # KL(p || q) with p = teacher = (3/4, 1/4), q = student = (1/2, 1/2): 3/4 ln(3/2) + 1/4 ln(1/2)
    teacher = torch.tensor([[[math.log(3.0), 0.0]]])
    student = torch.zeros(1, 1, 2)
    want = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    assert logits_kd_loss(student, teacher, temperature=1.0).item() == pytest.approx(want, rel=1e-6)


def test_mean_over_valid_tokens_only():
    teacher = torch.zeros(1, 3, 2)
    student = torch.tensor([[[math.log(3.0), 0.0], [0.0, 0.0], [40.0, -40.0]]])
    valid = torch.tensor([[True, True, False]])
    want = 0.5 * math.log(4.0 / 3.0) / 2  # token 0 has the hand KL, token 1 none, token 2 is padding
    assert logits_kd_loss(student, teacher, temperature=1.0, valid_mask=valid).item() == pytest.approx(want, rel=1e-6)
    none = logits_kd_loss(student, teacher, temperature=1.0, valid_mask=torch.zeros(1, 3, dtype=torch.bool))
    assert none.item() == 0.0


def test_zero_when_student_equals_teacher_and_only_the_student_gets_gradients():
    logits = torch.randn(3, 7, 50) * 4
    student = logits.clone().requires_grad_(True)
    teacher = logits.clone().requires_grad_(True)
    loss = logits_kd_loss(student, teacher)
    assert abs(loss.item()) < 1e-5
    logits_kd_loss(student, teacher + torch.randn_like(teacher)).backward()
    assert student.grad.abs().sum() > 0 and teacher.grad is None


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="same shape"):
        logits_kd_loss(torch.randn(1, 2, 5), torch.randn(1, 2, 6))
    with pytest.raises(ValueError, match="temperature"):
        logits_kd_loss(torch.randn(1, 2, 5), torch.randn(1, 2, 5), temperature=0.0)
    with pytest.raises(ValueError, match="valid_mask"):
        logits_kd_loss(torch.randn(1, 2, 5), torch.randn(1, 2, 5), valid_mask=torch.ones(2, 2, dtype=torch.bool))
