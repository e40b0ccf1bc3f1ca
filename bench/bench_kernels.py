"""GPU kernel suites (pytest-benchmark): skipped cleanly without CUDA.

BitNet b1.58 2B4T shapes on 8192 tokens (2560 -> 6912, 6912 -> 2560, 2560 -> 2560). Targets: BitLinear forward >= 1.5x bf16 nn.Linear, forward+backward >= 1.0x (stretch 1.3x);
fused SubLN+quant >= 80% of the measured copy bandwidth; weight quantization with zero host
syncs; peak memory of a BitLinear stack below the bf16 nn.Linear stack. Every timed call ends
with torch.cuda.synchronize(), so the figures are wall times of finished GPU work.
Run: `python -m pytest bench/bench_kernels.py --benchmark-json bench-results/kernels.json`.
"""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="GPU kernel benchmarks need CUDA")

TOKENS = 8192
SHAPES = [(2560, 6912), (6912, 2560), (2560, 2560)]  # (in, out)
IDS = [f"{i}->{o}" for i, o in SHAPES]


def _synced(fn):
    def run():
        out = fn()
        torch.cuda.synchronize()
        return out

    return run


def _layers(k_in: int, n_out: int):
    from bitk.nn import BitLinear

    torch.manual_seed(0)
    linear = torch.nn.Linear(k_in, n_out, bias=False, device="cuda")
    bit = BitLinear(k_in, n_out, bias=False, device="cuda")
    with torch.no_grad():
        bit.weight.copy_(linear.weight)
    return bit, linear


@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
@pytest.mark.parametrize("impl", ["bitk", "linear_bf16"])
def bench_bitlinear_forward(benchmark, shape, impl):
    bit, linear = _layers(*shape)
    x = torch.randn(TOKENS, shape[0], device="cuda", dtype=torch.bfloat16)
    layer = bit if impl == "bitk" else linear.to(torch.bfloat16)
    benchmark.group = f"GPU BitLinear forward {IDS[SHAPES.index(shape)]}"
    benchmark.extra_info["flops"] = 2 * TOKENS * shape[0] * shape[1]

    def fwd():
        with torch.no_grad():
            return layer(x)

    benchmark(_synced(fwd))


@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
@pytest.mark.parametrize("impl", ["bitk", "linear_bf16"])
def bench_bitlinear_forward_backward(benchmark, shape, impl):
    bit, linear = _layers(*shape)
    x = torch.randn(TOKENS, shape[0], device="cuda", requires_grad=True)
    dy = torch.randn(TOKENS, shape[1], device="cuda", dtype=torch.bfloat16)
    layer = bit if impl == "bitk" else linear
    benchmark.group = f"GPU BitLinear forward+backward (bf16 autocast) {IDS[SHAPES.index(shape)]}"

    def step():
        layer.weight.grad = None
        x.grad = None
        with torch.autocast("cuda", dtype=torch.bfloat16):
            y = layer(x)
        y.backward(dy)

    benchmark(_synced(step))


@pytest.mark.parametrize("impl", ["rms_norm_quant", "copy"])
def bench_subln_quant_bandwidth(benchmark, impl):
    from bitk.triton_kernels.rms_norm_quant import rms_norm_quant

    k = 6912
    x = torch.randn(TOKENS, k, device="cuda", dtype=torch.bfloat16)
    g = torch.ones(k, device="cuda", dtype=torch.bfloat16)
    out = torch.empty_like(x)
    benchmark.group = "GPU SubLN+quant vs copy (8192 x 6912 bf16)"
    # Bytes moved: the copy reads and writes bf16 (4 B/elem); the fused op reads bf16 and writes int8 (3 B/elem).
    benchmark.extra_info["bytes"] = x.numel() * (3 if impl != "copy" else 4)
    fn = (lambda: rms_norm_quant(x, g)) if impl != "copy" else (lambda: out.copy_(x))
    benchmark(_synced(fn))


def bench_weight_quant_no_host_sync(benchmark):
    from bitk.triton_kernels.weight_quant import quantize_weights

    w = torch.randn(6912, 2560, device="cuda")
    benchmark.group = "GPU weight quantization 6912 x 2560"
    quantize_weights(w)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any host sync inside raises
    try:
        benchmark(_synced(lambda: quantize_weights(w)))
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("impl", ["bitk", "linear_bf16"])
def bench_stack_peak_memory(benchmark, impl):
    """Peak memory of forward+backward through a 4-layer stack (2560 -> 6912 -> 2560, x2)."""
    from bitk.nn import BitLinear

    torch.manual_seed(0)
    dims = [2560, 6912, 2560, 6912, 2560]
    cls = BitLinear if impl == "bitk" else torch.nn.Linear
    stack = torch.nn.Sequential(*[cls(a, b, bias=False, device="cuda") for a, b in zip(dims, dims[1:])])
    x = torch.randn(TOKENS, dims[0], device="cuda", requires_grad=True)
    benchmark.group = "GPU stack peak memory (bf16 autocast, 8192 tokens)"

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            y = stack(x)
        y.float().square().mean().backward()

    step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    step()
    torch.cuda.synchronize()
    benchmark.extra_info["peak_bytes_above_start"] = torch.cuda.max_memory_allocated() - base
    benchmark(_synced(step))
