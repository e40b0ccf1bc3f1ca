"""The recipe presets (``training=NAME``): BitDistill, the unified CE + DLM objective, LRC calibration.

Each is a set of settings registered with `register_training_preset`; every field can still be
overridden (``training=bitdistill_full training.max_steps=2000``). Formulas: docs/numerics.md
"Objectives"; defaults, papers and examples: docs/recipes.md.
"""

from __future__ import annotations

from .config import register_training_preset

__all__ = ["RECIPES"]

RECIPES = {
    "unified": register_training_preset(
        "unified",
        {"objectives.weights": "0:ce=1;0.2:ce=1,dlm=1"},
        "CE for the first 20% of the steps, then CE + the masked DLM objective (Fast-dLLM v2, complementary masks)",
    ),
    "bitdistill_full": register_training_preset(
        "bitdistill_full",
        {
            "objectives.weights": "0:ce=1;0.5:ce=1,logits_kd=1,attention_relation=1",
            "training.lr": 1e-3,
            "training.warmup_steps": 20,
        },
        "BitDistill: stage 2 continued pre-training with CE (phase 1), then stage 3 CE + logits KD + "
        "attention-relation distillation from the full-precision teacher (phase 2; objectives.phase=N runs one)",
    ),
    "lrc_calibration": register_training_preset(
        "lrc_calibration",
        {
            "objectives.weights": "lrc=1",
            "training.lr": 1e-3,
            "training.weight_decay": 0.0,
            "training.max_steps": 200,
            "training.warmup_steps": 20,
            "training.eval_every": 50,
            "checkpoint.save_every": 100,
        },
        "low-rank correction: ternary weights frozen, only the LRC factors U, V train on the teacher's "
        "hidden states (MSE)",
    ),
}
