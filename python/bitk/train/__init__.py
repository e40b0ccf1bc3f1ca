"""bitk's trainer: ``python -m bitk.train [key=value ...]``, a thin raw-torch loop.

    from bitk.train import parse_args, train
    summary = train(parse_args(["training.max_steps=50", "output_dir=/tmp/run"]))

`config` (the typed groups, presets, parsing; torch-free), `help` (--help and the docs' field
table), `recipes` (the unified / bitdistill_full / lrc_calibration presets over
`bitk.objectives`), `loop` (the one `train` function), `build` (the model, tokenizer and teacher a
run trains), `state` (atomic full-state checkpoints, resume), `remote` (the run's copy in object
storage: background uploads, resume from there), `metrics` (JSONL, loss curve,
TensorBoard / W&B, the console lines), and the pieces the loop calls: `optim`, `schedule`,
`zclip`, `auto_batch`, `flops`, `distributed`, `stop` (SIGTERM / SIGINT), `export` (the final
GGUF). The data stream is `bitk.data.TrainData`, the loss `bitk.objectives.compute_loss`. Guide:
docs/train.md.
"""

from __future__ import annotations

from bitk._lazy import lazy_exports

from . import recipes  # noqa: F401  (registers the recipe presets: unified, bitdistill_full, lrc_calibration)
from .config import (
    TRAINING_PRESETS,
    CheckpointConfig,
    Config,
    DataConfig,
    LoggingConfig,
    ModelGroup,
    ObjectiveSettings,
    TrainingConfig,
    config_from_dict,
    parse_args,
    register_training_preset,
)

_LAZY = {"train": "loop", "TrainingError": "loop", "find_checkpoint": "state", "latest_checkpoint": "state"}

__all__ = [
    "CheckpointConfig",
    "Config",
    "DataConfig",
    "LoggingConfig",
    "ModelGroup",
    "ObjectiveSettings",
    "TrainingConfig",
    "TRAINING_PRESETS",
    "register_training_preset",
    "parse_args",
    "config_from_dict",
]
__all__ += list(_LAZY)

__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
