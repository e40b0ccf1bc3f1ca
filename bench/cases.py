"""What the benchmarks time: named implementations of each fast path on one shared input.

A *group* is one operation on one input (e.g. "TQ2_0 quantize" of 4096 x 4096 ternary weights)
with several implementations: bitk's C++ backend ("cpp"), its numpy reference ("numpy") and a
peer such as gguf-py ("gguf"). The pytest-benchmark suites time every implementation; the gate
(gate.py) times pairs of them alternately and checks the ratio against bench/thresholds.toml.
Every implementation of a group must give the reference's output, checked before timing.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import gguf
import numpy as np

from bitk import formats

SHAPE = (4096, 4096)
PARAMS = SHAPE[0] * SHAPE[1]


@functools.cache
def latent_weights() -> np.ndarray:
    """4096 x 4096 float32 latent weights, the size the codec targets are stated for."""
    return np.random.default_rng(0).standard_normal(SHAPE, dtype=np.float32) * np.float32(0.02)


@functools.cache
def ternary_weights() -> np.ndarray:
    """The same weights ternarized ({-gamma, 0, +gamma}): what the TQ/I2_S quantizers take."""
    codes, scale = formats.ternarize(latent_weights())
    return codes.astype(np.float32) * np.float32(scale)


@functools.cache
def encoded(qtype: str) -> np.ndarray:
    return formats.quantize(ternary_weights(), qtype)


def _on(backend: str, fn: Callable, *args) -> Callable[[], object]:
    def run():
        with formats.use_backend(backend):
            return fn(*args)

    return run


def _ternarize_pack(w: np.ndarray) -> np.ndarray:
    return formats.pack_i2s(*formats.ternarize(w))


def _copy_of(w: np.ndarray) -> Callable[[], None]:
    out = np.empty_like(w)
    return lambda: np.copyto(out, w)


@dataclass(frozen=True)
class Group:
    """One operation on one input and the implementations that compute it."""

    name: str
    params: int
    make: Callable[[], dict[str, Callable[[], object]]]  # implementation name -> zero-arg call
    reference: str = "numpy"  # whose output every other implementation must equal
    unchecked: tuple[str, ...] = ()  # baselines that compute something else (a memory copy)


def _tq_quantize(qtype: str) -> dict[str, Callable[[], object]]:
    w = ternary_weights()
    return {
        **{b: _on(b, formats.quantize, w, qtype) for b in formats.available_backends()},
        "gguf": lambda: gguf.quants.quantize(w, gguf.GGMLQuantizationType[qtype]).reshape(-1),
    }


def _dequantize(qtype: str) -> dict[str, Callable[[], object]]:
    data = encoded(qtype)
    impls = {b: _on(b, formats.dequantize, data, SHAPE, qtype) for b in formats.available_backends()}
    if qtype != "I2_S":  # gguf-py does not know I2_S
        rows = data.reshape(SHAPE[0], -1)
        impls["gguf"] = lambda: gguf.quants.dequantize(rows, gguf.GGMLQuantizationType[qtype])
    return impls


def _i2s_ternarize_pack() -> dict[str, Callable[[], object]]:
    w = latent_weights()
    return {
        **{b: _on(b, _ternarize_pack, w) for b in formats.available_backends()},
        "copy": _copy_of(w),  # one plain copy of the input: the machine's memory speed
    }


GROUPS = {
    g.name: g
    for g in [
        Group("TQ2_0 quantize", PARAMS, lambda: _tq_quantize("TQ2_0")),
        Group("TQ1_0 quantize", PARAMS, lambda: _tq_quantize("TQ1_0")),
        Group("I2_S ternarize+pack", PARAMS, _i2s_ternarize_pack, unchecked=("copy",)),
        Group("I2_S dequantize", PARAMS, lambda: _dequantize("I2_S")),
        Group("TQ2_0 dequantize", PARAMS, lambda: _dequantize("TQ2_0")),
        Group("TQ1_0 dequantize", PARAMS, lambda: _dequantize("TQ1_0")),
    ]
}


@dataclass(frozen=True)
class GateCase:
    """A ratio the gate checks: time(peer) / time(bitk), higher is better."""

    metric: str  # key in bench/thresholds.toml
    group: str
    bitk: str
    peer: str


GATE_CASES = [
    GateCase("tq2_0_quantize_vs_gguf", "TQ2_0 quantize", "cpp", "gguf"),
    GateCase("tq1_0_quantize_vs_gguf", "TQ1_0 quantize", "cpp", "gguf"),
    GateCase("i2s_ternarize_pack_vs_numpy", "I2_S ternarize+pack", "cpp", "numpy"),
    GateCase("i2s_ternarize_pack_vs_copy", "I2_S ternarize+pack", "cpp", "copy"),
    GateCase("i2s_dequantize_vs_numpy", "I2_S dequantize", "cpp", "numpy"),
    GateCase("tq2_0_dequantize_vs_gguf", "TQ2_0 dequantize", "cpp", "gguf"),
    GateCase("tq1_0_dequantize_vs_gguf", "TQ1_0 dequantize", "cpp", "gguf"),
]


def check_outputs(group: Group, impls: dict[str, Callable[[], object]], names: list[str] | None = None) -> None:
    """Raise AssertionError unless each named implementation returns the reference's output."""
    expected = impls[group.reference]()
    for name in names or list(impls):
        if name in group.unchecked or name == group.reference:
            continue
        got = impls[name]()
        if not np.array_equal(np.asarray(got).reshape(-1), np.asarray(expected).reshape(-1)):
            raise AssertionError(f"{group.name}: {name} does not give the {group.reference} reference's output")
