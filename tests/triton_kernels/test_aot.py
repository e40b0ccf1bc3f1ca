"""Every Triton kernel of bitk.triton_kernels compiles for sm_80 (A100) and sm_90 (H100/H200), no GPU needed.

For each kernel, target and launch variant the wrappers make, the kernel is compiled to PTX and cubin
(Triton's own ptxas) and the test checks: it compiles; its shared memory fits one block of the target
(163 KiB on sm_80, 227 KiB on sm_90), and so do its registers (64 Ki per block); the int8 forward's
dots are int8 tensor-core instructions (mma.sync ... s8 on sm_80, wgmma ... s8 on sm_90 for tiles of
64+ rows) and the backward's fp16/bf16/tf32 dots tensor-core ones of that type; the "ieee" float32
dots are CUDA-core FMAs with no spills (MAX_FMA_STACK_BYTES). For the autotuned matmuls every config
of `ternary_matmul.gpu_configs` is compiled, and the shared-memory prune is checked against the
compiler: a config `prune_reason` keeps fits, one it prunes does not, and `shared_memory_bytes` is
never below the compiler's figure and at most SHARED_MODEL_SLACK above it (a looser upper bound for
CUDA-core dots).

Launch variants: the matmuls' every config x dot kind with float32 output (and a float32 bias in the
forward), plus each other output (and bias) dtype on each dot's largest tile, which only changes the
epilogue; the row kernels' (norms, quantizers) every row_block regime's smallest and largest block
in each uniform dtype, plus every mix of tensor dtypes the launchers accept on one block. Pointers
are 16-byte aligned and sizes multiples of 16 (the specialization of real model shapes).
BITK_AOT_FULL=1 compiles the full products instead (2438 binaries, not 512); BITK_AOT_RECORD=FILE appends
each result as a JSON line (docs/kernels.md's table comes from such a run).

How, without a GPU and under TRITON_INTERPRET=1 (tests/conftest.py): with that flag set when a kernel
module is imported, `triton.jit` returns interpreter functions, which cannot be compiled, and the
kernel modules pick interpreter constants. So each pytest process starts worker processes,
aot_worker.py, with TRITON_INTERPRET unset (one per core it has, at most 4), and sends them compile
requests (JSON lines); a worker derives the signature and specialization from the arguments as
Triton's launcher does and answers the compiler's figures. The launch variants are enumerated here,
in this process, from the launchers' own helpers and the modules' GPU constants (`gpu_configs`,
`row_block`, `_launch_blocks`, `_GPU_TILE`, `_GPU_BLOCK`), which do not depend on the flag.
Triton's cache is a fresh temporary folder unless TRITON_CACHE_DIR is set (set it to make reruns
warm). `python -m pytest -m aot` runs this file; the compile sweeps are also marked slow (about 4
CPU-minutes), so the development loop `-m "not slow"` leaves them to CI.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import json
import logging
import os
import queue
import re
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest
import torch
import triton

from bitk.triton_kernels import activation_quant, ternary_matmul, weight_quant
from bitk.triton_kernels.ternary_matmul import (
    DOTS,
    KERNELS,
    backward_dot,
    gpu_configs,
    prune_reason,
    shared_memory_bytes,
)
from bitk.triton_kernels.utils import FLOAT_DTYPES, SHARED_MEMORY_PER_BLOCK, row_block

pytestmark = pytest.mark.aot

WORKER = Path(__file__).with_name("aot_worker.py")
TARGETS = (80, 90)
FULL = os.environ.get("BITK_AOT_FULL") == "1"
# Jit functions only ever called from other jit functions (inlined into their callers' binaries).
INLINED_HELPERS = {
    "utils.round_half_even",
    "utils.cast_rne",
    "rms_norm.row_rms",
    "ternary_matmul._grouped_tile",
    "weight_quant._ternary_codes",
}
# Stack frame (bytes per thread) allowed to "ieee" CUDA-core matmuls: all of it would be register
# spills (these kernels have no local arrays). Triton 3.9 needs none for the BLOCK_K <= 16 tiles; a
# BLOCK_K = 32 tile spills kilobytes.
MAX_FMA_STACK_BYTES = 0
# shared_memory_bytes may count this fraction more than the compiler for tensor-core dots (it matches
# Triton 3.9 exactly; the prune decision itself is checked exactly), never less.
SHARED_MODEL_SLACK = 0.05
# 32-bit registers one block may use on sm_80 and sm_90 (registers per thread x threads).
REGISTERS_PER_BLOCK = 65536
# Representative sizes: multiples of 16 (BitNet b1.58 2B: 2560 -> 6912), 4096 tokens.
M, K, N = 4096, 2560, 6912
DTYPES = ("float32", "float16", "bfloat16")
DOT_DTYPE = {"int8": "int8", "ieee": "float32", "tf32": "float32", "fp16": "float16", "bf16": "bfloat16"}
# Instruction operand type of each dot kind in the PTX of mma.sync / wgmma.
MMA_TYPE = {"int8": "s8", "tf32": "tf32", "fp16": "f16", "bf16": "bf16"}
# Each row_block regime's smallest and largest block: 4, 8, 16 and 32 warps.
ROW_BLOCKS = (1, 2048, 4096, 8192, 16384, 32768, 65536) if not FULL else tuple(2**i for i in range(17))
# The block on which the row kernels are compiled with every mix of tensor dtypes.
MIXED_ROW_BLOCK = 4096


def config_key(config: triton.Config) -> str:
    """A config as JSON text, as aot_worker.py writes the configs of the autotuners."""
    return json.dumps([sorted(config.kwargs.items()), config.num_stages, config.num_warps])


class Launch(NamedTuple):
    label: str
    kernel: str  # "module.name"
    args: dict
    options: dict
    config: triton.Config | None = None  # autotuned kernels: the config compiled
    out: str | None = None  # matmuls: the output dtype


def tensor(dtype: str) -> dict:
    return {"tensor": dtype}


# --------------------------------------------------------------------------- the matmuls


def _matmul_args(kernel: str, dot: str, out: str, bias: str | None = None) -> dict:
    """Arguments as ternary_matmul_{fwd,dx,dw} pass them (GEMM dims and strides of their comments)."""
    if kernel == "fwd":
        return {
            **dict(x_ptr=tensor("int8"), s_ptr=tensor("float32"), w_ptr=tensor("int8"), gamma_ptr=tensor("float32")),
            **dict(bias_ptr=tensor(bias or out), y_ptr=tensor(out), M=M, N=N, K=K),
            **dict(stride_xm=K, stride_wn=K, stride_ym=N, HAS_BIAS=bias is not None),
        }
    lowp_dot, precision = ternary_matmul._DOT_ARGS[dot]
    dy = tensor(DOT_DTYPE[dot])
    if kernel == "dx":  # C[M, K] = dy[M, N] @ codes[N, K]
        args = dict(dy_ptr=dy, w_ptr=tensor("int8"), gamma_ptr=tensor("float32"), dx_ptr=tensor(out), M=M, N=K, K=N)
        args.update(stride_dym=N, stride_wk=K, stride_dxm=K)
    else:  # C[N, K] = dy^T[N, M] @ (xq / s)[M, K]
        args = dict(dy_ptr=dy, x_ptr=tensor("int8"), s_ptr=tensor("float32"), dw_ptr=tensor(out), M=N, N=K, K=M)
        args.update(stride_dym=N, stride_xm=K, stride_dwm=K)
    return {**args, "LOWP_DOT": lowp_dot, "INPUT_PRECISION": precision}


def _config_launch(kernel: str, dot: str, config: triton.Config, out: str, bias: str | None) -> Launch:
    c = config.kwargs
    label = f"{c['BLOCK_M']}x{c['BLOCK_N']}x{c['BLOCK_K']}/s{config.num_stages}/w{config.num_warps} out={out}"
    if kernel == "fwd":
        label += f" bias={bias}"
    options = {"num_warps": config.num_warps, "num_stages": config.num_stages, "enable_fp_fusion": False}
    args = {**_matmul_args(kernel, dot, out, bias), **c}
    return Launch(label, f"ternary_matmul._ternary_matmul_{kernel}_kernel", args, options, config, out)


def matmul_launches(kernel: str, dot: str) -> list[Launch]:
    """Every GPU config with float32 output (and bias), and every other epilogue on the largest tile."""
    biases = (None, *DTYPES) if kernel == "fwd" else (None,)
    main = ("float32", "float32" if kernel == "fwd" else None)
    configs = gpu_configs(kernel, dot)
    largest = max(configs, key=lambda c: c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] * c.num_stages)
    launches = []
    for config in configs:
        for out, bias in itertools.product(DTYPES, biases):
            if FULL or (out, bias) == main or config is largest:
                launches.append(_config_launch(kernel, dot, config, out, bias))
    return launches


# --------------------------------------------------------------------------- the row kernels


def _dtype_mixes(n: int, block: int) -> list[tuple[str, ...]]:
    """Dtypes of ``n`` float tensors: uniform on every block, every mix on MIXED_ROW_BLOCK (all under FULL)."""
    if FULL or block == MIXED_ROW_BLOCK:
        return list(itertools.product(DTYPES, repeat=n))
    return [(d,) * n for d in DTYPES]


def _row_options(num_warps: int) -> dict:
    return {"num_warps": num_warps, "enable_fp_fusion": False}


def activation_quant_launches() -> list[Launch]:
    """quantize_activations (codes) and fake_quantize_activations (dequantized x) of [m, k] rows."""
    shapes = {
        activation_quant._launch_blocks(m, k, activation_quant._GPU_TILE): (m, k) for k in ROW_BLOCKS for m in (1, M)
    }
    launches = []
    for (block_m, block_k, warps), (m, k) in shapes.items():
        for x, fake in itertools.product(DTYPES, (False, True)):
            args = dict(x_ptr=tensor(x), xq_ptr=None if fake else tensor("int8"), s_ptr=tensor("float32"))
            args.update(dq_ptr=tensor(x) if fake else None, M=m, K=k, stride_x=k, BLOCK_M=block_m, BLOCK_K=block_k)
            args.update(STORE_CODES=not fake, STORE_DEQUANT=fake)
            label = f"{block_m}x{block_k}/w{warps} x={x} {'fake' if fake else 'codes'}"
            launches.append(Launch(label, "activation_quant._quantize_activations_kernel", args, _row_options(warps)))
    return launches


def rms_norm_fwd_launches() -> list[Launch]:
    """rms_norm_fwd: x and weight in any float dtype each, y in x's."""
    launches = []
    for block in ROW_BLOCKS:
        _, warps = row_block(block)
        for x, w in _dtype_mixes(2, block):
            args = dict(X=tensor(x), W=tensor(w), Y=tensor(x), RSTD=tensor("float32"), n_cols=block)
            args.update(stride_x=block, stride_y=block, eps=1e-6, BLOCK=block)
            launches.append(
                Launch(f"{block}/w{warps} x={x} w={w}", "rms_norm._rms_norm_fwd_kernel", args, _row_options(warps))
            )
    return launches


def rms_norm_bwd_launches() -> list[Launch]:
    """rms_norm_bwd: dy, x and weight in any float dtype each (BitLinear passes a float32 dy), dx in x's."""
    launches = []
    for block in ROW_BLOCKS:
        _, warps = row_block(block)
        for dy, x, w in _dtype_mixes(3, block):
            args = dict(DY=tensor(dy), X=tensor(x), W=tensor(w), RSTD=tensor("float32"), DX=tensor(x))
            # rows_per_program: 4096 rows over one program per SM (132 on H100)
            args.update(DW_PARTIAL=tensor("float32"), n_rows=M, n_cols=block, rows_per_program=32)
            args.update(stride_dy=block, stride_x=block, stride_dx=block, stride_dw=block, BLOCK=block)
            label = f"{block}/w{warps} dy={dy} x={x} w={w}"
            launches.append(Launch(label, "rms_norm._rms_norm_bwd_kernel", args, _row_options(warps)))
    return launches


def rms_norm_quant_launches() -> list[Launch]:
    """rms_norm_quant_fwd: x and weight in any float dtype each."""
    launches = []
    for block in ROW_BLOCKS:
        _, warps = row_block(block)
        for x, w in _dtype_mixes(2, block):
            args = dict(X=tensor(x), W=tensor(w), XQ=tensor("int8"), S=tensor("float32"), RSTD=tensor("float32"))
            args.update(n_cols=block, stride_x=block, stride_xq=block, eps=1e-6, BLOCK=block)
            label = f"{block}/w{warps} x={x} w={w}"
            launches.append(Launch(label, "rms_norm_quant._rms_norm_quant_fwd_kernel", args, _row_options(warps)))
    return launches


def weight_quant_launches() -> dict[str, list[Launch]]:
    """The three launches of weight_quant._quantize_weights (block sizes and warps as there)."""
    n, block = N * K, weight_quant._GPU_BLOCK
    partials = triton.cdiv(n, block)
    sums, codes = [], []
    for w in DTYPES:
        args = dict(w_ptr=tensor(w), partial_ptr=tensor("float64"), n=n, BLOCK=block)
        sums.append(Launch(f"{block}/w8 w={w}", "weight_quant._abs_sum_partials_kernel", args, {"num_warps": 8}))
        for fake in (False, True):
            args = dict(w_ptr=tensor(w), gamma_ptr=tensor("float32"), gamma_out_ptr=tensor(w) if fake else None)
            args.update(codes_ptr=None if fake else tensor("int8"), dq_ptr=tensor(w) if fake else None, n=n)
            args.update(BLOCK=block, STORE_CODES=not fake, STORE_DEQUANT=fake)
            label = f"{block}/w8 w={w} {'fake' if fake else 'codes'}"
            codes.append(Launch(label, "weight_quant._ternary_codes_kernel", args, _row_options(8)))
    args = dict(partial_ptr=tensor("float64"), gamma_ptr=tensor("float32"), n_partials=partials, n=n)
    args["BLOCK"] = weight_quant._GAMMA_BLOCK
    gamma = [Launch(f"{weight_quant._GAMMA_BLOCK}/w4", "weight_quant._gamma_kernel", args, {"num_warps": 4})]
    return {
        "weight_quant._abs_sum_partials_kernel": sums,
        "weight_quant._gamma_kernel": gamma,
        "weight_quant._ternary_codes_kernel": codes,
    }


ROW_LAUNCHES = {
    "activation_quant._quantize_activations_kernel": activation_quant_launches,
    "rms_norm._rms_norm_fwd_kernel": rms_norm_fwd_launches,
    "rms_norm._rms_norm_bwd_kernel": rms_norm_bwd_launches,
    "rms_norm_quant._rms_norm_quant_fwd_kernel": rms_norm_quant_launches,
    **{name: (lambda name=name: weight_quant_launches()[name]) for name in weight_quant_launches()},
}
MATMUL_KERNELS = {f"ternary_matmul._ternary_matmul_{kernel}_kernel": kernel for kernel in KERNELS}


# --------------------------------------------------------------------------- the worker


class Worker:
    """One aot_worker.py process: compile requests in, the compiler's figures out."""

    def __init__(self, cache_dir: Path, log: Path):
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        env.setdefault("TRITON_CACHE_DIR", str(cache_dir))
        self.log = log
        self.proc = subprocess.Popen(
            [sys.executable, str(WORKER)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log.open("w"),
            env=env,
            text=True,
        )

    def ask(self, request: dict) -> dict:
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, f"the AOT worker died; its stderr ends:\n{self.log.read_text()[-4000:]}"
        return json.loads(line)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


class Compiler:
    """Workers compiling side by side: the cores of this pytest process (shared with the other xdist
    workers), at most 4, so a plain serial `python -m pytest` uses the machine too."""

    def __init__(self, folder: Path):
        cores = len(os.sched_getaffinity(0)) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
        self.workers = [
            Worker(folder / "triton-cache", folder / f"worker{i}.log") for i in range(max(1, min(4, cores)))
        ]
        self.idle = queue.SimpleQueue()
        for w in self.workers:
            self.idle.put(w)

    def ask(self, request: dict) -> dict:
        w = self.idle.get()
        try:
            return w.ask(request)
        finally:
            self.idle.put(w)

    def compile_all(self, launches: list[Launch], target: int) -> list[dict]:
        """The compiler's figures of each launch for sm_``target``, in order; fails on a compile error."""

        def one(launch: Launch) -> dict:
            request = {"kernel": launch.kernel, "target": target, "args": launch.args, "options": launch.options}
            return self.ask({"op": "compile", **request})

        with concurrent.futures.ThreadPoolExecutor(len(self.workers)) as pool:
            results = list(pool.map(one, launches))
        record = os.environ.get("BITK_AOT_RECORD")
        for launch, result in zip(launches, results):
            assert "error" not in result, f"{launch.kernel} [{launch.label}] on sm_{target}: {result['traceback']}"
            if record:
                with open(record, "a") as f:
                    f.write(json.dumps({"kernel": launch.kernel, "label": launch.label, "target": target, **result}))
                    f.write("\n")
        return results

    def close(self) -> None:
        for w in self.workers:
            w.close()


@pytest.fixture(scope="session")
def compiler(tmp_path_factory):
    c = Compiler(tmp_path_factory.mktemp("aot"))
    yield c
    c.close()


# --------------------------------------------------------------------------- the tests


def test_shared_memory_limits_are_the_hardware_ones():
    assert SHARED_MEMORY_PER_BLOCK[80] == 163 * 1024 == 166912  # A100
    assert SHARED_MEMORY_PER_BLOCK[90] == 227 * 1024 == 232448  # H100, H200


def test_swept_dots_are_those_the_launchers_pick():
    """The backward's dots swept below are the ones _dot_mode picks on a GPU for some dy dtype and allow_tf32."""
    picked = {backward_dot(dtype, allow_tf32) for dtype in FLOAT_DTYPES for allow_tf32 in (False, True)}
    assert picked == set(DOTS["dx"]) == set(DOTS["dw"])


def _tile(config: triton.Config) -> str:
    c = config.kwargs
    return f"{c['BLOCK_M']}x{c['BLOCK_N']}x{c['BLOCK_K']}/s{config.num_stages}/w{config.num_warps}"


@pytest.mark.parametrize(
    ("target", "dy", "pruned"),
    [
        ((80, 166912), torch.float32, []),
        ((90, 232448), torch.float32, ["256x128x64/s3/w8"]),  # 245760 bytes for tf32 tiles
        ((90, 232448), torch.bfloat16, []),
        ((86, 101376), torch.float32, ["256x128x64/s3/w8", "128x128x64/s4/w8", "128x128x64/s4/w4", "128x64x64/s4/w4"]),
        (None, torch.float32, []),  # ROCm: no shared-memory model, the tile kind only
    ],
    ids=("sm80", "sm90", "sm90-bf16", "sm86", "rocm"),
)
def test_prune_hook(monkeypatch, caplog, target, dy, pruned):
    """The backward autotuners' early_config_prune as on a GPU (simulated): a tf32 or bf16 launch keeps
    the tensor-core tiles that fit the device's shared memory, and logs why it dropped the others."""
    monkeypatch.setattr(ternary_matmul, "is_interpreting", lambda: False)
    monkeypatch.setattr(ternary_matmul, "cuda_target", lambda device: target)
    dot = "tf32" if dy == torch.float32 else "bf16"
    configs = gpu_configs("dw", dot) + gpu_configs("dw", "ieee")
    args = {"dy_ptr": torch.empty(1, dtype=dy), "x_ptr": None, "dw_ptr": torch.empty(1)}
    with caplog.at_level(logging.DEBUG, logger=ternary_matmul.__name__):
        kept = ternary_matmul._early_prune("dw")(configs, args, LOWP_DOT=dy != torch.float32, INPUT_PRECISION="tf32")
    assert [_tile(c) for c in kept] == [_tile(c) for c in gpu_configs("dw", dot) if _tile(c) not in pruned]
    assert len(caplog.records) == len(configs) - len(kept)
    assert sum("shared memory" in r.getMessage() for r in caplog.records) == len(pruned)
    if target is not None:  # with room for no tile at all, the launch fails naming the reasons
        monkeypatch.setattr(ternary_matmul, "cuda_target", lambda device: (target[0], 1024))
        with pytest.raises(RuntimeError, match="no config can run .* shared memory"):
            ternary_matmul._early_prune("dw")(configs, args, LOWP_DOT=dy != torch.float32, INPUT_PRECISION="tf32")


def test_every_kernel_is_compiled(compiler):
    """The kernels compiled below are exactly the jit functions of the package minus the inlined helpers."""
    found = compiler.ask({"op": "discover"})
    assert "error" not in found, found.get("traceback")
    assert set(found) >= INLINED_HELPERS, f"helpers no longer in the package: {INLINED_HELPERS - set(found)}"
    launchable = set(found) - INLINED_HELPERS
    assert launchable == set(ROW_LAUNCHES) | set(MATMUL_KERNELS), (
        "a kernel without launch variants here (or a stale one)"
    )
    assert {name for name, info in found.items() if info["configs"]} == set(MATMUL_KERNELS)
    for name, kernel in MATMUL_KERNELS.items():  # the sweeps below compile every config the autotuner holds
        swept = {config_key(c) for dot in DOTS[kernel] for c in gpu_configs(kernel, dot)}
        assert swept == set(found[name]["configs"]), name
    for helper in INLINED_HELPERS:
        callers = [name for name, info in found.items() if re.search(rf"\b{helper.split('.')[1]}\(", info["source"])]
        assert set(callers) - {helper}, f"{helper} is called by no jit function"


def _check_fits(result: dict, target: int, what: str) -> None:
    limit = SHARED_MEMORY_PER_BLOCK[target]
    assert result["shared"] <= limit, f"{what}: needs {result['shared']} bytes of shared memory, {limit} allowed"
    registers = result["regs"] * 32 * result["num_warps"]
    assert registers <= REGISTERS_PER_BLOCK, f"{what}: needs {registers} registers per block"


def _check_dots(result: dict, dot: str, config: triton.Config, target: int, what: str) -> None:
    if dot == "ieee":
        assert not result["mma"], f"{what}: ieee dots must not use tensor cores, got {result['mma']}"
        assert result["fma"], f"{what}: no fma.rn.f32 in the PTX of a CUDA-core dot"
        assert result["stack"] <= MAX_FMA_STACK_BYTES, f"{what}: {result['stack']} bytes of spills per thread"
        return
    family = "wgmma" if target // 10 == 9 and config.kwargs["BLOCK_M"] >= 64 else "mma.sync"
    assert result["mma"], f"{what}: no tensor-core instruction in the PTX"
    for instruction in result["mma"]:
        assert instruction.startswith(family), f"{what}: {instruction}, expected {family}"
        assert MMA_TYPE[dot] in instruction.split("."), f"{what}: {instruction} is not a {MMA_TYPE[dot]} MMA"


MATMUL_CASES = [(kernel, dot, target) for kernel in KERNELS for dot in DOTS[kernel] for target in TARGETS]


@pytest.mark.slow
@pytest.mark.parametrize(("kernel", "dot", "target"), MATMUL_CASES, ids=[f"{k}-{d}-sm{t}" for k, d, t in MATMUL_CASES])
def test_matmul_compiles_with_every_config(compiler, kernel, dot, target):
    """Each config compiles to the dot's instructions; the prune keeps exactly those that fit."""
    limit = SHARED_MEMORY_PER_BLOCK[target]
    launches = matmul_launches(kernel, dot)
    for launch, result in zip(launches, compiler.compile_all(launches, target)):
        what = f"ternary_matmul_{kernel} {dot} [{launch.label}] on sm_{target}"
        _check_dots(result, dot, launch.config, target, what)
        out = getattr(torch, launch.out)
        shared, estimate = result["shared"], shared_memory_bytes(kernel, launch.config, dot, target, out)
        reason = prune_reason(kernel, launch.config, dot, target, out_dtype=out)
        assert (reason is None) == (shared <= limit), f"{what}: compiler needs {shared} of {limit} bytes; {reason}"
        if reason is None:
            _check_fits(result, target, what)
        # The model never counts less than the compiler; for tensor-core dots hardly more.
        assert shared <= estimate, f"{what}: compiler needs {shared} bytes, the model counts {estimate}"
        if dot != "ieee":
            assert estimate <= (1 + SHARED_MODEL_SLACK) * shared, f"{what}: model {estimate}, compiler {shared}"


ROW_CASES = [(kernel, target) for kernel in ROW_LAUNCHES for target in TARGETS]


@pytest.mark.slow
@pytest.mark.parametrize(("kernel", "target"), ROW_CASES, ids=[f"{k.split('.')[1]}-sm{t}" for k, t in ROW_CASES])
def test_row_kernel_compiles(compiler, kernel, target):
    """Each block size and dtype mix compiles and fits a block of the target."""
    launches = ROW_LAUNCHES[kernel]()
    for launch, result in zip(launches, compiler.compile_all(launches, target)):
        what = f"{kernel} [{launch.label}] on sm_{target}"
        _check_fits(result, target, what)
        assert result["num_warps"] == launch.options["num_warps"], what
