"""bitk's GGUF packer: ternary models -> GGUF files that bitnet.cpp (I2_S) and llama.cpp (TQ) run.

    from bitk.gguf import pack, verify, read_gguf
    pack("checkpoints/step-1000", "model.gguf", "i2_s")   # a bitk checkpoint or HF BitNet folder
    verify("model.gguf", against="checkpoints/step-1000").ok
    bitk.gguf.export(model, "model.gguf")                  # a bitk.models.CausalLM (torch)
    model = bitk.gguf.load("model.gguf")                   # back to a CausalLM, numerics as the runtime

Everything but `export` / `load` / `load_tokenizer` is torch-free (numpy, safetensors, gguf,
tokenizers, bitk.formats), and so is importing this package: submodules load on first use.
CLI: `bitk-pack` (bitk.gguf.cli). Details: docs/gguf.md.
"""

from __future__ import annotations

import importlib
from typing import Any

# name -> submodule defining it
_LAZY = {
    "pack": "writer",
    "PackResult": "writer",
    "PackOptions": "plan",
    "plan_pack": "plan",
    "read_gguf": "reader",
    "GGUFFile": "reader",
    "verify": "verifier",
    "VerifyReport": "verifier",
    "describe": "inspect",
    "read_vocab": "tokenizer",
    "export": "model",
    "load": "model",
    "load_tokenizer": "model",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"bitk.gguf.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'bitk.gguf' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
