"""Reference RMSNorm, the norm of BitNet b1.58 (arXiv 2402.17764) and of its SubLN block.

``y = x / sqrt(mean(x^2) + eps) * g`` over the last dimension, with statistics in float32
whatever the input dtype (float64 stays float64) and the output in x's dtype. Plain torch ops,
so autograd gives the reference backward that fused norm kernels are tested against.
"""

from __future__ import annotations

import torch

__all__ = ["rms_norm"]


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """RMS-normalize the last dimension of ``x`` and multiply by the gain ``weight`` ([features])."""
    if not x.is_floating_point():
        raise ValueError(f"x must be a floating point tensor, got dtype {x.dtype}")
    if x.dim() < 1:
        raise ValueError(f"x must have a feature dimension, got shape {tuple(x.shape)}")
    if weight.shape != (x.shape[-1],):
        raise ValueError(
            f"weight shape {tuple(weight.shape)} does not match x's feature dimension: expected ({x.shape[-1]},)"
        )
    cd = torch.float64 if x.dtype == torch.float64 else torch.float32
    xc = x.to(cd)
    rms = torch.sqrt(xc.square().mean(dim=-1, keepdim=True) + eps)
    # The gain is applied in the statistics dtype too, then one rounding to x's dtype.
    return (xc / rms * weight.to(cd)).to(x.dtype)
