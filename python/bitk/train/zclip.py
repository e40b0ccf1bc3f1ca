"""Gradient clipping: ZClip (Kumar et al. 2025, arXiv 2504.02507), plain norm clipping, or none.

ZClip as docs/numerics.md "ZClip" states it (reference code: github.com/bluorion-com/ZClip):

- warm-up: the first ``warmup_steps`` calls only record the total gradient norm g (and clip to
  ``max_grad_norm`` when it is set); after the last of them mu = mean(g), var = mean((g - mu)^2);
- then each call: ``z = (g - mu) / (sqrt(var) + 1e-6)``; when z > z_thresh the norm is clipped to
  ``(mu + z_thresh^2 * sqrt(var) / z) * clip_factor`` (that is mu + z_thresh * std / (z / z_thresh)),
  and never above ``max_grad_norm`` when set; the statistics are updated with g* = min(g, that
  ZClip threshold): ``mu = a*mu + (1-a)*g*``, then ``var = a*var + (1-a)*(g* - mu)^2`` with the
  updated mu. As in the reference code, the fixed ``max_grad_norm`` cap clips the gradients but
  does not feed the statistics, so the adaptive threshold keeps tracking the real norms.
- a non-finite g (inf/NaN gradients) leaves the statistics as they were (the loop skips that step).

No host synchronisation: the norm, the statistics and the clipping decision are device tensors
(``torch.where``/``clamp``), the gradients are scaled by a tensor coefficient; only the call count
lives on the host. Under DDP the gradients are already averaged, so every rank computes the same
norm and keeps the same statistics. Under FSDP2 the gradients are DTensors:
``torch.nn.utils.get_total_norm`` reduces over the shards and ``full_tensor()`` makes the norm a
plain tensor equal on every rank (a collective, not a host sync), as torchtitan does.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from .config import CLIPS

__all__ = ["ZClip", "clip_gradients", "make_zclip", "scale_grads_", "total_grad_norm"]

_EPS = 1e-6


def total_grad_norm(parameters: Iterable[torch.Tensor]) -> torch.Tensor:
    """L2 norm of all gradients together, a float32 0-dim tensor on the gradients' device (DTensor-aware)."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.zeros((), dtype=torch.float32)
    norm = torch.nn.utils.get_total_norm(grads, norm_type=2.0, error_if_nonfinite=False)
    full_tensor = getattr(norm, "full_tensor", None)  # a DTensor under FSDP2
    if full_tensor is not None:
        norm = full_tensor()
    return norm.float()


@torch.no_grad()
def scale_grads_(parameters: Iterable[torch.Tensor], coef: torch.Tensor) -> None:
    """Multiply every gradient in place by the 0-dim tensor ``coef`` (no host sync)."""
    by_device: dict[torch.device, list[torch.Tensor]] = {}
    for p in parameters:
        if p.grad is not None:
            by_device.setdefault(p.grad.device, []).append(p.grad)
    for device, grads in by_device.items():
        c = coef.to(device)
        try:
            torch._foreach_mul_(grads, c)
        except (RuntimeError, NotImplementedError):  # mixed dtypes or tensor subclasses without foreach
            for g in grads:
                g.mul_(c.to(g.dtype))


def _clip_to(parameters: list[torch.Tensor], norm: torch.Tensor, limit: torch.Tensor | float) -> None:
    """Scale the gradients so their norm is at most ``limit`` (coefficient min(1, limit / (norm + 1e-6)))."""
    coef = torch.clamp(limit / (norm + _EPS), max=1.0)
    # a non-finite norm would spread NaN to every gradient; leave them as they are (the step is skipped)
    coef = torch.where(torch.isfinite(coef), coef, torch.ones_like(coef))
    scale_grads_(parameters, coef)


class ZClip:
    """Adaptive z-score gradient clipping (module doc). ``zclip(parameters)`` after backward, before step.

    Returns the total gradient norm before clipping, as a 0-dim float32 tensor on the gradients'
    device. ``state_dict()``/``load_state_dict()`` carry the statistics for an exact resume.
    """

    def __init__(
        self,
        alpha: float = 0.97,
        z_thresh: float = 2.5,
        warmup_steps: int = 25,
        clip_factor: float = 1.0,
        max_grad_norm: float | None = None,
    ) -> None:
        if not 0.0 < alpha < 1.0:
            raise ValueError(f"ZClip alpha must be in (0, 1), got {alpha!r}")
        if not z_thresh > 0:
            raise ValueError(f"ZClip z_thresh must be positive, got {z_thresh!r}")
        if not isinstance(warmup_steps, int) or isinstance(warmup_steps, bool) or warmup_steps < 1:
            raise ValueError(f"ZClip warmup_steps must be a positive integer, got {warmup_steps!r}")
        if not clip_factor > 0:
            raise ValueError(f"ZClip clip_factor must be positive, got {clip_factor!r}")
        if max_grad_norm is not None and not max_grad_norm > 0:
            raise ValueError(f"ZClip max_grad_norm must be positive or None, got {max_grad_norm!r}")
        self.alpha = float(alpha)
        self.z_thresh = float(z_thresh)
        self.warmup_steps = warmup_steps
        self.clip_factor = float(clip_factor)
        self.max_grad_norm = None if max_grad_norm is None else float(max_grad_norm)
        self.steps = 0  # calls so far (host counter; no sync needed to know the phase)
        self.mean: torch.Tensor | None = None  # EMA statistics, after the warm-up
        self.var: torch.Tensor | None = None
        self._warmup_norms: torch.Tensor | None = None  # [warmup_steps] norms seen during the warm-up

    @property
    def initialized(self) -> bool:
        return self.steps >= self.warmup_steps

    @torch.no_grad()
    def __call__(self, parameters: Iterable[torch.Tensor]) -> torch.Tensor:
        params = list(parameters)
        g = total_grad_norm(params)
        if not self.initialized:
            self._record_warmup(g)
            if self.max_grad_norm is not None:
                _clip_to(params, g, self.max_grad_norm)
            return g
        mean, var = self.mean.to(g.device), self.var.to(g.device)
        std = var.sqrt()
        z = (g - mean) / (std + _EPS)
        spike = z > self.z_thresh
        threshold = (mean + self.z_thresh**2 * std / z) * self.clip_factor
        clipped = torch.where(spike, torch.minimum(g, threshold), g)  # g*: what the statistics see
        limit = clipped if self.max_grad_norm is None else torch.clamp(clipped, max=self.max_grad_norm)
        _clip_to(params, g, limit)
        finite = torch.isfinite(g)
        new_mean = self.alpha * mean + (1.0 - self.alpha) * clipped
        new_var = self.alpha * var + (1.0 - self.alpha) * (clipped - new_mean) ** 2
        self.mean = torch.where(finite, new_mean, mean)
        self.var = torch.where(finite, new_var, var)
        self.steps += 1
        return g

    def _record_warmup(self, g: torch.Tensor) -> None:
        if self._warmup_norms is None:
            self._warmup_norms = torch.zeros(self.warmup_steps, dtype=torch.float32, device=g.device)
        buf = self._warmup_norms.to(g.device)
        buf[self.steps] = g  # index_put with a host index: no sync
        self._warmup_norms = buf
        self.steps += 1
        if self.steps == self.warmup_steps:
            self._finish_warmup()

    def _finish_warmup(self) -> None:
        """Population mean and variance of the finite norms of the warm-up."""
        buf = self._warmup_norms
        finite = torch.isfinite(buf)
        count = finite.sum().clamp(min=1).float()
        values = torch.where(finite, buf, torch.zeros_like(buf))
        self.mean = values.sum() / count
        self.var = torch.where(finite, (values - self.mean) ** 2, torch.zeros_like(buf)).sum() / count
        self._warmup_norms = None

    def state_dict(self) -> dict[str, Any]:
        """The statistics (CPU tensors), or the norms recorded so far during the warm-up, and the call count."""

        def cpu(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.detach().to("cpu", copy=True)

        recorded = None if self._warmup_norms is None else self._warmup_norms[: self.steps]
        return {"steps": self.steps, "mean": cpu(self.mean), "var": cpu(self.var), "warmup_norms": cpu(recorded)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned (the tensors move to the gradients' device on the next call).

        The hyperparameters stay those given to ``__init__``. A resumed run with another
        ``warmup_steps`` keeps finished statistics, and a warm-up in progress keeps the norms
        recorded so far (finishing at once when they are already enough).
        """
        steps = int(state["steps"])
        if state["mean"] is not None:  # warm-up over
            self.mean = state["mean"].detach().clone().float()
            self.var = state["var"].detach().clone().float()
            self._warmup_norms = None
            self.steps = max(steps, self.warmup_steps)
            return
        recorded = state.get("warmup_norms")
        n = min(steps, self.warmup_steps)
        if n and (recorded is None or recorded.numel() < n):
            raise ValueError(f"ZClip state says {steps} warm-up steps ran but holds no norms for them")
        self.mean = self.var = None
        self._warmup_norms = torch.zeros(self.warmup_steps, dtype=torch.float32)
        if n:
            self._warmup_norms[:n] = recorded[:n].float()
        self.steps = n
        if n == self.warmup_steps:
            self._finish_warmup()


def clip_gradients(parameters: Iterable[torch.Tensor], cfg: Any, zclip: ZClip | None) -> torch.Tensor:
    """Clip as ``cfg.clip`` says and return the total gradient norm before clipping (0-dim tensor, no sync).

    "zclip": ``zclip(parameters)``; "norm": scale to at most ``cfg.max_grad_norm``
    (`torch.nn.utils.clip_grad_norm_`'s formula); "none": only the norm.
    """
    mode = cfg.clip
    params = list(parameters)
    if mode == "zclip":
        if zclip is None:
            raise ValueError("clip='zclip' needs a ZClip instance")
        return zclip(params)
    if mode == "norm":
        norm = total_grad_norm(params)
        _clip_to(params, norm, float(cfg.max_grad_norm))
        return norm
    if mode == "none":
        return total_grad_norm(params)
    raise ValueError(f"unknown clip mode {mode!r}; modes: {', '.join(CLIPS)}")


def make_zclip(cfg: Any) -> ZClip | None:
    """The ZClip a TrainingConfig asks for (None unless cfg.clip == "zclip"); zclip_max_grad_norm caps it."""
    if cfg.clip != "zclip":
        return None
    return ZClip(
        alpha=cfg.zclip_alpha,
        z_thresh=cfg.zclip_z_thresh,
        warmup_steps=cfg.zclip_warmup_steps,
        clip_factor=cfg.zclip_factor,
        max_grad_norm=cfg.zclip_max_grad_norm,
    )
