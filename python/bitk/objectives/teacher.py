"""The distillation teacher: a frozen full-precision model (BitDistill, arXiv 2510.13998, stage 3).

numerics.md "Objectives": the teacher is the original full-precision model, in eval mode, without
gradients, run on the clean (unmasked) input. `load_teacher` reads a local bitk checkpoint or
Hugging Face folder through `bitk.load_model(path, ternary=False)`; it never downloads (a hub
id that is not a local path is an error here: fetch the folder first).
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
    path_or_model_name: str | Path | nn.Module,
    *,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device = "cpu",
    ternary: bool = False,
) -> nn.Module:
    """A frozen teacher CausalLM from a local path (or a model already built), on ``device``.

    ``dtype``: None or float32 keeps float32, bfloat16 halves the memory (the losses compute in
    float32 either way). ``ternary=False`` (default) loads full precision: a full-precision source
    as it is, a ternary source as its latent weights with quantization off (`convert_config`);
    pass True to distil from a ternary model as it computes.
    """
    if isinstance(path_or_model_name, nn.Module):
        model = path_or_model_name
        if dtype is not None:
            model = model.to(dtype)
        return freeze_teacher(model.to(device))
    from bitk.models import load_model

    if not isinstance(path_or_model_name, (str, Path)):
        raise ValueError(f"load_teacher takes a path or a model, got {type(path_or_model_name).__name__}")
    path = Path(path_or_model_name).expanduser()
    if not path.exists():
        raise ValueError(
            f"teacher {str(path_or_model_name)!r}: no such file or directory (load_teacher reads local bitk "
            "checkpoints and Hugging Face folders, and downloads nothing: fetch a hub model first)"
        )
    model = load_model(path, ternary=ternary, dtype=torch.float32 if dtype is None else dtype)
    return freeze_teacher(model.to(device))
