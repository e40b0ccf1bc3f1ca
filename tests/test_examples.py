"""docs/examples: runtime_check.py runs where the runtimes are not built (it packs and predicts every
cell); mixture_evidence.py runs a few steps."""

from __future__ import annotations

import json
import os
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


def test_mixture_evidence_runs(tmp_path):
    """docs/examples/mixture_evidence.py, a few steps of a small model: both runs, results.json, the figure."""
    small = ["model.num_hidden_layers=1", "model.hidden_size=64", "model.intermediate_size=128"]
    small += ["model.num_attention_heads=2", "model.num_key_value_heads=1"]
    proc = subprocess.run(
        [sys.executable, str(ROOT / "docs/examples/mixture_evidence.py"), "--out", str(tmp_path), "--steps", "4"]
        + ["--every", "2", "--model", *small],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr
    results = json.loads((tmp_path / "results.json").read_text())
    assert [w["step"] for w in results["influence"]["weights"]] == [0, 2]
    assert results["fixed"]["mixture"] == {n: pytest.approx(1 / 3) for n in ("a", "b", "noise")}
    assert [s for s, _ in results["influence"]["probe_losses"]] == [1, 2, 3, 4]
    assert (tmp_path / "mixture-evidence.png").read_bytes()[:4] == b"\x89PNG"
