"""Generation throughput on CPU (pytest-benchmark): greedy decoding with the KV cache against recomputing.

A random-init ternary model of the `tiny` preset continues a 128-token prompt (the embedded
held-out text) by 64 greedy tokens with `bitk.generate.generate_ids`, in "i2s" numerics (what
bitnet.cpp's I2_S kernel computes) and "train". "cache" runs each new token alone against the
KV cache; "recompute" runs the whole prefix again for every token (``use_cache=False``), which is
what generation costs without the cache. Both give the same ids (checked). The gate case
``generate_kv_cache_vs_recompute`` pairs them (bench/cases.py).

    python bench/bench_generate.py        # print tokens/s of every case
"""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Callable

import pytest
import torch

from bitk.data import default_corpus, default_tokenizer
from bitk.generate import generate_ids
from bitk.models import CausalLM, preset

PRESET = "tiny"
PROMPT_TOKENS = 128
NEW_TOKENS = 64
NUMERICS = ("i2s", "train")
ROUNDS = 5


@functools.cache
def generate_model(preset_name: str = PRESET) -> CausalLM:
    """A random-init ternary model of the preset (seeded), without gradients."""
    torch.manual_seed(0)
    return CausalLM(preset(preset_name, ternary=True)).eval().requires_grad_(False)


@functools.cache
def prompt_ids(tokens: int = PROMPT_TOKENS) -> tuple[int, ...]:
    """The first ``tokens`` tokens of the held-out split (ids < 4096 fit every preset)."""
    ids = default_tokenizer().encode(" ".join(default_corpus("heldout"))[:20_000]).ids
    if len(ids) < tokens:
        raise ValueError(f"the held-out split holds {len(ids)} tokens, fewer than {tokens}")
    return tuple(ids[:tokens])


def generate_step(
    numerics: str, use_cache: bool, preset_name: str = PRESET, new_tokens: int = NEW_TOKENS
) -> Callable[[], list[int]]:
    """A zero-argument callable generating ``new_tokens`` greedy ids after the prompt; returns them."""
    model = generate_model(preset_name)
    prompt = prompt_ids()

    def run() -> list[int]:
        model.set_numerics(numerics)
        return list(generate_ids(model, prompt, max_new_tokens=new_tokens, use_cache=use_cache))

    return run


def measure_tokens_per_s(numerics: str, use_cache: bool, rounds: int = ROUNDS) -> float:
    """Median new tokens/s over ``rounds`` generations, after one warm-up (it fills the weight caches)."""
    step = generate_step(numerics, use_cache)
    step()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return NEW_TOKENS / statistics.median(times)


CASES = [(n, c) for n in NUMERICS for c in (True, False)]


@pytest.mark.parametrize(
    ("numerics", "use_cache"), CASES, ids=[f"{n}-{'cache' if c else 'recompute'}" for n, c in CASES]
)
def bench_generate_cpu(benchmark, numerics, use_cache):
    step = generate_step(numerics, use_cache)
    first = step()  # warm-up, and a sanity check: the cache changes the cost, not the tokens
    assert len(first) == NEW_TOKENS and first == generate_step(numerics, not use_cache)()
    benchmark.group = f"generate {PRESET} {PROMPT_TOKENS}+{NEW_TOKENS} greedy ({numerics})"
    benchmark.extra_info["tokens"] = NEW_TOKENS
    benchmark.extra_info["threads"] = torch.get_num_threads()
    benchmark.pedantic(step, rounds=ROUNDS, iterations=1, warmup_rounds=0)
    benchmark.extra_info["tokens_per_s"] = NEW_TOKENS / benchmark.stats.stats.median


if __name__ == "__main__":
    for n, c in CASES:
        print(f"{PRESET:>6} {n:>5} {'cache' if c else 'recompute':>9}: {measure_tokens_per_s(n, c):8,.1f} tokens/s")
