"""LRC (arXiv 2412.07902): the hidden-state MSE, and calibrating the low-rank factors of a tiny model."""

from __future__ import annotations

import pytest
import torch

from bitk.nn import BitLinearLRC
from bitk.objectives.lrc import lrc_loss, lrc_parameters, prepare_lrc
from bitk_objectives_testing import full_precision_twin, random_ids, tiny_model


def test_hand_computed_mse_all_layers_or_final():
    zeros = torch.zeros(2, 3, 4)
    student = (torch.full((2, 3, 4), 9.0), zeros + 1, zeros + 2)  # the embedding output does not count
    teacher = (zeros, zeros, zeros)
    assert lrc_loss(student, teacher).item() == pytest.approx((1 + 4) / 2)
    assert lrc_loss(student, teacher, layers="final").item() == pytest.approx(4.0)
    with pytest.raises(ValueError, match="LRC layers"):
        lrc_loss(student, teacher, layers="last")
    with pytest.raises(ValueError, match="same depth"):
        lrc_loss(student[:2], teacher)


def _student_and_teacher(seed=0):
    student = tiny_model(seed)  # ternary, SubLN
    teacher = full_precision_twin(student).eval().requires_grad_(False)
    return student, teacher


def test_only_the_factors_train_and_all_get_gradients_at_init():
    student, teacher = _student_and_teacher()
    params = prepare_lrc(student, rank_ratio=0.25)
    lrc_layers = [m for m in student.modules() if isinstance(m, BitLinearLRC)]
    assert len(lrc_layers) == 2 * 7  # q, k, v, o, gate, up, down per layer
    assert all(layer.rank == round(0.25 * min(layer.in_features, layer.out_features)) for layer in lrc_layers)
    trainable = {n for n, p in student.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith((".lrc_u", ".lrc_v")) for n in trainable)
    assert len(trainable) == len(params) == 28
    assert {id(p) for p in params} == {id(p) for p in student.parameters() if p.requires_grad}
    assert lrc_parameters(student) == params

    ids = random_ids(2, 12)
    with torch.no_grad():
        target = teacher(ids, output_hidden_states=True).hidden_states
    lrc_loss(student(ids, output_hidden_states=True).hidden_states, target).backward()
    for name, p in student.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, name


def test_calibration_lowers_the_loss_and_keeps_the_ternary_weights():
    student, teacher = _student_and_teacher(1)
    ids = random_ids(4, 16, seed=1)
    with torch.no_grad():
        target = teacher(ids, output_hidden_states=True).hidden_states
    frozen_before = {k: v.clone() for k, v in student.state_dict().items()}
    params = prepare_lrc(student, rank_ratio=0.25)
    opt = torch.optim.Adam(params, lr=3e-3)
    losses = []
    for _ in range(8):
        loss = lrc_loss(student(ids, output_hidden_states=True).hidden_states, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    with torch.no_grad():
        final = lrc_loss(student(ids, output_hidden_states=True).hidden_states, target).item()
    assert final < 0.9 * losses[0], losses
    after = student.state_dict()
    for name, before in frozen_before.items():
        assert torch.equal(after[name], before), name  # bit-identical: weights, norms, embedding


def test_svd_init_already_lowers_the_loss():
    student, teacher = _student_and_teacher(2)
    ids = random_ids(2, 16, seed=2)
    with torch.no_grad():
        target = teacher(ids, output_hidden_states=True).hidden_states
        plain = lrc_loss(student(ids, output_hidden_states=True).hidden_states, target).item()
        prepare_lrc(student, rank_ratio=0.5)
        corrected = lrc_loss(student(ids, output_hidden_states=True).hidden_states, target).item()
    assert corrected < plain


def test_prepare_is_idempotent_and_needs_a_ternary_model():
    student, _ = _student_and_teacher()
    first = prepare_lrc(student)
    assert [id(p) for p in prepare_lrc(student)] == [id(p) for p in first]
    with pytest.raises(ValueError, match="must be ternary"):
        prepare_lrc(tiny_model(ternary=False))
    with pytest.raises(ValueError, match="CausalLM"):
        prepare_lrc(torch.nn.Linear(4, 4))
