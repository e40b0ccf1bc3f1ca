"""Masked "diffusion LM" objective with token shift, after Fast-dLLM v2 (arXiv 2509.26328).

docs/numerics.md "Masked diffusion objective". Each eligible token is replaced by the mask token with probability p
(default 0.15); the loss is the cross-entropy of the logits at i - 1 against the original token at
each masked position i (token shift, so the causal LM head is reused as is; attention stays
causal). With complementary masks (default) the batch is doubled with the inverse mask over the
eligible positions, so every eligible token is a target exactly once per batch.

Eligible: not the first or last position of a row, not padding, and with packed documents
(``position_ids``, a document starts where position_ids == 0) not the first token of a document:
its prediction would come from the logits of the previous document, which its block-diagonal
attention never lets it see. Probability 0 masks nothing and does not double the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .ce import IGNORE_INDEX, next_token_ce

__all__ = ["DLMBatch", "dlm_eligible", "dlm_loss", "dlm_mask", "init_mask_embedding"]


@dataclass
class DLMBatch:
    """A masked batch: what the student runs on, and the targets of `dlm_loss`."""

    input_ids: torch.Tensor
    """[B', L] tokens with the masked ones replaced by the mask token (B' = 2B with complementary masks)."""
    labels: torch.Tensor
    """[B', L] the original token at masked positions, -100 elsewhere."""
    position_ids: torch.Tensor | None
    """The position ids to run with: None, the given [L], or [B', L] (repeated like the rows)."""


def dlm_eligible(
    input_ids: torch.Tensor, *, pad_token_id: int | None = None, position_ids: torch.Tensor | None = None
) -> torch.Tensor:
    """Boolean [B, L]: the positions that may be masked (module doc)."""
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be [batch, length], got shape {tuple(input_ids.shape)}")
    B, L = input_ids.shape
    eligible = torch.ones(B, L, dtype=torch.bool, device=input_ids.device)
    eligible[:, 0] = False
    eligible[:, -1] = False
    if pad_token_id is not None:
        eligible &= input_ids != pad_token_id
    if position_ids is not None:
        pos = position_ids if position_ids.dim() == 2 else position_ids[None]
        if pos.dim() != 2 or pos.shape[-1] != L or pos.shape[0] not in (1, B):
            raise ValueError(
                f"position_ids must be [{B}, {L}] or [{L}] to match input_ids {tuple(input_ids.shape)}, "
                f"got shape {tuple(position_ids.shape)}"
            )
        eligible &= pos.to(input_ids.device) != 0
    return eligible


def dlm_mask(
    input_ids: torch.Tensor,
    *,
    mask_token_id: int,
    probability: float = 0.15,
    complementary: bool = True,
    generator: torch.Generator | None = None,
    pad_token_id: int | None = None,
    position_ids: torch.Tensor | None = None,
) -> DLMBatch:
    """Mask ``input_ids`` [B, L] for the DLM loss (module doc for what is eligible).

    Draws one uniform number per token from ``generator`` (on input_ids' device); a token is masked
    when eligible and its draw is below ``probability``. ``complementary``: rows [B:] of the result
    mask exactly the eligible tokens that rows [:B] leave unmasked. ``probability`` 0 returns the
    input unchanged with no target (and a single copy of the batch).
    """
    if not isinstance(probability, (int, float)) or isinstance(probability, bool) or not 0.0 <= probability <= 1.0:
        raise ValueError(f"DLM mask probability must be in [0, 1], got {probability!r}")
    if pad_token_id is not None and mask_token_id == pad_token_id:
        raise ValueError(f"the DLM mask token must not be the pad token (both {mask_token_id})")
    eligible = dlm_eligible(input_ids, pad_token_id=pad_token_id, position_ids=position_ids)
    if probability == 0:
        labels = torch.full_like(input_ids, IGNORE_INDEX)
        return DLMBatch(input_ids.clone(), labels, position_ids)
    draw = torch.rand(input_ids.shape, generator=generator, device=input_ids.device)
    masked = eligible & (draw < probability)
    if complementary:
        masked = torch.cat([masked, eligible & ~masked])
        input_ids = torch.cat([input_ids, input_ids])
        if position_ids is not None and position_ids.dim() == 2 and position_ids.shape[0] != 1:
            position_ids = torch.cat([position_ids, position_ids])
    labels = torch.where(masked, input_ids, IGNORE_INDEX)
    masked_ids = torch.where(masked, torch.full_like(input_ids, mask_token_id), input_ids)
    return DLMBatch(masked_ids, labels, position_ids)


def dlm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Token-shifted CE over the masked positions: logits at i - 1 against labels at i (`next_token_ce`)."""
    return next_token_ce(logits, labels)


@torch.no_grad()
def init_mask_embedding(model: torch.nn.Module, mask_token_id: int, rows: int | None = None) -> None:
    """Set the mask token's embedding row to the mean of the other rows (docs/numerics.md).

    ``rows``: only the first ``rows`` rows are averaged (the tokenizer's tokens, leaving out the
    unused rows of a vocabulary padded past the tokenizer); None averages them all. A tied head
    shares the row, so the mask token's logit becomes the mean of the others too.
    """
    embed = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else model.model.embed_tokens
    weight = embed.weight
    if not 0 <= mask_token_id < weight.shape[0]:
        raise ValueError(f"mask_token_id {mask_token_id} is outside the embedding's {weight.shape[0]} rows")
    used = weight[: weight.shape[0] if rows is None else max(min(rows, weight.shape[0]), mask_token_id + 1)]
    others = torch.cat([used[:mask_token_id], used[mask_token_id + 1 :]])
    weight[mask_token_id] = others.float().mean(0).to(weight.dtype)
