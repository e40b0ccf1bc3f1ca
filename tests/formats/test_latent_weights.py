"""formats.latent_weights: already-ternary weights that survive bitk's ternarization exactly."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bitk import formats, numerics


@settings(max_examples=150, deadline=None)
@given(
    rows=st.integers(1, 40),
    cols=st.integers(1, 300),
    density=st.floats(0.0, 1.0),
    log_scale=st.floats(np.log(1e-5), np.log(1e6)),
    seed=st.integers(0, 2**31),
)
def test_ternarize_gives_codes_and_scale_back(rows, cols, density, log_scale, seed):
    rng = np.random.default_rng(seed)
    codes = (rng.choice([-1, 1], (rows, cols)) * (rng.random((rows, cols)) < density)).astype(np.int8)
    scale = float(np.float32(np.exp(log_scale)))
    w = formats.latent_weights(codes, scale)
    assert w.dtype == np.float32
    if not codes.any():
        assert not w.any()
        return
    for backend in formats.available_backends():
        with formats.use_backend(backend):
            back, gamma = formats.ternarize(w)
        assert np.array_equal(back, codes) and gamma == scale
    tcodes, tgamma = numerics.quantize_weights(torch.from_numpy(w))
    assert torch.equal(tcodes, torch.from_numpy(codes)) and tgamma.item() == scale


def test_ternarized_model_weights_round_trip():
    w = np.random.default_rng(0).standard_normal((512, 768)).astype(np.float32)
    codes, scale = formats.ternarize(w)
    back, gamma = formats.ternarize(formats.latent_weights(codes, scale))
    assert np.array_equal(back, codes) and gamma == scale


@pytest.mark.parametrize(
    ("codes", "scale", "match"),
    [
        (np.zeros((2, 2), np.int16), 1.0, "int8"),
        (np.full((2, 2), 2, np.int8), 1.0, "in {-1, 0, 1}"),
        (np.ones((2, 2), np.int8), float("nan"), "finite"),
        (np.ones((2, 2), np.int8), 1e-7, "absmean floor"),
        (np.ones(4, np.int8), 1.0, "2-D"),
    ],
)
def test_bad_input(codes, scale, match):
    with pytest.raises(ValueError, match=match):
        formats.latent_weights(codes, scale)


def test_a_scale_no_whole_number_of_ulps_reaches():
    """One non-zero in three values: a / 3 steps over float32(exp(0.4375)); a zero code takes the rest."""
    codes = np.array([[-1, 0, 0]], np.int8)
    scale = float(np.float32(np.exp(0.4375)))
    w = formats.latent_weights(codes, scale)
    back, gamma = formats.ternarize(w)
    assert np.array_equal(back, codes) and gamma == scale
    assert 0 < abs(w[0, 1]) < scale / 2 and w[0, 2] == 0  # the zero code's small value rounds to 0
