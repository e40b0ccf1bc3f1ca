"""Check a BitNet GGUF file: every tensor decodes, the model is complete, and (optionally) it is the source.

Without a source: the header parses, the metadata has every key the runtimes need, the tensor
set and shapes match the metadata, no two tensors overlap, every tensor's bytes are in the file
(a truncated file fails), ternary tensors decode (`bitk.formats`: code 3 rejected, I2_S tail
present with a finite positive scale, TQ block scales finite) and float tensors are finite.
With a source (`against`): each ternary tensor holds exactly the source's ternarization (codes
and scale; TQ: the scale rounded to float16 as the type stores it) and each float tensor equals
the source value after the same float16 rounding the packer applies, bit for bit.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import bitk.formats as fmt
from bitk.formats.constants import I2S_DEFAULT_LAYOUT
from bitk.gguf.constants import (
    ACTIVATION_BY_ARCH,
    ARCH_QWEN3,
    ARCH_RELU2,
    KEY_I2S_LAYOUT,
    KEY_TOKENIZER_MODEL,
    KEY_TOKENIZER_PRE,
    KEY_TOKENS,
    KEY_UNPADDED,
    OUTPUT,
    REQUIRED_ARCH_KEYS,
    TERNARY_TYPES,
    TOKENIZER_GPT2,
    arch_key,
    gguf_to_hf_name,
    hf_to_gguf_names,
)
from bitk.gguf.reader import GGUFFile, read_gguf

__all__ = ["verify", "VerifyReport", "Check", "model_dims", "block_problem", "model_problems", "expected_shapes"]


@dataclass
class Check:
    """One row of the verify table."""

    what: str
    """A tensor name, or 'metadata' / 'layout' for file-level checks."""
    type: str
    shape: tuple[int, ...]
    ok: bool
    detail: str


@dataclass
class VerifyReport:
    path: Path
    against: Path | None
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]


# --------------------------------------------------------------------------- model shape


def model_dims(meta: dict[str, Any]) -> dict[str, int]:
    """The model's dimensions from a BitNet GGUF's metadata; ValueError naming a missing or non-integer key.

    The values are only read here; `block_problem` and `expected_shapes` hold them against the
    tensors the file has.
    """
    arch = meta.get("general.architecture")
    if not isinstance(arch, str) or arch not in ACTIVATION_BY_ARCH:
        raise ValueError(f"general.architecture is {arch!r}, not an arch bitk writes ({', '.join(ACTIVATION_BY_ARCH)})")
    missing = [arch_key(arch, k) for k in REQUIRED_ARCH_KEYS if arch_key(arch, k) not in meta]
    if missing:
        raise ValueError(f"missing required metadata {', '.join(missing)}")

    def get(what: str, default: int | None = None) -> int:
        key = arch_key(arch, what)
        value = meta.get(key, default)
        if value is None:
            return 0
        if not isinstance(value, (int, np.integer)) or isinstance(value, (bool, np.bool_)) or value < 0:
            raise ValueError(f"{key} must be a non-negative integer, got {value!r}")
        return int(value)

    hidden, heads = get("embedding_length"), get("head_count")
    tokens = meta.get(KEY_TOKENS)
    if tokens is not None and not isinstance(tokens, (list, np.ndarray)):
        raise ValueError(f"{KEY_TOKENS} must be an array, got {type(tokens).__name__}")
    vocab = get("vocab_size", len(tokens) if tokens is not None else None)
    head_dim = get("key_length", get("rope_dimension_count", hidden // max(heads, 1)))
    return {
        "vocab": vocab,
        "hidden": hidden,
        "ffn": get("feed_forward_length"),
        "layers": get("block_count"),
        "heads": heads,
        "kv_heads": get("head_count_kv", heads),
        "head_dim": head_dim,
    }


_BLOCK = re.compile(r"^blk\.(\d+)\.")


def block_problem(dims: dict[str, int], names: Any) -> str | None:
    """Why block_count does not match the blk.N tensor groups of `names` (0 .. block_count - 1), or None.

    Checked before `expected_shapes` iterates over the blocks: a file claiming 2**31 blocks is
    refused from the tensors it holds, not by enumerating them.
    """
    found = {int(m.group(1)) for name in names if (m := _BLOCK.match(name))}
    n = dims["layers"]
    if len(found) == n and (not found or max(found) == n - 1):
        return None
    held = f"{len(found)} (blk.{min(found)} .. blk.{max(found)})" if found else "none"
    return f"block_count is {n}, but the blocks the file holds are {held}"


def model_problems(f: GGUFFile, dims: dict[str, int], arch: str) -> list[str]:
    """Each way the file's tensors differ from the model its metadata describes (empty: they agree)."""
    problem = block_problem(dims, f.tensors)
    if problem is not None:
        return [problem]
    shapes = expected_shapes(dims, arch, untied=OUTPUT in f.tensors)
    problems = []
    missing = [n for n in shapes if n not in f.tensors]
    extra = [n for n in f.tensors if n not in shapes]
    if missing:
        problems.append(
            f"missing {', '.join(missing[:6])}" + (f" and {len(missing) - 6} more" if len(missing) > 6 else "")
        )
    if extra:
        problems.append(
            f"unexpected {', '.join(extra[:6])}" + (f" and {len(extra) - 6} more" if len(extra) > 6 else "")
        )
    shaped = [n for n in shapes if n in f.tensors and tuple(f.tensors[n].shape) != shapes[n]]
    problems += [
        f"{n} has shape {list(f.tensors[n].shape)}, the metadata implies {list(shapes[n])}" for n in shaped[:6]
    ]
    return problems


def expected_shapes(dims: dict[str, int], arch: str = ARCH_RELU2, untied: bool = False) -> dict[str, tuple[int, ...]]:
    """GGUF tensor name -> numpy shape [out, in] of a model of `dims` and `arch` (`untied`: with output.weight)."""
    h, f, q, kv = dims["hidden"], dims["ffn"], dims["heads"] * dims["head_dim"], dims["kv_heads"] * dims["head_dim"]
    per_block = {
        "attn_norm": (h,),
        "attn_q": (q, h),
        "attn_k": (kv, h),
        "attn_v": (kv, h),
        "attn_sub_norm": (q,),
        "attn_output": (h, q),
        "ffn_norm": (h,),
        "ffn_gate": (f, h),
        "ffn_up": (f, h),
        "ffn_sub_norm": (f,),
        "ffn_down": (h, f),
    }
    if arch == ARCH_QWEN3:
        del per_block["attn_sub_norm"], per_block["ffn_sub_norm"]
        per_block.update(attn_q_norm=(dims["head_dim"],), attn_k_norm=(dims["head_dim"],))
    shapes: dict[str, tuple[int, ...]] = {"token_embd.weight": (dims["vocab"], h), "output_norm.weight": (h,)}
    if untied:
        shapes[OUTPUT] = (dims["vocab"], h)
    for i in range(dims["layers"]):
        shapes.update({f"blk.{i}.{k}.weight": v for k, v in per_block.items()})
    return shapes


def _role(name: str) -> str:
    if name in ("token_embd.weight", OUTPUT):
        return "embedding"
    return "norm" if name.endswith("norm.weight") else "projection"


# --------------------------------------------------------------------------- decoding


def decode(f: GGUFFile, name: str, values: bool = True) -> tuple[np.ndarray | None, np.ndarray | None, float | None]:
    """(float32 values, int8 codes or None, I2_S scale or None) of one tensor; ValueError if invalid.

    values=False: an I2_S tensor gives (None, codes, scale), without the float32 copy.
    """
    info = f.tensors[name]
    data = f.tensor_data(name)
    t = info.type_name
    if t == "F32":
        return data.view("<f4").reshape(info.shape).astype(np.float32), None, None
    if t == "F16":
        return data.view("<f2").reshape(info.shape).astype(np.float32), None, None
    if t not in TERNARY_TYPES:
        raise ValueError(f"bitk does not decode {t} tensors (a BitNet GGUF holds F32, F16, I2_S, TQ1_0, TQ2_0)")
    if len(info.shape) != 2:
        raise ValueError(f"a {t} tensor must be 2-D; this one has dims {list(info.ne)}")
    if t == "I2_S":
        layout = f.metadata.get(KEY_I2S_LAYOUT, I2S_DEFAULT_LAYOUT)
        codes, scale = fmt.unpack_i2s(data, info.shape, layout)
        if not np.isfinite(scale) or scale <= 0:
            raise ValueError(f"I2_S scale {scale!r} in the tail is not a positive finite number")
        return (codes.astype(np.float32) * np.float32(scale) if values else None), codes, float(scale)
    values = fmt.dequantize(data, info.shape, t)
    return values, None, None


# --------------------------------------------------------------------------- against a source


def _expected(src: Any, hf: str, gguf_type: str) -> tuple[np.ndarray | None, np.ndarray, float | None]:
    """(codes or None, expected float32 values as stored, scale or None) of a source tensor."""
    from bitk.models.sources import ternary_codes

    if src.is_projection(hf) and src.config.ternary:
        codes, scale = ternary_codes(src, hf)
        if gguf_type in ("TQ1_0", "TQ2_0"):
            s = np.float32(np.float16(np.float32(scale)))
        else:
            s = np.float32(scale)
        values = codes.astype(np.float32) * s
    else:
        codes, scale = None, None
        values = np.asarray(src.tensor(hf), dtype=np.float32)
    if gguf_type == "F16":
        with np.errstate(over="ignore"):
            values = values.astype(np.float16).astype(np.float32)
    return codes, values, scale


def _compare(got: np.ndarray, want: np.ndarray) -> str | None:
    if got.shape != want.shape:
        return f"shape {list(got.shape)}, the source has {list(want.shape)}"
    same = (got.view(np.uint32) == want.view(np.uint32)) | ((got == 0) & (want == 0))
    if same.all():
        return None
    bad = int(same.size - np.count_nonzero(same))
    idx = np.unravel_index(int(np.argmin(same)), same.shape)
    return f"{bad} value(s) differ from the source (first at {list(map(int, idx))}: {got[idx]!r} vs {want[idx]!r})"


# --------------------------------------------------------------------------- verify


def _metadata_checks(f: GGUFFile, report: VerifyReport, src: Any) -> dict[str, tuple[int, ...]] | None:
    meta = f.metadata
    try:
        dims = model_dims(meta)
    except ValueError as exc:
        report.checks.append(Check("metadata", "", (), False, str(exc)))
        return None
    blocks = block_problem(dims, f.tensors)
    if blocks is not None:
        report.checks.append(Check("metadata", meta["general.architecture"], (), False, blocks))
        return None
    problems = []
    tokens = meta.get(KEY_TOKENS)
    if KEY_TOKENIZER_MODEL not in meta or tokens is None:
        problems.append("no tokenizer (tokenizer.ggml.model / tokens)")
    elif len(tokens) != dims["vocab"]:
        problems.append(f"{len(tokens)} tokens but vocab_size {dims['vocab']}")
    if meta.get(KEY_TOKENIZER_MODEL) == TOKENIZER_GPT2 and KEY_TOKENIZER_PRE not in meta:
        problems.append("a gpt2 vocabulary without tokenizer.ggml.pre (runtimes then tokenize wrongly)")
    if src is not None:
        c = src.config
        act = ACTIVATION_BY_ARCH[meta["general.architecture"]]
        if act != c.hidden_act:
            problems.append(f"arch {meta['general.architecture']} evaluates {act}, the source uses {c.hidden_act}")
        want = {
            "vocab": c.vocab_size,
            "hidden": c.hidden_size,
            "ffn": c.intermediate_size,
            "layers": c.num_hidden_layers,
            "heads": c.num_attention_heads,
            "kv_heads": c.num_key_value_heads,
            "head_dim": c.head_dim,
        }
        problems += [f"{k} {dims[k]} but the source has {v}" for k, v in want.items() if dims[k] != v]
    report.checks.append(
        Check(
            "metadata",
            meta.get("general.architecture", "?"),
            (),
            not problems,
            "; ".join(problems)
            or f"{dims['layers']} blocks, hidden {dims['hidden']}, ffn {dims['ffn']}, vocab {dims['vocab']}",
        )
    )
    arch = meta["general.architecture"]
    shapes = expected_shapes(dims, arch, untied=arch == ARCH_QWEN3 and OUTPUT in f.tensors)
    missing = [n for n in shapes if n not in f.tensors]
    extra = [n for n in f.tensors if n not in shapes]
    if missing or extra:
        detail = "; ".join(
            x
            for x in (
                f"missing {', '.join(missing[:6])}" if missing else "",
                f"unexpected {', '.join(extra[:6])}" if extra else "",
            )
            if x
        )
        report.checks.append(Check("tensor set", "", (), False, detail))
    return shapes


def _layout_check(f: GGUFFile, report: VerifyReport) -> None:
    spans = sorted(
        (f.data_offset + t.offset, f.data_offset + t.offset + (t.nbytes or 0), t.name) for t in f.tensors.values()
    )
    for (a0, a1, an), (b0, _b1, bn) in itertools.pairwise(spans):
        if a1 > b0:
            report.checks.append(Check("layout", "", (), False, f"{an} (bytes {a0}..{a1}) overlaps {bn} (from {b0})"))
            return


def verify(
    path: str | Path,
    against: str | Path | Any | None = None,
    on_tensor: Callable[[int, int, Check], None] | None = None,
) -> VerifyReport:
    """Decode and check every tensor of the GGUF file `path`; compare with the source `against` if given.

    Returns a VerifyReport (`.ok`, `.failures`); ValueError only when the header cannot be parsed
    or the source cannot be opened.
    """
    src = None
    if against is not None:
        from bitk.models.sources import ModelSource, open_source

        src = against if isinstance(against, ModelSource) else open_source(against)
    with read_gguf(path) as f:
        report = VerifyReport(Path(path), None if src is None else Path(src.path))
        if src is not None and KEY_UNPADDED["hidden_size"] in f.metadata:
            src = _padded(f, src, report)
        shapes = _metadata_checks(f, report, src)
        _layout_check(f, report)
        to_hf = {}
        if src is not None:
            arch = f.metadata.get("general.architecture", ARCH_RELU2)
            names = hf_to_gguf_names(src.config.num_hidden_layers, arch, untied_head=OUTPUT in f.tensors)
            to_hf = {v: k for k, v in names.items()}
        names = list(f.tensors)
        for i, name in enumerate(names):
            check = _check_tensor(f, name, shapes, src, to_hf)
            report.checks.append(check)
            if on_tensor is not None:
                on_tensor(i, len(names), check)
        return report


def _padded(f: GGUFFile, src: Any, report: VerifyReport) -> Any:
    """The source seen as the zero-padded model the file records (bitk.unpadded.*), to compare with."""
    from bitk.models.padding import PaddedSource, padding_to

    meta = f.metadata
    c = src.config
    unpadded = {k: meta[key] for k, key in KEY_UNPADDED.items() if key in meta}
    bad = [KEY_UNPADDED[k] for k, v in unpadded.items() if not isinstance(v, (int, np.integer)) or isinstance(v, bool)]
    if bad:
        report.checks.append(Check("padding", "", (), False, f"{', '.join(bad)} must be integers"))
        return src
    differ = [f"{k} {v} but the source has {getattr(c, k)}" for k, v in unpadded.items() if getattr(c, k) != v]
    if differ:
        report.checks.append(Check("padding", "", (), False, "; ".join(differ)))
        return src
    try:
        dims = model_dims(meta)
        padding = padding_to(c, dims["hidden"], dims["heads"])
    except ValueError as exc:
        report.checks.append(Check("padding", "", (), False, str(exc)))
        return src
    report.checks.append(Check("padding", "", (), True, f"zero-padded: {padding.describe()}"))
    return PaddedSource(src, padding)


def _check_tensor(f: GGUFFile, name: str, shapes: dict | None, src: Any, to_hf: dict[str, str]) -> Check:
    info = f.tensors[name]
    t = info.type_name

    def fail(detail: str) -> Check:
        return Check(name, t, info.shape, False, detail)

    problem = f.data_problem(name)
    if problem is not None:
        return fail(problem)
    if shapes is not None and name in shapes and tuple(info.shape) != shapes[name]:
        return fail(f"shape {list(info.shape)}, the metadata implies {list(shapes[name])}")
    role = _role(name)
    if role == "norm" and t != "F32":
        return fail(f"a norm must be F32, not {t}")
    if role == "embedding" and t not in ("F16", "F32"):
        return fail(f"the token embedding must be F16 or F32 (the runtime gathers its rows), not {t}")
    try:
        values, codes, scale = decode(f, name)
    except ValueError as exc:
        return fail(str(exc))
    if not np.isfinite(values).all():
        return fail("holds NaN/Inf values")
    detail = "decodes"
    if t in ("TQ1_0", "TQ2_0"):
        blocks = np.abs(values.reshape(-1, 256)).max(axis=1)
        detail = f"decodes ({len(np.unique(blocks[blocks > 0]))} distinct block scale(s))"
    elif t == "I2_S":
        detail = f"decodes (scale {scale:.6g})"
    if src is None:
        return Check(name, t, info.shape, True, detail)
    hf = to_hf.get(name) or gguf_to_hf_name(name)
    if hf is None or hf not in src.names():
        return fail("no such tensor in the source")
    want_codes, want, want_scale = _expected(src, hf, t)
    if t == "I2_S" and want_codes is not None:
        if want_codes.shape != codes.shape:
            return fail(f"shape {list(codes.shape)}, the source has {list(want_codes.shape)}")
        diff = int(np.count_nonzero(codes != want_codes))
        if diff:
            return fail(f"{diff} code(s) differ from the source's ternarization")
        if np.float32(scale) != np.float32(want_scale):
            return fail(f"scale {scale!r} differs from the source's {want_scale!r}")
        return Check(name, t, info.shape, True, f"codes and scale equal the source (scale {scale:.6g})")
    mismatch = _compare(values, want)
    if mismatch is not None:
        return fail(mismatch)
    what = "ternarization" if want_codes is not None else "values"
    rounding = " (float16-rounded)" if t in ("F16", "TQ1_0", "TQ2_0") else ""
    return Check(name, t, info.shape, True, f"equals the source's {what}{rounding}")
