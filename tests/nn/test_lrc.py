"""BitLinearLRC: low-rank correction on the unquantized input (LRC, arXiv 2412.07902)."""

from __future__ import annotations

import pytest
import torch

from bitk import numerics
from bitk.nn import BitLinear, BitLinearLRC, SubLN


def _bitlinear(k=96, n=64, seed=0):
    torch.manual_seed(seed)
    return BitLinear(k, n, bias=True)


def test_forward_is_bitlinear_plus_the_correction():
    layer = BitLinearLRC.from_bitlinear(_bitlinear(), rank_ratio=0.25)
    assert layer.rank == 16 and layer.lrc_v.shape == (96, 16) and layer.lrc_u.shape == (16, 64)
    x = torch.randn(7, 96)
    want = numerics.bitlinear(x, layer.weight, layer.bias) + (x @ layer.lrc_v) @ layer.lrc_u
    torch.testing.assert_close(layer(x), want)


def test_svd_init_reduces_the_quantization_error():
    base = _bitlinear()
    layer = BitLinearLRC.from_bitlinear(base, rank_ratio=0.25)
    x = torch.randn(256, 96)
    full = torch.nn.functional.linear(x, base.weight, base.bias)
    err_before = (base(x) - full).square().mean()
    err_after = (layer(x) - full).square().mean()
    assert err_after < 0.9 * err_before


def test_only_the_factors_train_and_both_get_gradients_at_init():
    layer = BitLinearLRC.from_bitlinear(_bitlinear())
    assert not layer.weight.requires_grad and not layer.bias.requires_grad
    x = torch.randn(9, 96)
    layer(x).square().sum().backward()
    assert layer.weight.grad is None
    assert layer.lrc_u.grad.abs().sum() > 0 and layer.lrc_v.grad.abs().sum() > 0
    before = layer.weight.detach().clone()
    opt = torch.optim.AdamW([p for p in layer.parameters() if p.requires_grad], lr=1e-2)
    opt.step()
    assert torch.equal(layer.weight, before)


def test_random_init_starts_as_the_plain_layer():
    base = _bitlinear()
    layer = BitLinearLRC.from_bitlinear(base, init="random", freeze_ternary=False)
    assert layer.weight.requires_grad
    x = torch.randn(4, 96)
    assert torch.equal(layer(x), base(x))
    assert layer.lrc_v.abs().sum() > 0 and not layer.lrc_u.any()


def test_norm_feeds_the_unquantized_normalized_input():
    layer = BitLinearLRC.from_bitlinear(_bitlinear())
    norm = SubLN(96)
    x = torch.randn(5, 96) * 3
    h = numerics.rms_norm(x, norm.weight, norm.eps)
    torch.testing.assert_close(layer(x, norm=norm), layer(h))


def test_constructor_and_bad_arguments():
    layer = BitLinearLRC(64, 32, rank=4)
    assert layer.rank == 4 and "rank=4" in repr(layer)
    with pytest.raises(ValueError, match="rank must be"):
        BitLinearLRC(64, 32, rank=33)
    with pytest.raises(ValueError, match="rank_ratio"):
        BitLinearLRC(64, 32, rank_ratio=0.0)
    with pytest.raises(ValueError, match="unknown LRC init"):
        layer.reset_lrc("zeros")
    with pytest.raises(ValueError, match="BitLinear or nn.Linear"):
        BitLinearLRC.from_bitlinear(torch.nn.Conv1d(3, 3, 1))
