"""Losses on the head's input, a chunk of tokens at a time: memory that does not grow with tokens x vocab.

The unfused losses take logits [B, L, V]: in float32 that is 4 x tokens x V bytes, and its
gradient as much again (Qwen3's V = 151,936: 2.5 GB for two sequences of 2048 tokens). Here the
losses take the final hidden states [B, L, H] and the head (`CausalLM(..., logits=False)`) and
compute the logits of ``rows`` tokens at a time: each chunk runs under activation checkpointing,
so only its input is kept and the backward recomputes its logits, one chunk alive at a time.

Each chunk computes exactly what the unfused loss computes for its tokens (the same head call,
the same float32 math); only the sum over chunks is added in another order. When all tokens fit
in one chunk no checkpointing happens and the result is the unfused loss's, bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .ce import IGNORE_INDEX, next_token_ce
from .logits_kd import logits_kd_loss

__all__ = ["CHUNK_ELEMENTS", "chunk_rows", "chunked_logits_kd", "chunked_next_token_ce", "chunked_next_token_losses"]

CHUNK_ELEMENTS = 1 << 24
"""Logit elements per chunk: 16 M, 64 MB in float32 (110 tokens of a 151,936-token vocabulary)."""

Head = Callable[[torch.Tensor], torch.Tensor]


def chunk_rows(vocab_size: int, elements: int | None = None) -> int:
    """Tokens per chunk for a vocabulary of ``vocab_size``: ``elements`` (default CHUNK_ELEMENTS)
    logits, at least 16 tokens."""
    return max(16, (elements or CHUNK_ELEMENTS) // max(1, vocab_size))


def _vocab(head: Head) -> int:
    weight = getattr(head, "weight", None)
    if weight is None:
        raise ValueError("the head must be a module with a weight [vocab, hidden] (CausalLM.lm_head)")
    return weight.shape[0]


def _shifted_rows(hidden: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The hidden states at i [N, H] and the labels at i + 1 [N] they predict."""
    if hidden.dim() != 3:
        raise ValueError(f"hidden states must be [batch, length, hidden], got shape {tuple(hidden.shape)}")
    if labels.shape != hidden.shape[:2]:
        raise ValueError(f"labels must be {tuple(hidden.shape[:2])} to match hidden, got shape {tuple(labels.shape)}")
    return hidden[:, :-1].reshape(-1, hidden.shape[-1]), labels[:, 1:].reshape(-1)


def _ce_sum(head: Head, h: torch.Tensor, t: torch.Tensor, ignore_index: int) -> torch.Tensor:
    return F.cross_entropy(head(h).float(), t, ignore_index=ignore_index, reduction="sum")


def chunked_next_token_ce(
    hidden: torch.Tensor,
    head: Head,
    labels: torch.Tensor,
    ignore_index: int = IGNORE_INDEX,
    rows: int | None = None,
) -> torch.Tensor:
    """`bitk.objectives.next_token_ce` of ``head(hidden)`` [B, L, V] against labels [B, L], by chunks.

    ``rows``: tokens per chunk (None: `chunk_rows` of the head's vocabulary). No host sync.
    """
    rows = rows or chunk_rows(_vocab(head))
    if hidden.shape[0] * hidden.shape[1] <= rows:  # one chunk: the unfused loss itself
        return next_token_ce(head(hidden), labels, ignore_index)
    h, t = _shifted_rows(hidden, labels)
    total = sum(
        checkpoint(_ce_sum, head, h[i : i + rows], t[i : i + rows], ignore_index, use_reentrant=False)
        for i in range(0, h.shape[0], rows)
    )
    return total / (t != ignore_index).sum().clamp(min=1)


@torch.no_grad()
def chunked_next_token_losses(
    hidden: torch.Tensor, head: Head, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX, rows: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """`bitk.objectives.next_token_losses` of ``head(hidden)``, by chunks, without gradient (scoring)."""
    rows = rows or chunk_rows(_vocab(head))
    h, t = _shifted_rows(hidden, labels)
    losses = torch.cat(
        [
            F.cross_entropy(head(h[i : i + rows]).float(), t[i : i + rows], ignore_index=ignore_index, reduction="none")
            for i in range(0, h.shape[0], rows)
        ]
    )
    return losses, t != ignore_index


def _kl_sum(
    head: Head, teacher_head: Head, h: torch.Tensor, th: torch.Tensor, w: torch.Tensor, temperature: float
) -> torch.Tensor:
    log_s = F.log_softmax(head(h).float() / temperature, dim=-1)
    with torch.no_grad():
        log_t = F.log_softmax(teacher_head(th).float() / temperature, dim=-1)
    kl = F.kl_div(log_s, log_t, reduction="none", log_target=True).sum(-1)
    return (kl * w).sum()


def chunked_logits_kd(
    hidden: torch.Tensor,
    head: Head,
    teacher_hidden: torch.Tensor,
    teacher_head: Head,
    *,
    temperature: float = 5.0,
    beta: float = 1.0,
    valid_mask: torch.Tensor | None = None,
    rows: int | None = None,
) -> torch.Tensor:
    """`bitk.objectives.logits_kd_loss` of ``head(hidden)`` toward ``teacher_head(teacher_hidden)``, by chunks.

    hidden and teacher_hidden [B, L, H] (the widths may differ); the heads must share a vocabulary.
    The teacher side runs without gradient. ``valid_mask`` [B, L] (True = counts).
    """
    if hidden.dim() != 3 or teacher_hidden.shape[:2] != hidden.shape[:2]:
        raise ValueError(
            f"student and teacher hidden states must be [batch, length, hidden] over the same tokens, got "
            f"{tuple(hidden.shape)} and {tuple(teacher_hidden.shape)}"
        )
    vocab, teacher_vocab = _vocab(head), _vocab(teacher_head)
    if vocab != teacher_vocab:
        raise ValueError(f"student and teacher heads must share a vocabulary, got {vocab} and {teacher_vocab} rows")
    rows = rows or chunk_rows(vocab)
    if hidden.shape[0] * hidden.shape[1] <= rows:  # one chunk: the unfused loss itself
        with torch.no_grad():
            teacher_logits = teacher_head(teacher_hidden)
        return logits_kd_loss(head(hidden), teacher_logits, temperature=temperature, beta=beta, valid_mask=valid_mask)
    if not temperature > 0:
        raise ValueError(f"KD temperature must be positive, got {temperature!r}")
    if not beta >= 0:
        raise ValueError(f"KD beta must be non-negative, got {beta!r}")
    if valid_mask is not None and valid_mask.shape != hidden.shape[:2]:
        raise ValueError(f"valid_mask must be {tuple(hidden.shape[:2])}, got shape {tuple(valid_mask.shape)}")
    h = hidden.reshape(-1, hidden.shape[-1])
    th = teacher_hidden.detach().reshape(-1, teacher_hidden.shape[-1])
    w = (
        torch.ones(h.shape[0], dtype=torch.float32, device=h.device)
        if valid_mask is None
        else valid_mask.reshape(-1).to(torch.float32)
    )
    total = sum(
        checkpoint(
            _kl_sum,
            head,
            teacher_head,
            h[i : i + rows],
            th[i : i + rows],
            w[i : i + rows],
            temperature,
            use_reentrant=False,
        )
        for i in range(0, h.shape[0], rows)
    )
    return beta * temperature**2 * total / w.sum().clamp(min=1)
