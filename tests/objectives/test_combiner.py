"""bitk.objectives.combiner: the settings' validation, and compute_loss's values and forwards."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from bitk.objectives import combiner
from bitk.objectives.ce import next_token_ce
from bitk.objectives.combiner import compute_loss
from bitk.objectives.dlm import dlm_loss, dlm_mask
from bitk.objectives.settings import ObjectiveSettings
from bitk_objectives_testing import full_precision_twin, random_ids, tiny_model


def test_settings_validate():
    ObjectiveSettings(relation_layers=[[1, 2], -1]).validate()  # pairs of (student, teacher) layers are fine
    for bad, name in (
        ({"dlm_probability": 1.5}, "dlm_probability"),
        ({"kd_temperature": 0}, "kd_temperature"),
        ({"relation_split_heads": 0}, "relation_split_heads"),
        ({"layerwise_weighting": "log"}, "layerwise_weighting"),
        ({"lrc_layers": "some"}, "lrc_layers"),
        ({"relation_layers": ["last"]}, "relation_layers"),
        ({"relation_layers": []}, "relation_layers"),
        ({"dlm_complementary": 1}, "dlm_complementary"),
        ({"weights": "ce=1,mlm=1"}, "weights"),
        ({"weights": "0:ce=1;0.5:dlm=1", "phase": 3}, "phase"),
    ):
        with pytest.raises(ValueError, match=f"objectives.{name}"):
            ObjectiveSettings(**bad).validate()
    ids = random_ids(1, 4)
    with pytest.raises(ValueError, match="mask_token_id must differ from pad_token_id"):
        compute_loss(torch.nn.Identity(), ids, None, {"ce": 1.0}, mask_token_id=1, pad_token_id=1)


# --------------------------------------------------------------------------- compute_loss


class Recorder(torch.nn.Module):
    """Wraps a model and records the shape and flags of every forward."""

    def __init__(self, model):
        super().__init__()
        self.inner = model
        self.calls = []

    def forward(self, input_ids, position_ids=None, **flags):
        self.calls.append((tuple(input_ids.shape), {k: v for k, v in flags.items() if v}))
        return self.inner(input_ids, position_ids, **flags)


class Forbidden(torch.nn.Module):
    def forward(self, *args, **kwargs):
        raise AssertionError("the teacher must not be called")


def _setup(seed=0):
    student = Recorder(tiny_model(seed))
    return student, random_ids(2, 12, seed=seed), ObjectiveSettings(relation_split_heads=8)


def test_ce_only_is_one_plain_forward_and_plain_ce():
    student, ids, settings = _setup()
    total, parts = compute_loss(
        student, ids, None, {"ce": 1.0, "logits_kd": 0.0, "dlm": 0}, settings, teacher=Forbidden()
    )
    assert student.calls == [((2, 12), {})]
    logits = student.inner(ids).logits
    want = F.cross_entropy(logits[:, :-1].reshape(-1, 64), ids[:, 1:].reshape(-1))
    assert total.item() == pytest.approx(want.item(), rel=1e-6)
    assert set(parts) == {"ce"} and not parts["ce"].requires_grad and parts["ce"].dtype == torch.float32
    total.backward()
    assert student.inner.lm_head.weight.grad is not None


def test_zero_dlm_weight_never_masks(monkeypatch):
    def no_masking(*args, **kwargs):
        raise AssertionError("dlm_mask must not run")

    monkeypatch.setattr(combiner, "dlm_mask", no_masking)
    student, ids, settings = _setup()
    compute_loss(student, ids, None, {"ce": 1.0, "dlm": 0.0}, settings)
    assert len(student.calls) == 1


def test_dlm_runs_one_forward_over_the_clean_and_the_doubled_masked_rows():
    student, ids, settings = _setup(1)
    pos = torch.tensor([0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 5, 6])
    weights = {"ce": 0.5, "dlm": 2.0}
    total, parts = compute_loss(student, ids, pos, weights, settings, generator=torch.Generator().manual_seed(0))
    assert [c[0] for c in student.calls] == [(6, 12)]  # 2 clean rows + 2 x 2 masked rows, one forward
    assert total.item() == pytest.approx(0.5 * parts["ce"].item() + 2.0 * parts["dlm"].item(), rel=1e-6)
    again = compute_loss(student, ids, pos, weights, settings, generator=torch.Generator().manual_seed(0))[1]
    assert again["dlm"].item() == parts["dlm"].item()
    # the same values as separate forwards: the clean rows alone for ce, the masked rows alone for dlm
    model = student.inner
    assert parts["ce"].item() == pytest.approx(next_token_ce(model(ids, pos).logits, ids).item(), rel=1e-5)
    batch = dlm_mask(ids, mask_token_id=2, generator=torch.Generator().manual_seed(0), position_ids=pos)
    want = dlm_loss(model(batch.input_ids, batch.position_ids).logits, batch.labels)
    assert parts["dlm"].item() == pytest.approx(want.item(), rel=1e-5)
    student.calls.clear()
    compute_loss(student, ids, None, {"dlm": 1.0}, settings, generator=torch.Generator().manual_seed(0))
    assert [c[0] for c in student.calls] == [(4, 12)]  # dlm alone: only the masked rows


def test_teacher_objectives_need_a_teacher_and_ask_for_states_only_when_needed():
    student, ids, settings = _setup(2)
    with pytest.raises(ValueError, match="logits_kd need a teacher"):
        compute_loss(student, ids, None, {"ce": 1.0, "logits_kd": 1.0}, settings)
    teacher = Recorder(full_precision_twin(student.inner).eval().requires_grad_(False))
    compute_loss(student, ids, None, {"logits_kd": 1.0}, settings, teacher=teacher)
    assert student.calls == teacher.calls == [((2, 12), {})]
    student.calls.clear(), teacher.calls.clear()
    compute_loss(student, ids, None, {"attention_relation": 1.0, "lrc": 1.0}, settings, teacher=teacher)
    both = {"output_hidden_states": True, "output_attention_states": True}
    assert student.calls == teacher.calls == [((2, 12), both)]
    student.calls.clear(), teacher.calls.clear()
    compute_loss(student, ids, None, {"ce": 1.0, "layerwise": 1.0}, settings, teacher=teacher)
    assert student.calls == teacher.calls == [((2, 12), {"output_hidden_states": True})]


def test_teacher_losses_are_zero_for_a_copy_of_the_student():
    model = tiny_model(3, ternary=False, subln=False)
    student, ids, settings = Recorder(model), random_ids(2, 12, seed=3), ObjectiveSettings(relation_split_heads=8)
    teacher = full_precision_twin(model).eval().requires_grad_(False)
    weights = {"logits_kd": 1.0, "attention_relation": 1.0, "layerwise": 1.0, "lrc": 1.0}
    total, parts = compute_loss(student, ids, None, weights, settings, teacher=teacher)
    assert set(parts) == set(weights)
    for name, value in parts.items():
        assert abs(value.item()) < (1e-3 if name == "attention_relation" else 1e-5), name
    total.backward()
    assert all(p.grad is None for p in teacher.parameters())


def test_distillation_against_a_different_teacher_has_gradients():
    student, ids, settings = _setup(4)
    teacher = full_precision_twin(tiny_model(5)).eval().requires_grad_(False)
    weights = {"ce": 1.0, "logits_kd": 1.0, "attention_relation": 1.0}
    total, parts = compute_loss(student, ids, None, weights, settings, teacher=teacher)
    assert all(v.item() > 0 for v in parts.values())
    assert total.item() == pytest.approx(sum(parts[n].item() * w for n, w in weights.items()), rel=1e-5)
    total.backward()
    assert student.inner.model.layers[-1].self_attn.k_proj.weight.grad.abs().sum() > 0


def test_padding_is_not_a_target_and_not_a_valid_kd_token():
    student, ids, _ = _setup(6)
    settings = ObjectiveSettings(relation_split_heads=8)
    ids[0, 8:] = 1
    labels = ids.masked_fill(ids == 1, -100)
    logits = student.inner(ids).logits
    want = F.cross_entropy(logits[:, :-1].reshape(-1, 64), labels[:, 1:].reshape(-1), ignore_index=-100)
    _, parts = compute_loss(student, ids, None, {"ce": 1.0}, settings, pad_token_id=1)
    assert parts["ce"].item() == pytest.approx(want.item(), rel=1e-6)
    # padded positions may hold anything in the teacher: the KD loss does not move
    teacher = full_precision_twin(student.inner).eval().requires_grad_(False)

    class Noisy(torch.nn.Module):
        def forward(self, input_ids, position_ids=None, **flags):
            out = teacher(input_ids, position_ids, **flags)
            # the losses ask for the head's input (logits=False): the teacher's logits come from it
            noisy = out.last_hidden if out.logits is None else out.logits
            noisy[0, 8:] += 100 * torch.randn_like(noisy[0, 8:])
            return out

    kd = compute_loss(student, ids, None, {"logits_kd": 1.0}, settings, teacher=teacher, pad_token_id=1)[1]["logits_kd"]
    noisy = compute_loss(student, ids, None, {"logits_kd": 1.0}, settings, teacher=Noisy(), pad_token_id=1)[1][
        "logits_kd"
    ]
    assert kd.item() > 0 and noisy.item() == pytest.approx(kd.item(), rel=1e-6)
    unmasked = compute_loss(student, ids, None, {"logits_kd": 1.0}, ObjectiveSettings(), teacher=Noisy())[1][
        "logits_kd"
    ]
    assert unmasked.item() > 2 * kd.item()


def test_bad_weights_raise():
    student, ids, settings = _setup()
    with pytest.raises(ValueError, match="unknown objective"):
        compute_loss(student, ids, None, {"mlm": 1.0}, settings)
    with pytest.raises(ValueError, match="at least one positive weight"):
        compute_loss(student, ids, None, {"ce": 0.0}, settings)
    with pytest.raises(ValueError, match=">= 0"):
        compute_loss(student, ids, None, {"ce": -1.0}, settings)
    assert not math.isnan(compute_loss(student, ids, None, {"ce": 1}, settings)[0].item())
