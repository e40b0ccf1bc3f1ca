"""find_micro_batch: the largest power-of-two micro-batch that fits, measured (CPU RSS budget; CUDA OOM simulated)."""

from __future__ import annotations

import gc

import pytest
import torch

from bitk.train import auto_batch
from bitk.train.auto_batch import find_micro_batch, peak_rss_bytes, reset_peak_rss

MIB = 1024**2
STEP_MIB = 48  # memory a fake step uses per sample


def fake_step(tried):
    def try_step(mb):
        tried.append(mb)
        x = torch.ones(mb * STEP_MIB * MIB // 4)  # touched pages count in the RSS
        assert x.sum() > 0

    return try_step


def budget_gb(extra_mib):
    """The current resident memory plus ``extra_mib``, in GiB (garbage of earlier tests collected
    first, so that its freeing cannot shrink the resident memory during the try)."""
    gc.collect()
    reset_peak_rss()
    return (peak_rss_bytes() + extra_mib * MIB) / 1024**3


needs_proc = pytest.mark.skipif(not reset_peak_rss(), reason="needs /proc/self/clear_refs (Linux)")


@needs_proc
def test_cpu_budget_picks_the_largest_that_fits():
    tried = []
    # 1 x 48 and 2 x 48 MiB fit in 160 MiB over the current RSS, 4 x 48 does not
    mb = find_micro_batch(
        fake_step(tried), start=1, limit=64, device=torch.device("cpu"), memory_budget_gb=budget_gb(160), log=None
    )
    assert mb == 2
    assert tried == [1, 2, 4]


@needs_proc
def test_cpu_start_too_large_halves():
    tried = []
    mb = find_micro_batch(fake_step(tried), start=8, limit=64, device="cpu", memory_budget_gb=budget_gb(160), log=None)
    assert mb == 2 and tried == [8, 4, 2]


@needs_proc
def test_nothing_fits():
    # a budget far below the process's own resident memory (a budget of "the current RSS" could be
    # met after all if something freed memory between measuring it and the try)
    with pytest.raises(RuntimeError, match="not even a micro-batch of 1"):
        find_micro_batch(fake_step([]), start=1, limit=8, device="cpu", memory_budget_gb=0.001, log=None)


def test_only_divisors_of_the_limit_and_logging():
    tried, lines = [], []
    mb = find_micro_batch(tried.append, start=1, limit=12, device="cpu", memory_budget_gb=1e6, log=lines.append)
    assert mb == 4 and tried == [1, 2, 4]  # 8 does not divide 12
    assert "micro-batch 4" in lines[-1] and len(lines) == 4


def test_allocation_failure_means_it_does_not_fit():
    def try_step(mb):
        if mb >= 4:
            raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory")

    assert find_micro_batch(try_step, start=1, limit=64, device="cpu", memory_budget_gb=1e6, log=None) == 2

    def broken(mb):
        raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):  # other errors are not swallowed
        find_micro_batch(broken, start=1, limit=64, device="cpu", memory_budget_gb=1e6, log=None)


def test_cuda_out_of_memory(monkeypatch):
    """The CUDA path with the memory functions stubbed: OutOfMemoryError marks a size as too large."""
    calls = []
    for name in ("reset_peak_memory_stats", "synchronize", "empty_cache"):
        monkeypatch.setattr(torch.cuda, name, lambda *a, name=name: calls.append(name))
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda *a: 3 * 1024**3)

    def try_step(mb):
        if mb > 16:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    # the CPU budget does not apply on CUDA
    assert find_micro_batch(try_step, start=2, limit=256, device="cuda", memory_budget_gb=0.001, log=None) == 16
    assert calls.count("reset_peak_memory_stats") == 5 and "empty_cache" in calls


def test_bad_arguments():
    with pytest.raises(ValueError):
        find_micro_batch(lambda mb: None, start=0, limit=8, device="cpu", memory_budget_gb=1.0)
    with pytest.raises(ValueError):
        find_micro_batch(lambda mb: None, start=1, limit=8, device="cpu", memory_budget_gb=0.0)


def test_peak_without_reset_falls_back_to_ru_maxrss(monkeypatch):
    monkeypatch.setattr(auto_batch, "_read_status", lambda field: None)
    assert peak_rss_bytes() > 10 * MIB
