"""Evaluation: perplexity and forward tokens/s of a causal LM on packed text.

    result = evaluate(model, input_ids, position_ids, batch_size=4, numerics="i2s")
    result.perplexity, result.tokens_per_s

The command line (`python -m bitk.eval CHECKPOINT --data FILE`) is `bitk.eval.cli`; what each
figure means and how the text is packed: docs/eval.md.
"""

from .perplexity import IGNORE_INDEX, NUMERICS, EvalResult, evaluate

__all__ = ["IGNORE_INDEX", "NUMERICS", "EvalResult", "evaluate"]
