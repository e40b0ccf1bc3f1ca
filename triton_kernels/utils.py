"""Helpers shared by bitk's Triton kernels: rounding, launch sizes, autotune configs, input checks.

The Triton interpreter (TRITON_INTERPRET=1, how CI runs every kernel on CPU) lacks libdevice and
computes bf16 arithmetic wrongly (docs/kernels.md), so kernels load bf16/fp16 and
convert to float32 at once, and round with `round_half_even` below instead of `rint`. With a
single autotune config the interpreter can also run the autotuned matmuls; `gpu_matmul_configs`
gives the GPU configs whatever the interpreter flag says (the compile tests, docs/kernels.md).
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

__all__ = [
    "FLOAT_DTYPES",
    "is_interpreting",
    "round_half_even",
    "cast_rne",
    "row_block",
    "gpu_matmul_configs",
    "matmul_configs",
    "SHARED_MEMORY_PER_BLOCK",
    "cuda_target",
    "check_float_input",
]

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# Shared memory one block may use (the opt-in maximum, bytes) by compute capability, major * 10 + minor
# (CUDA C++ Programming Guide, "Technical Specifications per Compute Capability"): A100 163 KiB,
# H100/H200/B200 227 KiB, consumer and workstation parts 99 KiB.
SHARED_MEMORY_PER_BLOCK = {80: 166912, 86: 101376, 87: 166912, 89: 101376, 90: 232448, 100: 232448, 120: 101376}


def is_interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (read at kernel definition time)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@triton.jit
def round_half_even(x):
    """Round float32 ``x`` to the nearest integer, ties to even (torch.round), as float32.

    ``floor(x + 0.5)`` is wrong for 0.49999997 (the sum rounds up to 1.0); ``x - floor(x)`` is
    exact for every float32, so comparing the fraction with 0.5 is exact too.
    """
    r = tl.floor(x)
    d = x - r
    odd = (r - 2.0 * tl.floor(r * 0.5)) == 1.0
    up = (d > 0.5) | ((d == 0.5) & odd)
    return tl.where(up, r + 1.0, r)


@triton.jit
def cast_rne(y, dtype: tl.constexpr):
    """Cast float32 ``y`` to ``dtype`` rounding to nearest even, in the interpreter too.

    For bfloat16 the rounding is done on the bits: the interpreter's float32 -> bfloat16 cast
    truncates (and flushes subnormals); on a GPU the result equals ``y.to(tl.bfloat16)``.
    """
    if dtype == tl.bfloat16:
        bits = y.to(tl.uint32, bitcast=True)
        rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        is_nan = (bits & 0x7FFFFFFF) > 0x7F800000
        rounded = tl.where(is_nan, (bits >> 16) | 0x40, rounded)  # NaN stays a (quiet) NaN
        return rounded.to(tl.uint16).to(tl.bfloat16, bitcast=True)
    else:
        return y.to(dtype)


def row_block(n_cols: int, max_block: int = 65536) -> tuple[int, int]:
    """(BLOCK, num_warps) for a row-wise kernel holding one whole row of ``n_cols`` in registers."""
    block = triton.next_power_of_2(max(n_cols, 1))
    if block > max_block:
        raise ValueError(f"rows of {n_cols} features exceed the largest supported row of {max_block}")
    num_warps = 4 if block <= 2048 else 8 if block <= 8192 else 16 if block <= 32768 else 32
    return block, num_warps


def gpu_matmul_configs(gpu: list[tuple[int, int, int, int, int]]) -> list[triton.Config]:
    """Autotune configs of ``gpu`` = (BLOCK_M, BLOCK_N, BLOCK_K, num_stages, num_warps) tuples."""
    return [
        triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8}, num_stages=s, num_warps=w)
        for bm, bn, bk, s, w in gpu
    ]


def matmul_configs(gpu: list[tuple[int, int, int, int, int]], interpret: tuple[int, int, int]) -> list[triton.Config]:
    """Autotune configs: ``gpu`` as (BLOCK_M, BLOCK_N, BLOCK_K, num_stages, num_warps) on a GPU;
    in the interpreter one config of ``interpret`` = (BLOCK_M, BLOCK_N, BLOCK_K) (its autotuner
    cannot benchmark, and large blocks keep the number of interpreted programs small)."""
    if is_interpreting():
        bm, bn, bk = interpret
        return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8})]
    return gpu_matmul_configs(gpu)


@functools.lru_cache
def _cuda_target(index: int) -> tuple[int, int | None] | None:
    if torch.version.hip is not None:
        return None
    props = torch.cuda.get_device_properties(index)
    capability = props.major * 10 + props.minor
    limit = getattr(props, "shared_memory_per_block_optin", None) or SHARED_MEMORY_PER_BLOCK.get(capability)
    return capability, limit


def cuda_target(device: torch.device) -> tuple[int, int | None] | None:
    """(compute capability as major * 10 + minor, shared memory one block may use in bytes) of the
    NVIDIA GPU ``device``; None for a ROCm GPU, where bitk models no shared-memory limit."""
    return _cuda_target(device.index if device.index is not None else torch.cuda.current_device())


def check_float_input(name: str, t: torch.Tensor) -> None:
    """Raise ValueError unless ``t`` is a float32/float16/bfloat16 tensor (the kernels' input types)."""
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{name} must be float32, float16 or bfloat16 for the Triton kernels, got {t.dtype}")
