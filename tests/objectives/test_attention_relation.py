"""Attention-relation distillation (MiniLMv2, arXiv 2012.15828): hand example, heads, layers, padding."""

from __future__ import annotations

import math

import pytest
import torch

from bitk.objectives.attention_relation import attention_relation_loss, resolve_layer_pairs
from bitk_objectives_testing import random_ids, tiny_model

# Student tokens (2, 0) and (0, 3) normalise to orthogonal unit vectors: relation rows
# (e, 1)/(e + 1) and (1, e)/(e + 1). Teacher tokens (1, 0), (5, 0) are parallel: rows (1/2, 1/2).
# KL(teacher row || student row) = 1/2 ln((e+1)/(2e)) + 1/2 ln((e+1)/2) = ln((e+1)/2) - 1/2 per row.
ROW_KL = math.log((math.e + 1) / 2) - 0.5
STUDENT_HEAD = torch.tensor([[[2.0, 0.0], [0.0, 3.0]]])
TEACHER_HEAD = torch.tensor([[[1.0, 0.0], [5.0, 0.0]]])


def _qkv(x):
    return (x, x, x)


def test_hand_computed_relation_kl_one_head():
    loss = attention_relation_loss([_qkv(STUDENT_HEAD)], [_qkv(TEACHER_HEAD)], split_heads=1, gamma=1.0)
    assert loss.item() == pytest.approx(3 * ROW_KL, rel=1e-6)  # summed over Q, K and V
    loss = attention_relation_loss([_qkv(STUDENT_HEAD)], [_qkv(TEACHER_HEAD)], split_heads=1, gamma=1000.0)
    assert loss.item() == pytest.approx(3000 * ROW_KL, rel=1e-6)


def test_relation_heads_split_the_features_and_are_averaged():
    # features (head 1 | head 2): head 2 is the same in both models, so it adds no KL
    same = torch.tensor([[[0.3, -1.0], [2.0, 0.5]]])
    student = torch.cat([STUDENT_HEAD, same], dim=-1)
    teacher = torch.cat([TEACHER_HEAD, same], dim=-1)
    only_q = (student, torch.ones(1, 2, 2), torch.ones(1, 2, 2))
    only_q_t = (teacher, torch.ones(1, 2, 2), torch.ones(1, 2, 2))
    loss = attention_relation_loss([only_q], [only_q_t], split_heads=2, gamma=1.0)
    assert loss.item() == pytest.approx(ROW_KL / 2, rel=1e-6)


def _states(model, ids):
    return model(ids, output_attention_states=True).attention_states


def test_zero_when_student_equals_teacher():
    model = tiny_model(1)
    states = _states(model, random_ids(2, 12))
    loss = attention_relation_loss(states, states, layers=(0, 1), split_heads=8)
    assert abs(loss.item()) < 1e-3  # gamma 1000 times float32 rounding


def test_different_head_counts_and_depths():
    ids = random_ids(2, 10, seed=1)
    student = tiny_model(2)  # 4 heads of 16, 2 KV heads, 2 layers
    teacher = tiny_model(
        3,
        ternary=False,
        subln=False,
        hidden_size=128,
        num_attention_heads=2,
        num_key_value_heads=1,
        num_hidden_layers=3,
    )  # 2 heads of 64, 3 layers
    s, t = _states(student, ids), _states(teacher, ids)
    assert s[0][0].shape[-1] != t[0][0].shape[-1] and len(s) != len(t)
    loss = attention_relation_loss(s, t, split_heads=16)
    assert math.isfinite(loss.item()) and loss.item() > 0
    # -1 is the last layer of each model
    pair = attention_relation_loss(s, t, layers=[(1, 2)], split_heads=16)
    alone = attention_relation_loss(s[1:], t[2:], layers=(0,), split_heads=16)
    assert loss.item() == pytest.approx(pair.item(), rel=1e-6) and loss.item() == pytest.approx(alone.item(), rel=1e-6)
    loss.backward()
    assert student.model.layers[1].self_attn.q_proj.weight.grad.abs().sum() > 0
    assert teacher.model.layers[2].self_attn.q_proj.weight.grad is None


def test_layers_are_averaged():
    ids = random_ids(1, 8, seed=2)
    s, t = _states(tiny_model(4), ids), _states(tiny_model(5), ids)
    both = attention_relation_loss(s, t, layers=(0, 1), split_heads=8)
    each = [attention_relation_loss(s, t, layers=(i,), split_heads=8).item() for i in (0, 1)]
    assert both.item() == pytest.approx(sum(each) / 2, rel=1e-5)


def test_padded_keys_and_rows_are_left_out():
    # The loss over a padded sequence equals the loss over the sequence without the padding.
    torch.manual_seed(0)
    s = [tuple(torch.randn(1, 6, 16) for _ in range(3))]
    t = [tuple(torch.randn(1, 6, 32) for _ in range(3))]
    pad = [tuple(torch.cat([x, 50 * torch.randn(1, 2, x.shape[-1])], dim=1) for x in layer) for layer in s]
    pad_t = [tuple(torch.cat([x, 50 * torch.randn(1, 2, x.shape[-1])], dim=1) for x in layer) for layer in t]
    valid = torch.tensor([[True] * 6 + [False] * 2])
    want = attention_relation_loss(s, t, split_heads=4)
    got = attention_relation_loss(pad, pad_t, split_heads=4, valid_mask=valid)
    assert got.item() == pytest.approx(want.item(), rel=1e-5)
    assert attention_relation_loss(pad, pad_t, split_heads=4).item() != pytest.approx(want.item(), rel=1e-3)


def test_bad_split_and_layers_raise():
    ids = random_ids(1, 6)
    s = _states(tiny_model(6), ids)  # q 64, k/v 32 features
    with pytest.raises(ValueError, match="split_heads 3 must divide the student's query size 64"):
        attention_relation_loss(s, s, split_heads=3)
    with pytest.raises(ValueError, match="must divide the student's key size 32"):
        attention_relation_loss(s, s, split_heads=64)
    with pytest.raises(ValueError, match="the student has 2 layers"):
        attention_relation_loss(s, s, layers=(2,), split_heads=8)
    with pytest.raises(ValueError, match="output_attention_states=True"):
        attention_relation_loss(s, None)
    with pytest.raises(ValueError, match="int or a"):
        resolve_layer_pairs(["last"], 2, 2)
    assert resolve_layer_pairs((-1, (0, -2)), 2, 4) == [(1, 3), (0, 2)]
