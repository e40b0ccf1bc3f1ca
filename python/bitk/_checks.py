"""Validation of configuration values: one ValueError naming the setting, the rule and the value.

Torch-free; the config groups of the trainer (`bitk.train.config`), the data (`bitk.data.config`)
and the objectives (`bitk.objectives.settings`) validate their fields with these.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["check_bool", "check_choice", "check_int", "check_number"]


def check_int(name: str, value: Any, *, low: int | None = None, high: int | None = None, why: str = "") -> None:
    """An integer (not a bool) in [low, high]; ``why`` explains a bound in the message."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if low is not None and value < low:
        raise ValueError(f"{name} must be >= {low}{why}, got {value}")
    if high is not None and value > high:
        raise ValueError(f"{name} must be <= {high}{why}, got {value}")


def check_number(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    """A finite number in the interval from ``low`` to ``high`` (each end open or closed)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    lo = low is not None and (value <= low if low_open else value < low)
    hi = high is not None and (value >= high if high_open else value > high)
    if lo or hi:
        left = "(" if low_open else "["
        right = ")" if high_open else "]"
        span = f"{left}{'-inf' if low is None else low}, {'inf' if high is None else high}{right}"
        raise ValueError(f"{name} must be in {span}, got {value}")


def check_bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {value!r}")


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}; got {value!r}")
