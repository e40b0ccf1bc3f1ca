"""Codec throughput (pytest-benchmark): every implementation of each codec group in bench/cases.py.

Compare within a group only (same run, same input: on shared machines absolute times from different
runs do not compare). Targets on a 2-core machine: I2_S ternarize+pack >= 1 G params/s; TQ quantize
>= 10x gguf.quants.
The regression gate over these groups is bench/gate.py.
"""

from __future__ import annotations

import pytest
from cases import GROUPS, check_outputs

SLOW = {"rounds": 3, "iterations": 1, "warmup_rounds": 0}  # numpy and gguf take 0.1-0.7 s per call

PAIRS = [(group, impl) for group in GROUPS.values() if group.suite == "formats" for impl in group.make()]


@pytest.mark.parametrize(("group", "impl"), PAIRS, ids=[f"{g.name}-{i}".replace(" ", "_") for g, i in PAIRS])
def bench_codec(benchmark, group, impl):
    impls = group.make()
    check_outputs(group, impls, [impl])
    benchmark.group = group.name
    benchmark.extra_info["params"] = group.params
    if impl in ("cpp", "copy"):
        benchmark(impls[impl])
    else:
        benchmark.pedantic(impls[impl], **SLOW)
