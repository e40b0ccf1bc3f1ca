"""Functional forms of the bitk.nn layers, dispatched per device (see `bitk.nn.dispatch`)."""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

from bitk import numerics

from . import cpu, cpu_gate, cpu_norm
from .dispatch import kernel_module, resolve

__all__ = ["bitlinear", "relu2_gate", "rms_norm"]


def _check_lam(lam: float | torch.Tensor) -> bool:
    """True when lam asks for quantization warm-up (lam != 1); a tensor lam always does."""
    if isinstance(lam, torch.Tensor):
        if lam.dim() != 0:
            raise ValueError(f"lam must be a float or a 0-dim tensor, got shape {tuple(lam.shape)}")
        return True  # comparing a device tensor with 1 would sync the host
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam (quantization warm-up) must be in [0, 1], got {lam}")
    return lam != 1.0


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """RMSNorm of the last dimension (statistics in float32): the Triton kernel on CUDA, the C++
    passes of `bitk.nn.cpu_norm` for float32 on the CPU (the reference's bits), else the reference."""
    if resolve(x.device) == "triton" and x.dtype != torch.float64:
        return kernel_module("rms_norm").rms_norm(x, weight, eps)
    if resolve(x.device) == "cpu" and cpu_norm.applies(x, weight):
        return cpu_norm.rms_norm(x, weight, eps)  # the reference's bits, fewer passes, only x kept
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        # The reference keeps three full-size intermediates for its backward; recomputing them from
        # the input (the same ops, so the same gradients bit for bit) keeps only the input.
        return checkpoint(numerics.rms_norm, x, weight, eps, use_reentrant=False)
    return numerics.rms_norm(x, weight, eps)


def relu2_gate(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """BitNet's gated ReLU^2 ``square(relu(gate)) * up``: one C++ pass each way for float32 on the
    CPU (`bitk.nn.cpu_gate`, torch's bits, only gate and up kept), else torch's ops."""
    if resolve(gate.device) == "cpu" and cpu_gate.applies(gate, up):
        return cpu_gate.relu2_gate(gate, up)
    return torch.square(torch.nn.functional.relu(gate)) * up


def bitlinear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    lam: float | torch.Tensor = 1.0,
    norm_weight: torch.Tensor | None = None,
    norm_eps: float = 1e-6,
) -> torch.Tensor:
    """BitLinear (BitNet b1.58): ternary weights, per-token int8 activations, STE backward.

    ``lam`` < 1 is quantization warm-up (``W + lam * (Q(W) - W)``, not ternary, so it runs the
    fake-quant reference). With ``norm_weight`` the input first goes through an RMSNorm with that
    gain (a SubLN); the Triton path fuses it with the activation quantization.
    """
    warmup = _check_lam(lam)
    impl = resolve(x.device)
    # The kernels take float32/16/bf16; float64 goes to the reference, which computes in float64.
    kernels = impl == "triton" and not warmup and torch.float64 not in (x.dtype, weight.dtype)
    if norm_weight is not None:
        if kernels and norm_weight.dtype != torch.float64:
            return kernel_module("bitlinear").rms_norm_bitlinear(x, norm_weight, weight, bias, norm_eps)
        x = rms_norm(x, norm_weight, norm_eps)
    if kernels:
        return kernel_module("bitlinear").bitlinear(x, weight, bias)
    if impl == "cpu" and not warmup:
        return cpu.bitlinear(x, weight, bias)
    if warmup and not isinstance(lam, torch.Tensor) and torch.compiler.is_compiling():
        # torch.compile specializes a float that reaches torch.lerp as a scalar: one graph per warm-up
        # step until the recompile limit. As an exact float64 tensor it stays an input of one graph.
        lam = torch.ones((), dtype=torch.float64, device=x.device) * lam
    y = numerics.bitlinear_fake_quant(x, weight, bias, lam) if warmup else numerics.bitlinear(x, weight, bias)
    # The reference returns x's dtype; under autocast give the autocast dtype, as nn.Linear and the other paths do.
    return y.to(numerics.linear_output_dtype(x))
