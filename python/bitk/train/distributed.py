"""Scale-out for `python -m bitk.train`: the same loop under torchrun, as DDP or FSDP2.

torchrun starts one process per device and sets RANK / WORLD_SIZE / LOCAL_RANK; `init_distributed`
reads them (gloo on CPU, NCCL on CUDA). `wrap_model` makes the model DistributedDataParallel
("ddp", the default) or shards it with FSDP2's `fully_shard` ("fsdp": every decoder layer, then
the root). Each rank reads its own shard of every global batch, so the averaged gradient (DDP's
all-reduce, FSDP2's reduce-scatter) equals the single-process gradient of the same global batch.
Checkpoints hold the full, unsharded state, gathered on rank 0 through torch.distributed.checkpoint
(DCP) state-dict helpers, so a run can resume on any number of processes. Guide: docs/distributed.md.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

__all__ = [
    "params_finite",
    "step_outcome",
    "STRATEGIES",
    "DistInfo",
    "all_reduce_mean",
    "barrier",
    "cleanup",
    "init_distributed",
    "is_fsdp",
    "load_state_for_resume",
    "no_sync",
    "optimizer_list",
    "state_dict_for_save",
    "unwrap_model",
    "wrap_model",
]

STRATEGIES = ("auto", "ddp", "fsdp")


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: its rank among world_size processes and its device."""

    rank: int
    """Global rank (0 .. world_size - 1); 0 in a single process."""
    world_size: int
    """Number of processes; 1 in a single process."""
    local_rank: int
    """Rank on this node: the index of this process's GPU."""
    device: torch.device
    """The device this process computes on (cuda:local_rank under torchrun on GPUs)."""
    is_main: bool
    """rank == 0: the process that logs, writes checkpoints and exports."""
    enabled: bool
    """A process group is in use (world_size > 1); False makes every helper here a no-op."""


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError as e:
        raise ValueError(f"environment variable {name}={value!r} must be an integer (set by torchrun)") from e


def _resolve_device(device: str, local_rank: int) -> torch.device:
    if not isinstance(device, str) or device.split(":")[0] not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    kind = device.split(":")[0]
    if kind == "auto":
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    if kind == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError(f"device={device!r} asks for CUDA, but torch sees no CUDA GPU (use device=cpu)")
    if ":" in device:
        return torch.device(device)
    if local_rank >= torch.cuda.device_count():
        raise ValueError(
            f"LOCAL_RANK={local_rank} but this machine has {torch.cuda.device_count()} GPU(s): start "
            "at most one process per GPU (torchrun --nproc_per_node)"
        )
    return torch.device("cuda", local_rank)


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the process group torchrun describes in the environment, or describe a single process.

    Under torchrun (WORLD_SIZE > 1): NCCL with ``torch.cuda.set_device(local_rank)`` on CUDA, gloo
    on CPU; a process group that is already initialised (by a test harness, say) is reused. A
    single process (no torchrun, or one process) gets ``enabled=False`` and no process group.
    ``device``: "auto" (CUDA when available, else CPU), "cpu", "cuda" (cuda:LOCAL_RANK under torchrun)
    or "cuda:N" (a single process only).
    """
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    if dist.is_available() and dist.is_initialized():
        world_size, rank = dist.get_world_size(), dist.get_rank()
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"RANK={rank} and WORLD_SIZE={world_size} are inconsistent")
    if world_size > 1 and isinstance(device, str) and device.startswith("cuda:"):
        raise ValueError(
            f"device={device} names one GPU, but under torchrun each process takes the GPU of its "
            "local rank: use device=cuda (or auto)"
        )
    dev = _resolve_device(device, local_rank)
    if world_size == 1:
        return DistInfo(rank=0, world_size=1, local_rank=0, device=dev, is_main=True, enabled=False)
    if not dist.is_available():
        raise RuntimeError("this torch build has no torch.distributed: run a single process")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        kwargs: dict[str, Any] = {"backend": backend, "timeout": datetime.timedelta(minutes=30)}
        if dev.type == "cuda":
            kwargs["device_id"] = dev  # binds NCCL to this GPU at once (no guessing on the first collective)
        dist.init_process_group(**kwargs)
    return DistInfo(
        rank=rank, world_size=world_size, local_rank=local_rank, device=dev, is_main=rank == 0, enabled=True
    )


def _fsdp_module_type() -> type:
    from torch.distributed.fsdp import FSDPModule

    return FSDPModule


def is_fsdp(model: nn.Module) -> bool:
    """Whether ``model`` is sharded by FSDP2's fully_shard."""
    return isinstance(model, _fsdp_module_type())


def wrap_model(model: nn.Module, info: DistInfo, strategy: str = "auto") -> nn.Module:
    """The model ready for data-parallel training on ``info.device`` (moved there first).

    "auto" and "ddp": DistributedDataParallel (every rank holds the whole model; gradients are
    all-reduced once per optimizer step). "fsdp": FSDP2 ``fully_shard`` on every decoder layer
    (``model.model.layers[i]``), then on the root (embedding, final norm, head): parameters,
    gradients and optimizer state are sharded across ranks and each layer is gathered just in
    time. The optimizer must be built on the returned model's parameters (FSDP2 replaces them by
    DTensors). Not enabled: the model itself, moved to the device.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"distributed must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    model = model.to(info.device)
    if not info.enabled:
        return model
    if strategy in ("auto", "ddp"):
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [info.device.index] if info.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids)
    from torch.distributed.fsdp import fully_shard

    layers = getattr(getattr(model, "model", None), "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise ValueError(
            f"distributed=fsdp shards the decoder layers at model.model.layers; {type(model).__name__} has none "
            "(use distributed=ddp)"
        )
    for layer in layers:
        fully_shard(layer)
    fully_shard(model)
    return model


def unwrap_model(model: nn.Module) -> nn.Module:
    """The user's module inside a DDP wrapper (FSDP2 shards in place: the model itself)."""
    return getattr(model, "module", model) if type(model).__name__ == "DistributedDataParallel" else model


@contextlib.contextmanager
def no_sync(model: nn.Module, info: DistInfo, last_micro_step: bool) -> Iterator[None]:
    """Run one micro-step's forward and backward; synchronise gradients only on the last one.

    DDP: ``model.no_sync()`` on the earlier micro-steps (gradients accumulate locally, one
    all-reduce at the end). FSDP2: ``set_requires_gradient_sync(last_micro_step)`` (unsharded
    gradients accumulate locally, one reduce-scatter at the end; this costs a full-size gradient
    per rank during accumulation). Not enabled: nothing.
    """
    if not info.enabled:
        yield
    elif is_fsdp(model):
        model.set_requires_gradient_sync(last_micro_step)
        yield
    elif not last_micro_step and hasattr(model, "no_sync"):
        with model.no_sync():
            yield
    else:
        yield


def all_reduce_mean(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """The mean of ``t`` over all ranks (a new tensor; ``t`` itself when not enabled). Collective."""
    if not info.enabled:
        return t
    out = t.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / info.world_size


def optimizer_list(optimizer: Any) -> list[torch.optim.Optimizer]:
    """The torch optimizers inside ``optimizer``: itself, or the parts of a combined one (``.optimizers``)."""
    if isinstance(optimizer, torch.optim.Optimizer):
        return [optimizer]
    parts = getattr(optimizer, "optimizers", None)
    if parts is None:
        raise ValueError(
            f"{type(optimizer).__name__} is neither a torch.optim.Optimizer nor a combined optimizer with .optimizers"
        )
    parts = list(parts)
    if not parts or not all(isinstance(p, torch.optim.Optimizer) for p in parts):
        raise ValueError(f"{type(optimizer).__name__}.optimizers must be a non-empty list of torch optimizers")
    return parts


def _options(info: DistInfo, **kwargs: Any):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=info.enabled, **kwargs)


def state_dict_for_save(model: nn.Module, optimizer: Any, info: DistInfo) -> tuple[dict, dict]:
    """The full (unsharded) model and optimizer state as (model_sd, optim_sd), on CPU on rank 0.

    Collective: every rank must call it; ranks other than 0 get empty dicts when enabled. Both
    dicts use the model's own parameter names (no DDP ``module.`` prefix) whatever the wrapper,
    and the optimizer state is keyed by those names too (DCP's format), so a checkpoint from any
    number of processes resumes on any other number. A combined optimizer (``.optimizers``, e.g.
    AdamW + Muon) gives one dict holding all its parts. In a single CPU process (or DDP on CPU)
    the tensors may be the live parameters and optimizer state: write them out before the next step.
    """
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    options = _options(info)
    model_sd = get_model_state_dict(model, options=options)
    optim_sd = get_optimizer_state_dict(model, optimizer_list(optimizer), options=options)
    return model_sd, optim_sd


def load_state_for_resume(
    model: nn.Module, optimizer: Any, model_sd: dict | None, optim_sd: dict | None, info: DistInfo
) -> None:
    """Load the full state written by `state_dict_for_save` into the (wrapped) model and optimizer.

    Collective. Either every rank passes the state read from the checkpoint, or only rank 0 does
    (the others pass None or {}): then rank 0's state is broadcast, so only one process per job
    needs the checkpoint in memory. FSDP2 keeps each rank's shard of it.
    """
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    have = bool(model_sd) and bool(optim_sd)
    broadcast = False
    if info.enabled:
        flags = torch.tensor([int(have), int(have or info.rank != 0)], device=info.device)
        dist.all_reduce(flags, op=dist.ReduceOp.MIN)
        every_rank, rank0 = bool(flags[0]), bool(flags[1])
        if not rank0:
            raise ValueError("load_state_for_resume: rank 0 has no model/optimizer state to load")
        broadcast = not every_rank
    elif not have:
        raise ValueError("load_state_for_resume: no model/optimizer state to load")
    options = _options(info, broadcast_from_rank0=broadcast)
    # DCP replaces entries of the dicts it is given (by DTensors, broadcast copies): give it its own.
    set_model_state_dict(model, _copy_tree(model_sd or {}), options=options)
    set_optimizer_state_dict(model, optimizer_list(optimizer), _copy_tree(optim_sd or {}), options=options)


def _copy_tree(obj: Any) -> Any:
    """New dicts and lists all the way down; the tensors and other leaves are shared."""
    if isinstance(obj, dict):
        return {k: _copy_tree(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_copy_tree(v) for v in obj]
    return obj


def barrier(info: DistInfo) -> None:
    """Wait for every rank (no-op when not enabled)."""
    if info.enabled:
        if info.device.type == "cuda":
            dist.barrier(device_ids=[info.device.index])
        else:
            dist.barrier()


def cleanup(info: DistInfo) -> None:
    """Leave the process group (no-op when not enabled or already left)."""
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def step_outcome(
    loss: torch.Tensor, grad_norm: torch.Tensor, stop_requested: bool, info: DistInfo
) -> tuple[float, float, bool]:
    """(loss, gradient norm, stop now) of a step, the same on every process: one host sync.

    ``stop_requested``: this process saw SIGTERM / SIGINT.

    Under torchrun the loss is averaged over the processes (the norm already is global) and a stop
    request seen by any process stops all of them, so they never disagree about the next collective.
    """
    values = torch.stack([loss.detach().float(), grad_norm.detach().float().to(loss.device)])
    if not info.enabled:
        loss_value, norm_value = values.tolist()
        return loss_value, norm_value, stop_requested
    flag = values.new_tensor([float(stop_requested)])
    reduced = all_reduce_mean(torch.cat([values[:1], flag]), info)  # the norm is global already
    loss_value, stop_value, norm_value = torch.cat([reduced, values[1:]]).tolist()
    return loss_value, norm_value, stop_value > 0


@torch.no_grad()
def params_finite(model: torch.nn.Module, info: DistInfo) -> bool:
    """Every weight is finite, on every process (FSDP2: each checks its shards)."""
    local = [getattr(p, "to_local", lambda p=p: p)() for p in model.parameters()]
    bad = torch.zeros((), device=info.device)
    for p in local:
        bad += (~torch.isfinite(p)).any().float().to(bad.device)
    return all_reduce_mean(bad, info).item() == 0
