"""A GGUF reader that knows I2_S: header, metadata, tensor infos and memory-mapped tensor bytes.

gguf-py's GGUFReader raises on ggml type 36 (bitnet.cpp's I2_S), so bitk reads the container
itself. Layout (GGUF v2/v3, little endian): magic "GGUF", u32 version, u64 tensor count, u64 KV
count; the KVs (string key, u32 value type, value; arrays are u32 item type, u64 count, items);
the tensor infos (string name, u32 n_dims, u64 ne[n_dims] with ne0 fastest, u32 ggml type, u64
offset relative to the data section); then the data section at the next multiple of
`general.alignment` (default 32). Sizes of I2_S (n/4 codes and a 32-byte tail) come from
`bitk.formats.constants`, all others from gguf-py's GGML_QUANT_SIZES (`bitk.gguf.constants.QUANT_SIZES`).
"""

from __future__ import annotations

import contextlib
import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gguf.constants import GGMLQuantizationType

from bitk.formats.constants import GGML_TYPE_I2_S, I2S_TAIL_BYTES
from bitk.gguf.constants import (
    ALIGNMENT,
    GGUF_MAGIC,
    GGUF_VERSIONS,
    KEY_ALIGNMENT,
    QUANT_SIZES,
    TYPE_NAMES,
    VALUE_NUMPY,
    VALUE_STRUCT,
    VT_ARRAY,
    VT_BOOL,
    VT_STRING,
)

__all__ = ["GGUFFile", "TensorInfo", "read_gguf", "ggml_type_name", "tensor_nbytes", "MAX_ARRAY_DEPTH"]

# Arrays of arrays deeper than this are refused (gguf-py and llama.cpp write at most 2 levels);
# the parser recurses once per level, so an unbounded depth would be a RecursionError.
MAX_ARRAY_DEPTH = 16


def ggml_type_name(type_id: int) -> str:
    """ "I2_S", "TQ2_0", "F16", ... for a ggml type id; "type<N>" for ids no library here knows."""
    if type_id in TYPE_NAMES:
        return TYPE_NAMES[type_id]
    try:
        return GGMLQuantizationType(type_id).name
    except ValueError:
        return f"type{type_id}"


def tensor_nbytes(type_id: int, ne: tuple[int, ...]) -> int | None:
    """Bytes of a tensor of ggml type `type_id` and dims `ne` (ne0 first); None if not computable."""
    n = 1
    for d in ne:
        n *= int(d)
    if type_id == GGML_TYPE_I2_S:
        return n // 4 + I2S_TAIL_BYTES if n % 4 == 0 else None
    sizes = QUANT_SIZES.get(type_id)
    if sizes is None:
        return None
    block, type_size = sizes
    if not ne or ne[0] % block:
        return None
    return n // block * type_size


@dataclass(frozen=True)
class TensorInfo:
    """One tensor's entry in the GGUF header."""

    name: str
    type_id: int
    ne: tuple[int, ...]
    """ggml dims, ne0 (the row length, fastest) first: a weight [out, in] has ne (in, out)."""
    offset: int
    """Byte offset relative to the start of the data section."""
    nbytes: int | None
    """Size of the data; None for a type bitk cannot size."""

    @property
    def type_name(self) -> str:
        return ggml_type_name(self.type_id)

    @property
    def shape(self) -> tuple[int, ...]:
        """numpy (row-major) shape: the ggml dims reversed."""
        return tuple(reversed(self.ne))

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.ne:
            n *= d
        return n


class _Cursor:
    """Sequential little-endian parsing of the header, with messages that say where it broke."""

    def __init__(self, buf: memoryview, path: Path) -> None:
        self.buf = buf
        self.pos = 0
        self.path = path

    def take(self, n: int, what: str) -> memoryview:
        if n < 0 or self.pos + n > len(self.buf):
            raise ValueError(
                f"{self.path}: the file ends inside the GGUF header ({what} at byte {self.pos} needs {n} bytes, "
                f"the file has {len(self.buf)}): truncated or not a GGUF file"
            )
        out = self.buf[self.pos : self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str, what: str) -> Any:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt), what))[0]

    def string(self, what: str) -> str:
        n = self.unpack("<Q", what)
        return bytes(self.take(n, what)).decode("utf-8", errors="surrogateescape")

    def value(self, vtype: int, what: str, depth: int = 0) -> Any:
        if vtype == VT_STRING:
            return self.string(what)
        if vtype == VT_ARRAY:
            if depth >= MAX_ARRAY_DEPTH:
                raise ValueError(
                    f"{self.path}: {what} nests arrays more than {MAX_ARRAY_DEPTH} deep (at byte {self.pos}); "
                    "no GGUF writer does that: the header is corrupt or hostile"
                )
            item_type = self.unpack("<I", what)
            count = self.unpack("<Q", what)
            if item_type in VALUE_NUMPY:
                dtype = np.dtype(VALUE_NUMPY[item_type])
                raw = self.take(count * dtype.itemsize, what)
                arr = np.frombuffer(raw, dtype=dtype).copy()
                return arr.astype(bool) if item_type == VT_BOOL else arr
            if item_type in (VT_STRING, VT_ARRAY):
                return [self.value(item_type, what, depth + 1) for _ in range(count)]
            raise ValueError(f"{self.path}: {what} is an array of unknown GGUF value type {item_type}")
        if vtype in VALUE_STRUCT:
            return self.unpack(VALUE_STRUCT[vtype], what)
        raise ValueError(f"{self.path}: {what} has unknown GGUF value type {vtype}")


class GGUFFile:
    """A parsed GGUF file: `metadata`, `value_types`, `tensors` (name -> TensorInfo) and their bytes.

    The file is memory-mapped; `tensor_data(name)` returns a read-only uint8 view of one tensor's
    bytes (no copy). Use as a context manager, or call `close()`, to release the mapping.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise ValueError(f"{self.path}: no such GGUF file")
        self._file = open(self.path, "rb")  # noqa: SIM115 - kept open for the mapping, closed in close()
        self.file_size = self.path.stat().st_size
        try:
            if self.file_size:
                self._map: mmap.mmap | None = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
                buf = memoryview(self._map)
            else:
                self._map, buf = None, memoryview(b"")
            self._buf = buf
            self._parse(_Cursor(buf, self.path))
        except BaseException:
            self.close()
            raise

    def _parse(self, cur: _Cursor) -> None:
        magic = bytes(cur.take(4, "the magic"))
        if magic != GGUF_MAGIC:
            raise ValueError(f"{self.path}: not a GGUF file (magic {magic!r}, expected {GGUF_MAGIC!r})")
        self.version = cur.unpack("<I", "the version")
        if self.version not in GGUF_VERSIONS:
            raise ValueError(f"{self.path}: GGUF version {self.version} is not supported (only {GGUF_VERSIONS})")
        n_tensors = cur.unpack("<Q", "the tensor count")
        n_kv = cur.unpack("<Q", "the metadata count")
        self.metadata: dict[str, Any] = {}
        self.value_types: dict[str, int] = {}
        for i in range(n_kv):
            key = cur.string(f"metadata key {i}")
            vtype = cur.unpack("<I", f"the type of {key!r}")
            self.metadata[key] = cur.value(vtype, f"metadata {key!r}")
            self.value_types[key] = vtype
        self.tensors: dict[str, TensorInfo] = {}
        for i in range(n_tensors):
            name = cur.string(f"tensor name {i}")
            n_dims = cur.unpack("<I", f"the rank of {name!r}")
            if n_dims > 8:
                raise ValueError(f"{self.path}: tensor {name!r} claims {n_dims} dimensions; the header is corrupt")
            ne = tuple(cur.unpack("<Q", f"the shape of {name!r}") for _ in range(n_dims))
            type_id = cur.unpack("<I", f"the type of {name!r}")
            offset = cur.unpack("<Q", f"the offset of {name!r}")
            if name in self.tensors:
                raise ValueError(f"{self.path}: tensor {name!r} appears twice in the header")
            self.tensors[name] = TensorInfo(name, type_id, ne, offset, tensor_nbytes(type_id, ne))
        alignment = self.metadata.get(KEY_ALIGNMENT, ALIGNMENT)
        if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
            raise ValueError(f"{self.path}: {KEY_ALIGNMENT} = {alignment!r} is not a power of two")
        self.alignment = alignment
        self.data_offset = -(-cur.pos // alignment) * alignment

    # ------------------------------------------------------------------ data

    @property
    def architecture(self) -> str | None:
        return self.metadata.get("general.architecture")

    def data_problem(self, name: str) -> str | None:
        """Why tensor `name`'s bytes cannot be read (unknown size, misaligned, past the end), or None."""
        info = self.tensors[name]
        if info.nbytes is None:
            return f"cannot size a {info.type_name} tensor of dims {list(info.ne)}"
        if info.offset % self.alignment:
            return f"offset {info.offset} is not a multiple of the alignment {self.alignment}"
        end = self.data_offset + info.offset + info.nbytes
        if end > self.file_size:
            return (
                f"data ends at byte {end} but the file has {self.file_size} bytes "
                f"({end - self.file_size} missing: truncated file)"
            )
        return None

    def tensor_data(self, name: str) -> np.ndarray:
        """Read-only uint8 view of tensor `name`'s bytes; ValueError if they are not all in the file."""
        if name not in self.tensors:
            raise ValueError(f"{self.path}: no tensor named {name!r}")
        problem = self.data_problem(name)
        if problem is not None:
            raise ValueError(f"{self.path}: tensor {name!r}: {problem}")
        info = self.tensors[name]
        start = self.data_offset + info.offset
        assert info.nbytes is not None  # data_problem() returned None
        return np.frombuffer(self._buf, dtype=np.uint8, count=info.nbytes, offset=start)

    def close(self) -> None:
        """Release the mapping. Arrays from tensor_data() must not be used afterwards."""
        buf = getattr(self, "_buf", None)
        if buf is not None:
            with contextlib.suppress(BufferError):  # numpy views still alive: the mapping closes when they go
                buf.release()
        if getattr(self, "_map", None) is not None:
            with contextlib.suppress(BufferError):
                self._map.close()
            self._map = None
        self._file.close()

    def __enter__(self) -> GGUFFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_gguf(path: str | Path) -> GGUFFile:
    """Open and parse a GGUF file (any ggml types, I2_S included); ValueError on a malformed header."""
    return GGUFFile(path)
