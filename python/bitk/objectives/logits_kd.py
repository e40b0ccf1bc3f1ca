"""Logits distillation, as in BitDistill (arXiv 2510.13998) stage 3.

docs/numerics.md "Logits distillation": ``beta * tau^2 * KL(softmax(t / tau) || softmax(s / tau))`` per token,
the KL summed over the vocabulary and averaged over the valid (non-padding) tokens; defaults
beta 1, tau 5. The tau^2 keeps the gradient scale independent of the temperature (Hinton et al.).
The teacher's logits come from its forward on the clean input, in eval mode, without gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["logits_kd_loss", "masked_token_mean"]


def masked_token_mean(values: torch.Tensor, valid_mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of per-token ``values`` [B, L] over ``valid_mask`` (all when None); 0 when none is valid."""
    if valid_mask is None:
        return values.mean()
    if valid_mask.shape != values.shape:
        raise ValueError(f"valid_mask must be {tuple(values.shape)}, got shape {tuple(valid_mask.shape)}")
    weight = valid_mask.to(values.dtype)
    return (values * weight).sum() / weight.sum().clamp(min=1)


def logits_kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    *,
    temperature: float = 5.0,
    beta: float = 1.0,
    valid_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """KD loss of student logits [B, L, V] toward teacher logits [B, L, V] (module doc), float32 math.

    ``valid_mask`` [B, L] (True = counts) leaves padding out. The teacher logits are detached.
    """
    if student_logits.shape != teacher_logits.shape or student_logits.dim() != 3:
        raise ValueError(
            f"student and teacher logits must both be [batch, length, vocab] of the same shape, got "
            f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}"
        )
    if not temperature > 0:
        raise ValueError(f"KD temperature must be positive, got {temperature!r}")
    if not beta >= 0:
        raise ValueError(f"KD beta must be non-negative, got {beta!r}")
    log_s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_t = F.log_softmax(teacher_logits.detach().float() / temperature, dim=-1)
    kl = F.kl_div(log_s, log_t, reduction="none", log_target=True).sum(-1)  # [B, L]
    return beta * temperature**2 * masked_token_mean(kl, valid_mask)
