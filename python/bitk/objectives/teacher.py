"""The distillation teacher: a frozen full-precision model (BitDistill, arXiv 2510.13998, stage 3).

docs/numerics.md "The teacher": the teacher is the original full-precision model, in eval mode, without
gradients, run on the clean (unmasked) input. `load_teacher` reads a bitk checkpoint, a Hugging
Face folder, a hub id or a preset's hub repo through `bitk.load_model(source, ternary=False)`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

__all__ = ["freeze_teacher", "load_teacher"]


def freeze_teacher(model: nn.Module) -> nn.Module:
    """Put ``model`` in eval mode with every parameter's requires_grad off; returns it."""
    model.eval()
    model.requires_grad_(False)
    return model


def load_teacher(
    source: str | Path | nn.Module,
    *,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device = "cpu",
    ternary: bool = False,
    revision: str | None = None,
) -> nn.Module:
    """A frozen teacher CausalLM from a model source (or a model already built), on ``device``.

    ``source``: a local bitk checkpoint or Hugging Face folder, an ``ORG/NAME`` hub id or a preset
    name with a hub repo (``revision`` pins the hub commit), as `bitk.load_model` takes them.
    ``dtype``: None or float32 keeps float32, bfloat16 halves the memory (the losses compute in
    float32 either way). ``ternary=False`` (default) loads full precision: a full-precision source
    as it is, a ternary source as its latent weights with quantization off (`convert_config`);
    pass True to distil from a ternary model as it computes.
    """
    if isinstance(source, nn.Module):
        model = source
        if dtype is not None:
            model = model.to(dtype)
        return freeze_teacher(model.to(device))
    from bitk.models import load_model

    if not isinstance(source, (str, Path)):
        raise ValueError(f"load_teacher takes a model source or a model, got {type(source).__name__}")
    model = load_model(source, ternary=ternary, dtype=torch.float32 if dtype is None else dtype, revision=revision)
    return freeze_teacher(model.to(device))
