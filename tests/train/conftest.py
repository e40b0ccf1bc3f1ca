"""Shared settings of the trainer tests: a micro configuration that trains in a second or two.

`micro_args(tmp_path, *overrides)` gives the ``key=value`` list of a micro run (a one-layer,
128-wide model with bitk's 4096-token vocabulary, 32-token blocks, global batch 4 = micro-batch 2
x accumulation 2); `micro_config` parses it. Later overrides win, as on the command line.
`start_training(args, env)` runs `python -m bitk.train` in a subprocess (for signals and locks);
`train_until_first_save(cfg, monkeypatch)` runs a config that stops with a fault right after its
first checkpoint (a crash whose resume must reproduce the straight run). Importable as
`bitk_train_testing`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.modules["bitk_train_testing"] = sys.modules[__name__]


def start_training(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    """`python -m bitk.train ARGS` in a subprocess; its stdout and stderr as one text stream."""
    return subprocess.Popen(
        [sys.executable, "-m", "bitk.train", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


class Crash(Exception):
    """The fault `train_until_first_save` injects."""


def train_until_first_save(cfg, monkeypatch) -> None:
    """Train ``cfg`` until its first checkpoint is written, then fail as a crash would (the run's
    TrainingError, caused by `Crash`); max_steps stays as configured, so the schedule is the full run's."""
    from bitk.train import loop

    real_save = loop.save_state

    def save_then_crash(output_dir, step, *args, **kwargs):
        real_save(output_dir, step, *args, **kwargs)
        raise Crash

    with monkeypatch.context() as m:
        m.setattr(loop, "save_state", save_then_crash)
        with pytest.raises(loop.TrainingError) as failure:
            loop.train(cfg)
    assert isinstance(failure.value.__cause__, Crash)


MICRO_ARGS = (
    "model=tiny",
    "model.num_hidden_layers=1",
    "model.hidden_size=128",
    "model.intermediate_size=256",
    "model.num_attention_heads=2",
    "model.num_key_value_heads=1",
    "data.block_size=32",
    "data.max_eval_tokens=256",
    "training.max_steps=8",
    "training.global_batch_size=4",
    "training.micro_batch_size=2",
    "training.warmup_steps=1",
    "training.zclip_warmup_steps=3",
    "logging.log_every=1",
    "training.eval_every=4",
    "checkpoint.save_every=4",
    "export_gguf=none",
    "logging.progress=false",
    "device=cpu",
)


def micro_args(output_dir: str | Path, *overrides: str) -> list[str]:
    return [*MICRO_ARGS, f"output_dir={output_dir}", *overrides]


@pytest.fixture
def micro_config(tmp_path):
    """factory(*overrides, output_dir=tmp_path/"run") -> a parsed micro Config."""
    from bitk.train.config import parse_args

    def make(*overrides: str, output_dir: str | Path | None = None):
        return parse_args(micro_args(output_dir or tmp_path / "run", *overrides))

    return make


@pytest.fixture
def micro_argv(tmp_path):
    """factory(*overrides, output_dir=tmp_path/"run") -> the micro run's key=value list."""

    def make(*overrides: str, output_dir: str | Path | None = None) -> list[str]:
        return micro_args(output_dir or tmp_path / "run", *overrides)

    return make


@pytest.fixture
def run_env():
    """Environment of a `python -m bitk.train` subprocess: this interpreter's, on CPU, unbuffered."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    env.pop("WORLD_SIZE", None)
    env.pop("RANK", None)
    return env


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Train with one thread: on a busy 2-core machine two OpenMP threads per process oversubscribe
    the cores and every small op waits out a time slice (the golden run measured 170 s with two
    threads next to another job, 16 s with one). The losses do not depend on the thread count."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
