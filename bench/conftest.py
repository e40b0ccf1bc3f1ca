"""Shared inputs for the benchmark suites (pytest-benchmark; run with `python -m pytest bench`)."""

from __future__ import annotations

import numpy as np
import pytest

from bitk import formats

BENCH_SHAPE = (4096, 4096)


@pytest.fixture(scope="session")
def latent_weights() -> np.ndarray:
    """4096 x 4096 float32 latent weights, the size the foundation targets are stated for."""
    return np.random.default_rng(0).standard_normal(BENCH_SHAPE, dtype=np.float32) * np.float32(0.02)


@pytest.fixture(scope="session")
def ternary_weights(latent_weights: np.ndarray) -> np.ndarray:
    """The same weights ternarized ({-gamma, 0, +gamma}): the input the TQ quantizers expect."""
    codes, scale = formats.ternarize(latent_weights)
    return codes.astype(np.float32) * np.float32(scale)
