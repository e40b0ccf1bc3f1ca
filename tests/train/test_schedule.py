"""Learning-rate schedules (warm-up, cosine, WSD, constant) and the quantization warm-up, at their boundaries."""

from __future__ import annotations

import math
import types

import pytest

from bitk.train.config import TrainingConfig
from bitk.train.schedule import apply_lr, lr_factor, quant_lambda


def cfg(**changes):
    base = {
        "schedule": "cosine",
        "max_steps": 10,
        "warmup_steps": 2,
        "min_lr_ratio": 0.1,
        "decay_fraction": 0.2,
        "quant_warmup_steps": 0,
        "quant_warmup_shape": "linear",
    }
    base.update(changes)
    return TrainingConfig(**base)


def test_warmup_is_linear_and_never_zero():
    c = cfg(warmup_steps=4)
    assert [lr_factor(s, c) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]


def test_cosine_hand_values():
    c = cfg()  # T=10, w=2, m=0.1
    assert lr_factor(0, c) == 0.5
    assert lr_factor(1, c) == 1.0
    # step 2 is the first decay step: p = (3 - 2) / 8
    assert lr_factor(2, c) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 8)), abs=1e-15)
    assert lr_factor(5, c) == pytest.approx(0.55, abs=1e-15)  # p = 1/2
    assert lr_factor(9, c) == pytest.approx(0.1, abs=1e-15)  # the last step runs at min_lr_ratio
    assert lr_factor(50, c) == pytest.approx(0.1, abs=1e-15)  # and stays there
    values = [lr_factor(s, c) for s in range(1, 10)]
    assert values == sorted(values, reverse=True)


def test_cosine_without_warmup_starts_decaying_at_once():
    c = cfg(warmup_steps=0, max_steps=4, min_lr_ratio=0.0)
    assert [lr_factor(s, c) for s in range(4)] == pytest.approx(
        [0.5 * (1 + math.cos(math.pi * t / 4)) for t in (1, 2, 3, 4)], abs=1e-15
    )


def test_wsd_hand_values():
    c = cfg(schedule="wsd")  # decay over the last round(0.2 * 10) = 2 steps
    assert [lr_factor(s, c) for s in range(10)] == pytest.approx([0.5, 1, 1, 1, 1, 1, 1, 1, 0.55, 0.1], abs=1e-15)
    c = cfg(schedule="wsd", max_steps=100, warmup_steps=10, decay_fraction=0.25, min_lr_ratio=0.0)
    assert lr_factor(74, c) == 1.0  # t = 75 = T - D: the last stable step
    assert lr_factor(75, c) == pytest.approx(1 - 1 / 25)
    assert lr_factor(99, c) == 0.0
    # no decay at all, and a decay longer than what the warm-up leaves
    assert lr_factor(9, cfg(schedule="wsd", decay_fraction=0.0)) == 1.0
    c = cfg(schedule="wsd", max_steps=10, warmup_steps=6, decay_fraction=0.9, min_lr_ratio=0.0)
    assert [lr_factor(s, c) for s in range(5, 10)] == pytest.approx([1.0, 0.75, 0.5, 0.25, 0.0])


def test_constant():
    c = cfg(schedule="constant")
    assert [lr_factor(s, c) for s in (0, 1, 2, 9, 100)] == [0.5, 1.0, 1.0, 1.0, 1.0]


def test_unknown_schedule():
    with pytest.raises(ValueError, match="cosine, wsd, constant"):
        lr_factor(0, cfg(schedule="linear"))


def test_apply_lr_scales_each_group_from_its_initial_lr():
    opt = types.SimpleNamespace(param_groups=[{"initial_lr": 1e-3, "lr": 0.0}, {"initial_lr": 0.02, "lr": 0.0}])
    assert apply_lr(opt, 0, cfg()) == 0.5
    assert [g["lr"] for g in opt.param_groups] == [5e-4, 0.01]
    apply_lr(opt, 9, cfg())
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([1e-4, 2e-3])
    assert [g["initial_lr"] for g in opt.param_groups] == [1e-3, 0.02]


def test_quant_lambda():
    assert quant_lambda(0, cfg()) == 1.0  # no warm-up: plain BitNet from the start
    c = cfg(quant_warmup_steps=4)
    assert [quant_lambda(s, c) for s in range(7)] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    c = cfg(quant_warmup_steps=4, quant_warmup_shape="cosine")
    assert [quant_lambda(s, c) for s in range(5)] == pytest.approx(
        [0.0, (1 - math.cos(math.pi / 4)) / 2, 0.5, (1 + math.cos(math.pi / 4)) / 2, 1.0], abs=1e-15
    )
    with pytest.raises(ValueError, match="linear, cosine"):
        quant_lambda(0, cfg(quant_warmup_steps=4, quant_warmup_shape="step"))
