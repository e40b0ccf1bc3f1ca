"""Interrupting bitk-pack: SIGTERM and SIGINT mid-write leave no temporary file and no output; a
temporary file a killed writer left behind is removed by the next pack to the same name."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bitk.gguf import pack

# The packer, slowed in the test only: each tensor waits, after touching MARK, so the signal
# lands while the temporary file is half written.
SLOW_PACK = """
import pathlib, signal, sys, time
signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a shell, whatever the test runner set
import bitk.gguf.writer as writer
encode = writer.encode_tensor
def slow(*args, **kwargs):
    pathlib.Path(sys.argv[1]).touch()
    time.sleep(0.5)
    return encode(*args, **kwargs)
writer.encode_tensor = slow
from bitk.gguf.cli import main
sys.exit(main(sys.argv[2:]))
"""


def partials(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".partial"))


@pytest.mark.parametrize(
    ("signum", "status", "word"), [(signal.SIGTERM, 143, "terminated"), (signal.SIGINT, 130, "interrupted")]
)
def test_a_signal_mid_write_leaves_no_partial_file(relu2_ckpt, tmp_path, signum, status, word):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    mark = tmp_path / "writing"
    proc = subprocess.Popen(
        [sys.executable, "-c", SLOW_PACK, str(mark), "pack", str(relu2_ckpt), "-o", str(out_dir / "m.gguf"), "-q"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not mark.exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the packer never started writing tensors"
            time.sleep(0.02)
        assert partials(out_dir), "the temporary file exists while tensors are written"
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == status, err
    assert err.strip() == f"bitk-pack: {word}; no output was written", err
    assert partials(out_dir) == [] and not (out_dir / "m.gguf").exists()


def test_a_killed_writers_partial_file_is_removed_by_the_next_pack(relu2_ckpt, tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        stale = tmp_path / f".m.gguf.{dead.pid}.k3j2h1g0.partial"
        live = tmp_path / f".m.gguf.{alive.pid}.a1b2c3d4.partial"
        other = tmp_path / f".n.gguf.{dead.pid}.k3j2h1g0.partial"  # another output's: not touched
        for path in (stale, live, other):
            path.write_bytes(b"GGUF")
        pack(relu2_ckpt, tmp_path / "m.gguf", "i2_s")
        assert (tmp_path / "m.gguf").is_file()
        assert partials(tmp_path) == sorted([live.name, other.name])
    finally:
        alive.kill()
        alive.wait()
