"""Training objectives: losses over a student's (and a teacher's) outputs, pure torch.

docs/numerics.md "Objectives"; one module per objective:

- `ce`: next-token cross-entropy on shifted logits.
- `dlm`: the masked "diffusion LM" objective with token shift (Fast-dLLM v2, arXiv 2509.26328).
- `logits_kd`: logits distillation (BitDistill, arXiv 2510.13998).
- `attention_relation`: MiniLMv2 attention-relation distillation (arXiv 2012.15828) as in BitDistill.
- `layerwise`: MSE of L2-normalised hidden states per layer.
- `lrc`: low-rank correction calibration (LRC, arXiv 2412.07902): `prepare_lrc` and its loss.
- `curriculum`: weights of the objectives per phase of a run (torch-free: the trainer's config
  checks them without loading torch).
- `settings`: `ObjectiveSettings`, every knob of the objectives (the trainer's "objectives" group;
  torch-free).
- `combiner`: `compute_loss`, the weighted objectives of one micro-batch.
- `teacher`: loading the frozen full-precision teacher.

The names below load their module on first use, so ``import bitk.objectives.curriculum`` (and
``settings``) stays torch-free.
"""

from __future__ import annotations

from bitk._lazy import lazy_exports

_EXPORTS = {
    "attention_relation_loss": "attention_relation",
    "IGNORE_INDEX": "ce",
    "next_token_ce": "ce",
    "ObjectiveSettings": "settings",
    "compute_loss": "combiner",
    "OBJECTIVES": "curriculum",
    "TEACHER_OBJECTIVES": "curriculum",
    "Curriculum": "curriculum",
    "needs_teacher": "curriculum",
    "DLMBatch": "dlm",
    "dlm_loss": "dlm",
    "dlm_mask": "dlm",
    "init_mask_embedding": "dlm",
    "layerwise_loss": "layerwise",
    "logits_kd_loss": "logits_kd",
    "lrc_loss": "lrc",
    "lrc_parameters": "lrc",
    "prepare_lrc": "lrc",
    "load_teacher": "teacher",
}

__all__ = [
    "Curriculum",
    "DLMBatch",
    "IGNORE_INDEX",
    "OBJECTIVES",
    "ObjectiveSettings",
    "TEACHER_OBJECTIVES",
    "attention_relation_loss",
    "compute_loss",
    "dlm_loss",
    "dlm_mask",
    "init_mask_embedding",
    "layerwise_loss",
    "load_teacher",
    "logits_kd_loss",
    "lrc_loss",
    "lrc_parameters",
    "needs_teacher",
    "next_token_ce",
    "prepare_lrc",
]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
