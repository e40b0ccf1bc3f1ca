"""next_token_ce: shifted cross-entropy against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from bitk.objectives.ce import next_token_ce


def _example():
    # position 0: logits (0, 0) -> target 1: CE ln 2; position 1: (ln 3, 0) -> target 0: CE ln(4/3).
    # The last position predicts nothing: its huge logits must not matter.
    logits = torch.tensor([[[0.0, 0.0], [math.log(3.0), 0.0], [50.0, -50.0]]])
    labels = torch.tensor([[7, 1, 0]])  # label at 0 is never a target
    return logits, labels


def test_hand_computed_mean_of_shifted_targets():
    logits, labels = _example()
    want = (math.log(2.0) + math.log(4.0 / 3.0)) / 2
    assert next_token_ce(logits, labels).item() == pytest.approx(want, rel=1e-6)


def test_ignored_targets_do_not_count():
    logits, labels = _example()
    labels[0, 2] = -100
    assert next_token_ce(logits, labels).item() == pytest.approx(math.log(2.0), rel=1e-6)
    labels = torch.tensor([[7, 5, 0]])
    assert next_token_ce(logits, labels, ignore_index=5).item() == pytest.approx(math.log(4.0 / 3.0), rel=1e-6)


def test_no_target_gives_zero_with_a_gradient_not_nan():
    logits = torch.randn(2, 5, 11, requires_grad=True)
    loss = next_token_ce(logits, torch.full((2, 5), -100))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_low_precision_logits_are_scored_in_float32():
    logits, labels = _example()
    loss = next_token_ce(logits.bfloat16(), labels)
    assert loss.dtype == torch.float32
    want = (math.log(2.0) + math.log(4.0 / 3.0)) / 2
    assert loss.item() == pytest.approx(want, rel=1e-2)


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="batch, length, vocab"):
        next_token_ce(torch.randn(4, 3), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="labels must be"):
        next_token_ce(torch.randn(2, 4, 3), torch.zeros(2, 5, dtype=torch.long))
