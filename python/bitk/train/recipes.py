"""The recipe presets (``training=NAME``): BitDistill, the unified CE + DLM objective, LRC calibration.

Each is a `TrainingConfig` registered with `register_training_preset`; every field can still be
overridden (``training=bitdistill_full training.max_steps=2000``). Formulas and defaults:
numerics.md "Objectives"; defaults, papers and examples: docs/recipes.md.
"""

from __future__ import annotations

from .config import TrainingConfig, register_training_preset

__all__ = ["RECIPES"]

RECIPES = {
    "unified": register_training_preset(
        "unified",
        TrainingConfig(objectives="0:ce=1;0.2:ce=1,dlm=1"),
        "CE for the first 20% of the steps, then CE + the masked DLM objective (Fast-dLLM v2, "
        "complementary masks)",
    ),
    "bitdistill_full": register_training_preset(
        "bitdistill_full",
        TrainingConfig(objectives="0:ce=1;0.5:ce=1,logits_kd=1,attention_relation=1", lr=1e-3, warmup_steps=20),
        "BitDistill: stage 2 continued pre-training with CE (phase 1), then stage 3 CE + logits KD + "
        "attention-relation distillation from the full-precision teacher (phase 2; training.phase=N runs one)",
    ),
    "lrc_calibration": register_training_preset(
        "lrc_calibration",
        TrainingConfig(objectives="lrc=1", lr=1e-3, weight_decay=0.0, max_steps=200, warmup_steps=20,
                       eval_every=50, save_every=100),
        "low-rank correction: ternary weights frozen, only the LRC factors U, V train on the teacher's "
        "hidden states (MSE)",
    ),
}
