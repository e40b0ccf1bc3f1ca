"""The influence mixture's weight update (torch-free): multiplicative weights with a temperature and a floor.

Each re-weighting gets one alignment score per source in [-1, 1] (`bitk.train.mixture`: the source's
gradient projected on the probe's, relative to the probe's own; NaN for a source the step did not
draw). `influence_step` moves
``w_i <- w_i * exp(s_i / temperature)``, normalises, and raises every weight to at least
``floor / n`` (n sources), taking the difference from the others in proportion to their weight.
A source without a score gets the weighted mean score of the others, so only its share of the
normalisation moves it. docs/data.md "Mixtures" shows it at work.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["apply_floor", "influence_step"]


def apply_floor(weights: Sequence[float], floor: float) -> np.ndarray:
    """``weights`` (normalised) with each at least ``floor / n``: the raised ones are fixed at the floor,
    the others scaled down in proportion until none falls below it."""
    w = np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    n = len(w)
    low = floor / n
    if low <= 0:
        return w
    fixed = np.zeros(n, dtype=bool)
    for _ in range(n):
        below = (w < low) & ~fixed
        if not below.any():
            break
        fixed |= below
        w[fixed] = low
        free = ~fixed
        w[free] *= (1.0 - low * fixed.sum()) / w[free].sum()
    return w


def influence_step(weights: Sequence[float], scores: Sequence[float], temperature: float, floor: float) -> np.ndarray:
    """The next weights from the current ones and one alignment score per source (NaN: not measured).

    ``temperature`` > 0, ``floor`` in [0, 1); with no score at all the weights stay as they are.
    """
    if not temperature > 0 or not math.isfinite(temperature):
        raise ValueError(f"temperature must be a positive number, got {temperature!r}")
    if not 0 <= floor < 1:
        raise ValueError(f"floor must be in [0, 1), got {floor!r}")
    w = np.asarray(weights, dtype=np.float64)
    s = np.asarray(scores, dtype=np.float64)
    if w.shape != s.shape:
        raise ValueError(f"{len(w)} weights but {len(s)} scores")
    w = w / w.sum()
    known = np.isfinite(s)
    if not known.any():
        return w
    s = np.where(known, s, np.sum(w[known] * s[known]) / max(np.sum(w[known]), 1e-300))
    with np.errstate(divide="ignore"):
        logits = np.log(w) + s / temperature
    logits -= logits[np.isfinite(logits)].max()
    w = np.exp(logits)
    return apply_floor(w / w.sum(), floor)
