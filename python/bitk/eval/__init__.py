"""Evaluation: perplexity and forward tokens/s of a causal LM on packed text, and tasks through
lm-evaluation-harness.

    result = evaluate(model, input_ids, position_ids, batch_size=4, numerics="i2s")
    result.perplexity, result.tokens_per_s

    harness = load_harness()  # bitk.eval.harness; needs `pip install "bitk[eval]"`
    results = harness.run_tasks(harness.BitkLM(model=model, tokenizer=tok), ["sst2"], limit=100)

The command line (`python -m bitk.eval CHECKPOINT --data FILE`, or `--tasks sst2,arc_easy`) is
`bitk.eval.cli`; what each figure means and how the text is packed: docs/eval.md.
"""

from .perplexity import IGNORE_INDEX, NUMERICS, EvalResult, evaluate

__all__ = ["HARNESS_INSTALL", "IGNORE_INDEX", "NUMERICS", "EvalResult", "evaluate", "load_harness"]

HARNESS_INSTALL = 'pip install "bitk[eval]"'
"""What installs lm-evaluation-harness, the optional dependency of task evaluation."""


def load_harness(what: str = "task evaluation"):
    """The module `bitk.eval.harness` (which imports lm_eval); ValueError "<what> needs
    lm-evaluation-harness: pip install ..." when lm_eval is not installed."""
    import importlib

    try:
        importlib.import_module("lm_eval")
    except ImportError:
        raise ValueError(f"{what} needs lm-evaluation-harness: {HARNESS_INSTALL}") from None
    from . import harness

    return harness
