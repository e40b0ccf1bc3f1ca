"""Every code block of the README and every command in docs/ runs, as written, so the docs cannot drift.

The README's blocks (Python and bash) run in order in one folder, the way a reader goes down the
page; each docs/*.md page's bash commands run in order in a folder of their own. Training runs
are made short: a few steps on small blocks (`SMALL_RUN`, `training.max_steps` at most 3), on the
test session's offline Hugging Face cache (the presets' repos hold small random models). The
folder holds the files the commands name (`my.jsonl`, `data/...`, `models/SmolLM2-135M`, ...).
What cannot run here is listed in `NOT_RUN` with the reason, and the test checks that exactly
those commands were left out.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC_PAGES = sorted((ROOT / "docs").glob("*.md"))

# Appended to every training command: the same run, a few steps long, on small blocks.
SMALL_RUN = [
    "data.block_size=32",
    "data.max_eval_tokens=128",
    "training.eval_every=0",
    "training.warmup_steps=1",  # a recipe's own warm-up (20 steps) is refused for a 3-step run
    "logging.progress=false",
    "device=cpu",
]
MAX_STEPS = 3

# command prefix -> why it does not run in the tests (each must match at least one command)
NOT_RUN = {
    "python3 -m venv": "the README's set-up and test commands: .ci/run runs them verbatim (tests/test_readme.py)",
    "hf download": "downloads from the Hugging Face hub; the tests have no network (the repo is checked in "
    "tests/test_readme.py)",
    ". .venv/bin/activate && python -m pytest bench": "the benchmark suites take minutes; CI runs the gate",
    ". .venv/bin/activate && python bench/gate.py": "the benchmark gate: .ci/run runs it after the tests",
    "torchrun --standalone --nproc_per_node 8": "needs 8 GPUs",
    "torchrun --nnodes": "needs several machines",
    "sky ": "launches cloud machines (SkyPilot)",
    "cmake ": "builds a runtime (bitnet.cpp, llama.cpp) from its own sources (docs/serving.md)",
    "llama-server ": "a runtime's server, built from the runtime's sources (docs/serving.md)",
    "curl -s http://127.0.0.1:8081": "asks the runtime's server started above",
    "llama-cli ": "bitnet.cpp's command line, built from its sources",
    "llama-completion ": "upstream llama.cpp's command line, built from its sources",
    "python -m bitk.eval ckpt/ --tasks sst2": "the harness downloads hub tasks' data sets; the tests have no network "
    "(tests/eval runs local task files)",
}


def code_blocks(path: Path) -> list[tuple[str, str]]:
    """(language, text) of every fenced block of a Markdown file, in order."""
    return re.findall(r"```(\w*)\n(.*?)```", path.read_text(), flags=re.S)


def commands(block: str) -> list[str]:
    """The command lines of a bash block: continuations joined, comments and blank lines dropped."""
    lines = []
    for line in block.replace("\\\n", " ").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            lines.append(line)
    return lines


def workspace(folder: Path, hub_cache: dict[str, Path]) -> Path:
    """The files the documented commands name, in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    text = " ".join(f"word{i % 37}" for i in range(200))
    rows = "".join(json.dumps({"text": f"Document {i}: {text}"}) + "\n" for i in range(24))
    for name in ("my.jsonl", "task.jsonl", "data/a.jsonl", "data/b.jsonl", "data/train/part-0.jsonl"):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(rows)
    shutil.copytree(hub_cache["HuggingFaceTB/SmolLM2-135M"], folder / "models" / "SmolLM2-135M")
    return folder


def not_run(line: str) -> str | None:
    return next((prefix for prefix in NOT_RUN if line.startswith(prefix)), None)


def run_command(line: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """Run one documented command line (made short when it trains)."""
    argv = shlex.split(line, comments=True)
    trains = argv[:3] == ["python", "-m", "bitk.train"] or argv[0] == "torchrun"
    if trains and "--help" not in argv:
        steps = [a for a in argv if a.startswith("training.max_steps=")]
        argv = [a for a in argv if a not in steps]
        n = min(int(steps[-1].split("=")[1]), MAX_STEPS) if steps else 2
        argv += [*SMALL_RUN, f"training.max_steps={n}"]
    if argv[0] == "python":
        argv[0] = sys.executable
    elif argv[0] == "torchrun":
        argv[:1] = [sys.executable, "-m", "torch.distributed.run"]
    elif argv[0] == "bitk-pack":
        argv[:1] = [sys.executable, "-m", "bitk.gguf"]
    else:
        raise AssertionError(f"a documented command bitk's tests do not know how to run: {line}")
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


@pytest.fixture
def env():
    return {**os.environ, "PYTHONUNBUFFERED": "1", "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "COLUMNS": "100"}


def check(proc: subprocess.CompletedProcess, what: str) -> None:
    assert proc.returncode == 0, f"{what}\n--- stdout\n{proc.stdout[-2000:]}\n--- stderr\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr, f"{what}: {proc.stderr[-3000:]}"


@pytest.mark.slow
def test_the_readme_runs_top_to_bottom(hub_cache, tmp_path, env):
    folder = workspace(tmp_path / "readme", hub_cache)
    skipped, ran = set(), 0
    for i, (lang, block) in enumerate(code_blocks(ROOT / "README.md")):
        if lang == "python":
            script = folder / f"block_{i}.py"
            script.write_text(block)
            check(
                subprocess.run(
                    [sys.executable, str(script)], cwd=folder, env=env, capture_output=True, text=True, timeout=900
                ),
                f"README block {i}:\n{block}",
            )
            ran += 1
        elif lang == "bash":
            for line in commands(block):
                if not_run(line):
                    skipped.add(not_run(line))
                    continue
                check(run_command(line, folder, env), line)
                ran += 1
    assert ran >= 12
    assert skipped == {
        "python3 -m venv",
        "hf download",
        ". .venv/bin/activate && python -m pytest bench",
        ". .venv/bin/activate && python bench/gate.py",
        "python -m bitk.eval ckpt/ --tasks sst2",
    }
    # what the README promises its commands leave behind
    for made in (
        "ckpt/bitk.json",
        "hf-out/config.json",
        "model.gguf",
        "result.json",
        "runs/tiny/model-i2_s.gguf",
        "runs/smollm2/checkpoints/latest",
        "runs/mine/metrics.jsonl",
    ):
        assert (folder / made).exists(), made


@pytest.mark.slow
@pytest.mark.parametrize(
    "page", [p for p in DOC_PAGES if any(lang == "bash" for lang, _ in code_blocks(p))], ids=lambda p: p.name
)
def test_every_command_of_a_docs_page_runs(hub_cache, tmp_path, env, page):
    folder = workspace(tmp_path / page.stem, hub_cache)
    for lang, block in code_blocks(page):
        if lang != "bash":
            continue
        for line in commands(block):
            if not_run(line):
                continue
            check(run_command(line, folder, env), f"{page.name}: {line}")


def test_every_reason_not_to_run_a_command_is_used():
    """A command left out must still be in the docs (else its entry goes): the list cannot hide drift."""
    lines = [
        line
        for path in [ROOT / "README.md", *DOC_PAGES]
        for lang, block in code_blocks(path)
        if lang == "bash"
        for line in commands(block)
    ]
    used = {not_run(line) for line in lines} - {None}
    assert used == set(NOT_RUN)
    assert sum(not_run(line) is None for line in lines) >= 25  # the rest runs
