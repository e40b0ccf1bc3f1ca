"""docs/examples/runtime_check.py runs where the runtimes are not built: it packs and predicts every cell."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_runtime_check_without_runtimes(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "docs/examples/runtime_check.py"), "--runtimes", str(tmp_path / "none")]
        + ["--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr
    rows = json.loads((tmp_path / "out" / "results.json").read_text())["agreement"]
    cells = {(r["family"], r["type"], r["pad"]): r for r in rows}
    assert len(cells) == len(rows) == 4 * 4 + 3  # every family x type, and SmolLM2's ternary types unpadded
    smol = cells[("SmolLM2 (576 wide)", "i2_s", "auto")]
    assert smol["padded"] and smol["types"] == ["I2_S"] and smol["bitnet.cpp"] == "not built"
    assert cells[("SmolLM2 (576 wide)", "tq2_0", "none")]["types"] == ["F16"]
    assert cells[("Qwen3 (subln=false)", "tq2_0", "auto")]["arch"] == "qwen3"
    assert "no qwen3 architecture" in cells[("Qwen3 (subln=false)", "i2_s", "auto")]["refused"]
    assert all("sub-norms" in cells[("Qwen3 (SubLN)", t, "auto")]["refused"] for t in ("i2_s", "tq1_0", "tq2_0", "f16"))
