"""load_teacher: a frozen full-precision model from a local checkpoint, never from the network."""

from __future__ import annotations

import pytest
import torch

from bitk.nn import BitLinear
from bitk.objectives.teacher import load_teacher
from bitk_objectives_testing import random_ids, tiny_model


def test_checkpoint_loads_frozen_in_eval_mode(tmp_path):
    model = tiny_model(0, ternary=False, subln=False)
    model.save(tmp_path / "ckpt")
    teacher = load_teacher(tmp_path / "ckpt")
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    ids = random_ids(2, 8)
    torch.testing.assert_close(teacher(ids).logits, model(ids).logits, rtol=0, atol=0)


def test_ternary_checkpoint_loads_full_precision_unless_asked(tmp_path):
    tiny_model(1).save(tmp_path / "ternary")
    teacher = load_teacher(str(tmp_path / "ternary"))
    assert not teacher.config.ternary
    assert not any(isinstance(m, BitLinear) for m in teacher.modules())
    assert any(isinstance(m, BitLinear) for m in load_teacher(tmp_path / "ternary", ternary=True).modules())


def test_bfloat16(tmp_path):
    tiny_model(2, ternary=False).save(tmp_path / "ckpt")
    teacher = load_teacher(tmp_path / "ckpt", dtype=torch.bfloat16)
    assert {p.dtype for p in teacher.parameters()} == {torch.bfloat16}
    assert teacher(random_ids(1, 4)).logits.dtype == torch.bfloat16


def test_bad_sources_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="no such file or folder"):
        load_teacher(tmp_path / "nope")
    with pytest.raises(ValueError, match="some-org/some-model is not in the Hugging Face cache"):
        load_teacher("some-org/some-model")  # the tests' cache is offline and does not hold it
    with pytest.raises(ValueError, match="takes a model source or a model"):
        load_teacher(3)


def test_a_model_object_is_frozen_in_place():
    model = tiny_model(3, ternary=False).train()
    teacher = load_teacher(model)
    assert teacher is model and not teacher.training and not any(p.requires_grad for p in teacher.parameters())
