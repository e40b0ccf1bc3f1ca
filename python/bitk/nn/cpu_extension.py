"""bitk's C++ extension as the CPU paths of `bitk.nn` use it: found once, run on torch's threads."""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["codecs", "contiguous_data", "dense_float32_cpu", "holds_data", "numpy_view"]


def codecs(needs: str):
    """bitk._codecs set to torch's thread count, or None without the extension (or one built
    before it had ``needs``)."""
    try:
        from bitk import _codecs
    except ImportError:
        return None
    if not hasattr(_codecs, needs):
        return None
    _codecs.set_num_threads(torch.get_num_threads())
    return _codecs


def dense_float32_cpu(*tensors: torch.Tensor) -> bool:
    """Whether every tensor is float32, on the CPU and contiguous: what the C++ passes read."""
    return all(t.device.type == "cpu" and t.dtype == torch.float32 and t.is_contiguous() for t in tensors)


def holds_data(*tensors: torch.Tensor) -> bool:
    """Whether every tensor is a plain tensor or parameter with its own memory, which the C++ passes
    can read: not a fake, functional or other subclass that torch.compile traces with (no data)."""
    return all(type(t) is torch.Tensor or type(t) is torch.nn.Parameter for t in tensors)


def contiguous_data(*tensors: torch.Tensor) -> bool:
    """`holds_data`, and every tensor contiguous: what the C++ passes read in place."""
    return holds_data(*tensors) and all(t.is_contiguous() for t in tensors)


def numpy_view(t: torch.Tensor) -> np.ndarray:
    """A numpy view of CPU tensor t. np.from_dlpack, not Tensor.numpy(): .numpy() marks the storage
    non-resizable for good, and FSDP2 frees its unsharded parameters by resizing theirs."""
    return np.from_dlpack(t.detach())
