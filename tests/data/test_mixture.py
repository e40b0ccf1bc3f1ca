"""The influence mixture's weight update: multiplicative weights, temperature, floor, missing scores."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bitk.data.mixture import apply_floor, influence_step


def test_step_moves_weight_towards_the_aligned_source():
    w = influence_step([1 / 3] * 3, [0.5, 0.5, -0.5], temperature=1.0, floor=0.0)
    assert w.sum() == pytest.approx(1.0)
    assert w[0] == pytest.approx(w[1]) and w[2] < w[0]
    assert w[0] / w[2] == pytest.approx(math.e)  # exp((0.5 - -0.5) / 1)
    # a lower temperature moves further
    cold = influence_step([1 / 3] * 3, [0.5, 0.5, -0.5], temperature=0.25, floor=0.0)
    assert cold[0] / cold[2] == pytest.approx(math.e**4)


def test_floor_keeps_every_source_fed():
    w = [1 / 3] * 3
    for _ in range(5):
        w = influence_step(w, [1.0, 0.8, -1.0], temperature=0.5, floor=0.3)
    assert w.sum() == pytest.approx(1.0)
    assert w[2] == pytest.approx(0.1)  # floor / n
    assert w[0] / w[1] == pytest.approx(math.exp(5 * 0.2 / 0.5))
    starved = [1 / 3] * 3
    for _ in range(50):
        starved = influence_step(starved, [1.0, 0.8, -1.0], temperature=0.5, floor=0.0)
    assert starved[2] < 1e-12  # floor 0: a source may starve


def test_apply_floor_takes_the_difference_in_proportion():
    w = apply_floor([0.6, 0.3, 0.06, 0.04], 0.4)  # floor 0.1 each
    assert w.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(w[2:], [0.1, 0.1])
    assert w[0] / w[1] == pytest.approx(2.0)
    assert np.array_equal(apply_floor([0.5, 0.5], 0.0), [0.5, 0.5])


def test_unmeasured_source_keeps_its_share_of_the_others():
    w = influence_step([0.5, 0.25, 0.25], [0.2, math.nan, 0.2], temperature=1.0, floor=0.0)
    np.testing.assert_allclose(w, [0.5, 0.25, 0.25])
    w = influence_step([0.5, 0.25, 0.25], [1.0, math.nan, -1.0], temperature=1.0, floor=0.0)
    assert w[1] == pytest.approx(
        0.25 * np.exp(np.sum([0.5 * 1, 0.25 * -1]) / 0.75) / np.sum([0.5 * np.e, 0.25 * np.exp(1 / 3), 0.25 / np.e])
    )
    np.testing.assert_allclose(influence_step([0.5, 0.5], [math.nan, math.nan], 1.0, 0.1), [0.5, 0.5])


def test_bad_arguments():
    with pytest.raises(ValueError, match="temperature"):
        influence_step([0.5, 0.5], [0, 0], temperature=0.0, floor=0.1)
    with pytest.raises(ValueError, match="floor"):
        influence_step([0.5, 0.5], [0, 0], temperature=1.0, floor=1.0)
    with pytest.raises(ValueError, match="2 weights but 3 scores"):
        influence_step([0.5, 0.5], [0, 0, 0], temperature=1.0, floor=0.1)
