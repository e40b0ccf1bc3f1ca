"""bitk: a kernel-first toolkit for 1.58-bit (ternary, BitNet b1.58) language models.

Submodules load on first use, so `import bitk` stays fast and needs neither torch nor the
compiled extension:

- `bitk.formats`: absmean ternarization and the I2_S / TQ2_0 / TQ1_0 codecs (numpy + C++).
- `bitk.numerics`: the pure-torch reference numerics every kernel is tested against.
- `bitk.nn`: the layers (BitLinear, SubLN, BitLinearLRC), dispatched to kernels per device.
- `bitk.models`: the decoder, presets, checkpoints and Hugging Face interop (`bitk.load_model`).
- `bitk.gguf`: the GGUF packer (`bitk-pack`), reader and `bitk.gguf.load`.
- `bitk.data`: the embedded corpus and tokenizer, text loading and packing.
- `bitk.objectives`: the losses (CE, DLM, distillation, LRC) and their curricula.
- `bitk.train`: the trainer (`python -m bitk.train`): config, loop, checkpoints, DDP / FSDP2.
- `bitk.generate`: text generation with a KV cache (`python -m bitk.generate`); the module is
  callable: `bitk.generate(model, tokenizer, "prompt")`.
- `bitk.eval`: perplexity, tokens/s and lm-evaluation-harness tasks (`python -m bitk.eval`).
"""

from __future__ import annotations

from ._lazy import lazy_exports

__version__ = "0.1.0"

_SUBMODULES = ("formats", "numerics", "nn", "models", "gguf", "data", "objectives", "train", "eval", "generate")
__getattr__, __dir__ = lazy_exports(__name__, {**dict.fromkeys(_SUBMODULES, ""), "load_model": "models"})
