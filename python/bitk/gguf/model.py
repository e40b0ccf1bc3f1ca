"""The torch side of the packer: export a `bitk.models.CausalLM`, load a GGUF back as one.

`export` saves the model as a bitk checkpoint in a temporary folder and packs that, so a model in
memory and one on disk go through the same code. `load` rebuilds the model a GGUF file describes:
config from the metadata (arch -> FFN activation, q/k norms and sub-norms), ternary tensors decoded
to codes and scale and turned into latent weights (`bitk.formats.latent_weights`) that the model's
own ternarization maps back to exactly those codes and scale; each BitLinear then computes what the
runtime computes for its tensor type (`NUMERICS_BY_TYPE`, docs/numerics.md "Inference numerics"):
I2_S -> "i2s" (bitnet.cpp's per-token int8), TQ1_0/TQ2_0 -> "tq" (llama.cpp's int8 per block of
256), F16 -> "f16" (float16 activations, no int8), F32 -> "float". Where that "i2s" forward runs in
bitk's C++ kernels (`bitk.nn.cpu.matmul_engine() == "cpp"`), an I2_S projection holds only its
2-bit weights and gamma instead (`bitk.nn.packed.PackedBitLinear`): the file's bytes as they are
(x86 layout), else its codes repacked; its latent weights are built the first time anything else
needs them. A zero-padded file loads with its padded dimensions, which compute the same logits as the
model it was packed from.
torch is imported inside these functions only; the rest of bitk.gguf stays torch-free.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from bitk.formats.constants import I2S_DEFAULT_LAYOUT
from bitk.gguf.constants import (
    ACTIVATION_BY_ARCH,
    ARCH_QWEN3,
    KEY_ADD_BOS,
    KEY_BOS_ID,
    KEY_CHAT_TEMPLATE,
    KEY_EOS_ID,
    KEY_I2S_LAYOUT,
    KEY_MERGES,
    KEY_PAD_ID,
    KEY_TOKEN_TYPE,
    KEY_TOKENIZER_MODEL,
    KEY_TOKENIZER_PRE,
    KEY_TOKENS,
    OUTPUT,
    TOKENIZER_GPT2,
    arch_key,
    gguf_to_hf_name,
)
from bitk.gguf.reader import GGUFFile, read_gguf

__all__ = ["export", "load", "load_tokenizer", "NUMERICS_BY_TYPE", "runtime_numerics", "set_runtime_numerics"]

# What a BitLinear computes for a tensor of each GGUF type in the runtimes (docs/numerics.md).
NUMERICS_BY_TYPE = {"I2_S": "i2s", "F16": "f16", "F32": "float", "TQ1_0": "tq", "TQ2_0": "tq"}


def runtime_numerics(config: Any, qtype: str, pad: str = "auto", i2s_layout: str = "x86") -> dict[str, str]:
    """Module name -> the numerics the runtime computes each projection with, in the file
    `bitk-pack --type qtype --pad pad` writes for a model of `config` (`NUMERICS_BY_TYPE`).

    Widths the type cannot hold even zero-padded fall back to F16 ("f16"); a zero-padded file
    computes what the unpadded model computes in the type's numerics.
    """
    from bitk.gguf.plan import PackOptions, projection_types

    decided = projection_types(config, qtype, PackOptions(qtype=qtype, pad=pad, i2s_layout=i2s_layout))
    return {name.removesuffix(".weight"): NUMERICS_BY_TYPE[t] for name, t in decided.types.items()}


def set_runtime_numerics(model: Any, numerics: dict[str, str]) -> dict[str, str]:
    """Set each projection's numerics (`runtime_numerics`, or module name -> mode); returns the previous modes."""
    from bitk.nn import set_numerics

    before = {}
    for name, mode in numerics.items():
        module = model.get_submodule(name)
        before[name] = module.numerics
        set_numerics(module, mode)
    return before


def export(model_or_path: Any, path: str | Path, qtype: str = "i2_s", **options: Any) -> Any:
    """Write a GGUF file from a `bitk.models.CausalLM` or a model folder; returns the PackResult.

    options: those of `bitk.gguf.pack` (arch, i2s_layout, embedding_type, tokenizer_pre, ...).
    For a model, `tokenizer` may be a folder or a `tokenizers.Tokenizer`; by default the folder the
    model was loaded with (`model.tokenizer_dir`) is used.
    """
    from bitk.gguf.writer import pack

    if isinstance(model_or_path, (str, os.PathLike)):
        return pack(model_or_path, path, qtype, **options)
    from bitk.models.model import CausalLM

    if not isinstance(model_or_path, CausalLM):
        raise ValueError(f"export takes a bitk.models.CausalLM or a model folder, got {type(model_or_path).__name__}")
    tokenizer = options.pop("tokenizer", None)
    options.setdefault("name", "bitk-model")
    with tempfile.TemporaryDirectory(prefix="bitk-export-") as tmp:
        ckpt = model_or_path.save(Path(tmp) / "checkpoint", tokenizer=tokenizer)
        return pack(ckpt, path, qtype, **options)


def _round_f32(value: float) -> float:
    """The shortest decimal that float32 `value` came from (1e-5 stored as float32 -> 1e-5)."""
    return float(str(np.float32(value)))


def _one_scale(values: np.ndarray) -> tuple[np.ndarray, float] | None:
    """(codes, scale) if `values` is ternary with one magnitude {-s, 0, s}, else None."""
    mags = np.abs(values)
    nz = mags[mags != 0]
    if nz.size == 0:
        return np.zeros(values.shape, np.int8), 1.0  # the scale multiplies nothing
    s = nz.min()
    if (nz != s).any():
        return None
    return np.sign(values).astype(np.int8), float(s)


def _decode_projection(f: GGUFFile, name: str) -> tuple[np.ndarray | None, np.ndarray | None, float | None]:
    """(float32 values, codes, scale) of a projection; codes None when it is not ternary."""
    from bitk.gguf.verifier import decode

    t = f.tensors[name].type_name
    values, codes, scale = decode(f, name)
    if t == "I2_S":
        return values, codes, scale
    tern = _one_scale(values)
    if tern is None and t in ("TQ1_0", "TQ2_0"):
        raise ValueError(
            f"{f.path}: {name} ({t}) has blocks with different scales; a bitk model has one scale per "
            "tensor, so this file (not written from one ternary tensor) cannot be loaded as a bitk model"
        )
    return (values, None, None) if tern is None else (values, *tern)


def _packs_i2s() -> bool:
    """Whether I2_S projections load 2-bit packed (`bitk.nn.packed`): their "i2s" forward runs in
    bitk's C++ kernels, which read nothing else of the weights."""
    from bitk.nn import cpu

    try:
        return cpu.matmul_engine() == "cpp"
    except (ValueError, RuntimeError):  # a bad BITK_CPU_MATMUL: loads as before, the forward says why
        return False


def load(path: str | Path, tokenizer_dir: str | Path | None = None) -> Any:
    """A `bitk.models.CausalLM` computing what the GGUF file `path` holds, in the runtime's numerics.

    tokenizer_dir: if given, the file's byte-level vocabulary is written there as tokenizer.json
    (+ tokenizer_config.json, and chat_template.jinja when the file has a chat template) and
    becomes `model.tokenizer_dir`. ValueError for files that are
    not BitNet models bitk can express.

    With bitk's C++ kernels (`bitk.nn.cpu.matmul_engine() == "cpp"`), the I2_S projections of a
    ternary model are `bitk.nn.packed.PackedBitLinear` layers holding only their codes, 2 bits each,
    and gamma (no float32 weights): the file's I2_S bytes as they are (its x86 layout, which bitk's
    kernels multiply directly), else repacked for them. They compute the same numbers and become
    plain BitLinears, with the same latent weights, once anything but their CPU "i2s" forward needs
    the weights.
    """
    import torch

    from bitk.formats import latent_weights
    from bitk.gguf.verifier import decode, model_dims, model_problems
    from bitk.models.checkpoint import assign_tensors, check_tensors, expected_shapes, write_tokenizer
    from bitk.models.config import ModelConfig
    from bitk.models.model import CausalLM
    from bitk.nn import set_numerics
    from bitk.nn.packed import hold_packed, i2s_weights, pack_ternary, weight_placeholder

    with read_gguf(path) as f:
        meta = f.metadata
        try:
            dims = model_dims(meta)
        except ValueError as exc:
            raise ValueError(f"{f.path}: {exc}") from None
        arch = meta["general.architecture"]
        # Every count and width of the metadata against the tensors the file holds, before any
        # tensor is decoded or the model built: the metadata alone may claim 2**31 blocks.
        problems = model_problems(f, dims, arch)
        if problems:
            raise ValueError(f"{f.path}: the tensors do not match the metadata: {'; '.join(problems)}")
        pack_i2s = _packs_i2s()
        floats: dict[str, np.ndarray] = {}
        ternary: dict[str, tuple[np.ndarray, float]] = {}
        i2s: dict[str, str] = {}  # projection -> I2_S tensor, decoded below when packed
        types: dict[str, str] = {}
        for name, info in f.tensors.items():
            hf = gguf_to_hf_name(name)
            if hf is None:
                raise ValueError(f"{f.path}: tensor {name} has no place in a bitk model")
            types[hf] = info.type_name
            if pack_i2s and hf.endswith("_proj.weight") and info.type_name == "I2_S":
                i2s[hf] = name
            elif hf.endswith("_proj.weight"):
                values, codes, scale = _decode_projection(f, name)
                floats[hf] = values
                if codes is not None:
                    ternary[hf] = (codes, scale)
            else:
                floats[hf] = decode(f, name)[0]

        def special(key: str) -> int | None:
            v = meta.get(key)
            ok = isinstance(v, (int, np.integer)) and not isinstance(v, bool) and 0 <= v < dims["vocab"]
            return int(v) if ok else None

        def number(what: str, default: Any = None) -> float:
            value = meta.get(arch_key(arch, what), default)
            if not isinstance(value, (int, float, np.integer, np.floating)) or isinstance(value, bool):
                raise ValueError(f"{arch_key(arch, what)} must be a number, got {value!r}")
            if not np.isfinite(value):
                raise ValueError(f"{arch_key(arch, what)} must be finite, got {value!r}")
            return value

        projections = [n for n in types if n.endswith("_proj.weight")]
        is_ternary = all(n in ternary or n in i2s for n in projections)
        # I2_S projections of a ternary model: the file's bytes, kept as they are for bitk's
        # kernels (the x86 layout), or packed for them from their codes one tensor at a time (the
        # other layouts); no float32 values, no int8 codes kept. Else decoded as above.
        packed: dict[str, tuple[np.ndarray, float, str]] = {}
        as_stored = meta.get(KEY_I2S_LAYOUT, I2S_DEFAULT_LAYOUT) == "x86"
        for hf, name in i2s.items():
            if not is_ternary:
                floats[hf] = decode(f, name)[0]
                continue
            try:
                if as_stored:
                    n, k = f.tensors[name].shape
                    packed[hf] = (*i2s_weights(f.tensor_data(name), n, k), "i2s")
                else:
                    _, codes, scale = decode(f, name, values=False)
                    packed[hf] = (*pack_ternary(codes, scale), "panels")
            except ValueError as exc:
                raise ValueError(f"{f.path}: {name}: {exc}") from None
        try:
            config = ModelConfig(
                vocab_size=dims["vocab"],
                hidden_size=dims["hidden"],
                intermediate_size=dims["ffn"],
                num_hidden_layers=dims["layers"],
                num_attention_heads=dims["heads"],
                num_key_value_heads=dims["kv_heads"],
                head_dim=dims["head_dim"],
                hidden_act=ACTIVATION_BY_ARCH[arch],
                max_position_embeddings=int(number("context_length")),
                rope_theta=_round_f32(number("rope_freq_base", 10000.0)),
                rms_norm_eps=_round_f32(number("rms_eps")),
                tie_word_embeddings=OUTPUT not in f.tensors,
                qk_norm=arch == ARCH_QWEN3,
                subln=arch != ARCH_QWEN3,
                ternary=is_ternary,
                attention_bias=False,
                bos_token_id=special(KEY_BOS_ID),
                eos_token_id=special(KEY_EOS_ID),
                pad_token_id=special(KEY_PAD_ID),
            )
        except ValueError as exc:
            raise ValueError(f"{f.path}: {exc}") from None
        # a packed projection's weight: its shape only (hold_packed below gives the layer its weights)
        tensors = {hf: weight_placeholder(f.tensors[i2s[hf]].shape) for hf in packed}
        for hf, values in floats.items():
            if is_ternary and hf in ternary:
                values = latent_weights(*ternary[hf])
            tensors[hf] = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))
        tok = _tokenizer(f) if tokenizer_dir is not None else None
        template = meta.get(KEY_CHAT_TEMPLATE)

    with torch.device("meta"):
        model = CausalLM(config)
    # the verifier's checks again, in the model's own terms: torch would raise RuntimeError
    check_tensors(expected_shapes(model), {n: tuple(t.shape) for n, t in tensors.items()}, str(path))
    try:
        assign_tensors(model, tensors)
    except (AssertionError, RuntimeError) as exc:
        raise ValueError(f"{path}: the tensors do not form a complete bitk model ({exc})") from None
    if is_ternary:
        for hf in projections:
            set_numerics(model.get_submodule(hf.removesuffix(".weight")), NUMERICS_BY_TYPE[types[hf]])
    for hf, (bits, gamma, layout) in packed.items():
        hold_packed(model.get_submodule(hf.removesuffix(".weight")), bits, gamma, layout)
    if tokenizer_dir is not None:
        dest = Path(tokenizer_dir)
        dest.mkdir(parents=True, exist_ok=True)
        write_tokenizer(tok, dest, config)
        if isinstance(template, str) and template:  # what `python -m bitk.generate --chat` renders
            (dest / "chat_template.jinja").write_text(template, encoding="utf-8")
        model.tokenizer_dir = dest
    return model


def _tokenizer(f: GGUFFile) -> Any:
    from bitk.gguf.tokenizer import to_hf_tokenizer

    meta = f.metadata
    if meta.get(KEY_TOKENIZER_MODEL) != TOKENIZER_GPT2 or KEY_MERGES not in meta:
        raise ValueError(
            f"{f.path}: bitk rebuilds byte-level BPE (gpt2) vocabularies only; this file has "
            f"{meta.get(KEY_TOKENIZER_MODEL)!r}"
        )
    bos = meta.get(KEY_BOS_ID)
    return to_hf_tokenizer(
        list(meta[KEY_TOKENS]),
        [int(t) for t in meta[KEY_TOKEN_TYPE]],
        list(meta[KEY_MERGES]),
        meta.get(KEY_TOKENIZER_PRE, ""),
        None if bos is None else int(bos),
        bool(meta.get(KEY_ADD_BOS, False)),
    )


def load_tokenizer(path: str | Path) -> Any:
    """The `tokenizers.Tokenizer` of a GGUF file's byte-level BPE (gpt2) vocabulary; ValueError otherwise."""
    with read_gguf(path) as f:
        return _tokenizer(f)
