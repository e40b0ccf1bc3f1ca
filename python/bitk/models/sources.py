"""Read a model folder without torch: a bitk checkpoint or a Hugging Face Llama / Qwen3 / BitNet folder.

The GGUF packer (numpy only) and `bitk.load_model` (torch) both read models through here, so
they agree on what a folder means: its ModelConfig, its tensors under Hugging Face names as
float32 arrays, which weights arrive already ternary (the packed BitNet form) and where the
tokenizer is. Safetensors are parsed here (header + memory map) because numpy has no bfloat16:
bf16 is widened by shifting its 16 bits into float32's high half.
"""

from __future__ import annotations

import json
import math
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .config import ModelConfig

__all__ = [
    "BITK_FORMAT",
    "BITK_FORMAT_VERSION",
    "CHECKPOINT_FILE",
    "HF_MODEL_TYPES",
    "PROJECTIONS",
    "ModelSource",
    "check_layer_count",
    "config_from_hf",
    "open_source",
    "tensor_shapes",
    "ternary_codes",
    "unpack_bitnet_weight",
    "read_safetensors",
]

BITK_FORMAT = "bitk"
BITK_FORMAT_VERSION = 1
CHECKPOINT_FILE = "bitk.json"
HF_MODEL_TYPES = ("llama", "qwen3", "bitnet")
PROJECTIONS = (
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model")

# transformers' defaults where config.json omits the RoPE base: falling back to any other value
# silently breaks the model, so use exactly what transformers would.
_DEFAULT_ROPE_THETA = {"llama": 10000.0, "qwen3": 10000.0, "bitnet": 500000.0}
_HF_ACT = {"silu": "silu", "swish": "silu", "relu2": "relu2"}
_SAFETENSORS_DTYPES = {
    "F32": np.float32,
    "F16": np.float16,
    "BF16": np.uint16,
    "F64": np.float64,
    "U8": np.uint8,
    "I8": np.int8,
}
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)
_FLOAT_DTYPES = ("F32", "F16", "BF16", "F64")


def tensor_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor a model of `config` has, by Hugging Face name, with its [out, in] shape."""
    c = config
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (c.vocab_size, c.hidden_size)}
    proj_shapes = {
        "self_attn.q_proj": (c.q_size, c.hidden_size),
        "self_attn.k_proj": (c.kv_size, c.hidden_size),
        "self_attn.v_proj": (c.kv_size, c.hidden_size),
        "self_attn.o_proj": (c.hidden_size, c.q_size),
        "mlp.gate_proj": (c.intermediate_size, c.hidden_size),
        "mlp.up_proj": (c.intermediate_size, c.hidden_size),
        "mlp.down_proj": (c.hidden_size, c.intermediate_size),
    }
    for i in range(c.num_hidden_layers):
        p = f"model.layers.{i}."
        shapes[p + "input_layernorm.weight"] = (c.hidden_size,)
        for name, shape in proj_shapes.items():
            shapes[f"{p}{name}.weight"] = shape
            rank = c.lrc_rank(shape[1], shape[0])
            if rank:
                shapes[f"{p}{name}.lrc_v"] = (shape[1], rank)
                shapes[f"{p}{name}.lrc_u"] = (rank, shape[0])
            if c.attention_bias and name.startswith("self_attn."):
                shapes[f"{p}{name}.bias"] = (shape[0],)
        if c.qk_norm:
            shapes[p + "self_attn.q_norm.weight"] = (c.head_dim,)
            shapes[p + "self_attn.k_norm.weight"] = (c.head_dim,)
        if c.subln:
            shapes[p + "self_attn.attn_sub_norm.weight"] = (c.q_size,)
            shapes[p + "mlp.ffn_sub_norm.weight"] = (c.intermediate_size,)
        shapes[p + "post_attention_layernorm.weight"] = (c.hidden_size,)
    shapes["model.norm.weight"] = (c.hidden_size,)
    if not c.tie_word_embeddings:
        shapes["lm_head.weight"] = (c.vocab_size, c.hidden_size)
    return shapes


# --------------------------------------------------------------------------- safetensors


@dataclass(frozen=True)
class _Entry:
    file: Path
    dtype: str
    shape: tuple[int, ...]
    start: int  # absolute byte offsets in the file
    end: int


def read_safetensors(path: Path) -> dict[str, _Entry]:
    """The tensor table of one .safetensors file; ValueError naming the file if it is short or malformed.

    Each entry is checked here (types, dtype, byte count, end inside the file) for messages that
    name the tensor; then the `safetensors` library validates the whole header (offsets that tile
    the data section without gaps or overlaps). bitk reads the entries itself because numpy has no
    bfloat16 and it memory-maps them.
    """
    from safetensors import SafetensorError, safe_open

    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError(f"{path}: not a safetensors file (shorter than its 8-byte header length)")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8 or n > 100_000_000:
            raise ValueError(f"{path}: truncated or not a safetensors file (header of {n} bytes, file of {size})")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path}: unreadable safetensors header ({exc})") from exc
    if not isinstance(header, dict):
        raise ValueError(f"{path}: the safetensors header is not a JSON object")
    entries = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (a, b) = info["dtype"], tuple(int(d) for d in info["shape"]), info["data_offsets"]
            a, b = int(a), int(b)
        except (TypeError, ValueError, KeyError) as exc:
            raise ValueError(f"{path}: tensor {name}: malformed header entry {info!r} ({exc})") from None
        if dtype not in _SAFETENSORS_DTYPES:
            raise ValueError(f"{path}: tensor {name} has dtype {dtype}; bitk reads {', '.join(_SAFETENSORS_DTYPES)}")
        if any(d < 0 for d in shape) or not 0 <= a <= b:
            raise ValueError(f"{path}: tensor {name}: negative shape {list(shape)} or offsets {[a, b]}")
        expected = math.prod(shape) * np.dtype(_SAFETENSORS_DTYPES[dtype]).itemsize
        if b - a != expected:
            raise ValueError(f"{path}: tensor {name} holds {b - a} bytes, its shape {list(shape)} needs {expected}")
        if 8 + n + b > size:
            raise ValueError(f"{path}: truncated: tensor {name} ends at byte {8 + n + b}, the file has {size}")
        entries[name] = _Entry(path, dtype, shape, 8 + n + a, 8 + n + b)
    try:  # the rest: offsets that tile the data section, no overlaps or gaps, a well-formed __metadata__
        with safe_open(str(path), framework="numpy"):
            pass
    except SafetensorError as exc:
        raise ValueError(f"{path}: malformed safetensors file ({exc})") from None
    return entries


def _raw_entry(e: _Entry) -> np.ndarray:
    """A tensor's stored values as they are (a read-only memory map; BF16 as uint16 bits)."""
    raw = (
        np.memmap(e.file, dtype=np.uint8, mode="r", offset=e.start, shape=(e.end - e.start,))
        if e.end > e.start
        else np.zeros(0, np.uint8)
    )
    return np.frombuffer(raw, dtype=_SAFETENSORS_DTYPES[e.dtype]).reshape(e.shape)


def _load_entry(e: _Entry) -> np.ndarray:
    """A tensor's values, BF16 widened to float32 (the other dtypes as stored)."""
    arr = _raw_entry(e)
    if e.dtype == "BF16":
        out = np.empty(arr.shape, np.uint32)  # one pass: widening and shifting in a single ufunc
        np.left_shift(arr, 16, out=out, dtype=np.uint32)
        return out.view(np.float32)
    return arr


def _safetensors_index(folder: Path) -> dict[str, _Entry]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = _read_json(index).get("weight_map", {})
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise ValueError(f"{index}: weight_map must map tensor names to file names")
        files = sorted(set(weight_map.values()))
        for name in files:
            # Shards are files of this folder: an absolute path or a `..` would read any file on the machine.
            if Path(name).is_absolute() or ".." in Path(name).parts or "\\" in name or not name:
                raise ValueError(f"{index}: the shard {name!r} is not a file name inside {folder}")
    else:
        files = sorted(p.name for p in folder.glob("*.safetensors"))
    if not files:
        raise ValueError(f"{folder}: no .safetensors weights (bitk reads safetensors, not .bin/.pt files)")
    entries: dict[str, _Entry] = {}
    for name in files:
        path = folder / name
        if not path.is_file():
            raise ValueError(f"{folder}: the index names {name}, which is missing")
        entries.update(read_safetensors(path))
    return entries


# --------------------------------------------------------------------------- BitNet packed form


def unpack_bitnet_weight(packed: np.ndarray) -> np.ndarray:
    """transformers' uint8 BitNet packing -> int8 codes [out, in].

    Four ternary rows per byte along the output dimension: byte row r, bits 2i..2i+1 hold output
    row ``i * (out / 4) + r`` as value + 1 (transformers.integrations.bitnet.unpack_weights).
    """
    if packed.dtype != np.uint8 or packed.ndim != 2:
        raise ValueError(f"a packed BitNet weight is a 2-D uint8 array; got {packed.dtype} {packed.shape}")
    parts = [((packed >> (2 * i)) & 3) for i in range(4)]
    codes = np.concatenate(parts, axis=0).astype(np.int8) - 1
    if (codes > 1).any():
        raise ValueError("packed BitNet weight holds the invalid code 3")
    return codes


# --------------------------------------------------------------------------- configs


def _hf_rope_theta(hf: dict[str, Any], model_type: str, where: str) -> float:
    params = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling") or {}
    for key, spec in (("rope_parameters", params), ("rope_scaling", scaling)):
        if not isinstance(spec, dict):
            raise ValueError(f"{where}: {key} must be an object, got {spec!r}")
        rope_type = spec.get("rope_type", spec.get("type", "default"))
        if rope_type not in (None, "default"):
            raise ValueError(f"{where}: RoPE scaling {rope_type!r} is not supported by bitk (only plain RoPE)")
    theta = params.get("rope_theta", hf.get("rope_theta"))
    return _number(theta, "rope_theta", where) if theta is not None else _DEFAULT_ROPE_THETA[model_type]


def _integer(value: Any, field: str, where: str) -> int:
    """A config.json count: an integer (2048, or 2048.0 as some exporters write it), else ValueError naming it."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{where}: {field} must be an integer, got {value!r}")
    return value


def _number(value: Any, field: str, where: str) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ValueError(f"{where}: {field} must be a number, got {value!r}")
    return float(value)


def _flag(value: Any, field: str, where: str) -> bool:
    if value is None:  # written as null: transformers' default, false
        return False
    if not isinstance(value, bool):
        raise ValueError(f"{where}: {field} must be true or false, got {value!r}")
    return value


def _first_id(value: Any, field: str, where: str) -> int | None:
    if isinstance(value, list):
        return _integer(value[0], field, where) if value else None
    return None if value is None else _integer(value, field, where)


def config_from_hf(hf: dict[str, Any], folder: Path | str = "<config>") -> ModelConfig:
    """ModelConfig of a Hugging Face config.json (llama, qwen3, bitnet); ValueError naming the field
    that is missing, of the wrong type, out of range or inconsistent, or that bitk cannot express."""
    folder = Path(folder)
    where = f"{folder}/config.json"
    if not isinstance(hf, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(hf).__name__}")
    model_type = hf.get("model_type")
    if model_type not in HF_MODEL_TYPES:
        raise ValueError(
            f"{folder}: model_type {model_type!r} is not supported; bitk reads {', '.join(HF_MODEL_TYPES)} "
            f"Hugging Face folders and bitk checkpoints ({CHECKPOINT_FILE})"
        )
    act = hf.get("hidden_act", "relu2" if model_type == "bitnet" else "silu")
    if not isinstance(act, str) or act not in _HF_ACT:
        raise ValueError(f"{folder}: hidden_act {act!r} is not supported; bitk has {', '.join(sorted(_HF_ACT))}")
    if hf.get("mlp_bias"):
        raise ValueError(f"{folder}: mlp_bias=true is not supported (bitk's FFN has no biases)")
    if model_type == "qwen3" and hf.get("use_sliding_window"):
        raise ValueError(f"{folder}: use_sliding_window=true is not supported (bitk attends over the whole context)")
    missing = [k for k in _HF_REQUIRED if k not in hf]
    if missing:
        raise ValueError(f"{where} lacks the field {missing[0]!r}")

    def count(field: str, default: Any = None) -> int:
        value = hf.get(field)
        return _integer(default if value is None else value, field, where)

    hidden, heads = count("hidden_size"), count("num_attention_heads")
    if heads <= 0:
        raise ValueError(f"{where}: num_attention_heads must be a positive integer, got {heads}")
    head_dim = count("head_dim", 0)
    if not head_dim:
        if hidden % heads:
            raise ValueError(
                f"{where}: num_attention_heads ({heads}) does not divide hidden_size ({hidden}), and no head_dim is given"
            )
        head_dim = hidden // heads
    fields = dict(
        vocab_size=count("vocab_size"),
        hidden_size=hidden,
        intermediate_size=count("intermediate_size"),
        num_hidden_layers=count("num_hidden_layers"),
        num_attention_heads=heads,
        num_key_value_heads=count("num_key_value_heads", heads),
        head_dim=head_dim,
        hidden_act=_HF_ACT[act],
        max_position_embeddings=count("max_position_embeddings", 2048),
        rope_theta=_hf_rope_theta(hf, model_type, where),
        rms_norm_eps=_number(hf.get("rms_norm_eps", 1e-6 if model_type == "qwen3" else 1e-5), "rms_norm_eps", where),
        tie_word_embeddings=_flag(hf.get("tie_word_embeddings", False), "tie_word_embeddings", where),
        qk_norm=model_type == "qwen3",
        subln=model_type == "bitnet",
        ternary=model_type == "bitnet",
        attention_bias=_flag(hf.get("attention_bias", False), "attention_bias", where),
        initializer_range=_number(hf.get("initializer_range", 0.02), "initializer_range", where),
        bos_token_id=_first_id(hf.get("bos_token_id"), "bos_token_id", where),
        eos_token_id=_first_id(hf.get("eos_token_id"), "eos_token_id", where),
        pad_token_id=_first_id(hf.get("pad_token_id"), "pad_token_id", where),
    )
    try:
        return ModelConfig(**fields)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None


_HF_REQUIRED = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
_LAYER = re.compile(r"^model\.layers\.(\d+)\.")


def check_layer_count(config: ModelConfig, names: Any, where: str) -> None:
    """ValueError unless the tensor names hold exactly the layers model.layers.0 .. num_hidden_layers - 1.

    Checked before anything iterates over the layers: a config claiming 10**9 layers must be
    refused from what the weights hold, not discovered by building the model.
    """
    found = {int(m.group(1)) for name in names if (m := _LAYER.match(name))}
    n = config.num_hidden_layers
    if len(found) != n or (found and max(found) != n - 1):
        held = f"{len(found)} (model.layers.{min(found)} .. {max(found)})" if found else "none"
        raise ValueError(f"{where}: num_hidden_layers is {n}, but the layers the weights hold are {held}")


# --------------------------------------------------------------------------- sources


@dataclass
class ModelSource:
    """A model folder opened for reading: config, tensors by Hugging Face name, tokenizer folder."""

    path: Path
    kind: str  # "bitk" | "llama" | "qwen3" | "bitnet"
    config: ModelConfig
    hf_config: dict[str, Any] | None = None
    bitk_meta: dict[str, Any] | None = None
    tokenizer_dir: Path | None = None
    linear_class: str | None = None  # BitNet quantization_config.linear_class, when weights are pre-quantized
    _entries: dict[str, _Entry] = field(default_factory=dict, repr=False)
    _packed: bool = field(default=False, repr=False)

    def names(self) -> list[str]:
        """The model's tensor names (Hugging Face names, lm_head only when untied), in model order."""
        return list(tensor_shapes(self.config))

    def shape(self, name: str) -> tuple[int, ...]:
        return tensor_shapes(self.config)[name]

    def is_projection(self, name: str) -> bool:
        return name.endswith(".weight") and any(f".{p}." in name for p in PROJECTIONS)

    def ternary(self, name: str) -> tuple[np.ndarray, float] | None:
        """(int8 codes, float scale) for a weight stored already ternary (BitNet offline form), else None.

        The forms are those transformers loads (`_stored_form`): uint8-packed, and for
        "autobitlinear" also the ternary values as floats. The scale follows transformers:
        linear_class "bitlinear" divides the output by weight_scale (scale = 1 / weight_scale),
        "autobitlinear" multiplies (scale = weight_scale).
        """
        if not (self._packed and self.is_projection(name)):
            return None
        entry = self._entry(name)
        raw = np.asarray(_load_entry(entry))
        if self._stored_form(name) == "packed":
            try:
                codes = unpack_bitnet_weight(raw)
            except ValueError as exc:
                raise ValueError(f"{self.path}: {name}: {exc}") from None
        else:
            values = raw.astype(np.float32, copy=False)
            if not np.isin(values, (-1.0, 0.0, 1.0)).all():
                raise ValueError(
                    f"{self.path}: {name} should hold ternary values (-1, 0, 1) for linear_class "
                    f"{self.linear_class!r} offline; it does not"
                )
            codes = values.astype(np.int8)
        if codes.shape != self.shape(name):
            raise ValueError(
                f"{self.path}: {name} unpacks to {list(codes.shape)}, the config needs {list(self.shape(name))}"
            )
        ws_name = self._weight_scale_name(name)
        ws = np.asarray(_load_entry(self._entry(ws_name)), dtype=np.float64).reshape(-1)
        if ws.size != 1 or not np.isfinite(ws[0]) or ws[0] <= 0:
            raise ValueError(f"{self.path}: {ws_name} must be one positive finite number; got {ws.tolist()[:4]}")
        scale = 1.0 / ws[0] if self.linear_class == "bitlinear" else ws[0]
        return codes, float(np.float32(scale))

    @staticmethod
    def _weight_scale_name(name: str) -> str:
        return name[: -len("weight")] + "weight_scale"

    def _stored_form(self, name: str) -> str:
        """How pre-quantized projection `name` is stored, from its header: "packed" or "values".

        As transformers loads them (integrations/bitnet.py): "packed" is uint8 [out/4, in], four
        output rows per byte (`unpack_bitnet_weight`), what BitLinear holds and what AutoBitLinear
        offline unpacks on load (BitNetDeserialize); "values" is the ternary values -1/0/1 in a float
        tensor [out, in], which AutoBitLinear offline also takes as they are. ValueError naming the
        tensor for anything else.
        """
        entry = self._entry(name)
        out, cols = self.shape(name)
        if entry.dtype == "U8" and out % 4 == 0 and entry.shape == (out // 4, cols):
            return "packed"
        if self.linear_class == "autobitlinear" and entry.dtype in _FLOAT_DTYPES and entry.shape == (out, cols):
            return "values"
        packed = f"uint8 [{out // 4}, {cols}] (four output rows per byte)" if out % 4 == 0 else None
        forms = [packed] if packed else []
        if self.linear_class == "autobitlinear":
            forms.append(f"ternary values -1/0/1 as floats [{out}, {cols}]")
        why = " or ".join(forms) if forms else f"uint8-packed, which needs out_features {out} divisible by 4"
        raise ValueError(
            f"{self.path}: {name} is {entry.dtype} {list(entry.shape)}; linear_class {self.linear_class!r} "
            f"offline stores it as {why}"
        )

    def _check_weight_scale(self, name: str) -> None:
        """weight_scale of pre-quantized projection `name`: present, float, one number (header only)."""
        ws_name = self._weight_scale_name(name)
        if ws_name not in self._entries:
            raise ValueError(
                f"{self.path}: {ws_name} is missing (pre-quantized BitNet weights need their weight_scale)"
            )
        ws = self._entries[ws_name]
        if ws.dtype not in _FLOAT_DTYPES:
            raise ValueError(f"{self.path}: {ws_name} has dtype {ws.dtype}; expected a float tensor")
        if math.prod(ws.shape) != 1:
            raise ValueError(
                f"{self.path}: {ws_name} has shape {list(ws.shape)}, a scale per output row or group; bitk's ternary "
                f"weights carry one scale per tensor, as transformers' BitLinear and AutoBitLinear do (their "
                f"weight_scale is one number), so this model cannot be read"
            )

    def bf16_bits(self, name: str) -> np.ndarray | None:
        """The uint16 bits of a tensor stored as bfloat16 (no copy), else None (`formats.ternarize_bf16`)."""
        if self._packed and self.is_projection(name):
            return None
        entry = self._entry(name)
        return _raw_entry(entry) if entry.dtype == "BF16" else None

    def tensor(self, name: str) -> np.ndarray:
        """float32 array of a tensor (bf16/f16 widened; pre-quantized weights as codes * scale)."""
        tern = self.ternary(name)
        if tern is not None:
            codes, scale = tern
            return codes.astype(np.float32) * np.float32(scale)
        arr = _load_entry(self._entry(name))
        if arr.dtype not in (np.float32, np.float16, np.float64):
            raise ValueError(f"{self.path}: {name} has dtype {self._entry(name).dtype}; expected a float tensor")
        return np.asarray(arr, dtype=np.float32)

    def _entry(self, name: str) -> _Entry:
        if name not in self._entries:
            raise ValueError(f"{self.path}: tensor {name} is missing")
        return self._entries[name]

    def check(self) -> None:
        """Every expected tensor present with its shape, nothing unexpected; ValueError naming them."""
        check_layer_count(self.config, self._entries, str(self.path))
        expected = tensor_shapes(self.config)
        missing = [n for n in expected if n not in self._entries]
        if missing:
            raise ValueError(
                f"{self.path}: missing tensor(s) {', '.join(missing[:6])}"
                + (f" and {len(missing) - 6} more" if len(missing) > 6 else "")
            )
        for name, shape in expected.items():
            if self._packed and self.is_projection(name):
                self._stored_form(name)  # a form transformers loads, of this shape
                self._check_weight_scale(name)
                continue
            got = self._entries[name].shape
            if tuple(got) != shape:
                raise ValueError(f"{self.path}: tensor {name} has shape {list(got)}, the config needs {list(shape)}")
        allowed = set(expected)
        if self._packed:
            allowed |= {self._weight_scale_name(n) for n in expected if self.is_projection(n)}
        if self.config.tie_word_embeddings:
            allowed.add("lm_head.weight")  # some exporters write the tied head too; it is ignored
        unexpected = [n for n in self._entries if n not in allowed and not n.endswith(_IGNORED_SUFFIXES)]
        if unexpected:
            raise ValueError(
                f"{self.path}: unexpected tensor(s) {', '.join(sorted(unexpected)[:6])} "
                f"(a model bitk cannot express, or a config that does not match the weights)"
            )


def _tokenizer_dir(folder: Path) -> Path | None:
    return folder if any((folder / f).is_file() for f in TOKENIZER_FILES) else None


def open_source(path: str | Path) -> ModelSource:
    """Open a bitk checkpoint (a folder with bitk.json) or a Hugging Face model folder (config.json).

    Reads only headers and configs; tensors load on request. ValueError names what is wrong:
    a missing folder, an unknown model type (listing the supported ones), missing or mis-shaped
    tensors, a truncated file.
    """
    folder = Path(path)
    if not folder.exists():
        raise ValueError(f"{folder}: no such file or directory")
    if not folder.is_dir():
        raise ValueError(
            f"{folder}: expected a model folder (a bitk checkpoint with {CHECKPOINT_FILE} "
            f"or a Hugging Face folder with config.json)"
        )
    if (folder / CHECKPOINT_FILE).is_file():
        meta = _read_json(folder / CHECKPOINT_FILE)
        if meta.get("format") != BITK_FORMAT:
            raise ValueError(f"{folder / CHECKPOINT_FILE}: not a bitk checkpoint (format {meta.get('format')!r})")
        if meta.get("format_version", 0) > BITK_FORMAT_VERSION:
            raise ValueError(
                f"{folder}: checkpoint format version {meta['format_version']} is newer than this "
                f"bitk reads ({BITK_FORMAT_VERSION}); upgrade bitk"
            )
        config = ModelConfig.from_dict(meta.get("model", {}))
        src = ModelSource(
            folder,
            "bitk",
            config,
            bitk_meta=meta,
            tokenizer_dir=_tokenizer_dir(folder),
            _entries=_safetensors_index(folder),
        )
    elif (folder / "config.json").is_file():
        hf = _read_json(folder / "config.json")
        config = config_from_hf(hf, folder)
        qc = hf.get("quantization_config") or {}
        entries = _safetensors_index(folder)
        packed = False
        linear_class = None
        if config.ternary and qc:
            if qc.get("quant_method", "bitnet") != "bitnet":
                raise ValueError(
                    f"{folder}: quantization_config.quant_method {qc.get('quant_method')!r} is not supported"
                )
            linear_class = qc.get("linear_class", "bitlinear")
            if linear_class not in ("bitlinear", "autobitlinear"):
                raise ValueError(
                    f"{folder}: quantization_config.linear_class {linear_class!r} is not bitlinear or autobitlinear"
                )
            online = linear_class == "autobitlinear" and qc.get("quantization_mode", "offline") == "online"
            packed = not online  # pre-quantized: check() validates each projection's stored form
        src = ModelSource(
            folder,
            hf["model_type"],
            config,
            hf_config=hf,
            tokenizer_dir=_tokenizer_dir(folder),
            linear_class=linear_class if packed else None,
            _entries=entries,
            _packed=packed,
        )
    else:
        raise ValueError(
            f"{folder}: neither a bitk checkpoint ({CHECKPOINT_FILE}) nor a Hugging Face folder (config.json)"
        )
    src.check()
    return src


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: unreadable JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return data


def ternary_codes(src: Any, name: str) -> tuple[np.ndarray, float]:
    """(int8 codes, float32 scale) of projection `name`: as stored if already ternary, else absmean-ternarized.

    `bitk.formats.ternarize` (bf16 master weights through `ternarize_bf16`, without a float32
    copy): the quantizer training uses, so the codes are the ones the model computed with.
    """
    import bitk.formats as fmt

    stored = src.ternary(name)
    if stored is not None:
        return stored
    try:
        bits = src.bf16_bits(name)
        return fmt.ternarize_bf16(bits) if bits is not None else fmt.ternarize(src.tensor(name))
    except ValueError as exc:
        raise ValueError(f"{src.path}: tensor {name}: {exc}") from None
