"""Pack a bitk checkpoint or Hugging Face BitNet folder into a GGUF file that bitnet.cpp / llama.cpp run.

Weights are ternarized with the training quantizer (`bitk.formats.ternarize`, absmean, one scale
per tensor) or taken as stored when already ternary (`src.ternary`), then packed byte-exactly by
`bitk.formats`: latent weights never reach a per-block absmax quantizer. F16/F32 projections of a
ternary model hold the dequantized ternary weights `codes * gamma`, what the model computes.
gguf-py's GGUFWriter lays out the file (metadata, tensor infos, 32-byte alignment); tensors are
encoded and streamed one at a time, into a temporary file in the output's folder that replaces
the output only when complete (an error or Ctrl-C leaves no partial file and the old one intact;
bitk-pack handles SIGTERM the same way). The temporary file is `.NAME.PID.XXXXXXXX.partial`: one
left by a writer that was killed (SIGKILL, power cut) is removed by the next pack to NAME.
"""

from __future__ import annotations

import glob
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import bitk.formats as fmt
from bitk.gguf.constants import (
    ALIGNMENT,
    FILE_TYPES,
    KEY_ADD_BOS,
    KEY_ADD_EOS,
    KEY_BITK_VERSION,
    KEY_CHANGES,
    KEY_CHAT_TEMPLATE,
    KEY_FILE_TYPE,
    KEY_I2S_LAYOUT,
    KEY_MERGES,
    KEY_NAME,
    KEY_QUANTIZATION_VERSION,
    KEY_QUANTIZED_BY,
    KEY_SCORES,
    KEY_SOURCE_KIND,
    KEY_TOKEN_TYPE,
    KEY_TOKENIZER_MODEL,
    KEY_TOKENIZER_PRE,
    KEY_TOKENS,
    KEY_UNPADDED,
    QUANTIZATION_VERSION,
    SPECIAL_ID_KEYS,
    TERNARY_TYPES,
    TYPE_IDS,
    arch_key,
)
from bitk.gguf.plan import PackOptions, PackPlan, TensorPlan, plan_pack
from bitk.models.sources import ternary_codes

__all__ = ["pack", "PackResult", "SummaryRow", "encode_tensor", "F16_MAX"]

F16_MAX = 65504.0
_TQ_ADVICE = "it cannot be stored in a float16 block scale (TQ types); use --type i2_s or f32"


@dataclass
class SummaryRow:
    """One line of the pack summary."""

    name: str
    type: str
    shape: tuple[int, ...]
    nbytes: int
    note: str | None = None

    @property
    def bits_per_weight(self) -> float:
        return 8.0 * self.nbytes / int(np.prod(self.shape))


@dataclass
class PackResult:
    """What `pack` wrote."""

    path: Path
    arch: str
    qtype: str
    rows: list[SummaryRow]
    changes: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    file_bytes: int = 0

    @property
    def n_params(self) -> int:
        return sum(int(np.prod(r.shape)) for r in self.rows)


# --------------------------------------------------------------------------- tensors


def _finite(arr: np.ndarray, where: str) -> np.ndarray:
    if not np.isfinite(arr).all():
        bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
        raise ValueError(f"{where}: {bad} NaN/Inf value(s); a model with non-finite weights cannot be packed")
    return arr


def _to_f16(arr: np.ndarray, where: str, advice: str) -> np.ndarray:
    """float16 copy of float32 `arr`; ValueError for NaN/Inf or overflow (checked on the half-size copy)."""
    with np.errstate(over="ignore", invalid="ignore"):
        half = arr.astype(np.float16)
    if not np.isfinite(half).all():
        _finite(arr, where)
        peak = float(np.abs(arr).max())
        raise ValueError(f"{where}: |value| up to {peak:.4g} overflows float16 (max {F16_MAX}); {advice}")
    return half


def encode_tensor(src: Any, tp: TensorPlan, ternary: bool, layout: str) -> np.ndarray:
    """The bytes (as the numpy array GGUFWriter writes) of one planned tensor."""
    where = f"{src.path}: tensor {tp.source}"
    if tp.role == "projection" and ternary:
        codes, scale = ternary_codes(src, tp.source)
        if tp.type == "I2_S":
            return fmt.pack_i2s(codes, scale, layout)
        deq = codes.astype(np.float32) * np.float32(scale)
        if tp.type in ("TQ1_0", "TQ2_0"):
            d = np.float16(np.float32(scale))
            if not np.isfinite(d) or (d == 0 and codes.any()):
                raise ValueError(f"{where}: ternary scale {scale:.4g}: {_TQ_ADVICE}")
            return fmt.quantize(deq, tp.type)
        return deq if tp.type == "F32" else _to_f16(deq, where, "use --type f32")
    arr = np.asarray(src.tensor(tp.source), dtype=np.float32)
    if tuple(arr.shape) != tp.shape:
        raise ValueError(f"{where}: shape {list(arr.shape)}, the config needs {list(tp.shape)}")
    if tp.type == "F32":
        return np.ascontiguousarray(_finite(arr, where))
    if tp.type == "F16":
        advice = "use --embedding-type f32" if tp.role == "embedding" else "use --type f32"
        return _to_f16(arr, where, advice)
    raise AssertionError(f"{tp.type} for a {tp.role} of a {'ternary' if ternary else 'float'} model")


def _nbytes(tp: TensorPlan) -> int:
    rows, cols = tp.shape if len(tp.shape) == 2 else (1, tp.shape[0])
    if tp.type in TERNARY_TYPES:
        return fmt.nbytes(tp.type, rows, cols)
    return rows * cols * (4 if tp.type == "F32" else 2)


# --------------------------------------------------------------------------- metadata


def _pack_strings(values: list[str]) -> bytes:
    """GGUF string items (u64 length, UTF-8 bytes) of `values`, laid out with numpy in a few passes."""
    encoded = [v.encode("utf-8") for v in values]
    lengths = np.fromiter((len(e) for e in encoded), dtype=np.int64, count=len(encoded))
    blob = np.frombuffer(b"".join(encoded), dtype=np.uint8)
    starts = 8 * np.arange(len(encoded), dtype=np.int64) + np.concatenate(([0], np.cumsum(lengths)[:-1]))
    out = np.empty(8 * len(encoded) + blob.size, dtype=np.uint8)
    out[starts[:, None] + np.arange(8)] = lengths.astype("<u8").view(np.uint8).reshape(-1, 8)
    text_pos = np.repeat(starts + 8 - np.concatenate(([0], np.cumsum(lengths)[:-1])), lengths)
    out[text_pos + np.arange(blob.size)] = blob
    return out.tobytes()


def _writer_class() -> type:
    """GGUFWriter with homogeneous metadata arrays packed in bulk, byte for byte as GGUFWriter packs them.

    GGUFWriter packs arrays item by item (~8 us each): a 128k-token vocabulary with its token
    types and 280k merges would take seconds. Strings, ints (int32) and floats (float32), the
    types gguf picks for Python str/int/float, are packed here in one pass each.
    """
    import struct

    from gguf import GGUFEndian, GGUFValueType, GGUFWriter

    class BulkArrayWriter(GGUFWriter):
        def add_key_value(self, key: str, val: Any, vtype: Any, sub_type: Any = None) -> None:
            # packed once here so a value its type cannot hold is a ValueError naming the key
            # (gguf raises struct.error / OverflowError later, from write_kv_data_to_file)
            try:
                self._pack_val(val, vtype, add_vtype=True, sub_type=sub_type)
            except (struct.error, OverflowError) as exc:
                kind = vtype.name if sub_type is None and vtype != GGUFValueType.ARRAY else "array"
                shown = f"{val!r}" if not isinstance(val, (list, tuple)) else f"an array of {len(val)}"
                raise ValueError(f"metadata {key}: {shown} does not fit its GGUF type {kind} ({exc})") from None
            super().add_key_value(key, val, vtype, sub_type)

        def _pack_val(self, val: Any, vtype: Any, add_vtype: bool, sub_type: Any = None) -> bytes:
            if (
                vtype != GGUFValueType.ARRAY
                or sub_type is not None
                or not isinstance(val, list)
                or not val
                or self.endianess != GGUFEndian.LITTLE
            ):
                return super()._pack_val(val, vtype, add_vtype, sub_type)
            kind = type(val[0])
            if kind not in (str, int, float) or any(type(v) is not kind for v in val):
                return super()._pack_val(val, vtype, add_vtype, sub_type)
            if kind is str:
                item_type = GGUFValueType.STRING
                body = _pack_strings(val)
            elif kind is int:
                item_type = GGUFValueType.INT32
                if min(val) < -(2**31) or max(val) >= 2**31:  # gguf raises struct.error: let it
                    return super()._pack_val(val, vtype, add_vtype, sub_type)
                body = np.array(val, dtype="<i4").tobytes()
            else:
                item_type = GGUFValueType.FLOAT32
                if max(abs(v) for v in val) > float(np.finfo(np.float32).max):  # gguf raises OverflowError
                    return super()._pack_val(val, vtype, add_vtype, sub_type)
                body = np.array(val, dtype=np.float64).astype("<f4").tobytes()
            head = struct.pack("<I", int(vtype)) if add_vtype else b""
            return head + struct.pack("<IQ", int(item_type), len(val)) + body

    return BulkArrayWriter


def _write_metadata(w: Any, plan: PackPlan, src: Any) -> None:
    from bitk import __version__

    c, arch, v = src.config, plan.arch, plan.vocab
    w.add_string(KEY_NAME, plan.options.name or Path(src.path).resolve().name)
    w.add_uint32(KEY_FILE_TYPE, FILE_TYPES[plan.qtype])  # informational in both runtimes
    if plan.qtype in TERNARY_TYPES:
        w.add_uint32(KEY_QUANTIZATION_VERSION, QUANTIZATION_VERSION)
    w.add_custom_alignment(ALIGNMENT)
    w.add_string(KEY_QUANTIZED_BY, f"bitk {__version__}")
    w.add_string(KEY_BITK_VERSION, __version__)
    w.add_string(KEY_SOURCE_KIND, src.kind)
    if any(t.type == "I2_S" for t in plan.tensors):
        w.add_string(KEY_I2S_LAYOUT, plan.options.i2s_layout)
    if plan.changes:
        w.add_array(KEY_CHANGES, list(plan.changes))
    if plan.padding is not None:
        for field_name, key in KEY_UNPADDED.items():
            w.add_uint32(key, int(getattr(plan.padding.original, field_name)))

    u32 = {
        "context_length": c.max_position_embeddings,
        "embedding_length": c.hidden_size,
        "block_count": c.num_hidden_layers,
        "feed_forward_length": c.intermediate_size,
        "head_count": c.num_attention_heads,
        "head_count_kv": c.num_key_value_heads,
        "rope_dimension_count": c.head_dim,
        "vocab_size": c.vocab_size,
    }
    if c.head_dim * c.num_attention_heads != c.hidden_size:
        u32["key_length"] = u32["value_length"] = c.head_dim
    for what, value in u32.items():
        w.add_uint32(arch_key(arch, what), int(value))
    w.add_float32(arch_key(arch, "rms_eps"), float(c.rms_norm_eps))
    w.add_float32(arch_key(arch, "rope_freq_base"), float(c.rope_theta))

    w.add_string(KEY_TOKENIZER_MODEL, v.model)
    if v.pre is not None:
        w.add_string(KEY_TOKENIZER_PRE, v.pre)
    w.add_array(KEY_TOKENS, v.tokens)
    if v.scores is not None:
        w.add_array(KEY_SCORES, [float(s) for s in v.scores])
    w.add_array(KEY_TOKEN_TYPE, [int(t) for t in v.token_types])
    if v.merges:
        w.add_array(KEY_MERGES, v.merges)
    for name, key in SPECIAL_ID_KEYS.items():
        if name in v.special_ids:
            w.add_uint32(key, int(v.special_ids[name]))
    if v.add_bos is not None:
        w.add_bool(KEY_ADD_BOS, bool(v.add_bos))
    if v.add_eos is not None:
        w.add_bool(KEY_ADD_EOS, bool(v.add_eos))
    if v.add_space_prefix is not None:
        w.add_add_space_prefix(bool(v.add_space_prefix))
    if v.chat_template:
        w.add_string(KEY_CHAT_TEMPLATE, v.chat_template)


# --------------------------------------------------------------------------- pack


def _check_output(out: Path) -> Path:
    out = Path(out).expanduser()
    if out.is_dir():
        raise ValueError(f"{out}: is a folder; give the output .gguf file name")
    if not out.parent.is_dir():
        raise ValueError(f"{out.parent}: no such folder for the output file")
    return out


def _partial_prefix(out: Path) -> str:
    """The start of `out`'s temporary file names, `.NAME.PID.XXXXXXXX.partial` (the pid: its writer's)."""
    return f".{out.name}."


def _remove_stale_partials(out: Path) -> None:
    """Remove temporary files of `out` left by writers no longer running (a SIGKILL, a power cut)."""
    prefix = _partial_prefix(out)
    for path in out.parent.glob(f"{glob.escape(prefix)}*.partial"):
        pid = path.name[len(prefix) :].split(".", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid() or int(pid) == 0:
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            path.unlink(missing_ok=True)
        except OSError:  # alive, another user's
            continue


def _file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def write_plan(
    plan: PackPlan, out: Path, on_tensor: Callable[[int, int, SummaryRow], None] | None = None
) -> PackResult:
    """Write `plan` to `out` atomically; `on_tensor(i, total, row)` after each tensor.

    The tensors are read from `plan.source`: the source planned, or its zero-padded view.
    """
    out = _check_output(out)
    src = plan.source
    _remove_stale_partials(out)
    fd, tmp_name = tempfile.mkstemp(prefix=f"{_partial_prefix(out)}{os.getpid()}.", suffix=".partial", dir=out.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    rows: list[SummaryRow] = []
    writer = None
    try:
        writer = _writer_class()(tmp, plan.arch)
        try:
            _write_metadata(writer, plan, src)
        except ValueError as exc:
            raise ValueError(f"{src.path}: {exc}") from None
        for tp in plan.tensors:
            dtype = {"F32": np.float32, "F16": np.float16}.get(tp.type, np.int8)
            raw = None if tp.type in ("F32", "F16") else TYPE_IDS[tp.type]
            # int8 + raw type: gguf keeps the logical shape (it converts only uint8 byte shapes)
            writer.add_tensor_info(tp.name, tp.shape, np.dtype(dtype), _nbytes(tp), raw_dtype=raw)
        writer.write_header_to_file(tmp)
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        layout = plan.options.i2s_layout
        for i, tp in enumerate(plan.tensors):
            data = encode_tensor(src, tp, plan.ternary, layout)
            assert data.nbytes == _nbytes(tp), (tp.name, data.nbytes, _nbytes(tp))
            writer.write_tensor_data(data)
            del data
            row = SummaryRow(tp.name, tp.type, tp.shape, _nbytes(tp), tp.fallback)
            rows.append(row)
            if on_tensor is not None:
                on_tensor(i, len(plan.tensors), row)
        writer.close()
        os.chmod(tmp, _file_mode())
        os.replace(tmp, out)
    except BaseException:
        if writer is not None:
            writer.close()
        tmp.unlink(missing_ok=True)
        raise
    return PackResult(
        path=out,
        arch=plan.arch,
        qtype=plan.qtype,
        rows=rows,
        changes=list(plan.changes),
        notes=list(plan.notes),
        file_bytes=out.stat().st_size,
    )


def pack(
    src: Any,
    out: str | Path,
    qtype: str = "i2_s",
    *,
    on_plan: Callable[[PackPlan], None] | None = None,
    on_tensor: Callable[[int, int, SummaryRow], None] | None = None,
    **options: Any,
) -> PackResult:
    """Pack `src` (a model folder or an open `ModelSource`) into the GGUF file `out`.

    `qtype`: i2_s, tq1_0, tq2_0, f16 or f32; `options`: the fields of `PackOptions` (arch,
    i2s_layout, pad, embedding_type, tokenizer_pre, tokenizer, allow_untied_head, allow_drop_bias,
    name). ValueError names anything refused; nothing is written then.
    """
    from bitk.models.sources import ModelSource, open_source

    unknown = sorted(set(options) - set(PackOptions.__dataclass_fields__))
    if unknown:
        raise ValueError(
            f"unknown pack option(s) {', '.join(unknown)}; options: {', '.join(PackOptions.__dataclass_fields__)}"
        )
    out = _check_output(Path(out))
    source = src if isinstance(src, ModelSource) else open_source(src)
    plan = plan_pack(source, PackOptions(qtype=qtype, **options))
    if on_plan is not None:
        on_plan(plan)
    return write_plan(plan, out, on_tensor)
