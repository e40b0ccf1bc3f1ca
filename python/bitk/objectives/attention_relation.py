"""Attention-relation distillation, MiniLMv2 (arXiv 2012.15828) as used by BitDistill (arXiv 2510.13998).

docs/numerics.md "Attention-relation distillation". At each chosen layer the query, key and value states [B, L, H*d] (the
``attention_states`` of `CausalLMOutput`) are split into R relation heads of size H*d / R and
L2-normalised along the features; the relation of a head is ``softmax(X X^T)`` over the keys
(temperature 1, no causal mask). Loss: KL(teacher relation || student relation) per row,
averaged over rows (valid ones), relation heads and layers, summed over Q, K and V, times gamma
(default 1000; the official BitDistill scripts use 1e5 on one late layer). Relations are [L, L]
whatever the head layout, so student and teacher may differ in head count and size; R must
divide both feature sizes of each of Q, K and V.

Layer mapping: each entry of ``layers`` is an index applied to both models' layer lists (Python
style, -1 = the last layer of each, even when the depths differ), or a pair
``(student_layer, teacher_layer)`` to name them separately.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .logits_kd import masked_token_mean

__all__ = ["attention_relation_loss", "relation_log_probs", "resolve_layer_pairs"]

_QKV = ("query", "key", "value")

LayerSpec = int | tuple[int, int]


def resolve_layer_pairs(layers: Sequence[LayerSpec], num_student: int, num_teacher: int) -> list[tuple[int, int]]:
    """(student, teacher) layer indices (non-negative) of ``layers`` (module doc); ValueError when out of range."""
    layers = [layers] if isinstance(layers, int) else list(layers)
    if len(layers) == 0:
        raise ValueError("relation distillation needs at least one layer")
    pairs = []
    for spec in layers:
        if isinstance(spec, int) and not isinstance(spec, bool):
            s, t = spec, spec
        elif isinstance(spec, (tuple, list)) and len(spec) == 2 and all(isinstance(i, int) for i in spec):
            s, t = spec
        else:
            raise ValueError(f"a relation layer is an int or a (student, teacher) pair of ints, got {spec!r}")
        for name, i, n in (("student", s, num_student), ("teacher", t, num_teacher)):
            if not -n <= i < n:
                raise ValueError(f"relation layer {spec!r}: the {name} has {n} layers (indices {-n}..{n - 1})")
        pairs.append((s % num_student, t % num_teacher))
    return pairs


def relation_log_probs(x: torch.Tensor, split_heads: int, key_valid: torch.Tensor | None = None) -> torch.Tensor:
    """log softmax(X X^T) [B, R, L, L] of states x [B, L, F] split into R = split_heads heads, float32.

    ``key_valid`` [B, L] (True = a real key): other keys get probability 0.
    """
    B, L, features = x.shape
    heads = x.float().reshape(B, L, split_heads, features // split_heads).transpose(1, 2)
    heads = F.normalize(heads, dim=-1)
    scores = heads @ heads.transpose(-1, -2)
    if key_valid is not None:
        scores = scores.masked_fill(~key_valid[:, None, None, :], torch.finfo(scores.dtype).min)
    return F.log_softmax(scores, dim=-1)


def attention_relation_loss(
    student_states: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    teacher_states: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    *,
    layers: Sequence[LayerSpec] = (-1,),
    split_heads: int = 32,
    gamma: float = 1000.0,
    valid_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Relation loss between per-layer (q, k, v) states of student and teacher (module doc).

    ``valid_mask`` [B, L] (True = a real token): padded keys get no probability and padded rows do
    not count. The teacher states are detached.
    """
    if not isinstance(split_heads, int) or isinstance(split_heads, bool) or split_heads < 1:
        raise ValueError(f"relation split_heads must be a positive integer, got {split_heads!r}")
    if not gamma >= 0:
        raise ValueError(f"relation gamma must be non-negative, got {gamma!r}")
    if student_states is None or teacher_states is None:
        raise ValueError(
            "relation distillation needs attention states: run the models with output_attention_states=True"
        )
    pairs = resolve_layer_pairs(layers, len(student_states), len(teacher_states))
    total = None
    for s_layer, t_layer in pairs:
        for which, s, t in zip(_QKV, student_states[s_layer], teacher_states[t_layer]):
            if s.dim() != 3 or t.dim() != 3 or s.shape[:2] != t.shape[:2]:
                raise ValueError(
                    f"{which} states of student layer {s_layer} {tuple(s.shape)} and teacher layer {t_layer} "
                    f"{tuple(t.shape)} must be [batch, length, features] with the same batch and length"
                )
            for name, size in (("student", s.shape[-1]), ("teacher", t.shape[-1])):
                if size % split_heads:
                    raise ValueError(
                        f"relation split_heads {split_heads} must divide the {name}'s {which} size {size} "
                        f"(layer {s_layer if name == 'student' else t_layer})"
                    )
            if valid_mask is not None and valid_mask.shape != s.shape[:2]:
                raise ValueError(f"valid_mask must be {tuple(s.shape[:2])}, got shape {tuple(valid_mask.shape)}")
            log_s = relation_log_probs(s, split_heads, valid_mask)
            log_t = relation_log_probs(t.detach(), split_heads, valid_mask)
            # a padded key has probability exactly 0 in both (finite log), so it adds exactly 0
            kl = F.kl_div(log_s, log_t, reduction="none", log_target=True)
            rows = kl.sum(-1).mean(1)  # [B, L]: summed over keys, averaged over relation heads
            term = masked_token_mean(rows, valid_mask)
            total = term if total is None else total + term
    return gamma * total / len(pairs)
