"""bitk's decoder models: configs and presets, the model, checkpoints and Hugging Face interop.

`bitk.models.config`, `bitk.models.hub` and `bitk.models.sources` need neither torch nor
transformers (the GGUF packer reads models through them); the torch parts load on first use.
"""

from __future__ import annotations

from bitk._lazy import lazy_exports

from .config import ACTIVATIONS, PRESET_REPOS, PRESETS, ModelConfig, preset
from .hub import ModelLocation, resolve_model

# name -> submodule that defines it (imported on first access: they import torch)
_LAZY = {
    "CausalLM": "model",
    "CausalLMOutput": "model",
    "KVCache": "cache",
    "load_model": "hf",
    "export_hf": "hf",
    "save_checkpoint": "checkpoint",
    "load_checkpoint": "model",
    "open_source": "sources",
    "ModelSource": "sources",
}

__all__ = ["ModelConfig", "PRESETS", "PRESET_REPOS", "preset", "ACTIVATIONS", "ModelLocation", "resolve_model"]
__all__ += list(_LAZY)

__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
