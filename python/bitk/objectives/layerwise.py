"""Layer-wise hidden-state distillation (docs/numerics.md "Layer-wise distillation"; used alongside BitDistill, arXiv 2510.13998).

Per decoder layer l = 1..N: the MSE (mean over tokens and features) between the L2-normalised
student and teacher hidden states (normalised along the features, so only directions count),
combined with weights that are uniform or grow linearly with depth (w_l proportional to l),
normalised to sum 1. The inputs are `CausalLMOutput.hidden_states` (N + 1 tensors): the embedding
output (index 0) is not a layer and is left out; the last state is taken after the final norm,
as the model returns it. Student and teacher must have the same depth and hidden size.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .settings import LAYERWISE_WEIGHTINGS

__all__ = ["WEIGHTINGS", "check_hidden_pairs", "layer_weights", "layerwise_loss"]

WEIGHTINGS = LAYERWISE_WEIGHTINGS


def layer_weights(num_layers: int, weighting: str = "uniform") -> list[float]:
    """Weights of layers 1..num_layers, summing to 1: all equal, or proportional to depth."""
    if weighting not in WEIGHTINGS:
        raise ValueError(f"layer weighting must be one of {', '.join(WEIGHTINGS)}, got {weighting!r}")
    raw = [1.0] * num_layers if weighting == "uniform" else [float(layer) for layer in range(1, num_layers + 1)]
    return [w / sum(raw) for w in raw]


def check_hidden_pairs(student_hidden: Sequence[torch.Tensor], teacher_hidden: Sequence[torch.Tensor]) -> int:
    """The number of decoder layers N, after checking both are N + 1 states of equal shapes."""
    if student_hidden is None or teacher_hidden is None:
        raise ValueError("hidden-state losses need hidden states: run the models with output_hidden_states=True")
    if len(student_hidden) != len(teacher_hidden):
        raise ValueError(
            f"student and teacher must have the same depth: {len(student_hidden)} and {len(teacher_hidden)} hidden "
            "states (layers + 1)"
        )
    if len(student_hidden) < 2:
        raise ValueError(
            f"expected the embedding output and at least one layer's output, got {len(student_hidden)} state(s)"
        )
    for i, (s, t) in enumerate(zip(student_hidden, teacher_hidden)):
        if s.shape != t.shape:
            raise ValueError(f"hidden state {i}: student {tuple(s.shape)} and teacher {tuple(t.shape)} differ in shape")
    return len(student_hidden) - 1


def layerwise_loss(
    student_hidden: Sequence[torch.Tensor],
    teacher_hidden: Sequence[torch.Tensor],
    *,
    weighting: str = "uniform",
) -> torch.Tensor:
    """Weighted sum over layers of MSE(normalize(student), normalize(teacher)) (module doc), float32 math."""
    num_layers = check_hidden_pairs(student_hidden, teacher_hidden)
    weights = layer_weights(num_layers, weighting)
    total = None
    for w, s, t in zip(weights, student_hidden[1:], teacher_hidden[1:]):
        term = w * F.mse_loss(F.normalize(s.float(), dim=-1), F.normalize(t.detach().float(), dim=-1))
        total = term if total is None else total + term
    return total
