"""Hostile GGUF files: counts the tensors do not hold, arrays nested without end, markup in names.

Each file here hung, crashed or exhausted memory before the fix; the calls run in subprocesses
with a timeout, so a regression fails the test instead of hanging the suite.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from bitk.gguf import pack, read_gguf
from bitk.gguf.constants import arch_key
from bitk.gguf.reader import MAX_ARRAY_DEPTH

TIMEOUT = 120  # seconds; each call takes one or two when it refuses as it should


def run(*args: str) -> subprocess.CompletedProcess:
    """`python ARGS` with a timeout (a hang fails the test) and 8 GB of address space at most."""
    limit = "import resource; resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30)); "
    if args[0] == "-m":
        code = limit + f"import runpy, sys; sys.argv = ['bitk-pack', *{list(args[2:])!r}]; "
        code += f"runpy.run_module({args[1]!r}, run_name='__main__')"
    else:
        code = limit + args[1]
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=TIMEOUT)


def patch_u32(path: Path, key: str, value: int) -> None:
    """Overwrite the uint32 metadata value `key` in place (the file keeps its size and offsets)."""
    data = bytearray(path.read_bytes())
    raw = key.encode()
    at = data.index(struct.pack("<Q", len(raw)) + raw) + 8 + len(raw)
    assert struct.unpack_from("<I", data, at)[0] == 4, "expected a uint32 value"
    struct.pack_into("<I", data, at + 4, value)
    path.write_bytes(bytes(data))


def patch_bytes(path: Path, old: bytes, new: bytes) -> None:
    assert len(old) == len(new)
    data = path.read_bytes()
    assert data.count(old) == 1
    path.write_bytes(data.replace(old, new))


@pytest.fixture(scope="module")
def packed(relu2_ckpt, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("hostile") / "m.gguf"
    pack(relu2_ckpt, path, "i2_s", name="[/][bold]name")
    return path


def copy(packed: Path, tmp_path: Path) -> Path:
    out = tmp_path / "m.gguf"
    out.write_bytes(packed.read_bytes())
    return out


@pytest.mark.parametrize(
    ("what", "value"),
    [("block_count", 2**31), ("block_count", 2**32 - 1), ("head_count", 2**31), ("embedding_length", 2**31)],
)
def test_counts_the_tensors_do_not_hold_are_refused_quickly(packed, tmp_path, what, value):
    path = copy(packed, tmp_path)
    with read_gguf(path) as f:
        key = arch_key(f.architecture, what)
    patch_u32(path, key, value)
    verify = run("-m", "bitk.gguf", "verify", str(path))
    assert verify.returncode == 1, verify.stderr
    assert "Traceback" not in verify.stderr
    assert "FAIL" in verify.stdout
    if what == "block_count":
        assert f"block_count is {value}" in verify.stdout
    load = run("-c", f"import bitk.gguf; bitk.gguf.load({str(path)!r})")
    assert load.returncode != 0
    assert "ValueError" in load.stderr and "the tensors do not match the metadata" in load.stderr, load.stderr
    assert "MemoryError" not in load.stderr


def test_non_integer_counts_are_refused(packed, tmp_path):
    path = copy(packed, tmp_path)
    with read_gguf(path) as f:
        key = arch_key(f.architecture, "block_count")
    data = bytearray(path.read_bytes())
    raw = key.encode()
    at = data.index(struct.pack("<Q", len(raw)) + raw) + 8 + len(raw)
    struct.pack_into("<I", data, at, 6)  # uint32 -> float32: the same 4 bytes read as a float
    path.write_bytes(bytes(data))
    load = run("-c", f"import bitk.gguf; bitk.gguf.load({str(path)!r})")
    assert "ValueError" in load.stderr and f"{key} must be a non-negative integer" in load.stderr, load.stderr


def nested_array_gguf(path: Path, depth: int) -> None:
    """A header-only GGUF whose one KV is an array of arrays `depth` deep."""
    key = b"evil"
    body = struct.pack("<4sIQQ", b"GGUF", 3, 0, 1) + struct.pack("<Q", len(key)) + key + struct.pack("<I", 9)
    body += struct.pack("<IQ", 9, 1) * (depth - 1) + struct.pack("<IQ", 4, 0)
    path.write_bytes(body)


def test_deeply_nested_arrays_are_a_value_error(tmp_path):
    path = tmp_path / "nested.gguf"
    nested_array_gguf(path, 20_000)
    with pytest.raises(ValueError, match=f"more than {MAX_ARRAY_DEPTH} deep"):
        read_gguf(path)
    proc = run("-m", "bitk.gguf", "inspect", str(path))
    assert proc.returncode != 0 and "RecursionError" not in proc.stderr
    assert proc.stderr.startswith("bitk-pack: error: ") and "deep" in proc.stderr, proc.stderr


def test_nested_arrays_within_the_bound_still_read(tmp_path):
    path = tmp_path / "nested.gguf"
    nested_array_gguf(path, MAX_ARRAY_DEPTH)
    with read_gguf(path) as f:
        value = f.metadata["evil"]
    for _ in range(MAX_ARRAY_DEPTH - 1):
        (value,) = value
    assert value.size == 0


def test_markup_in_names_and_metadata_prints_literally(packed, tmp_path):
    path = copy(packed, tmp_path)
    patch_bytes(path, b"output_norm.weight", b"[/]put_norm.weight")
    inspect = run("-m", "bitk.gguf", "inspect", str(path))
    assert inspect.returncode == 0, inspect.stderr
    assert "[/][bold]name" in inspect.stdout and "[/]put_norm.weight" in inspect.stdout
    verify = run("-m", "bitk.gguf", "verify", str(path))
    assert verify.returncode == 1 and "MarkupError" not in verify.stderr, verify.stderr
    assert "[/]put_norm.weight" in verify.stdout
