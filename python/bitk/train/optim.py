"""The optimizer: AdamW, or torch's Muon for the hidden matrices with AdamW for the rest.

Parameter groups, by name and shape (names as `CausalLM.named_parameters()` gives them; a DDP
``module.`` prefix or FSDP2 wrapping does not change the rule):

| parameters | "adamw" | "muon" |
|---|---|---|
| 2-D projection weights (q/k/v/o, gate/up/down) | AdamW, weight decay | Muon (lr ``muon_lr``, weight decay) |
| low-rank correction factors ``lrc_u`` / ``lrc_v`` | AdamW, weight decay | AdamW, weight decay |
| embedding, output head (``embed_tokens``, ``lm_head``) | AdamW, no decay | AdamW, no decay |
| 1-D: norm gains, biases | AdamW, no decay | AdamW, no decay |

Muon orthogonalises whole hidden-layer updates (Newton-Schulz), which is meant for matrices that map
hidden features to hidden features; the embedding and head are lookups/classifiers and the norms
and biases are vectors, so they stay on AdamW (Keller Jordan's Muon notes; torch.optim.Muon's doc).
The LRC factors (docs/numerics.md "Low-rank correction (LRC)") are thin rank-r matrices initialised as a
truncated SVD / small random + zero pair: an orthogonalised update would give the zero factor a
full-size step at once, so they train with AdamW. Frozen parameters (requires_grad False, e.g. the
ternary weights under LRC) are left out.

AdamW is ``fused=True`` when the parameters are on CUDA and ``foreach=True`` otherwise. With
"muon" the two optimizers are combined in one `MuonAdamW` (a torch Optimizer whose param_groups
and state are those of both), so the loop, the schedule (``initial_lr`` in every group) and
checkpoints see a single optimizer. torch's Muon orthogonalises in bfloat16, which is right on GPUs
but about 100x slower than AdamW's step on a CPU without bf16 matrix units (12 s against 0.04 s per
step for the tiny preset here); on CPU the same Newton-Schulz iteration runs in float32 instead.
Under FSDP2, Muon runs on the sharded DTensor gradients and DTensor gathers what the whole-matrix
Newton-Schulz products need: with two gloo processes the update matched the unsharded one to 1e-7
after three steps (float32 iteration on CPU), at the price of communication in every iteration.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from .config import OPTIMIZERS

__all__ = ["MuonAdamW", "build_optimizer", "param_groups", "sync_hyperparameters"]

_NO_DECAY_NAMES = ("embed_tokens", "lm_head")
_ADAMW_MATRIX_NAMES = ("lrc_u", "lrc_v")


def _name_has(name: str, parts: tuple[str, ...]) -> bool:
    pieces = name.split(".")
    return any(part in pieces for part in parts)


def param_groups(model: nn.Module, muon: bool = False) -> dict[str, list[tuple[str, nn.Parameter]]]:
    """The trainable (name, parameter) pairs of each group: "muon" (only when ``muon``), "decay", "no_decay"."""
    groups: dict[str, list[tuple[str, nn.Parameter]]] = {"muon": [], "decay": [], "no_decay": []}
    for name, p in model.named_parameters():  # a tied head is listed once, as the embedding
        if not p.requires_grad:
            continue
        if p.ndim < 2 or _name_has(name, _NO_DECAY_NAMES):
            groups["no_decay"].append((name, p))
        elif muon and p.ndim == 2 and not _name_has(name, _ADAMW_MATRIX_NAMES):
            groups["muon"].append((name, p))
        else:
            groups["decay"].append((name, p))
    return groups


def _adamw_kwargs(cfg: Any, params: list[nn.Parameter]) -> dict[str, Any]:
    on_cuda = bool(params) and all(p.device.type == "cuda" for p in params)
    return {
        "betas": tuple(float(b) for b in cfg.betas),
        "eps": float(cfg.eps),
        **({"fused": True} if on_cuda else {"foreach": True}),
    }


def _adamw(groups: dict[str, list[tuple[str, nn.Parameter]]], cfg: Any) -> torch.optim.AdamW | None:
    lr = float(cfg.lr)
    specs = [("decay", float(cfg.weight_decay)), ("no_decay", 0.0)]
    adam_groups = [
        {"params": [p for _, p in groups[key]], "weight_decay": wd, "lr": lr, "initial_lr": lr, "group": key}
        for key, wd in specs
        if groups[key]
    ]
    if not adam_groups:
        return None
    params = [p for g in adam_groups for p in g["params"]]
    return torch.optim.AdamW(adam_groups, lr=lr, **_adamw_kwargs(cfg, params))


_NS_SIGNATURE = ("grad", "ns_coefficients", "ns_steps", "eps")


def _newton_schulz_float32(
    grad: torch.Tensor, ns_coefficients: tuple[float, float, float], ns_steps: int, eps: float
) -> torch.Tensor:
    """torch.optim.Muon's quintic Newton-Schulz iteration, computed in float32 instead of bfloat16."""
    a, b, c = ns_coefficients
    x = grad.float()
    tall = grad.size(0) > grad.size(1)
    if tall:
        x = x.T
    x = x / x.norm().clamp(min=eps)
    for _ in range(ns_steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if tall else x


@contextlib.contextmanager
def _float32_newton_schulz(enabled: bool) -> Iterator[None]:
    """Run torch's Muon with its orthogonalisation in float32 (CPU: bf16 matmuls there are ~10x slower).

    torch.optim.Muon calls the module-level ``_zeropower_via_newtonschulz`` at each step; it is
    swapped for the float32 twin for the duration of the step only, and only when its signature is
    the one the twin reproduces (otherwise torch's own bf16 iteration runs).
    """
    try:
        module = importlib.import_module("torch.optim._muon")
    except ImportError:
        module = None
    original = getattr(module, "_zeropower_via_newtonschulz", None)
    if (
        not enabled
        or getattr(module, "Muon", None) is not torch.optim.Muon
        or original is None
        or tuple(inspect.signature(original).parameters) != _NS_SIGNATURE
    ):
        yield
        return
    module._zeropower_via_newtonschulz = _newton_schulz_float32
    try:
        yield
    finally:
        module._zeropower_via_newtonschulz = original


class MuonAdamW(torch.optim.Optimizer):
    """torch.optim.Muon for the hidden matrices and torch.optim.AdamW for the rest, as one optimizer.

    ``param_groups`` is the Muon groups followed by the AdamW groups (the very same dicts, so
    setting ``group["lr"]`` reaches the inner optimizer) and ``state`` is shared by both, so the
    standard `Optimizer.state_dict()` / `load_state_dict()` (and torch.distributed.checkpoint's
    optimizer helpers) treat it like any single optimizer.
    """

    def __init__(self, muon: torch.optim.Muon, adamw: torch.optim.AdamW | None) -> None:
        self._muon = muon
        self._adamw = adamw
        self._n_muon_groups = len(muon.param_groups)
        groups = muon.param_groups + (adamw.param_groups if adamw is not None else [])
        super().__init__(groups, defaults={})  # keeps the group dicts themselves
        self._link()

    def _link(self) -> None:
        n = self._n_muon_groups
        self._muon.param_groups = self.param_groups[:n]
        self._muon.state = self.state
        if self._adamw is not None:
            self._adamw.param_groups = self.param_groups[n:]
            self._adamw.state = self.state

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        on_cpu = all(p.device.type == "cpu" for g in self._muon.param_groups for p in g["params"])
        with _float32_newton_schulz(on_cpu):
            self._muon.step()
        if self._adamw is not None:
            self._adamw.step()
        return loss

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)  # makes new group dicts and a new state: relink the inner ones
        self._link()


def build_optimizer(model: nn.Module, cfg: Any) -> torch.optim.Optimizer:
    """AdamW, or Muon + AdamW, over ``model``'s trainable parameters (groups in the module doc).

    Reads cfg.optimizer, lr, weight_decay, betas, eps and (for "muon") muon_lr. Every param group
    carries ``initial_lr`` (the peak the schedule scales) and ``group`` ("muon", "decay", "no_decay").
    """
    kind = cfg.optimizer
    if kind not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {kind!r}; optimizers: {', '.join(OPTIMIZERS)}")
    groups = param_groups(model, muon=kind == "muon")
    if not any(groups.values()):
        raise ValueError("the model has no trainable parameters")
    if kind == "adamw" or not groups["muon"]:
        return _adamw(groups, cfg)
    if not hasattr(torch.optim, "Muon"):
        raise ValueError(f"optimizer 'muon' needs torch.optim.Muon (torch >= 2.9); this torch is {torch.__version__}")
    muon_lr = float(cfg.muon_lr)
    muon = torch.optim.Muon(
        [{"params": [p for _, p in groups["muon"]], "lr": muon_lr, "initial_lr": muon_lr, "group": "muon"}],
        lr=muon_lr,
        weight_decay=float(cfg.weight_decay),
    )
    return MuonAdamW(muon, _adamw(groups, cfg))


def sync_hyperparameters(optimizer: torch.optim.Optimizer, cfg: Any) -> None:
    """Set each group's hyperparameters from ``cfg`` again, after ``load_state_dict`` brought the saved ones.

    ``initial_lr`` (muon_lr for the Muon group, lr for the others), ``weight_decay`` and AdamW's
    ``betas`` / ``eps``. With the config of the checkpoint this changes nothing; with a changed one
    (a new training.lr on resume, say) the new values apply from the next step.
    """
    for group in optimizer.param_groups:
        kind = group.get("group")
        if kind == "muon":
            group["initial_lr"] = float(cfg.muon_lr)
            group["weight_decay"] = float(cfg.weight_decay)
        elif kind in ("decay", "no_decay"):
            group["initial_lr"] = float(cfg.lr)
            group["weight_decay"] = float(cfg.weight_decay) if kind == "decay" else 0.0
            group["betas"] = tuple(float(b) for b in cfg.betas)
            group["eps"] = float(cfg.eps)
