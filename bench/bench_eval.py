"""Evaluation throughput on CPU (pytest-benchmark): `bitk.eval.evaluate` tokens/s per numerics.

Random-init ternary models of the `tiny` and `smollm2_135m` presets score one row of 256 tokens
of the embedded held-out text (packed as the eval CLI packs it, position ids included). "i2s"
runs the int8 x ternary path bitnet.cpp's I2_S computes, "float" the dequantized ternary weights
with float activations (F32 GGUF), "train" the training forward. The int8 path should be the
fastest. Compare within a group only. For a gate case, pair two `eval_step` callables
(e.g. i2s against float of one preset) in bench/cases.py; `measure_tokens_per_s` gives a figure.

    python bench/bench_eval.py        # print tokens/s of every case
"""

from __future__ import annotations

import functools
import statistics
from collections.abc import Callable

import pytest
import torch

from bitk.data import EOS_ID, default_corpus, default_tokenizer, encode_documents, pack_tokens
from bitk.eval import EvalResult, evaluate
from bitk.models import CausalLM, preset

PRESETS = ("tiny", "smollm2_135m")
NUMERICS = ("i2s", "float", "train")
SEQ_LEN = 256
BATCH = 1
ROUNDS = {"tiny": 10, "smollm2_135m": 3}


@functools.cache
def eval_model(preset_name: str) -> CausalLM:
    """A random-init ternary model of the preset (seeded), shared by all numerics of that preset."""
    torch.manual_seed(0)
    return CausalLM(preset(preset_name, ternary=True)).eval()


@functools.cache
def eval_rows(seq_len: int = SEQ_LEN, batch: int = BATCH) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``batch`` rows of the held-out split packed into ``seq_len`` tokens (ids < 4096 fit every preset)."""
    docs = encode_documents(default_corpus("heldout"), default_tokenizer())
    ids, pos = pack_tokens(docs, seq_len, EOS_ID)
    if ids.shape[0] < batch:
        raise ValueError(f"the held-out split fills {ids.shape[0]} rows of {seq_len}, fewer than batch {batch}")
    return ids[:batch].contiguous(), pos[:batch].contiguous()


def eval_step(preset_name: str, numerics: str, seq_len: int = SEQ_LEN, batch: int = BATCH) -> Callable[[], EvalResult]:
    """A zero-argument callable running one `evaluate` (one forward of ``batch`` x ``seq_len``)."""
    model = eval_model(preset_name)
    ids, pos = eval_rows(seq_len, batch)
    return lambda: evaluate(model, ids, pos, batch, numerics)


def measure_tokens_per_s(
    preset_name: str, numerics: str, seq_len: int = SEQ_LEN, batch: int = BATCH, rounds: int = 5
) -> float:
    """Median forward tokens/s over ``rounds`` evaluations, after one warm-up (it fills the weight caches)."""
    step = eval_step(preset_name, numerics, seq_len, batch)
    step()
    return statistics.median(step().tokens_per_s for _ in range(rounds))


CASES = [(p, n) for p in PRESETS for n in NUMERICS]


@pytest.mark.parametrize(("preset_name", "numerics"), CASES, ids=[f"{p}-{n}" for p, n in CASES])
def bench_eval_cpu(benchmark, preset_name, numerics):
    step = eval_step(preset_name, numerics)
    first = step()  # warm-up, and a sanity check: a random model is near-uniform, never NaN
    vocab = preset(preset_name).vocab_size
    assert first.tokens == BATCH * (SEQ_LEN - 1) and vocab / 10 < first.perplexity < vocab * 10
    benchmark.group = f"eval {preset_name} {BATCH}x{SEQ_LEN}"
    benchmark.extra_info["tokens"] = BATCH * SEQ_LEN
    benchmark.extra_info["threads"] = torch.get_num_threads()
    result = benchmark.pedantic(step, rounds=ROUNDS[preset_name], iterations=1, warmup_rounds=0)
    benchmark.extra_info["tokens_per_s"] = result.tokens_per_s


if __name__ == "__main__":
    for p, n in CASES:
        print(f"{p:>14} {n:>6}: {measure_tokens_per_s(p, n, rounds=ROUNDS[p]):10,.0f} tokens/s")
