"""Ternary matmuls of BitLinear (BitNet b1.58, arXiv 2402.17764): forward, input and weight gradients.

Layouts: xq int8 [M, K] per-token activations with float32 scales s [M] (xq = round(x * s)); codes int8
[N, K] in {-1, 0, 1}, row-major as weights are stored, with one float32 scale gamma read in-kernel
(W ~ codes * gamma). Forward y = float(xq @ codes^T) * (gamma / s) + bias: exact int32 product (int8
tensor cores), float32 epilogue in the reference's order. Backward dx = (dy @ codes) * gamma,
dW = dy^T @ (xq / s), float32 accumulation; each output in the dtype the caller asks for.
"""

from __future__ import annotations

import logging

import torch
import triton
import triton.language as tl

from .utils import (
    FLOAT_DTYPES,
    SHARED_MEMORY_PER_BLOCK,
    cast_rne,
    check_float_input,
    cuda_target,
    gpu_matmul_configs,
    is_interpreting,
    matmul_configs,
)

__all__ = [
    "ternary_matmul_dw",
    "ternary_matmul_dx",
    "ternary_matmul_fwd",
    "KERNELS",
    "DOTS",
    "backward_dot",
    "gpu_configs",
    "shared_memory_bytes",
    "prune_reason",
]

_log = logging.getLogger(__name__)

# (BLOCK_M, BLOCK_N, BLOCK_K, num_stages, num_warps) tried on a GPU. int8 tiles: BLOCK_K = 128 is
# one 128-byte row per tile row (full smem swizzle, 4 wgmma k-steps of 32); 64 is kept for small K.
# 128x256 / 256x128 are the big-GEMM winners on H100; the narrow ones serve small M (inference, tails).
_INT8_GPU_CONFIGS = [
    (128, 256, 128, 3, 8),
    (256, 128, 128, 3, 8),
    (128, 128, 128, 4, 8),
    (128, 128, 64, 4, 4),
    (128, 64, 128, 4, 4),
    (64, 128, 128, 4, 4),
    (64, 64, 128, 4, 4),
    (32, 64, 256, 4, 4),
]
# Tensor-core dots of the backward (fp16/bf16, or tf32): the usual Hopper 16-bit tiles. Those that do not
# fit the GPU's shared memory (256x128 tf32 on sm_90, more on 99 KiB parts) are pruned before tuning.
_FLOAT_GPU_CONFIGS = [
    (128, 256, 64, 3, 8),
    (256, 128, 64, 3, 8),
    (128, 128, 64, 4, 8),
    (128, 128, 64, 4, 4),
    (128, 64, 64, 4, 4),
    (64, 128, 64, 4, 4),
    (64, 64, 64, 4, 4),
    (128, 128, 32, 4, 4),
]
# "ieee" float32 dots run on CUDA cores, which hold whole operand tiles in registers: BLOCK_K >= 32
# spills heavily (kilobytes per thread at sm_90), BLOCK_K = 8 / 16 fits. Told apart by BLOCK_K.
_FMA_GPU_CONFIGS = [
    (128, 128, 8, 3, 8),
    (128, 64, 16, 3, 8),
    (64, 128, 16, 3, 8),
    (64, 64, 16, 3, 4),
    (64, 64, 8, 3, 4),
]
_FMA_MAX_BLOCK_K = 16
# One large tile in the interpreter: few programs, few (numpy) dot steps for test-sized problems.
_INTERPRET_BLOCKS = (64, 64, 128)
_INTERPRET_FLOAT_BLOCKS = (128, 128, 128)

KERNELS = ("fwd", "dx", "dw")
# The dots a kernel runs: "int8" (forward); the backward by dy's dtype: "fp16" / "bf16" (tensor cores
# in that dtype), float32 "tf32" when torch.backends.cuda.matmul.allow_tf32, else "ieee" (CUDA cores).
DOTS = {"fwd": ("int8",), "dx": ("ieee", "tf32", "fp16", "bf16"), "dw": ("ieee", "tf32", "fp16", "bf16")}
# The backward kernels' (LOWP_DOT, INPUT_PRECISION) per dot; "tf32" is Triton's default, 16-bit dots ignore it.
_DOT_ARGS = {"ieee": (False, "ieee"), "tf32": (False, "tf32"), "fp16": (True, "tf32"), "bf16": (True, "tf32")}
# Bytes per element of the first operand (xq, or dy) as loaded.
_LOAD_BYTES = {"int8": 1, "ieee": 4, "tf32": 4, "fp16": 2, "bf16": 2}


def backward_dot(dy_dtype: torch.dtype, allow_tf32: bool) -> str:
    """The dot ("ieee", "tf32", "fp16" or "bf16") the backward kernels run on a GPU for dy of ``dy_dtype``."""
    if dy_dtype == torch.float16:
        return "fp16"
    if dy_dtype == torch.bfloat16:
        return "bf16"
    return "tf32" if allow_tf32 else "ieee"


def gpu_configs(kernel: str, dot: str) -> list[triton.Config]:
    """The configs ``kernel`` ("fwd", "dx" or "dw") tunes over on a GPU for ``dot`` dots (see DOTS), before
    the shared-memory prune: CUDA-core tiles for "ieee", tensor-core tiles otherwise. The same under
    TRITON_INTERPRET=1, where the autotuners themselves hold one interpreter config."""
    if dot not in DOTS[kernel]:
        raise ValueError(f"{kernel} runs {DOTS[kernel]} dots, not {dot!r}")
    if kernel == "fwd":
        return gpu_matmul_configs(_INT8_GPU_CONFIGS)
    return gpu_matmul_configs(_FMA_GPU_CONFIGS if dot == "ieee" else _FLOAT_GPU_CONFIGS)


def shared_memory_bytes(
    kernel: str, config: triton.Config, dot: str, capability: int, out_dtype: torch.dtype = torch.float32
) -> int:
    """Shared memory (bytes) Triton 3.9 allocates for one program of ``kernel`` with ``config`` running
    ``dot`` dots on compute capability ``capability`` (major * 10 + minor) and writing ``out_dtype``.

    A is the [BLOCK_M, BLOCK_K] tile of the first operand as loaded (xq int8, or dy), B the int8
    [BLOCK_K, BLOCK_N] tile (codes, or xq), S = num_stages. mma.sync (sm_8x, sm_12x, and tiles of
    fewer than 64 rows anywhere) keeps S - 1 stages in flight: (S - 1) * (A + B). wgmma (sm_90) and
    tcgen05 (sm_100) read operands from shared memory: S buffers of an operand they read as loaded,
    and for the B the backward converts in registers S - 1 int8 buffers plus one tile in the MMA's
    type. After the loop sm_90 passes the output through shared memory to store it, 16 rows per
    warp at a time (min(BLOCK_M, 16 * num_warps) x BLOCK_N of ``out_dtype``; the larger of loop and
    epilogue counts); sm_100 adds 16 bytes of barriers (seen in a few probe compiles, not tested).
    dW pipelines its 1/s vector too: (S - 1) * BLOCK_K * 4. CUDA-core ("ieee") dots get an upper
    bound, S * (A + B as float32) (the compiler uses 55-67% of it). tests/triton_kernels/test_aot.py
    compares these with the compiler's figures for every config on sm_80 and sm_90.
    """
    bm, bn, bk = config.kwargs["BLOCK_M"], config.kwargs["BLOCK_N"], config.kwargs["BLOCK_K"]
    stages = config.num_stages
    a, b = bm * bk * _LOAD_BYTES[dot], bk * bn
    scales = (stages - 1) * bk * 4 if kernel == "dw" else 0
    if dot == "ieee":
        return stages * (a + 4 * b) + scales
    if capability // 10 not in (9, 10) or bm < 64:
        return (stages - 1) * (a + b) + scales
    if kernel == "fwd":
        loop = stages * (a + b)
    else:
        loop = stages * a + (stages - 1) * b + bk * bn * (4 if dot == "tf32" else 2) + scales
    if capability // 10 == 9:
        return max(loop, min(bm, 16 * config.num_warps) * bn * out_dtype.itemsize)
    return loop + 16


def prune_reason(
    kernel: str,
    config: triton.Config,
    dot: str,
    capability: int,
    shared_limit: int | None = None,
    out_dtype: torch.dtype = torch.float32,
) -> str | None:
    """Why ``config`` cannot serve ``kernel``'s ``dot`` dots on a GPU of compute ``capability``, or None
    if it can. ``shared_limit``: the shared memory one block may use (bytes); by default the one of
    ``capability`` in utils.SHARED_MEMORY_PER_BLOCK (no limit checked for a capability not listed).
    The autotuners drop such configs before tuning, with this reason in a debug log message."""
    if kernel != "fwd" and (config.kwargs["BLOCK_K"] <= _FMA_MAX_BLOCK_K) != (dot == "ieee"):
        if dot == "ieee":
            return "a tensor-core tile: BLOCK_K > 16 spills registers in CUDA-core (ieee) dots"
        return f"a CUDA-core tile (BLOCK_K <= {_FMA_MAX_BLOCK_K}): too small for {dot} tensor-core dots"
    limit = shared_limit if shared_limit is not None else SHARED_MEMORY_PER_BLOCK.get(capability)
    need = shared_memory_bytes(kernel, config, dot, capability, out_dtype)
    if limit is not None and need > limit:
        return f"needs {need} bytes of shared memory per block, sm_{capability} allows {limit}"
    return None


def _early_prune(kernel: str):
    """The autotuner's early_config_prune for ``kernel``: prune_reason on the launch's device and dot."""

    def prune(configs, named_args, **kwargs):
        if is_interpreting():
            return configs  # the one interpreter config
        operand = named_args["x_ptr" if kernel == "fwd" else "dy_ptr"]
        out_dtype = named_args[{"fwd": "y_ptr", "dx": "dx_ptr", "dw": "dw_ptr"}[kernel]].dtype
        target = cuda_target(operand.device)
        if kernel == "fwd":
            dot = "int8"
        elif kwargs["LOWP_DOT"]:
            dot = "fp16" if operand.dtype == torch.float16 else "bf16"
        else:
            dot = kwargs["INPUT_PRECISION"]
        kept, reasons = [], []
        for config in configs:
            # On ROCm (no target) only the tile kind is checked: capability 0 with no limit.
            reason = prune_reason(kernel, config, dot, *(target or (0, None)), out_dtype=out_dtype)
            if reason is None:
                kept.append(config)
            else:
                reasons.append(f"{config}: {reason}")
                _log.debug("ternary_matmul_%s, %s dots: config %s pruned: %s", kernel, dot, config, reason)
        if not kept:
            raise RuntimeError(f"ternary_matmul_{kernel}: no config can run {dot} dots here: " + "; ".join(reasons))
        return kept

    return prune


def _autotune(kernel: str, gpu: list[tuple[int, int, int, int, int]], interpret: tuple[int, int, int]) -> dict:
    # INPUT_PRECISION is part of the backward's key: toggling allow_tf32 must not reuse a config tuned for
    # the other kind (dtypes are part of every key).
    return {
        "configs": matmul_configs(gpu, interpret),
        "key": ["M", "N", "K"] + ([] if kernel == "fwd" else ["INPUT_PRECISION"]),
        "prune_configs_by": {"early_config_prune": _early_prune(kernel)},
    }


@triton.jit
def _grouped_tile(M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """(pid_m, pid_n) in grouped order: GROUP_M row tiles walk the column tiles together, so the
    operand tiles they share stay in L2 (the Triton matmul tutorial's swizzle)."""
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    num_pid_in_group = GROUP_M * num_pid_n
    first_pid_m = (pid // num_pid_in_group) * GROUP_M
    group_size_m = tl.minimum(num_pid_m - first_pid_m, GROUP_M)
    pid_m = first_pid_m + ((pid % num_pid_in_group) % group_size_m)
    pid_n = (pid % num_pid_in_group) // group_size_m
    return pid_m, pid_n


@triton.autotune(**_autotune("fwd", _INT8_GPU_CONFIGS, _INTERPRET_BLOCKS))
@triton.jit
def _ternary_matmul_fwd_kernel(
    x_ptr,
    s_ptr,
    w_ptr,
    gamma_ptr,
    bias_ptr,
    y_ptr,
    M,
    N,
    K,
    stride_xm,
    stride_wn,
    stride_ym,
    HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    """y[M, N] = float32(xq[M, K] @ codes[N, K]^T) * (gamma / s[M]) (+ bias[N]), cast to y's dtype."""
    tl.static_assert(BLOCK_K % 32 == 0, "int8 dots step K by multiples of 32")
    tl.static_assert((BLOCK_M >= 16) & (BLOCK_N >= 16), "tl.dot tiles are at least 16 x 16")
    pid_m, pid_n = _grouped_tile(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    # Rows/columns past the edge wrap onto valid ones, so only K needs load masks; the store is masked.
    rows = offs_m % M
    cols = offs_n % N
    x_ptrs = x_ptr + rows[:, None].to(tl.int64) * stride_xm + offs_k[None, :]
    w_ptrs = w_ptr + cols[None, :].to(tl.int64) * stride_wn + offs_k[:, None]  # codes^T tile [BLOCK_K, BLOCK_N]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    for k in range(tl.cdiv(K, BLOCK_K)):
        k_in = offs_k < K - k * BLOCK_K
        a = tl.load(x_ptrs, mask=k_in[None, :], other=0)
        b = tl.load(w_ptrs, mask=k_in[:, None], other=0)
        acc = tl.dot(a, b, acc, out_dtype=tl.int32)  # exact: |acc| <= 128 * K
        x_ptrs += BLOCK_K
        w_ptrs += BLOCK_K
    # Epilogue in the reference's order and roundings: factor = gamma / s (IEEE quotient: a plain `/`
    # is approximate on GPUs), then float32(acc) * factor, then + bias; the launch disables FMA fusion.
    gamma = tl.load(gamma_ptr)
    s = tl.load(s_ptr + rows)
    factor = tl.math.div_rn(tl.zeros((BLOCK_M,), dtype=tl.float32) + gamma, s)
    y = acc.to(tl.float32) * factor[:, None]
    if HAS_BIAS:
        y = y + tl.load(bias_ptr + cols).to(tl.float32)[None, :]
    y_ptrs = y_ptr + offs_m[:, None].to(tl.int64) * stride_ym + offs_n[None, :]
    tl.store(y_ptrs, cast_rne(y, y_ptr.dtype.element_ty), mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))


@triton.autotune(**_autotune("dx", _FLOAT_GPU_CONFIGS + _FMA_GPU_CONFIGS, _INTERPRET_FLOAT_BLOCKS))
@triton.jit
def _ternary_matmul_dx_kernel(
    dy_ptr,
    w_ptr,
    gamma_ptr,
    dx_ptr,
    M,
    N,
    K,
    stride_dym,
    stride_wk,
    stride_dxm,
    LOWP_DOT: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    """dx = (dy @ codes) * gamma as the GEMM C[M, N] = A[M, K] @ B[K, N]: A = dy [tokens, out_features],
    B = codes [out_features, in_features] (row-major, so K here is out_features, N is in_features)."""
    tl.static_assert((BLOCK_M >= 16) & (BLOCK_N >= 16) & (BLOCK_K >= 8), "tl.dot tiles are at least 16 x 16 x 8")
    pid_m, pid_n = _grouped_tile(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    rows = offs_m % M
    cols = offs_n % N
    a_ptrs = dy_ptr + rows[:, None].to(tl.int64) * stride_dym + offs_k[None, :]
    b_ptrs = w_ptr + offs_k[:, None].to(tl.int64) * stride_wk + cols[None, :]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(tl.cdiv(K, BLOCK_K)):
        k_in = offs_k < K - k * BLOCK_K
        a = tl.load(a_ptrs, mask=k_in[None, :], other=0.0)
        b = tl.load(b_ptrs, mask=k_in[:, None], other=0)
        if LOWP_DOT:
            b = b.to(a.dtype)  # {-1, 0, 1} is exact in fp16/bf16: a tensor-core dot of dy as given
        else:
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        acc = tl.dot(a, b, acc, input_precision=INPUT_PRECISION)
        a_ptrs += BLOCK_K
        b_ptrs += BLOCK_K * stride_wk
    dx = acc * tl.load(gamma_ptr)
    dx_ptrs = dx_ptr + offs_m[:, None].to(tl.int64) * stride_dxm + offs_n[None, :]
    tl.store(dx_ptrs, cast_rne(dx, dx_ptr.dtype.element_ty), mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))


@triton.autotune(**_autotune("dw", _FLOAT_GPU_CONFIGS + _FMA_GPU_CONFIGS, _INTERPRET_FLOAT_BLOCKS))
@triton.jit
def _ternary_matmul_dw_kernel(
    dy_ptr,
    x_ptr,
    s_ptr,
    dw_ptr,
    M,
    N,
    K,
    stride_dym,
    stride_xm,
    stride_dwm,
    LOWP_DOT: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    """dW = dy^T @ (xq / s) as the GEMM C[M, N] = A[M, K] @ B[K, N]: A = dy^T [out_features, tokens],
    B = xq / s [tokens, in_features]. Each program reduces over all tokens (K here) itself: deterministic."""
    tl.static_assert((BLOCK_M >= 16) & (BLOCK_N >= 16) & (BLOCK_K >= 8), "tl.dot tiles are at least 16 x 16 x 8")
    pid_m, pid_n = _grouped_tile(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    rows = offs_m % M
    cols = offs_n % N
    a_ptrs = dy_ptr + offs_k[None, :].to(tl.int64) * stride_dym + rows[:, None]  # dy^T tile [BLOCK_M, BLOCK_K]
    b_ptrs = x_ptr + offs_k[:, None].to(tl.int64) * stride_xm + cols[None, :]
    s_ptrs = s_ptr + offs_k
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(tl.cdiv(K, BLOCK_K)):
        k_in = offs_k < K - k * BLOCK_K
        a = tl.load(a_ptrs, mask=k_in[None, :], other=0.0)
        b = tl.load(b_ptrs, mask=k_in[:, None], other=0)
        s = tl.load(s_ptrs, mask=k_in, other=1.0)  # 1, not 0: masked tokens give 0 * 1, never 0 * inf
        # xq / s is the reference's operand (the dequantized activations, about x's size), made in
        # registers from the int8 tile and 1/s of each token (a row here). Scaling xq, not dy, keeps dy
        # untouched for the tensor cores and avoids fp16 underflow of small dy / large s. With fp16/bf16
        # dy it is rounded to dy's dtype (relative 2^-11 / 2^-8, as torch's own low-precision formula).
        inv_s = tl.math.div_rn(tl.zeros((BLOCK_K,), dtype=tl.float32) + 1.0, s)
        b = b.to(tl.float32) * inv_s[:, None]
        if LOWP_DOT:
            b = b.to(a.dtype)
        else:
            a = a.to(tl.float32)
        acc = tl.dot(a, b, acc, input_precision=INPUT_PRECISION)
        a_ptrs += BLOCK_K * stride_dym
        b_ptrs += BLOCK_K * stride_xm
        s_ptrs += BLOCK_K
    dw_ptrs = dw_ptr + offs_m[:, None].to(tl.int64) * stride_dwm + offs_n[None, :]
    tl.store(dw_ptrs, cast_rne(acc, dw_ptr.dtype.element_ty), mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))


def _check_2d(name: str, t: torch.Tensor, dtype: torch.dtype | None = None) -> None:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if dtype is not None and t.dtype != dtype:
        raise ValueError(f"{name} must be {dtype}, got {t.dtype}")
    if t.dim() != 2:
        raise ValueError(f"{name} must be 2-D, got shape {tuple(t.shape)}")


def _check_row_scale(s: torch.Tensor, m: int) -> torch.Tensor:
    """s as a contiguous float32 [M] vector; accepts [M, 1] (as quantize_activations returns) or [M]."""
    if not isinstance(s, torch.Tensor) or s.dtype != torch.float32:
        raise ValueError(f"s must be a float32 tensor, got {getattr(s, 'dtype', type(s).__name__)}")
    if tuple(s.shape) not in ((m, 1), (m,)):
        raise ValueError(f"s must have shape ({m}, 1) or ({m},) to match xq's {m} rows, got {tuple(s.shape)}")
    return s.reshape(m).contiguous()


def _check_gamma(gamma: torch.Tensor) -> torch.Tensor:
    if not isinstance(gamma, torch.Tensor) or gamma.dtype != torch.float32 or gamma.numel() != 1:
        raise ValueError(
            f"gamma must be a one-element (0-dim) float32 tensor, got "
            f"{getattr(gamma, 'dtype', type(gamma).__name__)} of shape {tuple(getattr(gamma, 'shape', ()))}"
        )
    return gamma.reshape(()).contiguous()


def _check_out_dtype(out_dtype: torch.dtype) -> None:
    if out_dtype not in FLOAT_DTYPES:
        raise ValueError(f"out_dtype must be float32, float16 or bfloat16, got {out_dtype}")


def _check_same_device(**tensors: torch.Tensor | None) -> None:
    devices = {name: t.device for name, t in tensors.items() if t is not None}
    if len(set(devices.values())) > 1:
        raise ValueError(f"all inputs must be on one device, got {devices}")


def _dot_mode(dy: torch.Tensor) -> tuple[bool, str]:
    """(LOWP_DOT, INPUT_PRECISION) of the backward dots for dy's dtype.

    fp16/bf16 dy on a GPU: tensor-core dots in that dtype. float32 dy: "tf32" only when torch allows
    it for matmuls (torch.backends.cuda.matmul.allow_tf32), else "ieee". The interpreter computes
    everything in float32 (its bf16 arithmetic is wrong) and ignores the precision.
    """
    if is_interpreting():
        return False, "ieee"
    return _DOT_ARGS[backward_dot(dy.dtype, torch.backends.cuda.matmul.allow_tf32)]


def ternary_matmul_fwd(
    xq: torch.Tensor,
    s: torch.Tensor,
    codes: torch.Tensor,
    gamma: torch.Tensor,
    bias: torch.Tensor | None = None,
    out_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """BitLinear forward: xq int8 [M, K], s float32 [M, 1] or [M], codes int8 [N, K] in {-1, 0, 1},
    gamma float32 0-dim (device tensor, read in-kernel), bias None or float [N] -> y [M, N] out_dtype.

    ``y = float32(xq @ codes^T) * (gamma / s) + float32(bias)`` in float32, then cast: the float32
    result is bit-identical to ``bitk.numerics.bitlinear``. Codes are not checked to be ternary
    (that would sync the host). Non-contiguous inputs are copied with ``.contiguous()``.
    """
    _check_2d("xq", xq, torch.int8)
    _check_2d("codes", codes, torch.int8)
    (m, k), n = xq.shape, codes.shape[0]
    if codes.shape[1] != k:
        raise ValueError(f"codes shape {tuple(codes.shape)} does not match xq shape {tuple(xq.shape)}: need [N, {k}]")
    s = _check_row_scale(s, m)
    gamma = _check_gamma(gamma)
    if bias is not None:
        check_float_input("bias", bias)
        if tuple(bias.shape) != (n,):
            raise ValueError(f"bias must have shape ({n},), got {tuple(bias.shape)}")
        bias = bias.contiguous()
    _check_out_dtype(out_dtype)
    _check_same_device(xq=xq, s=s, codes=codes, gamma=gamma, bias=bias)
    y = torch.empty((m, n), dtype=out_dtype, device=xq.device)
    if y.numel() == 0:
        return y
    xq, codes = xq.contiguous(), codes.contiguous()

    def grid(meta):
        return (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]),)

    _ternary_matmul_fwd_kernel[grid](
        xq,
        s,
        codes,
        gamma,
        bias if bias is not None else y,
        y,
        m,
        n,
        k,
        xq.stride(0),
        codes.stride(0),
        y.stride(0),
        HAS_BIAS=bias is not None,
        enable_fp_fusion=False,  # keep `acc * factor + bias` two roundings, as the reference
    )
    return y


def ternary_matmul_dx(
    dy: torch.Tensor, codes: torch.Tensor, gamma: torch.Tensor, out_dtype: torch.dtype
) -> torch.Tensor:
    """BitLinear input gradient: dy float [M, N], codes int8 [N, K], gamma float32 0-dim -> dx [M, K].

    ``dx = (dy @ codes) * gamma`` with float32 accumulation, gamma applied once at the end. fp16/bf16
    dy runs on tensor cores in its own dtype (codes are exact there); float32 dy is "ieee" unless
    torch.backends.cuda.matmul.allow_tf32. Non-contiguous inputs are copied with ``.contiguous()``.
    """
    check_float_input("dy", dy)
    _check_2d("dy", dy)
    _check_2d("codes", codes, torch.int8)
    (m, n), k = dy.shape, codes.shape[1]
    if codes.shape[0] != n:
        raise ValueError(f"codes shape {tuple(codes.shape)} does not match dy shape {tuple(dy.shape)}: need [{n}, K]")
    gamma = _check_gamma(gamma)
    _check_out_dtype(out_dtype)
    _check_same_device(dy=dy, codes=codes, gamma=gamma)
    dx = torch.empty((m, k), dtype=out_dtype, device=dy.device)
    if dx.numel() == 0:
        return dx
    dy, codes = dy.contiguous(), codes.contiguous()
    lowp_dot, precision = _dot_mode(dy)

    def grid(meta):
        return (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(k, meta["BLOCK_N"]),)

    # GEMM dims: C[M, N] = A[M, K] @ B[K, N] with N = in_features (k) and K = out_features (n).
    _ternary_matmul_dx_kernel[grid](
        dy,
        codes,
        gamma,
        dx,
        m,
        k,
        n,
        dy.stride(0),
        codes.stride(0),
        dx.stride(0),
        LOWP_DOT=lowp_dot,
        INPUT_PRECISION=precision,
        enable_fp_fusion=False,
    )
    return dx


def ternary_matmul_dw(dy: torch.Tensor, xq: torch.Tensor, s: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
    """BitLinear weight gradient: dy float [M, N], xq int8 [M, K], s float32 [M, 1] or [M] -> dW [N, K].

    ``dW[n, k] = sum_m dy[m, n] * (xq[m, k] / s[m])``, float32 accumulation over the M tokens inside
    each program (deterministic, no atomics); M = 0 gives zeros. xq / s is formed tile by tile in
    registers (never a float copy of xq in memory); with fp16/bf16 dy it is rounded to dy's dtype for
    tensor-core dots; float32 dy is "ieee" unless torch.backends.cuda.matmul.allow_tf32.
    Non-contiguous inputs are copied with ``.contiguous()``.
    """
    check_float_input("dy", dy)
    _check_2d("dy", dy)
    _check_2d("xq", xq, torch.int8)
    (m, n), k = dy.shape, xq.shape[1]
    if xq.shape[0] != m:
        raise ValueError(f"xq shape {tuple(xq.shape)} does not match dy shape {tuple(dy.shape)}: need [{m}, K]")
    s = _check_row_scale(s, m)
    _check_out_dtype(out_dtype)
    _check_same_device(dy=dy, xq=xq, s=s)
    dw = torch.empty((n, k), dtype=out_dtype, device=dy.device)
    if dw.numel() == 0:
        return dw
    dy, xq = dy.contiguous(), xq.contiguous()
    lowp_dot, precision = _dot_mode(dy)

    def grid(meta):
        return (triton.cdiv(n, meta["BLOCK_M"]) * triton.cdiv(k, meta["BLOCK_N"]),)

    # GEMM dims: C[M, N] = A[M, K] @ B[K, N] with M = out_features (n), N = in_features (k), K = tokens (m).
    _ternary_matmul_dw_kernel[grid](
        dy,
        xq,
        s,
        dw,
        n,
        k,
        m,
        dy.stride(0),
        xq.stride(0),
        dw.stride(0),
        LOWP_DOT=lowp_dot,
        INPUT_PRECISION=precision,
        enable_fp_fusion=False,
    )
    return dw
