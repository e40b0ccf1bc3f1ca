"""Task scores during training (training.eval_tasks): lm-evaluation-harness tasks on the live model.

`check_eval_tasks` runs before training starts (lm_eval installed, every task name known), so a
typo costs seconds; `evaluate_tasks` scores the tasks at each evaluation through
`bitk.eval.harness` and gives the metrics.jsonl record
``{"kind": "eval_tasks", "step": ..., "tokens": ..., "tasks/<task>/<metric>": ...}``. The model
comes back in the numerics and mode it had, and the random number generators in their state, so
the run continues as it would have without the evaluation.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bitk.nn import BitLinear, set_numerics

from .config import TrainingConfig

__all__ = ["check_eval_tasks", "evaluate_tasks"]


def check_eval_tasks(t: TrainingConfig) -> None:
    """ValueError when training.eval_tasks cannot run: lm_eval missing (the install hint), an
    include path that is no folder, or task names lm-eval does not know (with close matches)."""
    if not t.eval_tasks:
        return
    from bitk.eval import load_harness

    harness = load_harness("training.eval_tasks")
    include = t.eval_tasks_include_path
    if include is not None and not Path(include).expanduser().is_dir():
        raise ValueError(f"training.eval_tasks_include_path={include!r}: no such folder")
    try:
        harness.check_tasks(list(t.eval_tasks), include)
    except ValueError as e:
        raise ValueError(f"training.eval_tasks: {e}") from None


def evaluate_tasks(
    model: torch.nn.Module, tokenizer: Any, t: TrainingConfig, *, step: int, tokens: int, autocast: Any
) -> dict[str, Any]:
    """Score training.eval_tasks on ``model`` (the bare CausalLM) in training.eval_tasks_numerics;
    returns the metrics record. ``autocast``: a callable giving the run's autocast context."""
    from bitk.eval import load_harness

    harness = load_harness("training.eval_tasks")
    numerics = [(m, m.numerics) for m in model.modules() if isinstance(m, BitLinear)]
    was_training = model.training
    rng = random.getstate(), np.random.get_state(), torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    try:
        lm = harness.BitkLM(
            model=model,
            tokenizer=tokenizer,
            tokenizer_dir=model.tokenizer_dir,
            numerics=t.eval_tasks_numerics,
            batch_size=t.micro_batch_size or 1,
        )
        with autocast():
            results = harness.run_tasks(
                lm,
                list(t.eval_tasks),
                include_path=t.eval_tasks_include_path,
                limit=t.eval_tasks_limit,
                bootstrap_iters=0,
                verbosity="ERROR",
            )
    finally:
        for module, mode in numerics:
            set_numerics(module, mode)
        model.train(was_training)
        random.setstate(rng[0])
        np.random.set_state(rng[1])
        torch.set_rng_state(rng[2])
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
    return {"kind": "eval_tasks", "step": step, "tokens": tokens, **harness.task_scores(results)}
