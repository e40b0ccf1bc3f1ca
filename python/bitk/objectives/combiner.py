"""The combined loss of one micro-batch (docs/numerics.md "Objectives").

The weights come from a `bitk.objectives.curriculum.Curriculum`, the knobs from
`bitk.objectives.settings.ObjectiveSettings`. `compute_loss` runs only the forwards the non-zero
weights need and returns the weighted sum with each objective's unweighted value. Objectives:
``ce`` (next-token CE), ``dlm`` (Fast-dLLM v2 masked objective, arXiv 2509.26328), ``logits_kd``
(logits distillation) and ``attention_relation`` (MiniLMv2 attention relations, arXiv 2012.15828)
as in BitDistill (arXiv 2510.13998), ``layerwise`` (normalised hidden states) and ``lrc`` (LRC
calibration MSE, arXiv 2412.07902); the last four need a teacher.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from bitk.data.tokenizer import MASK_ID

from .attention_relation import attention_relation_loss
from .ce import IGNORE_INDEX
from .chunked import chunked_logits_kd, chunked_next_token_ce
from .curriculum import TEACHER_OBJECTIVES, _check_weights
from .dlm import dlm_mask
from .layerwise import layerwise_loss
from .lrc import lrc_loss
from .settings import ObjectiveSettings

__all__ = ["compute_loss"]


def compute_loss(
    student: torch.nn.Module,
    input_ids: torch.Tensor,
    position_ids: torch.Tensor | None,
    weights: Mapping[str, float],
    settings: ObjectiveSettings | None = None,
    *,
    teacher: torch.nn.Module | None = None,
    mask_token_id: int = MASK_ID,
    pad_token_id: int | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``(sum of weight * loss, {objective: unweighted loss, detached float32})`` over the non-zero weights.

    One student forward: over the clean rows for ce/logits_kd/attention_relation/layerwise/lrc
    (asking for hidden or attention states only when layerwise/lrc or attention_relation weigh > 0),
    with the DLM-masked rows appended for dlm; and the teacher's forward on the clean input under
    no_grad for the teacher objectives. A zero weight computes nothing: no masking, no
    teacher call. The teacher's train/eval mode is left as is (`load_teacher` sets eval).
    ``settings``: the knobs (None: the defaults). ``mask_token_id`` replaces DLM-masked tokens
    (bitk's tokenizer: <|mask|> = 2); ``pad_token_id`` tokens are not CE/DLM targets and not valid
    KD/relation tokens (None = no padding). ``generator`` draws the DLM masks. No host sync.
    """
    settings = ObjectiveSettings() if settings is None else settings
    for name, value in (("mask_token_id", mask_token_id), ("pad_token_id", pad_token_id)):
        if (value is not None or name == "mask_token_id") and (
            isinstance(value, bool) or not isinstance(value, int) or value < 0
        ):
            raise ValueError(f"{name} must be a non-negative token id, got {value!r}")
    if mask_token_id == pad_token_id:
        raise ValueError(f"mask_token_id must differ from pad_token_id ({pad_token_id})")
    active = {n: w for n, w in _check_weights(weights, "compute_loss weights").items() if w > 0}
    if not active:
        raise ValueError(f"compute_loss needs at least one positive weight, got {dict(weights)!r}")
    teacher_names = [n for n in TEACHER_OBJECTIVES if n in active]
    if teacher_names and teacher is None:
        raise ValueError(f"objective(s) {', '.join(teacher_names)} need a teacher model, but teacher is None")
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be [batch, length], got shape {tuple(input_ids.shape)}")
    pad = pad_token_id
    valid = None if pad is None else input_ids != pad
    need_hidden = "layerwise" in active or "lrc" in active
    need_attention = "attention_relation" in active
    losses: dict[str, torch.Tensor] = {}

    clean = "ce" in active or bool(teacher_names)
    B, L = input_ids.shape
    ids, pos, masked = input_ids, position_ids, None
    if "dlm" in active:
        masked = dlm_mask(
            input_ids,
            mask_token_id=mask_token_id,
            probability=settings.dlm_probability,
            complementary=settings.dlm_complementary,
            generator=generator,
            pad_token_id=pad,
            position_ids=position_ids,
        )
        if clean:  # one forward over the clean and the masked rows (DDP / FSDP want one forward per backward)
            ids = torch.cat([input_ids, masked.input_ids])
            pos = (
                None
                if position_ids is None
                else torch.cat([_rows(position_ids, B, L), _rows(masked.position_ids, masked.input_ids.shape[0], L)])
            )
        else:
            ids, pos = masked.input_ids, masked.position_ids
    out = student(ids, pos, output_hidden_states=need_hidden, output_attention_states=need_attention, logits=False)
    final, head = out.last_hidden, out.head

    if "dlm" in active:  # token-shifted CE over the masked positions (bitk.objectives.dlm)
        losses["dlm"] = chunked_next_token_ce(final[B:] if clean else final, head, masked.labels)
    if clean:
        final = final[:B]
        if "ce" in active:
            labels = input_ids if valid is None else input_ids.masked_fill(~valid, IGNORE_INDEX)
            losses["ce"] = chunked_next_token_ce(final, head, labels)
        if teacher_names:
            hidden = None if out.hidden_states is None else tuple(h[:B] for h in out.hidden_states)
            states = (
                None
                if out.attention_states is None
                else tuple(tuple(x[:B] for x in qkv) for qkv in out.attention_states)
            )
            with torch.no_grad():
                ref = teacher(
                    input_ids,
                    position_ids,
                    output_hidden_states=need_hidden,
                    output_attention_states=need_attention,
                    logits=False,
                )
            if "logits_kd" in active:
                losses["logits_kd"] = chunked_logits_kd(
                    final, head, ref.last_hidden, ref.head, temperature=settings.kd_temperature, valid_mask=valid
                )
            if "attention_relation" in active:
                losses["attention_relation"] = attention_relation_loss(
                    states,
                    ref.attention_states,
                    layers=settings.relation_layers,
                    split_heads=settings.relation_split_heads,
                    gamma=settings.relation_gamma,
                    valid_mask=valid,
                )
            if "layerwise" in active:
                losses["layerwise"] = layerwise_loss(hidden, ref.hidden_states, weighting=settings.layerwise_weighting)
            if "lrc" in active:
                losses["lrc"] = lrc_loss(hidden, ref.hidden_states, layers=settings.lrc_layers)
    del out, final, head

    total = sum(active[n] * loss for n, loss in losses.items())
    return total, {n: loss.detach().float() for n, loss in losses.items()}


def _rows(position_ids: torch.Tensor, n: int, length: int) -> torch.Tensor:
    """position_ids ([length], [1, length] or [n, length]) as [n, length] rows."""
    return position_ids.expand(n, length) if position_ids.dim() == 1 or position_ids.shape[0] == 1 else position_ids
