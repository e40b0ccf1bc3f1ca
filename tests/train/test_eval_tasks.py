"""training.eval_tasks: lm-evaluation-harness task scores in metrics.jsonl at each evaluation, names checked up front."""

from __future__ import annotations

import functools
import importlib.util
import sys
from pathlib import Path

import pytest

from bitk.train import loop
from bitk.train.config import TASK_NUMERICS
from bitk.train.metrics import read_metrics

TASKS = Path(__file__).parents[1] / "eval" / "tasks"


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    """tests/eval/tasks' sentiment_tiny with an absolute data path (datasets reads relative ones from the cwd)."""
    yaml = pytest.importorskip("yaml")
    dest = tmp_path_factory.mktemp("tasks")
    config = yaml.safe_load((TASKS / "sentiment_tiny.yaml").read_text())
    files = config["dataset_kwargs"]["data_files"]
    config["dataset_kwargs"]["data_files"] = {split: str(TASKS / name) for split, name in files.items()}
    (dest / "sentiment_tiny.yaml").write_text(yaml.safe_dump(config))
    return dest


@pytest.fixture(autouse=True)
def _offline_local_tasks(monkeypatch):
    """No hub access; lm-eval knows only the include path's tasks (indexing its own ~14,000 task
    files takes 10 s and more) and skips torch's environment report (seconds per evaluation)."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    if importlib.util.find_spec("lm_eval") is None:
        return
    import lm_eval.evaluator
    from lm_eval.tasks import TaskManager

    from bitk.eval import harness

    @functools.cache
    def local(include_path=None):
        return TaskManager(include_path=include_path, include_defaults=False)

    monkeypatch.setattr(harness, "task_manager", local)
    monkeypatch.setattr(lm_eval.evaluator, "add_env_info", lambda storage: None, raising=False)


def test_task_scores_are_logged_at_each_evaluation(micro_config, task_dir, tmp_path):
    pytest.importorskip("lm_eval")
    cfg = micro_config(
        "training.max_steps=6",
        "training.eval_every=3",
        "checkpoint.save_every=0",
        "training.eval_tasks=[sentiment_tiny]",
        "training.eval_tasks_limit=4",
        f"training.eval_tasks_include_path={task_dir}",
    )
    summary = loop.train(cfg)
    records = read_metrics(summary["metrics"])
    tasks = [r for r in records if r["kind"] == "eval_tasks"]
    assert [r["step"] for r in tasks] == [3, 6]
    for r in tasks:
        assert set(r) == {"kind", "step", "tokens", "tasks/sentiment_tiny/acc"}
        assert r["tasks/sentiment_tiny/acc"] in (0.0, 0.25, 0.5, 0.75, 1.0)
    # the run goes on as without the evaluation: the same losses (model mode, numerics and RNG restored)
    plain = loop.train(micro_config("training.max_steps=6", "training.eval_every=3", output_dir=tmp_path / "plain"))
    losses = [[r["loss"] for r in read_metrics(s["metrics"]) if r["kind"] == "train"] for s in (summary, plain)]
    assert losses[0] == losses[1]


def test_a_typo_in_a_task_name_fails_before_training(micro_config, task_dir, tmp_path):
    pytest.importorskip("lm_eval")
    cfg = micro_config("training.eval_tasks=[sentiment_tinyy]", f"training.eval_tasks_include_path={task_dir}")
    with pytest.raises(
        ValueError, match=r"training.eval_tasks: unknown task: sentiment_tinyy \(did you mean sentiment_tiny"
    ):
        loop.train(cfg)
    assert not (tmp_path / "run").exists()
    with pytest.raises(ValueError, match="no such folder"):
        loop.train(micro_config("training.eval_tasks=[sst2]", f"training.eval_tasks_include_path={tmp_path / 'no'}"))


def test_without_lm_eval_the_install_hint(micro_config, monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)
    with pytest.raises(
        ValueError, match=r'training.eval_tasks needs lm-evaluation-harness: pip install "bitk\[eval\]"'
    ):
        loop.train(micro_config("training.eval_tasks=[sst2]"))


def test_config_checks():
    from bitk.nn import NUMERICS
    from bitk.train.config import parse_args

    assert TASK_NUMERICS == NUMERICS
    with pytest.raises(ValueError, match="training.eval_tasks_numerics must be one of"):
        parse_args(["training.eval_tasks_numerics=int4"])
    with pytest.raises(ValueError, match="training.eval_tasks_limit"):
        parse_args(["training.eval_tasks_limit=0"])
    with pytest.raises(ValueError, match="needs a ternary model"):
        parse_args(["model.ternary=false", "export_gguf=f16", "training.eval_tasks_numerics=i2s"])
    cfg = parse_args(["training.eval_tasks=[sst2,arc_easy]", "training.eval_tasks_limit=null"])
    assert cfg.training.eval_tasks == ["sst2", "arc_easy"] and cfg.training.eval_tasks_limit is None
