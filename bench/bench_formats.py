"""Codec throughput: C++ vs the numpy reference vs gguf.quants, same inputs in the same run.

Groups (compare within a group, never across runs: see ../shared/spec/environment.md):
- `TQ2_0 quantize` / `TQ1_0 quantize`: 4096 x 4096 ternarized float32 weights -> GGUF bytes.
- `I2_S ternarize+pack`: 4096 x 4096 latent float32 weights -> absmean codes -> I2_S bytes.
- `* dequantize`: the bytes back to float32.
Each benchmark checks its output against the reference before timing, so a fast wrong codec fails.
Targets (issue 2, 2-core machine): I2_S ternarize+pack >= 1 G params/s; TQ quantize >= 10x gguf.
"""

from __future__ import annotations

import gguf
import numpy as np
import pytest

from bitk import formats
from bitk.formats import reference

BACKENDS = formats.available_backends()
SLOW = {"rounds": 3, "iterations": 1, "warmup_rounds": 0}  # the numpy paths take ~0.1-0.5 s per call


def _run(benchmark, fn, slow: bool):
    if slow:
        return benchmark.pedantic(fn, **SLOW)
    return benchmark(fn)


@pytest.mark.parametrize("qtype", ["TQ2_0", "TQ1_0"])
@pytest.mark.parametrize("impl", [*BACKENDS, "gguf"])
def bench_tq_quantize(benchmark, ternary_weights, qtype, impl):
    benchmark.group = f"{qtype} quantize"
    benchmark.extra_info["params"] = ternary_weights.size
    expected = gguf.quants.quantize(ternary_weights, gguf.GGMLQuantizationType[qtype]).reshape(-1)
    if impl == "gguf":
        fn = lambda: gguf.quants.quantize(ternary_weights, gguf.GGMLQuantizationType[qtype])  # noqa: E731
        got = fn().reshape(-1)
    else:
        def fn():
            with formats.use_backend(impl):
                return formats.quantize(ternary_weights, qtype)
        got = fn()
    assert np.array_equal(got, expected)
    _run(benchmark, fn, slow=impl != "cpp")


@pytest.mark.parametrize("impl", BACKENDS)
def bench_i2s_ternarize_pack(benchmark, latent_weights, impl):
    benchmark.group = "I2_S ternarize+pack"
    benchmark.extra_info["params"] = latent_weights.size

    def fn():
        with formats.use_backend(impl):
            return formats.pack_i2s(*formats.ternarize(latent_weights))

    codes, scale = reference.ternarize(latent_weights)
    assert np.array_equal(fn(), reference.pack_i2s(codes, scale, "x86"))
    _run(benchmark, fn, slow=impl != "cpp")


@pytest.mark.parametrize("qtype", ["I2_S", "TQ2_0", "TQ1_0"])
@pytest.mark.parametrize("impl", [*BACKENDS, "gguf"])
def bench_dequantize(benchmark, ternary_weights, qtype, impl):
    if impl == "gguf" and qtype == "I2_S":
        pytest.skip("gguf-py does not know I2_S")
    benchmark.group = f"{qtype} dequantize"
    benchmark.extra_info["params"] = ternary_weights.size
    data = formats.quantize(ternary_weights, qtype)
    if impl == "gguf":
        rows = data.reshape(ternary_weights.shape[0], -1)
        fn = lambda: gguf.quants.dequantize(rows, gguf.GGMLQuantizationType[qtype])  # noqa: E731
    else:
        def fn():
            with formats.use_backend(impl):
                return formats.dequantize(data, ternary_weights.shape, qtype)
    with formats.use_backend("numpy"):
        expected = formats.dequantize(data, ternary_weights.shape, qtype)
    assert np.array_equal(fn(), expected)
    _run(benchmark, fn, slow=impl != "cpp")
