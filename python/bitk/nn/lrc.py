"""BitLinearLRC: BitLinear plus a low-rank correction (LRC, arXiv 2412.07902; docs/numerics.md).

``y = BitLinear(x) + (x V) U`` with x the full-precision input (before activation quantization),
V [in, r], U [r, out], r = ratio * min(in, out). Calibration trains only U and V with the ternary
weights frozen. U and V must not both start at zero (their gradients would stay zero): the default
initialises them from a truncated SVD of the quantization residual ``W - Wt * gamma``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from . import functional as F
from .bitlinear import BitLinear
from .norm import RMSNorm

__all__ = ["BitLinearLRC"]

_INITS = ("svd", "random")


class BitLinearLRC(BitLinear):
    """A BitLinear with trainable low-rank factors ``lrc_v`` [in, r] and ``lrc_u`` [r, out]."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        rank: int | None = None,
        rank_ratio: float = 0.1,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self._add_factors(_rank(in_features, out_features, rank, rank_ratio))
        self.reset_lrc("random")

    @property
    def rank(self) -> int:
        return self.lrc_v.shape[1]

    @classmethod
    def from_bitlinear(
        cls,
        layer: nn.Linear,
        rank: int | None = None,
        rank_ratio: float = 0.1,
        init: str = "svd",
        freeze_ternary: bool = True,
    ) -> BitLinearLRC:
        """Wrap a BitLinear (or nn.Linear) sharing its weight and bias; U, V initialised by ``init``.

        ``freeze_ternary`` (default) turns off the gradients of the weight and bias, as LRC
        calibration trains only the low-rank factors.
        """
        if not isinstance(layer, nn.Linear):
            raise ValueError(f"from_bitlinear takes a BitLinear or nn.Linear, got {type(layer).__name__}")
        new = cls.from_linear(layer)  # shares weight and bias
        new.quant_lambda = getattr(layer, "quant_lambda", 1.0)
        new._add_factors(_rank(layer.in_features, layer.out_features, rank, rank_ratio))
        new.reset_lrc(init)
        if freeze_ternary:
            new.freeze_ternary()
        return new

    def _add_factors(self, r: int) -> None:
        """Uninitialised factors ``lrc_v`` [in, r] and ``lrc_u`` [r, out] on the weight's device and dtype."""
        factory = {"device": self.weight.device, "dtype": self.weight.dtype}
        self.lrc_v = nn.Parameter(torch.empty(self.in_features, r, **factory))
        self.lrc_u = nn.Parameter(torch.empty(r, self.out_features, **factory))

    def freeze_ternary(self) -> None:
        """Stop training the latent ternary weights (and bias): only U and V learn."""
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)

    @torch.no_grad()
    def reset_lrc(self, init: str = "svd") -> None:
        """``svd``: U, V from the top singular triplets of ``W - Wt * gamma`` (the best rank-r fix of
        the quantization error); ``random``: V small random, U zero (the output starts unchanged)."""
        if init not in _INITS:
            raise ValueError(f"unknown LRC init {init!r}; expected one of {', '.join(_INITS)}")
        if init == "random":
            self.lrc_v.normal_(0.0, 1.0 / math.sqrt(self.in_features))
            self.lrc_u.zero_()
            return
        codes, gamma = self.quantized_weight()
        residual = self.weight.float() - codes.float() * gamma  # [out, in]
        # residual^T = P S Q^T (P [in, r]); x residual^T ~ (x P sqrt(S)) (sqrt(S) Q^T).
        p, sv, qh = torch.linalg.svd(residual.T.double(), full_matrices=False)
        r = self.rank
        root = sv[:r].sqrt()
        self.lrc_v.copy_(p[:, :r] * root)
        self.lrc_u.copy_(root[:, None] * qh[:r])

    def forward(self, x: torch.Tensor, norm: RMSNorm | None = None) -> torch.Tensor:
        if norm is not None:
            x = F.rms_norm(x, norm.weight, norm.eps)  # the correction needs the unquantized input
        y = super().forward(x)
        correction = (x.to(self.lrc_v.dtype) @ self.lrc_v) @ self.lrc_u
        return y + correction.to(y.dtype)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.rank}"


def _rank(in_features: int, out_features: int, rank: int | None, ratio: float) -> int:
    if rank is None:
        if not 0.0 < ratio <= 1.0:
            raise ValueError(f"rank_ratio must be in (0, 1], got {ratio}")
        rank = max(1, round(ratio * min(in_features, out_features)))
    if not 1 <= rank <= min(in_features, out_features):
        raise ValueError(f"rank must be in [1, min(in, out) = {min(in_features, out_features)}], got {rank}")
    return rank
