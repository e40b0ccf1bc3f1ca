"""bitk's trainer: ``python -m bitk.train [key=value ...]``, a thin raw-torch loop.

    from bitk.train import parse_args, train
    summary = train(parse_args(["training.max_steps=50", "output_dir=/tmp/run"]))

`config` (typed dataclasses, presets, parsing), `recipes` (the unified / bitdistill_full /
lrc_calibration presets over `bitk.objectives`), `loop` (the one `train` function), `state`
(atomic full-state checkpoints, resume), `metrics` (JSONL, loss curve, TensorBoard / W&B), and
the pieces the loop calls: `optim`, `schedule`, `zclip`, `data`, `auto_batch`, `flops`,
`distributed`. Guide: docs/train.md.
"""

from __future__ import annotations

import importlib
from typing import Any

from .config import (
    TRAINING_PRESETS,
    Config,
    DataConfig,
    TrainingConfig,
    config_from_dict,
    parse_args,
    register_training_preset,
)

_LAZY = {"train": "loop", "TrainingError": "loop", "find_checkpoint": "state", "latest_checkpoint": "state"}

__all__ = [
    "Config",
    "DataConfig",
    "TrainingConfig",
    "TRAINING_PRESETS",
    "register_training_preset",
    "parse_args",
    "config_from_dict",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"bitk.train.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'bitk.train' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
