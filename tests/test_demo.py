"""`python -m bitk.demo`, the README's main job until the trainer lands."""

from __future__ import annotations

import subprocess
import sys

import pytest

from bitk import demo, formats


def test_demo_packs_every_projection_and_prints_sizes(capsys):
    assert demo.main(["--layers", "1", "--hidden", "256", "--ffn", "512", "--heads", "4", "--kv-heads", "2"]) == 0
    out = capsys.readouterr().out
    for name in demo.projection_shapes(256, 512, 4, 2):
        assert f"blk.0.{name}.weight" in out
    # 256x256 I2_S: 65536 / 4 + 32 bytes; TQ2_0: 256 blocks of 66 bytes; TQ1_0: 256 blocks of 54.
    assert "[256, 256]" in out and "16416" in out and "16896" in out and "13824" in out
    assert "every round trip exact" in out


def test_demo_marks_types_a_row_cannot_use(capsys):
    # hidden 384 is a multiple of 128 (I2_S) but not of 256 (TQ types).
    demo.main(["--layers", "1", "--hidden", "384", "--ffn", "512", "--heads", "3", "--kv-heads", "1"])
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("blk.0.attn_q.weight"))
    assert line.split()[-2:] == ["n/a", "n/a"]


def test_demo_backend_numpy_gives_the_same_table(capsys):
    args = ["--layers", "1", "--hidden", "256", "--ffn", "256", "--heads", "4", "--kv-heads", "4"]
    previous = formats.backend()
    try:
        demo.main([*args, "--backend", "numpy"])
        numpy_out = capsys.readouterr().out
        demo.main([*args, "--backend", previous])
        cpp_out = capsys.readouterr().out
    finally:
        formats.set_backend(previous)
    strip = lambda text: [line for line in text.splitlines() if "backend" not in line and " s;" not in line]  # noqa: E731
    assert strip(numpy_out) == strip(cpp_out)


@pytest.mark.parametrize("bad", [["--hidden", "0"], ["--hidden", "100", "--heads", "3"]])
def test_demo_rejects_bad_arguments(bad):
    proc = subprocess.run([sys.executable, "-m", "bitk.demo", *bad], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "error:" in proc.stderr
