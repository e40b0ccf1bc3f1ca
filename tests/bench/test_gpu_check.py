"""bench/gpu_check.py without a GPU: the CPU dry run reports every section with sane figures, a
machine without CUDA gets one line and exit status 2, and the budget and pytest-output logic hold.

Nothing CUDA-specific runs here: the figures the script exists for need a GPU.
"""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "gpu_check.py"


def _load():
    spec = importlib.util.spec_from_file_location("bench_gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


gpu_check = _load()


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], cwd=ROOT, capture_output=True, text=True, timeout=600, check=False
    )


@pytest.mark.slow
def test_cpu_dry_run_reports_every_section(tmp_path):
    out = tmp_path / "gpu_check.json"
    proc = _run("--device", "cpu", "--quick", "--json", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(out.read_text())
    env = report["environment"]
    assert env["device"] == "cpu" and env["gpu"] is None and env["torch"] == torch.__version__
    assert env["date"].endswith("UTC") and "--quick" in env["command"]
    assert report["quick"] and report["exit_code"] == 0
    assert 0 < report["total_seconds"] < report["total_budget_s"]
    sections = report["sections"]
    assert list(sections) == ["kernel_tests", "bitlinear", "subln_quant", "train"]

    tests = sections["kernel_tests"]
    assert tests["status"] == "passed" and tests["from_summary"] and tests["paths"] == ["tests/nn/test_dispatch.py"]
    assert tests["passed"] > 0 and tests["failed"] == tests["errors"] == 0

    bitlinear = sections["bitlinear"]
    assert bitlinear["status"] == "ok" and bitlinear["backend"] == "cpu"
    assert len(bitlinear["rows"]) == sum(len(shapes) for shapes in gpu_check.QUICK_SHAPES.values())
    for row in bitlinear["rows"]:
        assert row["tokens"] == gpu_check.QUICK.tokens
        for key in ("forward", "forward_backward"):
            bitk_ms, linear_ms = row[f"{key}_bitk_ms"], row[f"{key}_linear_ms"]
            assert bitk_ms > 0 and linear_ms > 0 and row[f"{key}_bitk_tflops"] > 0
            assert math.isclose(row[f"{key}_speedup"], linear_ms / bitk_ms)

    subln = sections["subln_quant"]
    assert subln["status"] == "skipped" and subln["rows"] == [] and "CUDA" in subln["note"]

    train = sections["train"]
    assert train["status"] == "ok" and train["setup"]["preset"] == "smollm2_135m"
    assert [r["ternary"] for r in train["rows"]] == [True, False]
    for r in train["rows"]:
        assert r["steps"] == gpu_check.QUICK.train_steps and r["tokens_per_s"] > 0 and r["step_ms_median"] > 0
        assert r["tokens_per_step"] == 2 * 64 and math.isfinite(r["last_loss"]) and r["peak_memory_gib"] is None
    assert math.isclose(train["speed_ratio"], train["rows"][0]["tokens_per_s"] / train["rows"][1]["tokens_per_s"])

    # One table with every section, the versions and the date.
    for text in ("bitk GPU check on cpu", "kernel tests", "BitLinear forward+backward", "SubLN+quant", "training"):
        assert text in proc.stdout
    assert f"torch {torch.__version__}" in proc.stdout and env["date"] in proc.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal of a machine without CUDA")
def test_without_cuda_it_exits_2_with_one_line(tmp_path):
    out = tmp_path / "gpu_check.json"
    proc = _run("--json", str(out))
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stdout + proc.stderr
    assert "CUDA" in lines[0] and "--device cpu" in lines[0]
    assert not out.exists()


def test_pytest_counts_from_the_summary_or_the_progress():
    parse = gpu_check.parse_pytest_counts
    counts, summarized = parse("....F\n___ test_x ___\nE assert 0\n1 failed, 4 passed, 2 skipped in 3.21s\n")
    assert summarized and (counts["passed"], counts["failed"], counts["skipped"]) == (4, 1, 2)
    counts, summarized = parse("8 workers [531 items]\n" + "." * 72 + " [ 13%]\n531 passed in 72.22s (0:01:12)\n")
    assert summarized and counts["passed"] == 531 and counts["failed"] == 0
    counts, summarized = parse("1 error in 0.50s\n")
    assert counts["errors"] == 1
    # killed before the summary: one progress character per test
    counts, summarized = parse("." * 72 + " [ 13%]\n..s.F\n")
    assert not summarized and (counts["passed"], counts["skipped"], counts["failed"]) == (75, 1, 1)


def test_the_test_run_stops_at_its_cap():
    result = gpu_check.kernel_tests("cpu", quick=True, allowance=0.5)
    assert result["status"] == "timed out" and result["failed"] == 0 and "cap" in result["note"]


def test_sections_skip_when_the_budget_is_spent_and_errors_do_not_stop_the_run():
    sizes = gpu_check.QUICK
    spent = gpu_check.Clock(total_s=1.0)
    skipped = gpu_check.run_section("train", spent, sizes, lambda start, end: pytest.fail("must not run"))
    assert skipped["status"] == "skipped" and "left of the 1 s total" in skipped["note"]

    def boom(start, end):
        raise RuntimeError("boom")

    failed = gpu_check.run_section("train", gpu_check.Clock(total_s=600.0), sizes, boom)
    assert failed["status"] == "error" and failed["note"] == "RuntimeError: boom"
    ran = gpu_check.run_section("train", gpu_check.Clock(total_s=600.0), sizes, lambda start, end: {"status": "ok"})
    assert ran["status"] == "ok" and ran["seconds"] >= 0
