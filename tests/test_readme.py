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


def test_ci_runs_the_benchmark_gate_the_readme_documents():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "python bench/gate.py" in readme
    gate_lines = [line for line in ci.splitlines() if "python bench/gate.py" in line]
    assert gate_lines, ".ci/run does not run the benchmark gate"
    # The gate runs after the README's test command, as its own step.
    assert ci.index(gate_lines[0]) > ci.index("python -m pytest")


# --------------------------------------------------------------------------- the README's training commands

# Appended to every README training command: the same run, a few steps long, on small blocks.
SMALL_RUN = ["data.block_size=32", "data.max_eval_tokens=128", "training.eval_every=0", "logging.progress=false",
             "device=cpu"]


def readme_train_commands() -> list[list[str]]:
    """Every `python -m bitk.train ...` line of the README's bash blocks (continuations joined), as argv."""
    import shlex

    commands = []
    for block in re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            argv = shlex.split(line, comments=True)
            if argv[:3] == ["python", "-m", "bitk.train"]:
                commands.append(argv[3:])
    return commands


def test_the_readme_download_command_fetches_the_presets_repo():
    from bitk.models import PRESET_REPOS

    readme = (ROOT / "README.md").read_text()
    downloads = re.findall(r"^hf download (\S+)$", readme, flags=re.M)
    assert downloads == ["HuggingFaceTB/SmolLM2-135M"] and downloads[0] == PRESET_REPOS["smollm2_135m"]
    assert "python -m bitk.train model=smollm2_135m training=unified" in readme


def test_every_training_command_in_the_readme_runs(hub_cache, tmp_path):
    """Each README training command, as written, in order, in one folder, with a few steps (the hub
    models are the test cache's small ones); `training.max_steps=N` becomes at most 3."""
    import json
    import os
    import subprocess
    import sys

    (tmp_path / "my.jsonl").write_text("".join(json.dumps({"text": f"Document {i}: " + "words " * 60}) + "\n"
                                               for i in range(20)))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    commands = readme_train_commands()
    assert len(commands) >= 5 and [] in commands
    for argv in commands:
        steps = [a for a in argv if a.startswith("training.max_steps=")]
        argv = [a for a in argv if a not in steps]
        steps = min(int(steps[-1].split("=")[1]), 3) if steps else 2
        proc = subprocess.run([sys.executable, "-m", "bitk.train", *argv, *SMALL_RUN, f"training.max_steps={steps}"],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"{argv}: {proc.stderr[-3000:]}"
        assert "bitk.train: done after" in proc.stdout, argv
