"""Losses on the head's input, a chunk of tokens at a time: memory that does not grow with tokens x vocab.

The unfused losses take logits [B, L, V]: in float32 that is 4 x tokens x V bytes, and its
gradient as much again (Qwen3's V = 151,936: 2.5 GB for two sequences of 2048 tokens). Here the
losses take the final hidden states [B, L, H] and the head (`CausalLM(..., logits=False)`) and
compute the logits of ``rows`` tokens at a time, one chunk alive at a time.

Each chunk's gradients are computed in the forward, while its logits are at hand: the loss's
gradient with respect to the logits (for the CE the softmax minus the one-hot targets, for logits
KD the student's minus the teacher's tempered softmax), multiplied back through the head (the
hidden states' gradient) and into the head's weight gradient, summed over the chunks. The backward
only scales them, so no chunk's logits (nor the teacher's) are computed twice. For a head with a
bias or that is not an `nn.Linear` each chunk runs under activation checkpointing instead: only
its input is kept and the backward recomputes its logits.

Each chunk computes the unfused loss's value for its tokens (the same head call, the same float32
math); the sum over chunks is added in another order, and the gradients are the same formulas
computed in another order. A batch of one chunk takes the same path: its loss is the unfused
loss's value, and the gradients skip autograd's passes over the logits (the log-softmax's backward,
the logits' gradient made and read back). Where the head cannot be fused and all tokens fit in one
chunk, the unfused loss itself runs.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable
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


# (loss of a chunk's logits, float32 0-dim; its gradient with respect to the float32 logits; the
# rows that get a gradient, bool, or None for all of them) of logits [rows, V] and the chunk's
# [start, stop) token range.
ChunkGradient = Callable[[torch.Tensor, int, int], tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]


class _ChunkedHead(torch.autograd.Function):
    """The sum over chunks of ``rows`` tokens of a loss of ``h @ weight^T`` [N, V], its gradients
    computed in the forward: per chunk ``chunk_gradient`` gives the loss and g, its gradient with
    respect to the logits; then dh = g @ W and dW = sum g^T h, in the dtype the head's product has
    (autocast included), dW summed in float32 (float64 for a float64 head). The backward multiplies
    them by the incoming gradient, once."""

    @staticmethod
    def forward(ctx, h, weight, rows, chunk_gradient):
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        total = torch.zeros((), dtype=torch.float32, device=h.device)
        dh = torch.empty_like(h) if need_h else None
        acc_dtype = torch.promote_types(weight.dtype, torch.float32)
        dw = torch.zeros(weight.shape, dtype=acc_dtype, device=weight.device) if need_w else None
        w_compute = None
        for i in range(0, h.shape[0], rows):
            hc = h[i : i + rows]
            logits = F.linear(hc, weight)  # what head(hc) computes, under the caller's autocast
            loss, g, keep = chunk_gradient(logits, i, i + hc.shape[0])
            total += loss
            # rows without a target: g holds their softmax, so their rows of dh and of h are zeroed
            dropped = None if keep is None else ~keep.unsqueeze(1)
            with torch.autocast(h.device.type, enabled=False):
                gc = g.to(logits.dtype)
                if need_h:
                    if w_compute is None:
                        w_compute = weight.detach().to(logits.dtype)
                    dhc = torch.mm(gc, w_compute)
                    dh[i : i + rows] = dhc if dropped is None else dhc.masked_fill_(dropped, 0)
                if need_w:
                    hm = hc.to(logits.dtype)
                    hm = hm if dropped is None else hm.masked_fill(dropped, 0)
                    if gc.dtype == acc_dtype:
                        dw.addmm_(gc.T, hm)
                    else:
                        dw += torch.mm(gc.T, hm)
        ctx.save_for_backward(dh, dw)
        ctx.weight_dtype = weight.dtype
        ctx.spent = False
        return total

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_total):
        if ctx.spent:  # dW is scaled in place: a head-sized buffer saved
            raise RuntimeError(
                "the chunked loss computes its gradients in the forward and hands them out once: "
                "backward through it again (retain_graph=True) needs a new forward"
            )
        ctx.spent = True
        dh, dw = ctx.saved_tensors
        dh = None if dh is None else dh * grad_total
        dw = None if dw is None else dw.mul_(grad_total).to(ctx.weight_dtype)
        return dh, dw, None, None


def _ce_gradient(t: torch.Tensor, ignore_index: int) -> ChunkGradient:
    """The summed CE of a chunk against its targets t[start:stop] (cross_entropy's own two steps,
    so the value is the unfused loss's for these tokens), and softmax - onehot(t)."""

    def gradient(logits: torch.Tensor, start: int, stop: int):
        tc = t[start:stop]
        g = logits.float().log_softmax(-1)
        loss = F.nll_loss(g, tc, ignore_index=ignore_index, reduction="sum")
        valid = tc != ignore_index
        g.exp_().scatter_add_(1, tc.clamp(0, g.shape[-1] - 1).unsqueeze(1), valid.to(g.dtype).neg().unsqueeze(1))
        return loss, g, valid

    return gradient


def _fused_head(head: Head, h: torch.Tensor) -> bool:
    """Whether `_ChunkedHead` computes what ``head(h)``'s loss would: a bias-free nn.Linear without
    hooks, and gradients wanted (torch.compile traces it as it is)."""
    return (
        isinstance(head, torch.nn.Linear)
        and head.bias is None
        and not (head._forward_hooks or head._forward_pre_hooks)
        and torch.is_grad_enabled()
        and (h.requires_grad or head.weight.requires_grad)
    )


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
    h, t = _shifted_rows(hidden, labels)
    fused = _fused_head(head, h)
    if not fused and hidden.shape[0] * hidden.shape[1] <= rows:  # one chunk: the unfused loss itself
        return next_token_ce(head(hidden), labels, ignore_index)
    count = (t != ignore_index).sum().clamp(min=1)
    if fused:
        return _ChunkedHead.apply(h, head.weight, rows, _ce_gradient(t, ignore_index)) / count
    total = sum(
        checkpoint(_ce_sum, head, h[i : i + rows], t[i : i + rows], ignore_index, use_reentrant=False)
        for i in range(0, h.shape[0], rows)
    )
    return total / count


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


def _kd_gradient(teacher_head: Head, th: torch.Tensor, w: torch.Tensor, temperature: float) -> ChunkGradient:
    """`_kl_sum` of a chunk (the teacher's logits made here, without gradient) and its gradient with
    respect to the student's logits: (softmax(s / T) - softmax(t / T)) * w / T."""

    def gradient(logits: torch.Tensor, start: int, stop: int):
        log_s = F.log_softmax(logits.float() / temperature, dim=-1)
        log_t = F.log_softmax(teacher_head(th[start:stop]).float() / temperature, dim=-1)
        kl = F.kl_div(log_s, log_t, reduction="none", log_target=True).sum(-1)
        wc = w[start:stop]
        loss = (kl * wc).sum()
        return loss, log_s.exp_().sub_(log_t.exp_()).mul_((wc / temperature).unsqueeze(1)), None

    return gradient


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
    fused = _fused_head(head, hidden)
    if not fused and hidden.shape[0] * hidden.shape[1] <= rows:  # one chunk: the unfused loss itself
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
    if fused:
        total = _ChunkedHead.apply(h, head.weight, rows, _kd_gradient(teacher_head, th, w, temperature))
        return beta * temperature**2 * total / w.sum().clamp(min=1)
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
