"""BitLinear on CPU (pytest-benchmark): bitk's layer against nn.Linear and transformers' AutoBitLinear.

512 tokens x (2560 -> 6912), BitNet b1.58 2B4T's FFN up projection, and x (576 -> 1536), SmolLM2's.
Peers: float32 nn.Linear ("linear"), bfloat16 nn.Linear on bf16 input ("linear_bf16": the faster
of the two where the CPU multiplies bf16 natively) and AutoBitLinear. Goals: forward >= 1.5x the
faster nn.Linear, forward+backward >= 1.2x; >= 2x faster than AutoBitLinear. The forward runs
with no gradient (evaluation: bitk keeps the unchanging weight packed), the forward+backward as a
training step (the weight ternarized and packed at every call). "reference" is `bitk.numerics`
(the definition, float64 integer products; with the bf16 or switchback backward, their formulas). "bitk_int8" is
the forward+backward with the opt-in int8 backward (BITK_CPU_BACKWARD=int8; its gradients are
checked against their own formulas in tests/nn/test_bitlinear.py). Compare within
a group only. The GPU kernel suites are bench_kernels.py; the regression gate is bench/gate.py.
"""

from __future__ import annotations

import pytest
from cases import GROUPS, check_outputs

# nn.Linear under bf16 autocast takes tens of seconds per call on CPUs without bf16 instructions.
SLOW = {"rounds": 1, "iterations": 1, "warmup_rounds": 0}
FEW = {"rounds": 5, "iterations": 1, "warmup_rounds": 1}

PAIRS = [(group, impl) for group in GROUPS.values() if group.suite == "nn" for impl in group.make()]


@pytest.mark.parametrize(("group", "impl"), PAIRS, ids=[f"{g.name}-{i}".replace(" ", "_") for g, i in PAIRS])
def bench_bitlinear_cpu(benchmark, group, impl):
    impls = group.make()
    check_outputs(group, impls, [impl])
    benchmark.group = group.name
    benchmark.extra_info["params"] = group.params
    slow = impl == "reference" or ("autocast" in group.name and impl != "bitk")
    benchmark.pedantic(impls[impl], **(SLOW if slow else FEW))
