"""Describe any GGUF file (I2_S included): its metadata and tensor table, as plain rows.

`describe` returns data; `bitk.gguf.report` renders it with rich for `bitk-pack inspect`. Long
arrays (the vocabulary, merges) are summarised by their length and first items.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bitk.gguf.constants import (
    VT_ARRAY,
    VT_BOOL,
    VT_FLOAT32,
    VT_FLOAT64,
    VT_INT8,
    VT_INT16,
    VT_INT32,
    VT_INT64,
    VT_STRING,
    VT_UINT8,
    VT_UINT16,
    VT_UINT32,
    VT_UINT64,
)
from bitk.gguf.reader import read_gguf

__all__ = ["describe", "Description", "TensorRow", "format_value"]

_VT_NAMES = {
    VT_UINT8: "u8",
    VT_INT8: "i8",
    VT_UINT16: "u16",
    VT_INT16: "i16",
    VT_UINT32: "u32",
    VT_INT32: "i32",
    VT_FLOAT32: "f32",
    VT_BOOL: "bool",
    VT_STRING: "str",
    VT_ARRAY: "arr",
    VT_UINT64: "u64",
    VT_INT64: "i64",
    VT_FLOAT64: "f64",
}


@dataclass
class TensorRow:
    name: str
    type: str
    shape: tuple[int, ...]
    """numpy shape (ggml ne reversed): [out, in] for a weight."""
    nbytes: int | None
    offset: int
    problem: str | None

    @property
    def bits_per_weight(self) -> float | None:
        n = int(np.prod(self.shape)) if self.shape else 1
        return None if self.nbytes is None or n == 0 else 8.0 * self.nbytes / n


@dataclass
class Description:
    path: Path
    version: int
    file_size: int
    data_offset: int
    alignment: int
    metadata: list[tuple[str, str, str]]
    """(key, value type, rendered value)."""
    tensors: list[TensorRow]

    @property
    def n_params(self) -> int:
        return sum(int(np.prod(t.shape)) for t in self.tensors)


def format_value(value: Any, vtype: int, limit: int = 6, width: int = 80) -> str:
    """A short human rendering of a metadata value (arrays: length and first items)."""
    if isinstance(value, (list, np.ndarray)):
        items = [repr(v) if isinstance(v, str) else str(v.item() if hasattr(v, "item") else v) for v in value[:limit]]
        more = ", ..." if len(value) > limit else ""
        text = f"[{len(value)}] {', '.join(items)}{more}"
    elif isinstance(value, str):
        text = repr(value)
    else:
        text = str(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def _type_name(vtype: int, value: Any) -> str:
    if vtype == VT_ARRAY:
        if isinstance(value, np.ndarray):
            return f"arr[{value.dtype.name}]"
        return "arr[str]" if value and isinstance(value[0], str) else "arr"
    return _VT_NAMES.get(vtype, str(vtype))


def describe(path: str | Path) -> Description:
    """Metadata and tensor table of the GGUF file `path`; ValueError if its header is malformed."""
    with read_gguf(path) as f:
        meta = [(k, _type_name(f.value_types[k], v), format_value(v, f.value_types[k])) for k, v in f.metadata.items()]
        rows = [
            TensorRow(t.name, t.type_name, t.shape, t.nbytes, t.offset, f.data_problem(t.name))
            for t in f.tensors.values()
        ]
        return Description(f.path, f.version, f.file_size, f.data_offset, f.alignment, meta, rows)
