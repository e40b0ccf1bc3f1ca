"""Find the largest micro-batch that fits, with real training steps.

``find_micro_batch(try_step, start=, limit=, device=, memory_budget_gb=)`` tries ``start``,
``2*start``, ``4*start``, ... (only sizes that divide ``limit``, the per-rank batch, so the gradient
accumulation stays an integer) and keeps the largest that fits; when ``start`` itself does not fit
it halves down to 1, and raises when even 1 does not.

What "fits" means:
- CUDA: ``try_step(mb)`` runs without ``torch.cuda.OutOfMemoryError`` (the cache is emptied after
  every try, so a failed size leaves nothing behind).
- CPU: the process's peak resident memory while ``try_step(mb)`` runs stays within
  ``memory_budget_gb`` (GiB, the whole process: weights, optimizer state, data and activations).
  On Linux the peak is VmHWM from /proc/self/status after resetting it through
  /proc/self/clear_refs ("5"), so every size is measured alone; elsewhere it is
  ``resource.getrusage().ru_maxrss``, which only grows: the search then stops at the first size over
  the budget. An allocation failure (RuntimeError "can't allocate memory", MemoryError) also means
  "does not fit".

``try_step`` must run what a real optimizer step runs at that micro-batch (forward, backward and,
for the optimizer state's memory, an optimizer step on state that is thrown away afterwards) and
leave no state behind (gradients zeroed or set to None).
"""

from __future__ import annotations

import dataclasses
import gc
import re
import resource
import sys
from collections.abc import Callable
from typing import Any

import torch

from .distributed import DistInfo, no_sync
from .optim import build_optimizer

__all__ = ["auto_micro_batch", "find_micro_batch", "peak_rss_bytes", "reset_peak_rss"]

_GIB = 1024**3


def _read_status(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024  # kB
    except OSError:
        return None
    return None


def reset_peak_rss() -> bool:
    """Reset the process's peak resident memory to the current one (Linux); False where impossible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _read_status("VmHWM") is not None
    except OSError:
        return False


def peak_rss_bytes() -> int:
    """Peak resident memory of this process in bytes (since the last `reset_peak_rss` where that works)."""
    hwm = _read_status("VmHWM")
    if hwm is not None:
        return hwm
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024  # bytes on macOS, kB on Linux


def _is_cpu_oom(exc: BaseException) -> bool:
    return isinstance(exc, MemoryError) or (
        isinstance(exc, RuntimeError) and re.search(r"can't allocate memory|not enough memory", str(exc)) is not None
    )


def _release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _fits(
    try_step: Callable[[int], None],
    mb: int,
    device: torch.device,
    budget_bytes: float,
    log: Callable[[str], None] | None,
) -> bool:
    """Run one try; True when it fits (module doc)."""
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    else:
        reset_peak_rss()
    ok = True
    try:
        try_step(mb)
        if cuda:
            torch.cuda.synchronize(device)
    except torch.cuda.OutOfMemoryError:
        ok = False
    except (RuntimeError, MemoryError) as exc:
        if cuda or not _is_cpu_oom(exc):
            raise
        ok = False
    if cuda:
        peak = torch.cuda.max_memory_allocated(device)
        what = "peak allocated"
    else:
        peak = peak_rss_bytes()
        what = "peak RSS"
        ok = ok and peak <= budget_bytes
    _release(device)
    if log is not None:
        verdict = "fits" if ok else "does not fit"
        budget = "" if cuda else f" (budget {budget_bytes / _GIB:.2f} GiB)"
        log(f"auto batch: micro-batch {mb}: {verdict}, {what} {peak / _GIB:.2f} GiB{budget}")
    return ok


def find_micro_batch(
    try_step: Callable[[int], None],
    *,
    start: int,
    limit: int,
    device: torch.device | str,
    memory_budget_gb: float,
    log: Callable[[str], None] | None = print,
) -> int:
    """The largest micro-batch ``start * 2**k <= limit`` dividing ``limit`` for which ``try_step`` fits (module doc).

    Raises ValueError for bad arguments and RuntimeError when not even a micro-batch of 1 fits.
    ``log`` receives one line per try and the choice (None: silent).
    """
    device = torch.device(device)
    if not isinstance(start, int) or start < 1 or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"start and limit must be positive integers, got start={start!r}, limit={limit!r}")
    if device.type != "cuda" and not memory_budget_gb > 0:
        raise ValueError(f"memory_budget_gb must be positive, got {memory_budget_gb!r}")
    budget = memory_budget_gb * _GIB
    _release(device)  # and after every try
    can_reset = device.type == "cuda" or reset_peak_rss()
    start = min(start, limit)
    up = []
    mb = start
    while mb <= limit:
        up.append(mb)
        mb *= 2
    down = []
    mb = start // 2
    while mb >= 1:
        down.append(mb)
        mb //= 2
    best = None
    for mb in up:
        if limit % mb:
            continue
        if not _fits(try_step, mb, device, budget, log):
            break
        best = mb
    if best is None:
        for mb in down:
            if not can_reset:
                break  # ru_maxrss already holds the failed size's peak: smaller sizes cannot be judged
            if limit % mb == 0 and _fits(try_step, mb, device, budget, log):
                best = mb
                break
    if best is None and not can_reset and start > 1:
        raise RuntimeError(
            f"auto batch: micro-batch {start} does not fit in {memory_budget_gb} GiB, and this "
            "platform cannot reset the peak memory to try smaller sizes; start from 1"
        )
    if best is None:
        where = "GPU memory" if device.type == "cuda" else f"the CPU memory budget of {memory_budget_gb} GiB"
        raise RuntimeError(
            f"auto batch: not even a micro-batch of 1 fits in {where}; use a smaller model or "
            f"block_size{'' if device.type == 'cuda' else ', or raise training.memory_budget_gb'}"
        )
    if log is not None:
        log(f"auto batch: micro-batch {best} (largest power-of-two multiple of {start} up to {limit} that fits)")
    return best


def auto_micro_batch(
    model: torch.nn.Module,
    vocab_size: int,
    info: DistInfo,
    t: Any,
    block: int,
    autocast: Any,
    say: Any,
    loss_fn: Callable[..., Any],
) -> int:
    """The largest micro-batch that fits (`find_micro_batch`), tried with real steps that leave no trace.

    Each try runs forward (``loss_fn(model, ids, positions, generator=...)``: the run's objectives,
    DLM's extra rows and the teacher included), backward and a step of a scratch optimizer with lr 0 and no weight decay (its state is what the
    real optimizer will hold; the weights do not move), then drops it all.
    """
    per_rank = t.global_batch_size // info.world_size
    scratch_cfg = dataclasses.replace(t, lr=0.0, muon_lr=0.0, weight_decay=0.0)
    generator = torch.Generator().manual_seed(0)
    positions = torch.arange(block, device=info.device)

    def try_step(mb: int) -> None:
        scratch = build_optimizer(model, scratch_cfg)
        try:
            ids = torch.randint(0, vocab_size, (mb, block), generator=generator).to(info.device)
            with no_sync(model, info, last_micro_step=False):
                with autocast():
                    loss = loss_fn(model, ids, positions.expand(mb, block), generator=generator)[0]
                loss.backward()
            scratch.step()
        finally:
            model.zero_grad(set_to_none=True)
            del scratch

    mb = find_micro_batch(
        try_step,
        start=t.micro_batch_size or 1,
        limit=per_rank,
        device=info.device,
        memory_budget_gb=t.memory_budget_gb,
        log=say,
    )
    if info.enabled:  # every process takes the smallest choice
        import torch.distributed as dist

        choice = torch.tensor([mb], device=info.device)
        dist.all_reduce(choice, op=dist.ReduceOp.MIN)
        mb = int(choice.item())
    return mb
