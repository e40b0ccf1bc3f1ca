"""Evaluation numerics of BitLinear (bitk.nn.inference) against the reference formulas."""

import pytest
import torch

from bitk import numerics
from bitk.nn import NUMERICS, BitLinear, SubLN, set_numerics, use_backend


@pytest.fixture
def layer():
    torch.manual_seed(0)
    return BitLinear(256, 96, bias=True)


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_i2s_is_bitnet_cpp_bit_for_bit(layer, backend):
    x = torch.randn(3, 5, 256) * 3
    set_numerics(layer, "i2s")
    with use_backend(backend):
        y = layer(x)
    codes, gamma = numerics.quantize_weights(layer.weight)
    expected = numerics.bitlinear_bitnet_cpp(x, codes, gamma) + layer.bias
    assert torch.equal(y, expected)


def test_i2s_with_norm_normalizes_first(layer):
    norm = SubLN(256)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    x = torch.randn(4, 256)
    set_numerics(layer, "i2s")
    y = layer(x, norm=norm)
    codes, gamma = numerics.quantize_weights(layer.weight)
    expected = numerics.bitlinear_bitnet_cpp(numerics.rms_norm(x, norm.weight, norm.eps), codes, gamma) + layer.bias
    assert torch.equal(y, expected)


def test_float_uses_dequantized_weights(layer):
    x = torch.randn(6, 256)
    set_numerics(layer, "float")
    codes, gamma = numerics.quantize_weights(layer.weight)
    expected = x @ (codes.float() * gamma).T + layer.bias
    torch.testing.assert_close(layer(x), expected, rtol=0, atol=1e-5)


def test_modes_differ_only_by_activation_rounding(layer):
    x = torch.randn(8, 256)
    outs = {}
    for mode in NUMERICS:
        set_numerics(layer, mode)
        outs[mode] = layer(x)
    # i2s and train quantize the same way up to the last bit of s; float skips int8 rounding.
    scale = outs["float"].abs().max()
    assert (outs["i2s"] - outs["train"]).abs().max() <= 1e-5 * scale
    assert 0 < (outs["float"] - outs["train"]).abs().max() <= 0.05 * scale


def test_cache_follows_weight_updates(layer):
    x = torch.randn(2, 256)
    set_numerics(layer, "i2s")
    before = layer(x)
    with torch.no_grad():
        layer.weight.mul_(-1)
    after = layer(x)
    torch.testing.assert_close(after - layer.bias, -(before - layer.bias), rtol=0, atol=1e-5)


@pytest.mark.parametrize("mode", NUMERICS)
def test_output_dtype_under_autocast(layer, mode):
    # The autocast dtype, as nn.Linear returns and the "train" forward does; float64 stays float64.
    set_numerics(layer, mode)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer(torch.randn(3, 256)).dtype == torch.bfloat16
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer(torch.randn(3, 256, dtype=torch.float64)).dtype == torch.float64


def test_set_numerics_rejects_unknown_mode(layer):
    with pytest.raises(ValueError, match="numerics must be one of train, i2s, float"):
        set_numerics(layer, "int4")
    assert layer.numerics == "train"
