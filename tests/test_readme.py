"""The README's two fresh-machine commands are exactly what CI runs."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    return [line.strip() for block in blocks for line in block.splitlines() if "pip install" in line]


def test_readme_has_setup_and_test_commands():
    commands = readme_commands()
    assert len(commands) == 2, commands
    setup, tests = commands
    assert setup.endswith("python -m bitk.train")
    assert tests.endswith("python -m pytest")
    for command in commands:
        assert command.startswith("python3 -m venv .venv && . .venv/bin/activate && ")
        assert "-c constraints/cpu.txt" in command  # a fresh machine must get the CPU torch


def test_ci_runs_the_readme_commands_verbatim():
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    for command in readme_commands():
        assert command in ci_lines, f"README command not run by .ci/run: {command}"


def test_constraints_pin_a_cpu_installable_torch():
    pins = [line for line in (ROOT / "constraints" / "cpu.txt").read_text().splitlines() if line.startswith("torch")]
    assert pins == ["torch==2.13.0"]


def test_ci_runs_the_lint_contributing_documents():
    ci = (ROOT / ".ci" / "run").read_text()
    contributing = (ROOT / "CONTRIBUTING.md").read_text()
    for command in ("ruff check .", "ruff format --check ."):
        assert command in ci and command in contributing, command
    assert ci.index("ruff check .") > ci.index("python -m pytest")


def test_ci_runs_the_benchmark_gate_the_readme_documents():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "python bench/gate.py" in readme
    gate_lines = [line for line in ci.splitlines() if "python bench/gate.py" in line]
    assert gate_lines, ".ci/run does not run the benchmark gate"
    # The gate runs after the README's test command, as its own step.
    assert ci.index(gate_lines[0]) > ci.index("python -m pytest")


# --------------------------------------------------------------------------- starting from a pretrained model


def test_the_readme_download_command_fetches_the_presets_repo():
    from bitk.models import PRESET_REPOS

    readme = (ROOT / "README.md").read_text()
    downloads = re.findall(r"^hf download (\S+)$", readme, flags=re.M)
    assert downloads == ["HuggingFaceTB/SmolLM2-135M"] and downloads[0] == PRESET_REPOS["smollm2_135m"]
    assert "python -m bitk.train model=smollm2_135m training=unified" in readme
