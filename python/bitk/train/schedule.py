"""Learning-rate schedules and the quantization warm-up (docs/numerics.md "Learning-rate schedules", "Quantization warm-up").

``step`` is always the 0-based index of the optimizer step about to be taken (0 .. max_steps-1).

Learning rate, ``lr_factor(step, cfg)`` times each group's ``initial_lr``; with ``t = step + 1``
(the number of the step), ``w = warmup_steps(cfg)`` (training.warmup_steps; null: 40, at most
T - 1), ``T = max_steps``, ``m = min_lr_ratio``:

    warm-up (all schedules)   t <= w:  t / w                      (never 0: the first step already learns)
    cosine                    t >  w:  m + (1 - m) * (1 + cos(pi * p)) / 2,   p = (t - w) / (T - w)
    wsd (warm-up, stable, decay over the last D = round(decay_fraction * T) steps, linear to m)
                              w < t <= T - D:  1
                              t >  T - D:      1 - (1 - m) * (t - (T - D)) / D
    constant                  t >  w:  1

so the last step (t = T) runs at exactly ``m`` for cosine and WSD; steps past T stay at ``m``.

Quantization warm-up, ``quant_lambda(step, cfg)``: lam = 0 -> 1 over ``quant_warmup_steps`` N,
``step / N`` (linear) or ``(1 - cos(pi * step / N)) / 2`` (cosine), 1 from step N on and always
when N = 0 (plain BitNet). Step 0 runs with lam = 0, i.e. full precision.
"""

from __future__ import annotations

import math
from typing import Any

from .config import QUANT_WARMUP_SHAPES, SCHEDULES

__all__ = ["DEFAULT_WARMUP_STEPS", "apply_lr", "lr_factor", "quant_lambda", "warmup_steps"]

DEFAULT_WARMUP_STEPS = 40


def warmup_steps(cfg: Any) -> int:
    """The warm-up length: cfg.warmup_steps, or when null (the default) 40 steps, shortened to
    max_steps - 1 for a shorter run."""
    if cfg.warmup_steps is not None:
        return cfg.warmup_steps
    return max(0, min(DEFAULT_WARMUP_STEPS, cfg.max_steps - 1))


def lr_factor(step: int, cfg: Any) -> float:
    """Multiplier of the peak learning rate at ``step`` (reads cfg.schedule, max_steps, warmup_steps,
    min_lr_ratio and, for WSD, decay_fraction): in (0, 1] during warm-up, in [min_lr_ratio, 1] after."""
    schedule = cfg.schedule
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; schedules: {', '.join(SCHEDULES)}")
    t = step + 1
    total, warmup, floor = cfg.max_steps, warmup_steps(cfg), cfg.min_lr_ratio
    if t <= warmup:
        return t / warmup
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        progress = min(1.0, (t - warmup) / max(1, total - warmup))
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    # WSD: the decay never starts inside the warm-up
    decay_start = max(warmup, total - round(cfg.decay_fraction * total))
    if t <= decay_start:
        return 1.0
    progress = min(1.0, (t - decay_start) / max(1, total - decay_start))
    return 1.0 - (1.0 - floor) * progress


def apply_lr(optimizer: Any, step: int, cfg: Any) -> float:
    """Set every param group's ``lr`` to its ``initial_lr`` times ``lr_factor(step, cfg)``; return the factor."""
    factor = lr_factor(step, cfg)
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] * factor
    return factor


def quant_lambda(step: int, cfg: Any) -> float:
    """Quantization strength lam in [0, 1] at ``step`` (cfg.quant_warmup_steps, cfg.quant_warmup_shape)."""
    n = cfg.quant_warmup_steps
    if n <= 0 or step >= n:
        return 1.0
    shape = cfg.quant_warmup_shape
    progress = max(0, step) / n
    if shape == "linear":
        return progress
    if shape == "cosine":
        return 0.5 * (1.0 - math.cos(math.pi * progress))
    raise ValueError(f"unknown quant_warmup_shape {shape!r}; shapes: {', '.join(QUANT_WARMUP_SHAPES)}")
