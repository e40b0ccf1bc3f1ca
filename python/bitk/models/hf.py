"""Hugging Face interop: load any model bitk reads as a CausalLM, export one as a transformers folder.

`load_model` reads a bitk checkpoint or a Hugging Face Llama / Qwen3 / BitNet folder (through
`bitk.models.sources`) and applies bitk's conversion rule: a full-precision model loaded ternary
gains the two SubLNs with gain 1 and BitLinear projections on the same weights (docs/numerics.md
"Converting a full-precision model"). `export_hf` writes the reverse: a BitNet folder that transformers quantizes
online from bitk's latent weights, or a plain Llama / Qwen3 folder. Neither needs transformers.
What converts, what is refused and why: docs/models.md.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bitk.nn import BitLinear

from .checkpoint import (
    assign_tensors,
    atomic_directory,
    expected_shapes,
    is_checkpoint,
    state_dict_to_save,
    write_safetensors,
    write_tokenizer,
)
from .config import ModelConfig
from .hub import resolve_model
from .model import CausalLM, load_checkpoint

__all__ = ["BITNET_QUANTIZATION_CONFIG", "convert_config", "export_hf", "hf_config", "load_model"]

# transformers' BitNet quantizer (integrations/bitnet.py, utils/quantization_config.py
# BitNetQuantConfig): AutoBitLinear layers that ternarize the stored latent weights every forward
# (absmean) and quantize activations per token (absmax int8): the BitLinear of docs/numerics.md.
BITNET_QUANTIZATION_CONFIG = {
    "quant_method": "bitnet",
    "linear_class": "autobitlinear",
    "quantization_mode": "online",
    "use_rms_norm": False,
    "rms_norm_eps": 1e-6,
    "modules_to_not_convert": None,
}

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
_SUB_NORMS = (".self_attn.attn_sub_norm.weight", ".mlp.ffn_sub_norm.weight")


def _dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, str):
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(_DTYPES)}, got {dtype!r}")
        return _DTYPES[dtype]
    if dtype not in _DTYPES.values():
        raise ValueError(f"dtype must be torch.float32 or torch.bfloat16, got {dtype}")
    return dtype


# --------------------------------------------------------------------------- loading


def convert_config(source: ModelConfig, ternary: bool, subln: bool | None = None) -> ModelConfig:
    """The config bitk builds for a source model: the conversion rule.

    Full-precision source, ternary=True: BitLinear projections plus the two SubLNs (gain 1), or
    without them when ``subln=False`` (a ternary Qwen3 that llama.cpp's qwen3 graph runs, see
    docs/gguf.md). Full-precision source, ternary=False: unchanged (the model computes exactly
    the source). Ternary source, ternary=True: unchanged. Ternary source, ternary=False: the
    stored weights (latent, or codes*scale for pre-quantized ones) in nn.Linear, SubLN kept: the
    ternary model with quantization switched off (useful for inspection, not a faithful copy of
    the ternary model). In the other cases ``subln``, when given, must agree with the result.
    """
    if not isinstance(ternary, bool):
        raise ValueError(f"ternary must be True or False, got {ternary!r}")
    if subln is not None and not isinstance(subln, bool):
        raise ValueError(f"subln must be True, False or None, got {subln!r}")
    if ternary and not source.ternary:
        return source.replace(ternary=True, subln=True if subln is None else subln)
    result = source.replace(ternary=False) if not ternary and source.ternary else source
    if subln is not None and subln != result.subln:
        raise ValueError(
            f"subln={subln} applies when a full-precision model is converted to ternary (ternary=True); "
            f"this model keeps {'its' if result.subln else 'no'} sub-norms"
        )
    return result


def load_model(
    source: str | Path,
    ternary: bool = True,
    dtype: str | torch.dtype = torch.float32,
    *,
    revision: str | None = None,
    subln: bool | None = None,
) -> CausalLM:
    """A CausalLM from a bitk checkpoint, a Hugging Face folder, a hub id or a preset's hub repo.

    ``source``: a local folder, an ``ORG/NAME`` hub id, or a preset name with pretrained weights
    (``smollm2_135m`` -> HuggingFaceTB/SmolLM2-135M); hub repos come through the Hugging Face cache
    (`bitk.models.hub.resolve_model`; ``revision`` pins a branch, tag or commit). The model is
    converted by `convert_config` (``subln=False``: ternary without the two SubLNs). Weights
    stored already ternary (the packed BitNet form) become latent weights that ternarize back to
    exactly the stored codes and scale (`bitk.formats.latent_weights`), in float32; in bfloat16
    they are rounded like any other weight. ``model.tokenizer_dir`` is the folder holding the
    source's tokenizer files, if any.
    """
    from bitk.formats import latent_weights

    from .sources import open_source

    dtype = _dtype(dtype)
    if not isinstance(ternary, bool):
        raise ValueError(f"ternary must be True or False, got {ternary!r}")
    location = resolve_model(source, revision)
    path = location.path
    if is_checkpoint(path):
        base = load_checkpoint(path)
        config = convert_config(base.config, ternary, subln)
        if config == base.config:
            return base.to(dtype)
        stored = base.state_dict()

        def read(name: str, as_latent: bool) -> torch.Tensor:
            return stored[name]

        source_config, names, tokenizer_dir = base.config, set(expected_shapes(base)), base.tokenizer_dir
    else:
        src = open_source(path)

        def read(name: str, as_latent: bool) -> torch.Tensor:
            tern = src.ternary(name) if as_latent else None
            array = latent_weights(*tern) if tern is not None else src.tensor(name)
            return torch.from_numpy(np.array(array, dtype=np.float32))  # a writable copy of the memory map

        source_config, names, tokenizer_dir = src.config, set(src.names()), src.tokenizer_dir
        config = convert_config(source_config, ternary, subln)

    with torch.device("meta"):
        model = CausalLM(config)
    latent = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, BitLinear)}
    tensors = {}
    for name, shape in expected_shapes(model).items():
        if name in names:
            t = read(name, name in latent)
        elif name.endswith(_SUB_NORMS) and not source_config.subln:
            t = torch.ones(shape)  # the conversion inserts SubLN with gain 1
        else:
            raise ValueError(f"{path}: tensor {name} is missing")
        if tuple(t.shape) != tuple(shape):
            raise ValueError(f"{path}: tensor {name} has shape {tuple(t.shape)}, the model needs {tuple(shape)}")
        tensors[name] = t.to(dtype)
    assign_tensors(model, tensors)
    model.tokenizer_dir = tokenizer_dir
    return model


# --------------------------------------------------------------------------- export


def hf_config(config: ModelConfig, dtype: str = "float32") -> dict[str, Any]:
    """The transformers config.json of a bitk model, or ValueError saying why there is none.

    Ternary + SubLN -> BitNetForCausalLM with online quantization of the latent weights; full
    precision without SubLN -> LlamaForCausalLM (no q/k norm) or Qwen3ForCausalLM (q/k norm).
    """
    c = config
    if c.lrc_rank_ratio:
        raise ValueError(
            "cannot export a model with a low-rank correction (lrc_rank_ratio > 0): transformers' BitNet has no "
            "LRC factors; keep the bitk checkpoint (bitk.load_model reads it)"
        )
    if c.ternary:
        if not c.subln:
            raise ValueError(
                "cannot export a ternary model without SubLN: transformers' BitNet block always has "
                "attn_sub_norm and ffn_sub_norm (set subln=True, or export the full-precision parent; "
                "a ternary Qwen3 without SubLN runs in llama.cpp: bitk-pack pack CKPT -o OUT --type tq2_0)"
            )
        if c.qk_norm:
            raise ValueError("cannot export a ternary model with q/k norm: transformers' BitNet has no q_norm/k_norm")
        if c.q_size != c.hidden_size:
            raise ValueError(
                f"cannot export a ternary model whose attention width num_attention_heads*head_dim = {c.q_size} "
                f"differs from hidden_size {c.hidden_size}: transformers' BitNet sizes attn_sub_norm by hidden_size"
            )
        arch, model_type = "BitNetForCausalLM", "bitnet"
    else:
        if c.subln:
            raise ValueError(
                "cannot export a full-precision model with SubLN: transformers' Llama and Qwen3 have no sub norms "
                "and BitNet is always ternary"
            )
        arch, model_type = ("Qwen3ForCausalLM", "qwen3") if c.qk_norm else ("LlamaForCausalLM", "llama")
    hf: dict[str, Any] = {
        "architectures": [arch],
        "model_type": model_type,
        "vocab_size": c.vocab_size,
        "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size,
        "num_hidden_layers": c.num_hidden_layers,
        "num_attention_heads": c.num_attention_heads,
        "num_key_value_heads": c.num_key_value_heads,
        "head_dim": c.head_dim,
        "hidden_act": c.hidden_act,
        "max_position_embeddings": c.max_position_embeddings,
        "rms_norm_eps": c.rms_norm_eps,
        "initializer_range": c.initializer_range,
        "tie_word_embeddings": c.tie_word_embeddings,
        "attention_bias": c.attention_bias,
        "attention_dropout": 0.0,
        "bos_token_id": c.bos_token_id,
        "eos_token_id": c.eos_token_id,
        "pad_token_id": c.pad_token_id,
        # transformers 5 reads rope_parameters; 4.x reads the top-level rope_theta.
        "rope_parameters": {"rope_theta": float(c.rope_theta), "rope_type": "default"},
        "rope_theta": float(c.rope_theta),
        "dtype": dtype,
        "use_cache": True,
    }
    if model_type == "llama":
        hf.update(mlp_bias=False, pretraining_tp=1)
    elif model_type == "qwen3":
        hf.update(
            use_sliding_window=False,
            sliding_window=None,
            max_window_layers=c.num_hidden_layers,
            layer_types=["full_attention"] * c.num_hidden_layers,
        )
    else:
        hf["quantization_config"] = dict(BITNET_QUANTIZATION_CONFIG)
    return hf


def export_hf(model: CausalLM, path: str | Path, *, dtype: str = "float32", tokenizer: Any = None) -> Path:
    """Write ``model`` as a Hugging Face folder (config.json, model.safetensors, tokenizer files).

    ``AutoModelForCausalLM.from_pretrained(path)`` loads it. Writing needs no transformers;
    loading a BitNet folder needs transformers and accelerate (without accelerate, transformers'
    BitNet quantizer refuses it, naming ``pip install accelerate``); ``pip install "bitk[hf]"``
    brings both. Ternary models are written as BitNet with their latent weights and online
    quantization: transformers ternarizes them as bitk does (its roundings of the scales differ
    by ulps, see docs/models.md). ``tokenizer`` as in `save_checkpoint` (None: the tokenizer the
    model was loaded with). Written atomically; refused (ValueError) for models transformers
    cannot express, see `hf_config`.
    """
    if not isinstance(model, CausalLM):
        raise ValueError(f"export_hf takes a bitk CausalLM, got {type(model).__name__}")
    torch_dtype = _dtype(dtype)
    dtype_name = next(k for k, v in _DTYPES.items() if v == torch_dtype)
    config_text = json.dumps(hf_config(model.config, dtype_name), indent=2) + "\n"
    tensors = state_dict_to_save(model, torch_dtype)
    if tokenizer is None:
        tokenizer = model.tokenizer_dir

    def is_hf_folder(p: Path) -> bool:
        return (p / "config.json").is_file()

    with atomic_directory(path, owned=is_hf_folder, what="Hugging Face model folder") as tmp:
        write_safetensors(tensors, tmp / "model.safetensors")
        write_tokenizer(tokenizer, tmp, model.config)
        (tmp / "config.json").write_text(config_text)
    return Path(path).expanduser()
