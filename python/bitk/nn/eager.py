"""Eager calls of bitk's CPU custom ops without the op dispatcher's per-call cost.

Each CPU layer path (`bitk.nn.cpu`, `cpu_norm`, `cpu_gate`) is a torch.library custom op, so that
torch.compile sees one opaque op. Called from eager code, a custom op goes through torch's Python
dispatcher and its autograd wrapper, which inside a training step costs 0.2-0.4 ms more per
SmolLM2-width BitLinear than a torch.autograd.Function doing the same work (bench/perf_notes.md).
`autograd_twin` makes that Function from the op's own forward, setup_context and backward; the
op runs where torch traces (`traced`): either way the same functions compute the same bits.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .cpu_extension import holds_data

__all__ = ["autograd_twin", "traced"]


def autograd_twin(
    name: str,
    forward: Callable[..., Any],
    setup_context: Callable[[Any, tuple, Any], None],
    backward: Callable[..., tuple],
) -> Callable[..., Any]:
    """``apply`` of a torch.autograd.Function named ``name`` that runs ``forward(*inputs)``, then
    ``setup_context(ctx, inputs, output)``, and ``backward(ctx, *grads)``: what
    ``op.register_autograd(backward, setup_context=setup_context)`` gives a custom op whose kernel is
    ``forward``. The gradients of outputs that got none arrive as None, as the op's do, not as
    tensors of zeros."""

    def run_forward(ctx, *inputs):
        ctx.set_materialize_grads(False)
        output = forward(*inputs)
        setup_context(ctx, inputs, output)
        return output

    def run_backward(ctx, *grads):
        return backward(ctx, *grads)

    function = type(
        name,
        (torch.autograd.Function,),
        {"forward": staticmethod(run_forward), "backward": staticmethod(run_backward), "__doc__": forward.__doc__},
    )
    return function.apply


def traced(*tensors: torch.Tensor | None) -> bool:
    """Whether torch is tracing: torch.compile, or a tracer that hands fake, functional or other
    subclass tensors (AOT autograd, `torch.library.opcheck`); then the op must run, not its plain
    function, which reads the tensors' memory. None entries (an absent bias) are skipped."""
    return torch.compiler.is_compiling() or not holds_data(*(t for t in tensors if t is not None))
