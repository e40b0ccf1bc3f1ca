"""The benchmark gate (bench/gate.py): thresholds cover every case; a regression fails the gate.

These tests feed the gate measurements instead of timing anything: a ratio below its threshold
must make the gate exit non-zero and mark the metric FAIL.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _load(name: str):
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCH))


gate = _load("gate")
cases = _load("cases")


def fake_report(ratio_for: dict[str, float] | None = None) -> dict:
    thresholds = gate.load_thresholds()
    results = []
    for case in cases.GATE_CASES:
        ratio = (ratio_for or {}).get(case.metric, thresholds[case.metric]["min_ratio"] * 1.5)
        results.append(
            {
                "metric": case.metric,
                "group": case.group,
                "bitk": case.bitk,
                "peer": case.peer,
                "params": 1 << 24,
                "ratio": ratio,
                "bitk_median_s": 0.01,
                "peer_median_s": 0.01 * ratio,
                "rounds": 7,
                "tries": 1,
            }
        )
    return {
        "date": "2026-11-24 00:00 UTC",
        "command": "python bench/gate.py",
        "results": results,
        "machine": {"cpu": "test cpu", "cores": 2, "system": "Linux", "python": "3.11"},
    }


def run_gate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BENCH / "gate.py"), *args], capture_output=True, text=True)


def test_every_gate_case_has_a_threshold_with_a_reason():
    thresholds = gate.load_thresholds()
    gate.check_coverage(thresholds, [c.metric for c in cases.GATE_CASES])  # raises on a gap either way
    for case in cases.GATE_CASES:
        assert case.group in cases.GROUPS
        assert thresholds[case.metric]["min_ratio"] > 0


def test_coverage_check_names_missing_and_stale_metrics():
    with pytest.raises(gate.GateError, match="no threshold .* for: new_metric"):
        gate.check_coverage({}, ["new_metric"])
    with pytest.raises(gate.GateError, match="unknown metrics: old_metric"):
        gate.check_coverage({"old_metric": {"min_ratio": 1, "reason": "x"}}, [])


def test_gate_fails_on_a_ratio_below_its_threshold(tmp_path):
    metric = cases.GATE_CASES[0].metric
    threshold = gate.load_thresholds()[metric]["min_ratio"]
    path = tmp_path / "slow.json"
    path.write_text(json.dumps(fake_report({metric: threshold * 0.9})))
    proc = run_gate("--evaluate", str(path))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    row = next(line for line in proc.stdout.splitlines() if line.startswith(metric))
    assert "FAIL" in row and f"{threshold * 0.9:.2f}x" in row
    assert f"REGRESSION in {metric}" in proc.stderr
    others = [line for line in proc.stdout.splitlines()[2:] if line.strip() and not line.startswith(metric)]
    assert others and all(" pass " in line for line in others if not line.startswith("gate"))


def test_gate_passes_when_every_ratio_holds(tmp_path):
    path = tmp_path / "ok.json"
    path.write_text(json.dumps(fake_report()))
    proc = run_gate("--evaluate", str(path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "FAIL" not in proc.stdout
    assert f"{len(cases.GATE_CASES)} ratios at or above" in proc.stdout


def test_exactly_at_threshold_passes():
    thresholds = gate.load_thresholds()
    metric = cases.GATE_CASES[0].metric
    judged = gate.judge(fake_report({metric: thresholds[metric]["min_ratio"]})["results"], thresholds)
    assert all(r["passed"] for r in judged)


def test_perf_markdown_records_machine_date_command_and_figures(tmp_path):
    path = tmp_path / "ok.json"
    path.write_text(json.dumps(fake_report()))
    md = tmp_path / "perf.md"
    assert run_gate("--evaluate", str(path), "--perf-md", str(md)).returncode == 0
    text = md.read_text()
    assert "2026-11-24 00:00 UTC" in text and "test cpu, 2 cores" in text and "`python bench/gate.py`" in text
    assert text.count("| pass |") == len(cases.GATE_CASES)
    assert "1.68 G params/s" in text  # 2^24 params in 10 ms
    assert gate.PERF_NOTES.read_text().splitlines()[0] in text  # the hand-measured runs follow the tables


def test_bad_measurements_or_thresholds_exit_2(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    proc = run_gate("--evaluate", str(bad))
    assert proc.returncode == 2 and "cannot read measurements" in proc.stderr
    toml = tmp_path / "thresholds.toml"
    toml.write_text("[m]\nmin_ratio = 2.0\n")
    with pytest.raises(gate.GateError, match="one-line reason"):
        gate.load_thresholds(toml)
    toml.write_text('[m]\nreason = "x"\n')
    with pytest.raises(gate.GateError, match="numeric min_ratio"):
        gate.load_thresholds(toml)
