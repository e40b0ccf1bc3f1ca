"""RMSNorm and SubLN modules (BitNet b1.58 2B4T block; docs/numerics.md "SubLN and the BitNet block").

`SubLN` is the extra RMSNorm BitNet puts before the attention output projection and before the
FFN down projection; converting a full-precision model inserts it with gain 1. Passing it to the
BitLinear that follows (``proj(h, norm=sub_norm)``) lets the Triton path fuse the two.
"""

from __future__ import annotations

import torch
from torch import nn

from . import functional as F

__all__ = ["RMSNorm", "SubLN"]


class RMSNorm(nn.Module):
    """``y = x / sqrt(mean(x^2) + eps) * weight`` over the last dimension, statistics in float32."""

    def __init__(self, dim: int, eps: float = 1e-5, device=None, dtype=None) -> None:
        super().__init__()
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        if not eps > 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        self.dim, self.eps = dim, eps
        self.weight = nn.Parameter(torch.ones(dim, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, self.weight, self.eps)

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps}"


class SubLN(RMSNorm):
    """The SubLN of a BitNet block: an RMSNorm (gain initialised to 1) before a BitLinear."""
