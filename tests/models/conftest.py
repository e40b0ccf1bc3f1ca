"""Fixtures of the model tests: tiny transformers models saved offline, a tiny tokenizer, comparisons.

Every Hugging Face model here is built from a config with random weights and `save_pretrained`
into tmp_path (no hub access). Weights are redrawn at a scale that gives O(1) activations (the
transformers init, std 0.02, makes every block nearly the identity and would hide a wrong one)
and norm gains away from 1 (so a gain applied to the wrong tensor shows).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bitk_testing import scramble

# Small enough for a fast CPU run, large enough to have GQA (4 query heads, 2 KV heads), two
# layers and a vocabulary the tokenizer fixture fits in.
DIMS = {
    "vocab_size": 96,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 128,
}

# transformers' packed/online BitNet quantizer config keys (transformers.utils.quantization_config).
BITNET_ONLINE = {"quant_method": "bitnet", "linear_class": "autobitlinear", "quantization_mode": "online"}
BITNET_PACKED = {"quant_method": "bitnet", "linear_class": "bitlinear", "quantization_mode": "offline"}


@pytest.fixture(scope="module")
def transformers():
    """transformers, its logging quiet, with torch.compile off while the test module runs.

    transformers' BitNet layers are @torch.compile functions; compiling them on CPU costs tens of
    seconds per shape and is not what these tests check, so dynamo runs them eagerly.
    """
    import torch._dynamo
    import transformers as tf

    tf.logging.set_verbosity_error()
    previous = torch._dynamo.config.disable
    torch._dynamo.config.disable = True
    yield tf
    torch._dynamo.config.disable = previous


@pytest.fixture
def make_hf(transformers, tmp_path):
    """``make_hf(kind, name, seed=0, quantization=None, **config) -> (transformers model, folder)``.

    kind: 'llama', 'qwen3' or 'bitnet'. The model is saved into tmp_path/name; ``quantization``
    (a quantization_config dict) is written into its config.json afterwards, as a published
    BitNet folder has it, and the returned model is then the one transformers loads from there.
    """

    def make(kind: str, name: str = "hf", *, seed: int = 0, quantization: dict | None = None, **overrides):
        cls = {
            "llama": ("LlamaConfig", "LlamaForCausalLM"),
            "qwen3": ("Qwen3Config", "Qwen3ForCausalLM"),
            "bitnet": ("BitNetConfig", "BitNetForCausalLM"),
        }[kind]
        options = dict(DIMS, tie_word_embeddings=False, bos_token_id=None, eos_token_id=None, pad_token_id=None)
        options.update(overrides)
        config = getattr(transformers, cls[0])(**options)
        model = scramble(getattr(transformers, cls[1])(config), seed).eval()
        folder = tmp_path / name
        model.save_pretrained(folder)
        if quantization is not None:
            data = json.loads((folder / "config.json").read_text())
            data["quantization_config"] = quantization
            (folder / "config.json").write_text(json.dumps(data))
            model = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
        return model, folder

    return make


@pytest.fixture(scope="session")
def tokenizer():
    """A word-level `tokenizers.Tokenizer` over a few words, with bitk's special tokens at 0..2."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = [
        "<|endoftext|>",
        "<|pad|>",
        "<|mask|>",
        "<unk>",
        "the",
        "quick",
        "brown",
        "fox",
        "jumps",
        "over",
        "a",
        "lazy",
        "dog",
    ]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return tok


@pytest.fixture
def tokenizer_dir(tokenizer, tmp_path) -> Path:
    folder = tmp_path / "tokenizer"
    folder.mkdir()
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast"}))
    return folder


def ids(batch: int, length: int, seed: int = 0, vocab: int = DIMS["vocab_size"]) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="session")
def helpers():
    """The module-level helpers above, for test files (conftest modules are not importable)."""
    import types

    return types.SimpleNamespace(
        DIMS=DIMS, BITNET_ONLINE=BITNET_ONLINE, BITNET_PACKED=BITNET_PACKED, scramble=scramble, ids=ids
    )
