"""Low-rank correction (LRC, arXiv 2412.07902): calibration loss and model preparation.

docs/numerics.md "Low-rank correction (LRC)". Every BitLinear projection of the decoder layers becomes a
`bitk.nn.BitLinearLRC` (``y = BitLinear(x) + (x V) U`` on the unquantized input) sharing its
weights; the ternary weights and every other parameter (embeddings, norms, head) are frozen, so
only the factors U, V train. They start from a truncated SVD of the quantization residual (default)
or V small random and U zero, never both zero. The calibration loss is the plain MSE between
student and teacher hidden states: averaged over every decoder layer's output, or the final one.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from bitk.nn import BitLinear, BitLinearLRC

from .layerwise import check_hidden_pairs
from .settings import LRC_LAYERS

__all__ = ["LRC_LAYERS", "lrc_loss", "lrc_parameters", "prepare_lrc"]


def lrc_loss(
    student_hidden: Sequence[torch.Tensor], teacher_hidden: Sequence[torch.Tensor], *, layers: str = "all"
) -> torch.Tensor:
    """MSE of hidden states (`CausalLMOutput.hidden_states`), float32 math.

    ``layers="all"``: the mean over decoder layers 1..N of each layer's MSE (the embedding output,
    index 0, is left out: LRC does not change it); ``"final"``: the last state only (after the
    final norm).
    """
    if layers not in LRC_LAYERS:
        raise ValueError(f"LRC layers must be one of {', '.join(LRC_LAYERS)}, got {layers!r}")
    num_layers = check_hidden_pairs(student_hidden, teacher_hidden)
    chosen = range(1, num_layers + 1) if layers == "all" else [num_layers]
    terms = [F.mse_loss(student_hidden[i].float(), teacher_hidden[i].detach().float()) for i in chosen]
    return torch.stack(terms).mean()


def lrc_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The low-rank factors (lrc_v, lrc_u) of every BitLinearLRC in ``model``, in module order."""
    return [p for m in model.modules() if isinstance(m, BitLinearLRC) for p in (m.lrc_v, m.lrc_u)]


def prepare_lrc(model: nn.Module, rank_ratio: float = 0.1, init: str = "svd") -> list[nn.Parameter]:
    """Turn ``model`` (a ternary CausalLM) into an LRC student in place; returns the trainable parameters.

    Each BitLinear under ``model.model.layers`` is replaced by ``BitLinearLRC.from_bitlinear(layer,
    rank_ratio=rank_ratio, init=init, freeze_ternary=True)`` (rank = ratio * min(in, out)); layers
    that already are BitLinearLRC are kept. Then every parameter is frozen except the factors, whose
    list (`lrc_parameters`) is returned for the optimizer.
    """
    decoder = getattr(getattr(model, "model", None), "layers", None)
    if decoder is None:
        raise ValueError(f"prepare_lrc takes a bitk CausalLM (with model.layers), got {type(model).__name__}")
    for layer in decoder:
        for name, module in list(layer.named_modules()):
            if isinstance(module, BitLinear) and not isinstance(module, BitLinearLRC):
                parent_name, _, attr = name.rpartition(".")
                lrc = BitLinearLRC.from_bitlinear(module, rank_ratio=rank_ratio, init=init, freeze_ternary=True)
                lrc.numerics = module.numerics  # keep an evaluation mode set by set_numerics
                setattr(layer.get_submodule(parent_name), attr, lrc)
    params = lrc_parameters(model)
    if not params:
        raise ValueError("prepare_lrc found no BitLinear projection in the decoder layers: the model must be ternary")
    model.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    return params
