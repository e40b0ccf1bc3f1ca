"""Compile bitk's Triton kernels for a GPU target without a GPU: the worker process of test_aot.py.

Run as a script with TRITON_INTERPRET unset (under TRITON_INTERPRET=1 `triton.jit` returns interpreter
functions, which cannot be compiled). Reads one JSON request per line on stdin, answers one JSON line
each on the stdout it was started with; anything else written to stdout (Triton prints ptxas errors)
goes to stderr. Requests:

- ``{"op": "discover"}``: every `@triton.jit` function and autotuned kernel of bitk.triton_kernels,
  as ``{"module.name": {"source": str, "configs": [config, ...] or null}}``: the configs (as
  `config_key` writes them) of an autotuned kernel as its autotuner holds them on a GPU.
- ``{"op": "compile", "kernel": "module.name", "target": 90, "args": {...}, "options": {...}}``:
  ``args`` maps every parameter to its value at launch: an int, a float, a bool or a string for
  scalars and constexprs, null for None, ``{"tensor": "bfloat16"}`` for a tensor (a 16-byte aligned
  one, as torch allocates). The signature, constexprs and alignment specialization are derived as
  the Triton runtime does at launch. Answers the compiler's figures (shared memory, registers,
  stack frame from the cubin) and the distinct tensor-core instructions of the PTX.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback

assert os.environ.get("TRITON_INTERPRET", "0") != "1", "the AOT worker must run with TRITON_INTERPRET unset"

import torch  # noqa: E402
import triton  # noqa: E402
from triton._C.libtriton import native_specialize_impl  # noqa: E402  (the launcher's own specialization)
from triton.backends.compiler import BaseBackend, GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402
from triton.runtime.autotuner import Autotuner  # noqa: E402
from triton.runtime.jit import JITFunction  # noqa: E402

PACKAGE = "bitk.triton_kernels"
MODULES = ("activation_quant", "bitlinear", "rms_norm", "rms_norm_quant", "ternary_matmul", "utils", "weight_quant")
# Tensor-core instructions: mma.sync (Ampere-style, sm_80+) and wgmma (Hopper, sm_90a), with their types.
MMA_RE = re.compile(r"\b((?:mma\.sync\.aligned|wgmma\.mma_async\.sync\.aligned)\.[\w.]+)")
RES_RE = re.compile(r"REG:(\d+)\s+STACK:(\d+)")


def qualname(fn: JITFunction) -> str:
    return f"{fn.fn.__module__.removeprefix(PACKAGE + '.')}.{fn.__name__}"


def config_key(config: triton.Config) -> str:
    """A config as JSON text (test_aot.py writes its own configs the same way to compare)."""
    return json.dumps([sorted(config.kwargs.items()), config.num_stages, config.num_warps])


def discover() -> dict:
    found = {}
    for module in MODULES:
        for obj in vars(importlib.import_module(f"{PACKAGE}.{module}")).values():
            jit = obj.fn if isinstance(obj, Autotuner) else obj
            if isinstance(jit, JITFunction):
                # An imported helper shows up in several modules; it is the same object.
                entry = found.setdefault(qualname(jit), {"source": jit.src, "configs": None})
                if isinstance(obj, Autotuner):
                    entry["configs"] = [config_key(c) for c in obj.configs]
    return found


def kernel_function(name: str) -> JITFunction:
    module, attr = name.rsplit(".", 1)
    obj = getattr(importlib.import_module(f"{PACKAGE}.{module}"), attr)
    return obj.fn if isinstance(obj, Autotuner) else obj


def source(fn: JITFunction, args: dict) -> ASTSource:
    """The ASTSource the runtime would build for a launch with ``args``."""
    if set(args) != set(fn.arg_names):
        raise ValueError(f"{fn.__name__} takes {fn.arg_names}, got {sorted(args)}")
    signature, constexprs, attrs = {}, {}, {}
    for i, (name, param) in enumerate(zip(fn.arg_names, fn.params)):
        value = args[name]
        if param.is_constexpr:
            signature[name], constexprs[name] = "constexpr", value
            continue
        if isinstance(value, dict):
            value = torch.empty(16, dtype=getattr(torch, value["tensor"]))
        kind, spec = native_specialize_impl(BaseBackend, value, False, True, True)
        signature[name] = kind
        if kind == "constexpr":  # None, or an integer equal to 1
            constexprs[name] = spec
        elif isinstance(spec, str):  # "D": divisible by 16 (pointers: 16-byte aligned)
            attrs[(i,)] = BaseBackend.parse_attr(spec)
    return ASTSource(fn, signature, constexprs=constexprs, attrs=attrs)


def resource_usage(cubin: bytes) -> tuple[int, int]:
    """(registers per thread, stack frame bytes per thread) of the cubin's kernel, as cuobjdump reports."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run(
            [triton.knobs.nvidia.cuobjdump.path, "-res-usage", f.name], capture_output=True, text=True, check=True
        ).stdout
    regs, stack = RES_RE.search(out).groups()
    return int(regs), int(stack)


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (ptxas): a figure the machine's load does not change."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def compile_kernel(request: dict) -> dict:
    start, start_cpu = time.perf_counter(), cpu_seconds()
    fn = kernel_function(request["kernel"])
    compiled = triton.compile(
        source(fn, request["args"]), target=GPUTarget("cuda", request["target"], 32), options=request["options"]
    )
    ptx = compiled.asm["ptx"]
    regs, stack = resource_usage(compiled.asm["cubin"])
    return {
        "shared": compiled.metadata.shared,
        "num_warps": compiled.metadata.num_warps,
        "regs": regs,
        "stack": stack,
        "mma": sorted(set(MMA_RE.findall(ptx))),
        "fma": "fma.rn.f32" in ptx,
        "seconds": round(time.perf_counter() - start, 3),
        "cpu_seconds": round(cpu_seconds() - start_cpu, 3),
    }


def main() -> None:
    answers = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # stray prints (C++ and Python) go to stderr
    sys.stdout = sys.stderr
    for line in sys.stdin:
        request = json.loads(line)
        try:
            answer = discover() if request["op"] == "discover" else compile_kernel(request)
        except Exception as e:  # reported to the test, which fails with it
            answer = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
        answers.write(json.dumps(answer) + "\n")
        answers.flush()


if __name__ == "__main__":
    main()
