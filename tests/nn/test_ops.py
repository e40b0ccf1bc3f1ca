"""bitk's torch.library custom ops: `torch.library.opcheck` of each, and the layers under torch.compile.

opcheck runs every op for real and checks its schema (no mutation, no aliasing), its fake
implementation (shapes, dtypes, strides) against the real outputs, its autograd registration and
AOTAutograd with dynamic shapes. The Triton ops run on CUDA with a GPU, in Triton's interpreter on
CPU tensors otherwise (the root conftest sets TRITON_INTERPRET=1). Under torch.compile the layers
must be single graphs of these ops, and with no fusion (the aot_eager backend) give the eager
numbers bit for bit.
"""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters

import bitk.triton_kernels  # noqa: F401  (registers the bitk::triton_* ops)
from bitk.nn import BitLinear, BitLinearLRC, RMSNorm, SubLN, functional, set_quant_lambda, use_backend
from bitk.nn import cpu as cpu_path

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
OPS = {
    "cpu_bitlinear",
    "cpu_dequantize_weights",
    "cpu_relu2_gate",
    "cpu_relu2_gate_backward",
    "cpu_rms_norm",
    "cpu_rms_norm_backward",
    "triton_bitlinear",
    "triton_rms_norm_bitlinear",
    "triton_rms_norm",
    "triton_rms_norm_backward",
    "triton_ternary_matmul_dx",
    "triton_ternary_matmul_dw",
}


def _opcheck(name: str, *args) -> None:
    torch.library.opcheck(getattr(torch.ops.bitk, name).default, args)


def _inputs(lead: tuple[int, ...], k: int, n: int, dtype: torch.dtype, device: str = "cpu", seed: int = 0):
    """(x [*lead, k], weight [n, k], bias [n], gain [k]), all requiring grad."""
    g = torch.Generator().manual_seed(seed)
    tensors = (
        torch.randn(*lead, k, generator=g) * 3,
        torch.randn(n, k, generator=g),
        torch.randn(n, generator=g),
        torch.rand(k, generator=g) + 0.5,
    )
    return [t.to(device=device, dtype=dtype).requires_grad_() for t in tensors]


def test_every_bitk_op_is_checked_here():
    registered = {name.split("::", 1)[1] for name in torch._C._dispatch_get_all_op_names() if name.startswith("bitk::")}
    assert registered == OPS


# (tokens shape, in, out): one token, odd K and prime N in a 3-D batch, no tokens.
SHAPES = [((1,), 64, 5), ((2, 3), 33, 13), ((0,), 16, 8)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("lead", "k", "n"), SHAPES)
def test_cpu_bitlinear(dtype, lead, k, n):
    x, w, b, _ = _inputs(lead, k, n, dtype)
    _opcheck("cpu_bitlinear", x, w, b, dtype)
    _opcheck("cpu_bitlinear", x, w, None, torch.float32)  # an autocast-like output dtype, no bias


def test_cpu_dequantize_weights():
    codes = torch.randint(-1, 2, (13, 33), dtype=torch.int8)
    _opcheck("cpu_dequantize_weights", codes, torch.tensor(0.37))


@pytest.mark.parametrize(("lead", "k", "n"), SHAPES)
def test_cpu_relu2_gate(lead, k, n):
    gate, up = _inputs(lead, k, n, torch.float32)[0], _inputs(lead, k, n, torch.float32, seed=1)[0]
    _opcheck("cpu_relu2_gate", gate, up)
    for gate_grad, up_grad in [(True, True), (True, False), (False, True)]:
        _opcheck("cpu_relu2_gate_backward", torch.randn_like(gate), gate.detach(), up.detach(), gate_grad, up_grad)


@pytest.mark.parametrize(("lead", "k", "n"), SHAPES)
def test_cpu_rms_norm(lead, k, n):
    x, _, _, g = _inputs(lead, k, n, torch.float32)
    _opcheck("cpu_rms_norm", x, x, g, 1e-5)  # (x twice: see bitk.nn.cpu_norm)
    rms = torch.sqrt(x.detach().square().mean(-1, keepdim=True) + 1e-5)
    dy = torch.randn_like(x)
    for x_grad, w_grad in [(True, True), (True, False), (False, True)]:
        _opcheck("cpu_rms_norm_backward", dy, x.detach(), g.detach(), rms, x_grad, w_grad)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("lead", "k", "n"), SHAPES)
def test_triton_bitlinear(dtype, lead, k, n):
    x, w, b, g = _inputs(lead, k, n, dtype, DEVICE)
    _opcheck("triton_bitlinear", x, w, b, dtype)
    _opcheck("triton_rms_norm_bitlinear", x, g, w, None, 1e-5, torch.float32)
    _opcheck("triton_rms_norm", x, g, 1e-5)


def test_triton_backward_ops():
    gen = torch.Generator().manual_seed(1)
    m, k, n = 15, 33, 13
    dy = torch.randn(m, n, generator=gen).to(DEVICE)
    codes = torch.randint(-1, 2, (n, k), dtype=torch.int8, generator=gen).to(DEVICE)
    xq = torch.randint(-127, 128, (m, k), dtype=torch.int8, generator=gen).to(DEVICE)
    s = (torch.rand(m, 1, generator=gen) + 0.1).to(DEVICE)
    _opcheck("triton_ternary_matmul_dx", dy, codes, torch.tensor(0.37, device=DEVICE))
    for out_dtype in (torch.float32, torch.bfloat16):
        _opcheck("triton_ternary_matmul_dw", dy, xq, s, out_dtype)
    x = torch.randn(m, k, generator=gen).to(DEVICE)
    rstd = (torch.rand(m, generator=gen) + 0.5).to(DEVICE)
    _opcheck(
        "triton_rms_norm_backward", torch.randn(m, k, generator=gen).to(DEVICE), x, torch.ones(k, device=DEVICE), rstd
    )


# ----------------------------------------------------------------------------- the layers compiled


class _Block(torch.nn.Module):
    """The layer kinds of a BitNet block: RMSNorm, BitLinear, SubLN fused into a BitLinear, LRC."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.norm, self.up, self.sub = RMSNorm(64), BitLinear(64, 48), SubLN(48)
        self.down, self.lrc = BitLinear(48, 64, bias=False), BitLinearLRC(64, 40)

    def forward(self, x):
        return self.lrc(self.down(self.up(self.norm(x)), norm=self.sub))


def _grads(model: torch.nn.Module, fn, x: torch.Tensor):
    """(y, dx, parameter grads) of ``fn(x)`` with a fixed output gradient."""
    x = x.detach().clone().requires_grad_()
    model.zero_grad(set_to_none=True)
    y = fn(x)
    y.backward(torch.linspace(-1, 1, y.numel()).reshape(y.shape))
    return [y.detach(), x.grad] + [p.grad for p in model.parameters()]


def _assert_compiled_equals_eager(model: torch.nn.Module, x: torch.Tensor) -> None:
    """The compiled model's output and gradients equal the eager ones bit for bit."""
    eager = _grads(model, model, x)
    torch._dynamo.reset()
    try:
        compiled = _grads(model, torch.compile(model, backend="aot_eager"), x)
    finally:
        torch._dynamo.reset()
    for a, b in zip(compiled, eager, strict=True):
        assert torch.equal(a, b)


# The paths a training step takes: bitk's kernels (lam = 1) and the fake-quant reference of the
# quantization warm-up (lam < 1), on CPU and Triton.
@pytest.mark.parametrize("path", ["cpu", "triton"])
@pytest.mark.parametrize("lam", [1.0, 0.5])
def test_a_block_compiles_to_one_graph_of_bitk_ops_with_the_eager_numbers(path, lam):
    model = _Block().to(DEVICE if path == "triton" else "cpu")
    set_quant_lambda(model, lam)
    x = torch.randn(2, 5, 64, device=next(model.parameters()).device)
    with use_backend(path):
        torch._dynamo.reset()
        explained = torch._dynamo.explain(model)(x)
        assert explained.graph_break_count == 0, explained.break_reasons
        targets = {str(node.target) for node in explained.graphs[0].graph.nodes if node.op == "call_function"}
        ops = {t.split(".")[1] for t in targets if t.startswith("bitk.")}
        if lam == 1.0:
            want = (
                {"cpu_rms_norm", "cpu_bitlinear"}
                if path == "cpu"
                else {"triton_rms_norm", "triton_bitlinear", "triton_rms_norm_bitlinear"}
            )
        else:  # the norms only: warm-up runs the fake-quant reference (pure torch)
            want = {"cpu_rms_norm"} if path == "cpu" else {"triton_rms_norm"}
        assert ops == want
        _assert_compiled_equals_eager(model, x)


@pytest.mark.parametrize("precision", ["switchback", "int8"])
def test_the_quantized_cpu_backwards_compile_to_the_eager_bits(monkeypatch, precision):
    """Traced, the backward quantizes dy with torch's ops and multiplies with `torch._int_mm`
    instead of bitk's C++ kernels: the same bits."""
    monkeypatch.setenv("BITK_CPU_BACKWARD", precision)
    model = _Block()
    x = torch.randn(2, 9, 64)
    with use_backend("cpu"):
        _assert_compiled_equals_eager(model, x)


def test_the_warmup_lambda_does_not_recompile_every_step():
    # A float lam specialized by torch.compile would give one graph per warm-up step until the
    # recompile limit (8), then eager for good: three graphs (the first lam, any lam, lam = 1).
    model = _Block()
    compiled = torch.compile(model, backend="eager")
    x = torch.randn(3, 64)
    torch._dynamo.reset()
    counters.clear()
    with use_backend("cpu"):
        for step in range(12):
            set_quant_lambda(model, min(1.0, step / 10))
            compiled(x)
    assert counters["stats"]["unique_graphs"] == 3
    torch._dynamo.reset()


def test_a_tensor_lam_compiles():
    x, w, b, _ = _inputs((4,), 32, 16, torch.float32)
    lam = torch.tensor(0.25)
    torch._dynamo.reset()
    explained = torch._dynamo.explain(functional.bitlinear)(x, w, b, lam=lam)
    assert explained.graph_break_count == 0, explained.break_reasons
    y = torch.compile(functional.bitlinear, backend="aot_eager")(x, w, b, lam=lam)
    torch._dynamo.reset()
    assert torch.equal(y, functional.bitlinear(x, w, b, lam=lam))


def test_the_cpu_op_is_what_the_layer_runs():
    # The op's first output is the layer's output; its other outputs are what the backward saves.
    x, w, b, _ = _inputs((3, 2), 40, 24, torch.float32)
    y, xq, s, codes, gamma = torch.ops.bitk.cpu_bitlinear(x, w, b, torch.float32)
    assert torch.equal(y, cpu_path.bitlinear(x, w, b))
    assert (xq.dtype, s.shape, codes.dtype, gamma.shape) == (torch.int8, (6, 1), torch.int8, ())
