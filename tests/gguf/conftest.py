"""Source folders for the GGUF tests, written with numpy only (no torch, no model code).

A tiny byte-level BPE tokenizer is trained once per session on Python's own help texts; model
folders are bitk checkpoints (bitk.json + model.safetensors) or Hugging Face folders
(config.json + model.safetensors), with random latent weights. Test modules import these helpers
as `bitk_gguf_testing`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from bitk.models.config import ModelConfig
from bitk.models.sources import tensor_shapes

sys.modules["bitk_gguf_testing"] = sys.modules[__name__]

VOCAB = 320  # the test tokenizer's size (a multiple of 64, so padded vocabularies stay tidy)
SPECIALS = ["<|endoftext|>", "<|pad|>"]


def sample_texts(n_chars: int = 60_000) -> list[str]:
    from pydoc_data import topics

    out, total = [], 0
    for text in topics.topics.values():
        out.append(text)
        total += len(text)
        if total > n_chars:
            break
    return out


def train_tokenizer(vocab_size: int = VOCAB, pre: str = "gpt2", byte_fallback: bool = False):
    """A small BPE tokenizer: byte-level ('gpt2' / 'smollm' pre-tokenizers) or SentencePiece-style."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    if byte_fallback:
        tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
        tok.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
        tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()])
        bytes_ = [f"<0x{b:02X}>" for b in range(256)]
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>", *bytes_])
        tok.train_from_iterator(sample_texts(), trainer)
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
        return tok
    tok = Tokenizer(models.BPE())
    level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.pre_tokenizer = (
        level if pre == "gpt2" else pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), level])
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(sample_texts(), trainer)
    return tok


_TOKENIZER_CACHE: dict = {}


def tokenizer(kind: str = "gpt2"):
    if kind not in _TOKENIZER_CACHE:
        # the SentencePiece-style one holds 259 special/byte tokens before any merge
        _TOKENIZER_CACHE[kind] = train_tokenizer(
            640 if kind == "spm" else VOCAB, pre="smollm" if kind == "smollm" else "gpt2", byte_fallback=kind == "spm"
        )
    return _TOKENIZER_CACHE[kind]


def text_ids() -> list[int]:
    """A short prompt in the gpt2 test tokenizer's ids."""
    return tokenizer("gpt2").encode("def main(argv):\n    return 0  # exit status <|endoftext|> The end.").ids


def save_tokenizer(folder: Path, kind: str = "gpt2", config: dict | None = None) -> None:
    tok = tokenizer(kind)
    tok.save(str(folder / "tokenizer.json"))
    cfg = (
        config
        if config is not None
        else (
            {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
            if kind == "spm"
            else {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|pad|>"}
        )
    )
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg))


def tiny_config(act: str = "relu2", **changes) -> ModelConfig:
    """hidden 256, ffn 512, 2 blocks, 4 heads / 2 KV heads (head_dim 64), vocab 320."""
    base = {
        "vocab_size": VOCAB,
        "hidden_size": 256,
        "intermediate_size": 512,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "hidden_act": act,
        "max_position_embeddings": 128,
        "rope_theta": 10000.0,
        "bos_token_id": 0,
        "eos_token_id": 0,
        "pad_token_id": 1,
    }
    return ModelConfig(**{**base, **changes})


def smol_config(**changes):
    """SmolLM2-135M's widths (hidden 576, FFN 1536, 9 query / 3 KV heads of 64), small vocab."""
    return tiny_config(
        "silu",
        hidden_size=576,
        intermediate_size=1536,
        num_attention_heads=9,
        num_key_value_heads=3,
        head_dim=64,
        **changes,
    )


def random_tensors(config: ModelConfig, seed: int = 0) -> dict[str, np.ndarray]:
    """Latent weights N(0, 0.02), norm gains around 1, embedding N(0, 1)."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in tensor_shapes(config).items():
        if len(shape) == 1:
            out[name] = (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
        elif name.endswith("bias"):
            out[name] = (0.02 * rng.standard_normal(shape)).astype(np.float32)
        else:
            std = 1.0 if name == "model.embed_tokens.weight" else 0.02
            out[name] = (std * rng.standard_normal(shape)).astype(np.float32)
    return out


def to_bf16_bits(a: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (round to nearest even), as uint16."""
    bits = a.astype(np.float32).view(np.uint32)
    rounded = bits + 0x7FFF + ((bits >> 16) & 1)
    return (rounded >> 16).astype(np.uint16)


def write_safetensors(path: Path, tensors: dict[str, np.ndarray], bf16: bool = False) -> None:
    if not bf16:
        save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(path), metadata={"format": "pt"})
        return
    # numpy has no bfloat16: write the safetensors header by hand with BF16 entries
    header, blobs, offset = {"__metadata__": {"format": "pt"}}, [], 0
    for name, arr in tensors.items():
        data = to_bf16_bits(arr).tobytes() if arr.dtype == np.float32 else np.ascontiguousarray(arr).tobytes()
        dtype = "BF16" if arr.dtype == np.float32 else {"uint8": "U8", "float16": "F16"}[arr.dtype.name]
        header[name] = {"dtype": dtype, "shape": list(arr.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(len(text).to_bytes(8, "little"))
        f.write(text)
        f.writelines(blobs)


def make_checkpoint(
    folder: Path,
    config: ModelConfig | None = None,
    seed: int = 0,
    tensors: dict | None = None,
    tokenizer_kind: str | None = "gpt2",
    bf16: bool = False,
) -> Path:
    """A bitk checkpoint folder (bitk.json + model.safetensors + tokenizer files)."""
    config = config or tiny_config()
    folder.mkdir(parents=True, exist_ok=True)
    tensors = tensors if tensors is not None else random_tensors(config, seed)
    write_safetensors(folder / "model.safetensors", tensors, bf16=bf16)
    (folder / "bitk.json").write_text(
        json.dumps({"format": "bitk", "format_version": 1, "model": config.to_dict(), "trainer": {"step": 7}})
    )
    if tokenizer_kind is not None:
        save_tokenizer(folder, tokenizer_kind)
    return folder


def hf_config(config: ModelConfig, model_type: str, **extra) -> dict:
    d = {
        "model_type": model_type,
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_hidden_layers,
        "num_attention_heads": config.num_attention_heads,
        "num_key_value_heads": config.num_key_value_heads,
        "head_dim": config.head_dim,
        "hidden_act": config.hidden_act,
        "max_position_embeddings": config.max_position_embeddings,
        "rope_theta": config.rope_theta,
        "rms_norm_eps": config.rms_norm_eps,
        "tie_word_embeddings": config.tie_word_embeddings,
        "bos_token_id": config.bos_token_id,
        "eos_token_id": config.eos_token_id,
    }
    d.update(extra)
    return d


def make_hf_folder(
    folder: Path,
    config: ModelConfig,
    model_type: str,
    tensors: dict,
    bf16: bool = False,
    tokenizer_kind: str | None = "gpt2",
    **extra,
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    write_safetensors(folder / "model.safetensors", tensors, bf16=bf16)
    (folder / "config.json").write_text(json.dumps(hf_config(config, model_type, **extra)))
    if tokenizer_kind is not None:
        save_tokenizer(folder, tokenizer_kind)
    return folder


def run_cli(*args: str, check: bool = False) -> subprocess.CompletedProcess:
    """`python -m bitk.gguf ARGS` in a subprocess."""
    env = {**os.environ, "COLUMNS": "200"}
    proc = subprocess.run(
        [sys.executable, "-m", "bitk.gguf", *map(str, args)], capture_output=True, text=True, env=env, check=False
    )
    if check:
        assert proc.returncode == 0, proc.stderr + proc.stdout
    return proc


@pytest.fixture(scope="session")
def relu2_ckpt(tmp_path_factory) -> Path:
    """A tiny ternary relu2 bitk checkpoint (float32 latent weights)."""
    return make_checkpoint(tmp_path_factory.mktemp("relu2") / "ckpt", tiny_config("relu2"), seed=1)


@pytest.fixture(scope="session")
def silu_ckpt(tmp_path_factory) -> Path:
    """A tiny ternary silu bitk checkpoint."""
    return make_checkpoint(tmp_path_factory.mktemp("silu") / "ckpt", tiny_config("silu"), seed=2)
