"""The CPU fast path of BitNet's gated ReLU^2, ``square(relu(gate)) * up``: torch's bits in one pass.

Autograd on the three torch ops makes about ten passes over [tokens, intermediate] tensors per
forward and backward, and keeps relu's and square's outputs. Here the forward is one C++ pass
(`bitk._codecs.relu2_gate`) and the backward one more (`relu2_gate_backward`), which recomputes
``relu(gate)`` from gate; each value is the float32 operations of torch's ops and autograd's
formulas in their order, so values and gradients equal torch's bit for bit
(tests/nn/test_cpu_gate.py). Only gate and up are kept for the backward.

The op pair is torch.library custom ops (``bitk::cpu_relu2_gate`` and its backward), so
torch.compile takes each as one op; eager calls run the same functions as a
torch.autograd.Function (`bitk.nn.eager`). Traced, or without the extension, the same formulas run
as torch ops.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .cpu_extension import codecs as _extension
from .cpu_extension import contiguous_data, dense_float32_cpu
from .cpu_extension import numpy_view as _np
from .eager import autograd_twin, traced

__all__ = ["applies", "relu2_gate"]


def _codecs():
    """bitk._codecs on torch's threads, or None without the extension."""
    return _extension("relu2_gate")


def applies(gate: torch.Tensor, up: torch.Tensor) -> bool:
    """True when this path computes ``square(relu(gate)) * up``: contiguous float32 CPU tensors of
    one shape with a last dimension."""
    return dense_float32_cpu(gate, up) and gate.dim() >= 1 and gate.shape == up.shape


def _fused(*tensors: torch.Tensor):
    """bitk._codecs where every tensor is a real contiguous tensor, else None (torch's ops)."""
    if not contiguous_data(*tensors):
        return None
    return _codecs()


def _forward(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    codecs = _fused(gate, up)
    if codecs is None:
        return torch.square(F.relu(gate)) * up
    flat = (-1, gate.shape[-1])
    return torch.from_numpy(codecs.relu2_gate(_np(gate.reshape(flat)), _np(up.reshape(flat)))).view(gate.shape)


def _relu2_gate(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """``square(relu(gate)) * up`` of float32 gate and up of one shape."""
    return _forward(gate, up)


_relu2_gate_op = torch.library.custom_op("bitk::cpu_relu2_gate", _relu2_gate, mutates_args=(), device_types="cpu")


@_relu2_gate_op.register_fake
def _(gate, up):
    return torch.empty_like(gate)


def _relu2_gate_backward(
    gh: torch.Tensor, gate: torch.Tensor, up: torch.Tensor, gate_grad: bool, up_grad: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """(gate's gradient, up's gradient; empty tensors where not asked) for h's gradient gh:
    autograd's formulas on ``square(relu(gate)) * up``, in their order."""
    codecs = _fused(gh, gate, up)
    if codecs is not None:
        flat = (-1, gate.shape[-1])
        gg, gu = codecs.relu2_gate_backward(
            _np(gate.reshape(flat)), _np(up.reshape(flat)), _np(gh.reshape(flat)), gate_grad, up_grad
        )
        empty = gate.new_empty(0)
        return (
            torch.from_numpy(gg).view(gate.shape) if gate_grad else empty,
            torch.from_numpy(gu).view(gate.shape) if up_grad else empty,
        )
    r = F.relu(gate)
    dgate = torch.where(r <= 0, 0.0, (gh * up) * (2 * r)) if gate_grad else gate.new_empty(0)
    dup = gh * torch.square(r) if up_grad else gate.new_empty(0)
    return dgate, dup


_relu2_gate_backward_op = torch.library.custom_op(
    "bitk::cpu_relu2_gate_backward", _relu2_gate_backward, mutates_args=(), device_types="cpu"
)


@_relu2_gate_backward_op.register_fake
def _(gh, gate, up, gate_grad, up_grad):
    return (torch.empty_like(gate) if gate_grad else gate.new_empty(0)), (
        torch.empty_like(up) if up_grad else up.new_empty(0)
    )


def _setup_context(ctx, inputs, output) -> None:
    ctx.save_for_backward(*inputs)


def _backward(ctx, gh):
    gate, up = ctx.saved_tensors
    gate_grad, up_grad = ctx.needs_input_grad
    backward = _relu2_gate_backward_op if traced(gh, gate, up) else _relu2_gate_backward
    dgate, dup = backward(gh, gate, up, gate_grad, up_grad)
    return (dgate if gate_grad else None), (dup if up_grad else None)


_relu2_gate_op.register_autograd(_backward, setup_context=_setup_context)
_relu2_gate_eager = autograd_twin("CpuRelu2Gate", _relu2_gate, _setup_context, _backward)


def relu2_gate(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """torch's ``square(relu(gate)) * up`` and its gradients, for tensors where `applies` holds."""
    if traced(gate, up):
        return _relu2_gate_op(gate, up)
    if torch.is_grad_enabled() and (gate.requires_grad or up.requires_grad):
        return _relu2_gate_eager(gate, up)
    return _forward(gate, up)
