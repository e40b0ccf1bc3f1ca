"""Shared helpers of the bitk.nn tests (imported as `bitk_nn_testing`).

The tests of the "triton" backend run on CUDA when there is a GPU (the kernels are compiled then:
the root conftest switches Triton's interpreter on only without one) and on CPU tensors in the
interpreter otherwise, as the kernel tests do (tests/triton_kernels/conftest.py).
"""

from __future__ import annotations

import sys

import pytest
import torch

sys.modules["bitk_nn_testing"] = sys.modules[__name__]

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# Tests of the kernels that build their tensors with the default device (torch.randn, the layers' init).
KERNEL_TESTS = {"test_triton_path_matches_the_reference"}
# ... and those whose inputs are CPU-only: a CPU autocast, a CPU model from a module-scoped fixture.
CPU_ONLY_KERNEL_TESTS = {"test_autocast_returns_the_autocast_dtype", "test_triton_kernels_follow_the_reference"}


@pytest.fixture(autouse=True)
def triton_backend_on_device(request):
    """With a GPU, run each test of the "triton" backend with CUDA as the default device."""
    node = request.node
    backend = node.callspec.params.get("backend") if hasattr(node, "callspec") else None
    kernels = backend == "triton" if backend else node.originalname in KERNEL_TESTS | CPU_ONLY_KERNEL_TESTS
    if DEVICE == "cpu" or not kernels:
        yield
        return
    if node.originalname in CPU_ONLY_KERNEL_TESTS:
        pytest.skip("its inputs are CPU-only; the compiled kernels take CUDA tensors (runs in the CPU interpreter)")
    with torch.device(DEVICE):
        yield


@pytest.fixture
def float32_backward(monkeypatch):
    """The CPU path's backward in float32: the reference's formulas, so its gradients are the reference's
    bit for bit (the default, bf16 where the CPU multiplies it natively, has its own tests)."""
    monkeypatch.setenv("BITK_CPU_BACKWARD", "float32")


def exact_grads(x: torch.Tensor, weight: torch.Tensor, dy: torch.Tensor):
    """float64 (dx, dW) of BitLinear from float32 quantization: the limit every path rounds."""
    from bitk import numerics

    codes, gamma = numerics.quantize_weights(weight.detach().float())
    xq, s = numerics.quantize_activations(x.detach().reshape(-1, x.shape[-1]).float())
    dy2 = dy.reshape(-1, weight.shape[0]).double()
    dx = (dy2 @ (codes.double() * gamma.double())).reshape(x.shape)
    dw = dy2.T @ (xq.double() / s.double())
    return dx, dw
