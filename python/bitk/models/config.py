"""ModelConfig: the dimensions and switches of bitk's decoder, and the named presets.

One compact decoder covers the BitNet b1.58 block (docs/numerics.md "SubLN and the BitNet block") and
the full-precision parents it is converted from: Llama / SmolLM2 (SiLU, no q/k norm), Qwen3
(per-head q/k RMSNorm) and BitNet b1.58 2B4T (ReLU^2, SubLN). Field names follow Hugging Face
config.json so a config reads the same in both worlds. Torch-free: the GGUF packer imports it.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

__all__ = ["ModelConfig", "PRESETS", "PRESET_REPOS", "preset", "ACTIVATIONS"]

ACTIVATIONS = ("relu2", "silu")


@dataclass
class ModelConfig:
    """Dimensions and switches of a bitk decoder (Hugging Face field names)."""

    vocab_size: int = 4096
    """Rows of the token embedding (and of the head)."""
    hidden_size: int = 256
    """Width of the residual stream."""
    intermediate_size: int = 768
    """Width of the gated FFN (gate/up outputs, down input)."""
    num_hidden_layers: int = 4
    """Number of decoder blocks."""
    num_attention_heads: int = 4
    """Query heads."""
    num_key_value_heads: int = 2
    """Key/value heads (grouped-query attention); must divide num_attention_heads."""
    head_dim: int = 0
    """Size of one head; 0 means hidden_size // num_attention_heads."""
    hidden_act: str = "relu2"
    """FFN activation of the gate: 'relu2' (BitNet b1.58, relu(x)^2) or 'silu' (Llama, Qwen3)."""
    max_position_embeddings: int = 512
    """Longest sequence the model is meant for (GGUF context_length)."""
    rope_theta: float = 10000.0
    """RoPE base (NEOX-style rotation over the whole head)."""
    rms_norm_eps: float = 1e-5
    """Epsilon of every RMSNorm."""
    tie_word_embeddings: bool = True
    """The head reuses the token embedding (required by the BitNet GGUF archs)."""
    qk_norm: bool = False
    """Per-head RMSNorm of queries and keys before RoPE (Qwen3)."""
    subln: bool = True
    """The two SubLNs: RMSNorm of the attention output and of act(gate)*up (BitNet b1.58 2B4T). For a
    pretrained full-precision model, false converts it to ternary without them (Qwen3 for llama.cpp)."""
    ternary: bool = True
    """Projections are BitLinear (ternary weights, int8 activations); False = full precision."""
    attention_bias: bool = False
    """Biases on q/k/v/o projections."""
    lrc_rank_ratio: float = 0.0
    """Low-rank correction on every projection (BitLinearLRC, ``y = BitLinear(x) + (x V) U``) of rank
    ratio * min(in, out); 0 = none. Set by LRC calibration (training=lrc_calibration); ternary only."""
    initializer_range: float = 0.02
    """Std of the normal init of projections and embeddings when training from scratch."""
    bos_token_id: int | None = None
    """Beginning-of-sequence token id, if the tokenizer has one."""
    eos_token_id: int | None = None
    """End-of-sequence token id (documents are joined with it when packing)."""
    pad_token_id: int | None = None
    """Padding token id, if any."""

    def __post_init__(self) -> None:
        heads, hidden = self.num_attention_heads, self.hidden_size
        if self.head_dim == 0 and _positive_int(heads) and _positive_int(hidden):
            if hidden % heads:
                raise ValueError(
                    f"ModelConfig.num_attention_heads ({heads}) must divide hidden_size ({hidden}) "
                    "when head_dim is not given"
                )
            self.head_dim = hidden // heads
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first field that is out of range or inconsistent."""
        for name in (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "head_dim",
            "max_position_embeddings",
        ):
            value = getattr(self, name)
            if not _positive_int(value):
                raise ValueError(f"ModelConfig.{name} must be a positive integer, got {value!r}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"ModelConfig.num_key_value_heads ({self.num_key_value_heads}) must divide "
                f"num_attention_heads ({self.num_attention_heads})"
            )
        if self.head_dim % 2:
            raise ValueError(f"ModelConfig.head_dim must be even for RoPE, got {self.head_dim}")
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"ModelConfig.hidden_act must be one of {', '.join(ACTIVATIONS)}, got {self.hidden_act!r}")
        for name in ("rope_theta", "rms_norm_eps", "initializer_range"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"ModelConfig.{name} must be a positive finite number, got {value!r}")
        lrc = self.lrc_rank_ratio
        if not isinstance(lrc, (int, float)) or isinstance(lrc, bool) or not 0.0 <= lrc <= 1.0:
            raise ValueError(f"ModelConfig.lrc_rank_ratio must be in [0, 1] (0 = no low-rank correction), got {lrc!r}")
        if lrc and not self.ternary:
            raise ValueError(
                "ModelConfig.lrc_rank_ratio > 0 needs ternary=true: the low-rank correction "
                "corrects the ternary projections' quantization error"
            )
        for name in ("tie_word_embeddings", "qk_norm", "subln", "ternary", "attention_bias"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"ModelConfig.{name} must be true or false, got {getattr(self, name)!r}")
        for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
            value = getattr(self, name)
            if value is not None and (
                not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < self.vocab_size
            ):
                raise ValueError(
                    f"ModelConfig.{name} must be None or a token id below vocab_size {self.vocab_size}, got {value!r}"
                )

    @property
    def q_size(self) -> int:
        """Output size of q_proj (= input size of o_proj)."""
        return self.num_attention_heads * self.head_dim

    def lrc_rank(self, in_features: int, out_features: int) -> int:
        """Rank of a projection's low-rank correction (0 without LRC): ratio * min(in, out), at least 1."""
        if not self.lrc_rank_ratio:
            return 0
        return max(1, round(self.lrc_rank_ratio * min(in_features, out_features)))

    @property
    def kv_size(self) -> int:
        """Output size of k_proj and v_proj."""
        return self.num_key_value_heads * self.head_dim

    def replace(self, **changes: Any) -> ModelConfig:
        """A validated copy with some fields changed (unknown names raise ValueError)."""
        unknown = sorted(set(changes) - {f.name for f in fields(self)})
        if unknown:
            raise ValueError(
                f"unknown ModelConfig field(s) {', '.join(unknown)}; fields: {', '.join(f.name for f in fields(self))}"
            )
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Build from a dict of fields; unknown keys raise ValueError listing the valid ones."""
        if not isinstance(data, dict):
            raise ValueError(f"a model config must be a mapping of fields, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown ModelConfig field(s) {', '.join(unknown)}; fields: {', '.join(sorted(known))}")
        return cls(**data)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> ModelConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


# Dimensions as in the upstream config.json of each model (Hugging Face hub, 2025). Presets are the
# ternary (BitLinear + SubLN) versions; `.replace(ternary=False, subln=False)` is the full-precision
# parent. `tiny` is bitk's CPU default: every projection's input (256, 256, 768) is a multiple of
# 256, so all GGUF types fit; its vocabulary and special ids are bitk's embedded tokenizer (bitk.data).
PRESETS: dict[str, ModelConfig] = {
    "tiny": ModelConfig(bos_token_id=0, eos_token_id=0, pad_token_id=1),
    "smollm2_135m": ModelConfig(
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        head_dim=64,
        hidden_act="silu",
        max_position_embeddings=8192,
        rope_theta=100000.0,
        rms_norm_eps=1e-5,
        bos_token_id=0,
        eos_token_id=0,
    ),
    "smollm2_360m": ModelConfig(
        vocab_size=49152,
        hidden_size=960,
        intermediate_size=2560,
        num_hidden_layers=32,
        num_attention_heads=15,
        num_key_value_heads=5,
        head_dim=64,
        hidden_act="silu",
        max_position_embeddings=8192,
        rope_theta=100000.0,
        rms_norm_eps=1e-5,
        bos_token_id=0,
        eos_token_id=0,
    ),
    "qwen3_0_6b": ModelConfig(
        vocab_size=151936,
        hidden_size=1024,
        intermediate_size=3072,
        num_hidden_layers=28,
        num_attention_heads=16,
        num_key_value_heads=8,
        head_dim=128,
        hidden_act="silu",
        max_position_embeddings=40960,
        rope_theta=1000000.0,
        rms_norm_eps=1e-6,
        qk_norm=True,
        bos_token_id=151643,
        eos_token_id=151645,
    ),
    "qwen3_4b": ModelConfig(
        vocab_size=151936,
        hidden_size=2560,
        intermediate_size=9728,
        num_hidden_layers=36,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=128,
        hidden_act="silu",
        max_position_embeddings=40960,
        rope_theta=1000000.0,
        rms_norm_eps=1e-6,
        qk_norm=True,
        bos_token_id=151643,
        eos_token_id=151645,
    ),
    "bitnet_2b": ModelConfig(
        vocab_size=128256,
        hidden_size=2560,
        intermediate_size=6912,
        num_hidden_layers=30,
        num_attention_heads=20,
        num_key_value_heads=5,
        head_dim=128,
        hidden_act="relu2",
        max_position_embeddings=4096,
        rope_theta=500000.0,
        rms_norm_eps=1e-5,
        bos_token_id=128000,
        eos_token_id=128001,
    ),
}


# The pretrained checkpoint each preset names on the Hugging Face hub (``model=NAME`` loads it; the
# architecture then comes from the repo's config.json). BitNet's repo is the bf16 master weights.
PRESET_REPOS: dict[str, str] = {
    "smollm2_135m": "HuggingFaceTB/SmolLM2-135M",
    "smollm2_360m": "HuggingFaceTB/SmolLM2-360M",
    "qwen3_0_6b": "Qwen/Qwen3-0.6B",
    "qwen3_4b": "Qwen/Qwen3-4B",
    "bitnet_2b": "microsoft/bitnet-b1.58-2B-4T-bf16",
}


def preset(name: str, **changes: Any) -> ModelConfig:
    """The named preset, optionally with fields changed; unknown names list the presets."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; presets: {', '.join(PRESETS)}")
    return PRESETS[name].replace(**changes)
