"""Next-token cross-entropy on shifted logits (docs/numerics.md "Cross-entropy").

The logits at position i predict the token at i + 1: ``CE(logits[:, :-1], labels[:, 1:])`` in
float32, averaged over the targets that are not ``ignore_index``. The same function scores the DLM
objective (`bitk.objectives.dlm`), whose labels are -100 everywhere but at the masked positions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["IGNORE_INDEX", "next_token_ce", "next_token_losses"]

IGNORE_INDEX = -100
"""Label of a position that is not a target (torch's cross_entropy default)."""


def next_token_ce(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Mean cross-entropy of the logits at i [B, L, V] against labels at i + 1 [B, L] (float32 math).

    Targets equal to ``ignore_index`` do not count. With no target at all the loss is 0 (with a
    gradient of zeros), not NaN: a DLM batch may happen to mask nothing. No host sync.
    """
    inputs, targets = _shifted(logits, labels)
    total = F.cross_entropy(inputs, targets, ignore_index=ignore_index, reduction="sum")
    count = (targets != ignore_index).sum().clamp(min=1)
    return total / count


def next_token_losses(
    logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX
) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-target losses [B * (L - 1)] in float32, 0 where ignored; the targets that count, bool).

    What `next_token_ce` averages, kept per token so that a scorer can sum over many batches
    exactly (`bitk.eval.evaluate` sums them in float64).
    """
    inputs, targets = _shifted(logits, labels)
    return F.cross_entropy(inputs, targets, ignore_index=ignore_index, reduction="none"), targets != ignore_index


def _shifted(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The logits at i (float32, flattened) and the labels at i + 1 they predict."""
    if logits.dim() != 3:
        raise ValueError(f"logits must be [batch, length, vocab], got shape {tuple(logits.shape)}")
    if labels.shape != logits.shape[:2]:
        raise ValueError(f"labels must be {tuple(logits.shape[:2])} to match logits, got shape {tuple(labels.shape)}")
    return logits[:, :-1].reshape(-1, logits.shape[-1]).float(), labels[:, 1:].reshape(-1)
