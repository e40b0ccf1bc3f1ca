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

from bitk._lazy import lazy_exports

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
    "runtime_numerics": "model",
    "set_runtime_numerics": "model",
}

__all__ = list(_LAZY)
__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
