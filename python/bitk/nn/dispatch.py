"""Which implementation the bitk.nn layers run: the dispatch switch.

"auto" (the default) picks per device: the fused Triton kernels for CUDA tensors, the CPU fast
path (`bitk.nn.cpu`) for CPU tensors, the pure-torch reference (`bitk.numerics`) elsewhere.
"reference", "triton" and "cpu" force one implementation (tests compare them; "triton" on CPU
tensors needs TRITON_INTERPRET=1 set before bitk's kernels are imported). BITK_NN_BACKEND sets
the starting value.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import warnings
from collections.abc import Iterator

import torch

__all__ = ["BACKENDS", "backend", "set_backend", "use_backend", "resolve", "kernel_module"]

BACKENDS = ("auto", "reference", "triton", "cpu")


def _initial() -> str:
    requested = os.environ.get("BITK_NN_BACKEND", "").strip().lower()
    if requested and requested not in BACKENDS:
        warnings.warn(
            f"BITK_NN_BACKEND={requested!r} is not a bitk.nn backend ({', '.join(BACKENDS)}); using 'auto'",
            stacklevel=2,
        )
        requested = ""
    return requested or "auto"


_active = _initial()


def backend() -> str:
    """The active setting: "auto", "reference", "triton" or "cpu"."""
    return _active


def set_backend(name: str) -> None:
    """Choose the implementation of every bitk.nn layer for this process (see the module doc)."""
    global _active
    if name not in BACKENDS:
        raise ValueError(f"unknown bitk.nn backend {name!r}; expected one of {', '.join(BACKENDS)}")
    _active = name


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Run a block with another backend: ``with use_backend("reference"): ...``."""
    previous = _active
    set_backend(name)
    try:
        yield
    finally:
        set_backend(previous)


def kernel_module(name: str):
    """The module `bitk.triton_kernels.<name>`, or a RuntimeError saying why it cannot be used.

    Import statements and a sys.modules lookup, not importlib behind a cache: torch.compile runs
    import statements while it traces, so a compiled layer calls this without a graph break.
    """
    try:
        import triton  # noqa: F401
    except ImportError as e:
        raise RuntimeError(
            "bitk's Triton kernels need the `triton` package (it ships with CUDA builds of torch on "
            f"Linux; `pip install triton`): {e}"
        ) from e
    from bitk import triton_kernels  # noqa: F401  (imports every kernel module)

    return sys.modules[f"bitk.triton_kernels.{name}"]


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.cache
def _warn_no_triton(reason: str) -> None:
    warnings.warn(f"bitk.nn: Triton kernels unavailable ({reason}); CUDA layers use the torch reference", stacklevel=4)


def resolve(device: torch.device) -> str:
    """The implementation ("reference", "triton" or "cpu") that runs for tensors on ``device``."""
    name = _active
    if name == "auto":
        if device.type == "cuda":
            try:
                kernel_module("bitlinear")
            except RuntimeError as e:
                _warn_no_triton(str(e))
                return "reference"
            return "triton"
        return "cpu" if device.type == "cpu" else "reference"
    if name == "cpu" and device.type != "cpu":
        raise ValueError(f"bitk.nn backend 'cpu' runs CPU tensors only, got tensors on {device}")
    if name == "triton" and device.type == "cpu" and not _interpreting():
        raise ValueError(
            "bitk.nn backend 'triton' on CPU tensors needs Triton's interpreter: set TRITON_INTERPRET=1 "
            "before importing bitk (it is meant for tests; 'cpu' is the fast CPU path)"
        )
    return name
