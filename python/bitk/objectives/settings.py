"""ObjectiveSettings: the loss of a run and every knob of its objectives (the trainer's "objectives" group).

One definition: the trainer's configuration holds it as the ``objectives`` group
(``objectives.weights="0:ce=1;0.2:ce=1,dlm=1" objectives.kd_temperature=2``), and
`bitk.objectives.combiner.compute_loss` reads it. Torch-free, so a configuration is checked
without loading torch. Formulas: docs/numerics.md "Objectives"; defaults and papers:
docs/recipes.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bitk._checks import check_bool, check_choice, check_int, check_number

from .curriculum import Curriculum, needs_teacher

__all__ = [
    "LAYERWISE_WEIGHTINGS",
    "LRC_INITS",
    "LRC_LAYERS",
    "ObjectiveSettings",
    "TEACHER_DTYPES",
    "check_relation_layers",
]

TEACHER_DTYPES = ("auto", "fp32", "bf16")
LAYERWISE_WEIGHTINGS = ("uniform", "depth")
LRC_INITS = ("svd", "random")
LRC_LAYERS = ("all", "final")


def check_relation_layers(layers: Any, name: str = "objectives.relation_layers") -> None:
    """The form of relation layers: a non-empty list of layer indices or (student, teacher) pairs."""
    if not isinstance(layers, (list, tuple)) or not layers:
        raise ValueError(f"{name} must be a non-empty list of layer indices, got {layers!r}")
    for spec in layers:
        pair = isinstance(spec, (list, tuple)) and len(spec) == 2
        items = spec if pair else [spec]
        if not all(isinstance(i, int) and not isinstance(i, bool) for i in items):
            raise ValueError(f"{name} must hold layer indices or (student, teacher) pairs of them, got {spec!r}")


@dataclass
class ObjectiveSettings:
    """The loss: which objectives, weighted how, and their knobs (the "objectives" group)."""

    weights: str = "ce=1"
    """The objectives and their weights (ce, dlm, logits_kd, attention_relation, layerwise, lrc), or
    a curriculum of phases "START:NAME=W,...;START:..." with START a fraction of
    training.max_steps, e.g. "0:ce=1;0.2:ce=1,dlm=1" (docs/recipes.md)."""
    phase: int | None = None
    """Run only this phase (1, 2, ...) of the weights for all steps, e.g. one BitDistill stage;
    null = every phase at its start fraction."""
    teacher: str = "auto"
    """Full-precision teacher of logits_kd / attention_relation / layerwise / lrc: a preset with a hub
    repo, a Hugging Face hub id (ORG/NAME), a local bitk checkpoint or Hugging Face folder, or a
    run's output_dir, loaded only when an objective needs one; "auto" = the model's own pretrained
    source (the original full-precision model, as BitDistill does)."""
    teacher_dtype: str = "auto"
    """Teacher weights: "auto" (bf16 on CUDA, float32 on CPU), "fp32" or "bf16"."""
    dlm_probability: float = 0.15
    """DLM: probability of masking each eligible token (never the first/last position or padding)."""
    dlm_complementary: bool = True
    """DLM: also train on the inverse mask, so every eligible token is masked exactly once per batch."""
    dlm_mask_token: str = "<|mask|>"
    """DLM: the token that replaces masked tokens; a tokenizer without it gains it as a new special
    token (not EOS or BOS)."""
    kd_temperature: float = 5.0
    """Logits KD: softmax temperature tau (the loss is tau^2 * KL; its weight is the beta of
    docs/numerics.md)."""
    relation_layers: list[Any] = field(default_factory=lambda: [-1])
    """Attention relation: decoder layers whose Q/K/V relations are distilled (-1 = the last of each
    model), or [student, teacher] pairs of layer indices."""
    relation_split_heads: int = 32
    """Attention relation: relation heads R; must divide the q/k/v widths of student and teacher."""
    relation_gamma: float = 1000.0
    """Attention relation: the factor gamma of the loss (BitDistill's scripts use 1e5 on one late layer)."""
    layerwise_weighting: str = "uniform"
    """Layer-wise distillation: layer weights "uniform" or "depth" (growing with depth)."""
    lrc_rank_ratio: float = 0.1
    """LRC: rank of each projection's correction as a fraction of min(in, out)."""
    lrc_init: str = "svd"
    """LRC: "svd" (truncated SVD of the quantization residual) or "random" (V small random, U zero)."""
    lrc_layers: str = "all"
    """LRC: hidden-state MSE over "all" decoder layers or the "final" one."""

    def validate(self) -> None:
        """Raise ValueError naming the first bad field."""
        p = "objectives."
        if not isinstance(self.weights, str):
            raise ValueError(
                f"objectives.weights must be a string such as 'ce=1' or '0:ce=1;0.2:ce=1,dlm=1', got {self.weights!r}"
            )
        try:
            curriculum = Curriculum.parse(self.weights)
        except ValueError as e:
            raise ValueError(f"objectives.weights: {e}") from None
        if self.phase is not None:
            check_int(
                p + "phase",
                self.phase,
                low=1,
                high=len(curriculum.phases),
                why=f" (objectives.weights has {len(curriculum.phases)} phase(s))",
            )
        if not isinstance(self.teacher, str) or not self.teacher:
            raise ValueError('objectives.teacher must be "auto", a preset, a hub id or a path')
        check_choice(p + "teacher_dtype", self.teacher_dtype, TEACHER_DTYPES)
        check_number(p + "dlm_probability", self.dlm_probability, low=0.0, high=1.0)
        check_bool(p + "dlm_complementary", self.dlm_complementary)
        if not isinstance(self.dlm_mask_token, str) or not self.dlm_mask_token:
            raise ValueError("objectives.dlm_mask_token must be a token string, e.g. <|mask|>")
        check_number(p + "kd_temperature", self.kd_temperature, low=0.0, low_open=True)
        check_relation_layers(self.relation_layers)
        check_int(p + "relation_split_heads", self.relation_split_heads, low=1)
        check_number(p + "relation_gamma", self.relation_gamma, low=0.0)
        check_choice(p + "layerwise_weighting", self.layerwise_weighting, LAYERWISE_WEIGHTINGS)
        check_number(p + "lrc_rank_ratio", self.lrc_rank_ratio, low=0.0, high=1.0, low_open=True)
        check_choice(p + "lrc_init", self.lrc_init, LRC_INITS)
        check_choice(p + "lrc_layers", self.lrc_layers, LRC_LAYERS)

    def curriculum(self) -> Curriculum:
        """The weights as a `Curriculum` (``phase`` applied: that phase's weights for the whole run)."""
        curriculum = Curriculum.parse(self.weights)
        if self.phase is not None:
            curriculum = Curriculum.constant(curriculum.phases[self.phase - 1][1])
        return curriculum

    def needs_teacher(self) -> bool:
        """Some phase gives an objective that compares with a teacher a positive weight."""
        return needs_teacher(self.curriculum())
