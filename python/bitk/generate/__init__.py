"""Text generation with a KV cache: `bitk.generate(model, tokenizer, "prompt")` and `python -m bitk.generate`.

    import bitk.generate
    loaded = bitk.generate.load_for_inference("runs/tiny/final", numerics="i2s")
    out = bitk.generate(loaded.model, loaded.tokenizer, "Once upon a time", max_new_tokens=32, greedy=True)
    out.text, out.ids, out.finish_reason

The package itself is callable (it forwards to `generate`). `generate_ids` is the bare loop over
token ids; `Sampler` chooses tokens (greedy or temperature / top-k / top-p); `load_for_inference`
loads a checkpoint, Hugging Face folder or GGUF file with its tokenizer. CLI: `bitk.generate.cli`.
Usage: docs/generate.md.
"""

from __future__ import annotations

import sys
import types

from bitk._lazy import lazy_exports

# name -> submodule defining it (imported on first use: they import torch)
_LAZY = {
    "generate": "api",
    "generate_ids": "api",
    "Generation": "api",
    "default_eos_ids": "api",
    "prompt_token_ids": "api",
    "Sampler": "sampling",
    "load_for_inference": "loading",
    "Loaded": "loading",
}

__all__ = list(_LAZY)
__getattr__, __dir__ = lazy_exports(__name__, _LAZY)


class _CallableModule(types.ModuleType):
    """This package's module type: calling the module calls `generate`."""

    def __call__(self, *args, **kwargs):
        from .api import generate

        return generate(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
