"""bitk's decoder models: configs and presets, the model, checkpoints and Hugging Face interop.

`bitk.models.config`, `bitk.models.hub` and `bitk.models.sources` need neither torch nor
transformers (the GGUF packer reads models through them); the torch parts load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from .config import ACTIVATIONS, PRESET_REPOS, PRESETS, ModelConfig, preset
from .hub import ModelLocation, resolve_model

# name -> submodule that defines it (imported on first access: they import torch)
_LAZY = {
    "CausalLM": "model",
    "CausalLMOutput": "model",
    "load_model": "hf",
    "export_hf": "hf",
    "save_checkpoint": "checkpoint",
    "load_checkpoint": "checkpoint",
    "open_source": "sources",
    "ModelSource": "sources",
}

__all__ = ["ModelConfig", "PRESETS", "PRESET_REPOS", "preset", "ACTIVATIONS", "ModelLocation", "resolve_model", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"bitk.models.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'bitk.models' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
