"""Shared fixtures of the reference-numerics tests."""

from __future__ import annotations

import contextlib

import pytest
import torch


@contextlib.contextmanager
def _no_host_sync():
    """Make every tensor -> python conversion raise while the block runs."""

    def boom(*args, **kwargs):
        raise AssertionError("host sync: a tensor was converted to a python value")

    names = ["item", "tolist", "numpy", "__bool__", "__float__", "__int__", "__index__", "__complex__"]
    saved = {n: getattr(torch.Tensor, n) for n in names}
    for n in names:
        setattr(torch.Tensor, n, boom)
    try:
        yield
    finally:
        for n, f in saved.items():
            setattr(torch.Tensor, n, f)


@pytest.fixture
def no_host_sync():
    """`with no_host_sync(): ...` proves the block never converts a tensor to a python value."""
    return _no_host_sync
