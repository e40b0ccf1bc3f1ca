"""Zero-padding a BitNet model to wider layers that compute the same function.

A runtime stores a ternary projection in blocks along its input (128 values for I2_S, 256 for
TQ1_0/TQ2_0); a width that is not a multiple (SmolLM2's 576) cannot be stored ternary. A wider
model with zeros in the added places computes the same logits, so bitk widens it:

- the residual stream and the attention width together to one width ``W = heads' * head_dim``
  (BitNet graphs need heads * head_dim == hidden), keeping the query/KV group size: SmolLM2-135M's
  9 query heads of 64 and 3 KV heads become 12 and 4 (W = 768); the added query heads attend to
  the added, all-zero KV heads and the output projection ignores them;
- the FFN width by the same ratio (1536 -> 2048), so that every RMSNorm sees its width grow by
  one factor ``c = hidden / W``: scaling each norm's gain by ``sqrt(c)`` and the (shared) epsilon
  by ``c`` leaves every normalisation of the original channels unchanged, and the zero channels
  stay zero through every layer;
- ternary projections are padded as codes with the original scale (re-ternarizing the padded
  weight would change the absmean scale); a zero channel never moves a per-token int8 absmax.

Everything here is numpy and torch-free (the GGUF packer uses it); `PaddedSource` presents a
padded view of a `ModelSource` to the packer.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .config import ModelConfig
from .sources import PROJECTIONS, tensor_shapes, ternary_codes

__all__ = ["Padding", "plan_padding", "padding_to", "pad_array", "pad_codes", "PaddedSource"]

# How far past the original width the search for a fitting width goes (at most 4x the heads).
_MAX_GROWTH = 4


@dataclass(frozen=True)
class Padding:
    """An original config and the zero-padded one that computes the same function."""

    original: ModelConfig
    padded: ModelConfig

    @functools.cached_property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Every tensor of the padded model by Hugging Face name, with its shape (`tensor_shapes`)."""
        return tensor_shapes(self.padded)

    @property
    def ratio(self) -> float:
        """c = hidden / W (= intermediate / F'): the factor every RMSNorm's mean square shrinks by."""
        return self.original.hidden_size / self.padded.hidden_size

    @property
    def gain_factor(self) -> float:
        """sqrt(c): what every RMSNorm gain is multiplied by."""
        return math.sqrt(self.ratio)

    def describe(self) -> str:
        o, p = self.original, self.padded
        return (
            f"hidden {o.hidden_size} -> {p.hidden_size}, query heads {o.num_attention_heads} -> "
            f"{p.num_attention_heads}, KV heads {o.num_key_value_heads} -> {p.num_key_value_heads}, "
            f"FFN {o.intermediate_size} -> {p.intermediate_size}"
        )


def why_not_paddable(config: ModelConfig) -> str | None:
    """None if `config` can be zero-padded (see the module doc), else why not."""
    c = config
    if c.q_size != c.hidden_size:
        return f"the attention width heads*head_dim = {c.q_size} differs from hidden_size {c.hidden_size}"
    if c.qk_norm:
        return "its q/k norms are not padded and share the model's RMSNorm epsilon"
    if c.lrc_rank_ratio:
        return "it has low-rank correction factors"
    return None


def padding_to(config: ModelConfig, hidden: int, heads: int | None = None) -> Padding:
    """The padding of `config` to residual width `hidden` (heads = hidden / head_dim); ValueError if invalid."""
    c = config
    why = why_not_paddable(c)
    if why is not None:
        raise ValueError(f"the model cannot be zero-padded: {why}")
    heads = hidden // c.head_dim if heads is None else heads
    group = c.num_attention_heads // c.num_key_value_heads
    ffn, rest = divmod(c.intermediate_size * hidden, c.hidden_size)
    if heads * c.head_dim != hidden or heads < c.num_attention_heads or heads % group or rest:
        raise ValueError(
            f"hidden {hidden} with {heads} heads is not a zero-padding of hidden {c.hidden_size} with "
            f"{c.num_attention_heads} heads of {c.head_dim} (group {group}, FFN {c.intermediate_size})"
        )
    padded = c.replace(
        hidden_size=hidden,
        num_attention_heads=heads,
        num_key_value_heads=heads // group,
        intermediate_size=ffn,
        rms_norm_eps=float(c.rms_norm_eps * c.hidden_size / hidden),
    )
    return Padding(c, padded)


def plan_padding(config: ModelConfig, fits: Callable[[tuple[int, int]], bool]) -> Padding | None:
    """The narrowest zero-padding of `config` whose every projection shape [out, in] `fits`; None if none.

    None as well when the model cannot be padded (`why_not_paddable`) or needs no padding.
    """
    c = config
    if why_not_paddable(c) is not None:
        return None
    group = c.num_attention_heads // c.num_key_value_heads
    for heads in range(c.num_attention_heads, _MAX_GROWTH * c.num_attention_heads + 1):
        hidden = heads * c.head_dim
        if heads % group or (c.intermediate_size * hidden) % c.hidden_size:
            continue
        padding = padding_to(c, hidden, heads)
        if all(fits(padding.shapes[f"model.layers.0.{p}.weight"]) for p in PROJECTIONS):
            return None if heads == c.num_attention_heads else padding
    return None


# --------------------------------------------------------------------------- tensors


def _role(name: str) -> str:
    """How a tensor is padded: by its Hugging Face name."""
    if name in ("model.embed_tokens.weight", "lm_head.weight"):
        return "rows_hidden"
    if name.endswith(("layernorm.weight", "model.norm.weight", "attn_sub_norm.weight")):
        return "norm_hidden"
    if name.endswith("ffn_sub_norm.weight"):
        return "norm_ffn"
    for proj in PROJECTIONS:
        if name.endswith(f"{proj}.weight"):
            return proj
        if name.endswith(f"{proj}.bias"):
            return proj + ".bias"
    raise ValueError(f"no padding rule for tensor {name}")


def _grow(arr: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    out = np.zeros(shape, dtype=arr.dtype)
    out[tuple(slice(0, n) for n in arr.shape)] = arr
    return out


def pad_array(name: str, arr: np.ndarray, padding: Padding) -> np.ndarray:
    """Tensor `name` of the original model -> the padded model's (zeros added; norm gains scaled)."""
    shape = padding.shapes
    role = _role(name)
    if role.endswith(".bias"):
        return _grow(arr, shape[name[: -len("bias")] + "weight"][:1])
    out = _grow(arr, shape[name])
    if role.startswith("norm_"):
        out = (out.astype(np.float64) * padding.gain_factor).astype(arr.dtype)
    return out


def pad_codes(name: str, codes: np.ndarray, padding: Padding) -> np.ndarray:
    """Ternary codes of projection `name` -> the padded projection's codes (zeros added)."""
    return _grow(codes, padding.shapes[name])


class PaddedSource:
    """A `ModelSource` seen as its zero-padded model: what the packer writes when it pads.

    Projections of a ternary source come as the original ternarization's codes, zero-padded, with
    the original scale; other tensors as `pad_array` makes them.
    """

    def __init__(self, src: Any, padding: Padding) -> None:
        self.src = src
        self.padding = padding
        self.config = padding.padded
        self.path = src.path
        self.kind = src.kind
        self.tokenizer_dir = src.tokenizer_dir

    def names(self) -> list[str]:
        return list(self.padding.shapes)

    def shape(self, name: str) -> tuple[int, ...]:
        return self.padding.shapes[name]

    def is_projection(self, name: str) -> bool:
        return self.src.is_projection(name)

    def ternary(self, name: str) -> tuple[np.ndarray, float] | None:
        if not (self.src.config.ternary and self.is_projection(name)):
            return None
        codes, scale = ternary_codes(self.src, name)
        return pad_codes(name, codes, self.padding), scale

    def bf16_bits(self, name: str) -> np.ndarray | None:
        return None

    def tensor(self, name: str) -> np.ndarray:
        tern = self.ternary(name)
        if tern is not None:
            return tern[0].astype(np.float32) * np.float32(tern[1])
        return pad_array(name, np.asarray(self.src.tensor(name), dtype=np.float32), self.padding)
