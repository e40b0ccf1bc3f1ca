"""Shared helpers of the bitk.nn tests (imported as `bitk_nn_testing`)."""

from __future__ import annotations

import sys

import torch

sys.modules["bitk_nn_testing"] = sys.modules[__name__]

DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def exact_grads(x: torch.Tensor, weight: torch.Tensor, dy: torch.Tensor):
    """float64 (dx, dW) of BitLinear from float32 quantization: the limit every path rounds."""
    from bitk import numerics

    codes, gamma = numerics.quantize_weights(weight.detach().float())
    xq, s = numerics.quantize_activations(x.detach().reshape(-1, x.shape[-1]).float())
    dy2 = dy.reshape(-1, weight.shape[0]).double()
    dx = (dy2 @ (codes.double() * gamma.double())).reshape(x.shape)
    dw = dy2.T @ (xq.double() / s.double())
    return dx, dw
