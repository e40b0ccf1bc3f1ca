"""Shared fixtures of the bitk.eval tests: a small saved checkpoint and the local harness tasks
(fresh caches come from tests/conftest.py)."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest

from bitk.models import ModelConfig

# A narrow model on bitk's 4096-token vocabulary: saves, loads and evaluates in well under a second.
SMALL = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "max_position_embeddings": 128,
}


@pytest.fixture(scope="session")
def small_model(bitk_cache_dir):
    import torch

    from bitk.models import CausalLM

    torch.manual_seed(0)
    return CausalLM(ModelConfig(**SMALL))


@pytest.fixture(scope="session")
def checkpoint(small_model, tmp_path_factory):
    """The small model saved with bitk's tokenizer: what `python -m bitk.eval` reads."""
    from bitk.data import default_tokenizer

    return small_model.save(tmp_path_factory.mktemp("ckpt") / "small", tokenizer=default_tokenizer())


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """`bitk.eval.cli.main(["--threads", ...])` sets torch's global thread count: undo it after each test."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


TASKS = Path(__file__).parent / "tasks"
"""Local lm-evaluation-harness tasks: YAML files whose data_files name files under tasks/data."""


def write_local_tasks(dest: Path) -> Path:
    """Copy tests/eval/tasks' YAML files into ``dest`` with absolute data_files paths; returns ``dest``.

    lm-eval passes data_files to `datasets.load_dataset`, which reads a relative path from the
    working directory, not from the YAML's folder.
    """
    import yaml

    dest.mkdir(parents=True, exist_ok=True)
    for path in TASKS.glob("*.yaml"):
        config = yaml.safe_load(path.read_text())
        files = config["dataset_kwargs"]["data_files"]
        config["dataset_kwargs"]["data_files"] = {split: str(TASKS / name) for split, name in files.items()}
        (dest / path.name).write_text(yaml.safe_dump(config, sort_keys=False))
    return dest


@pytest.fixture(scope="session")
def task_dir(tmp_path_factory):
    """An include path holding the local tasks sentiment_tiny (multiple_choice, acc), copy_tiny
    (generate_until, exact_match) and rolling_tiny (loglikelihood_rolling, perplexities)."""
    return write_local_tasks(tmp_path_factory.mktemp("tasks"))


@pytest.fixture(scope="session", autouse=True)
def _offline_datasets():
    """`datasets` reads the local task files and never reaches the hub (HF_HOME and the caches are
    the session's own, from tests/conftest.py)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_DATASETS_OFFLINE", "1")
        mp.setenv("HF_HUB_OFFLINE", "1")
        yield


@functools.cache
def _local_task_manager(include_path: str | None = None):
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=include_path, include_defaults=False)


@pytest.fixture
def local_tasks_only(monkeypatch):
    """Task runs that know only the include path's tasks, and skip torch's environment report.

    Indexing lm-eval's own ~14,000 task files takes 10 s and more on a busy 2-core machine, and
    simple_evaluate's environment report a few seconds per run; neither is what these tests check
    (test_harness.py's task-name test indexes lm-eval's tasks for real).
    """
    import lm_eval.evaluator

    from bitk.eval import harness

    monkeypatch.setattr(harness, "task_manager", _local_task_manager)
    monkeypatch.setattr(lm_eval.evaluator, "add_env_info", lambda storage: None, raising=False)
