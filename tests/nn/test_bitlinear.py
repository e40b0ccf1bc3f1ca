"""BitLinear: a drop-in nn.Linear whose every path computes the reference's numbers.

The CPU path's forward is exact integer arithmetic and its backward uses the reference's own
formulas, so it equals the reference bit for bit, whatever engine multiplies. The Triton path
(interpreted here, on CUDA on a GPU) equals the reference's forward and its gradients within the
tolerance derived in bitk_kernel_testing.
"""

from __future__ import annotations

import pytest
import torch

from bitk import numerics
from bitk.nn import BitLinear, SubLN, functional, set_quant_lambda, use_backend
from bitk.nn import cpu as cpu_path
from bitk_nn_testing import DTYPES, exact_grads
from bitk_testing import assert_derived_close

# (tokens shape, in, out): no tokens, one token, odd K, prime N, a 3-D batch.
SHAPES = [((0,), 64, 5), ((1,), 64, 5), ((7,), 33, 13), ((2, 9), 256, 97), ((40,), 130, 67)]
ENGINES = ("cpp", "int_mm", "float")


def _layer(k: int, n: int, bias: bool = True, seed: int = 0) -> BitLinear:
    torch.manual_seed(seed)
    layer = BitLinear(k, n, bias=bias)
    with torch.no_grad():
        layer.weight.mul_(3.0)
        if bias:
            layer.bias.uniform_(-0.5, 0.5)
    return layer


def _run(layer: BitLinear, x: torch.Tensor, dy: torch.Tensor, backend: str, norm=None):
    x = x.detach().clone().requires_grad_()
    for p in layer.parameters():
        p.grad = None
    if norm is not None:
        norm.weight.grad = None
    with use_backend(backend):
        y = layer(x, norm=norm)
    y.backward(dy.to(y.dtype))
    grads = [x.grad] + [p.grad for p in layer.parameters()]
    if norm is not None:
        grads.append(norm.weight.grad)
    return y.detach(), grads


def test_is_a_drop_in_linear():
    layer = _layer(32, 16)
    linear = torch.nn.Linear(32, 16)
    assert isinstance(layer, torch.nn.Linear)
    assert layer.state_dict().keys() == linear.state_dict().keys()
    assert BitLinear(32, 16, bias=False).bias is None
    assert "quant_lambda=1.0" in repr(layer)


def test_from_linear_shares_the_parameters():
    linear = torch.nn.Linear(32, 16)
    layer = BitLinear.from_linear(linear)
    assert layer.weight is linear.weight and layer.bias is linear.bias
    no_bias = BitLinear.from_linear(torch.nn.Linear(32, 16, bias=False))
    assert no_bias.bias is None and list(no_bias.state_dict()) == ["weight"]
    x = torch.randn(3, 32)
    assert torch.equal(layer(x), numerics.bitlinear(x, linear.weight, linear.bias))
    with pytest.raises(ValueError, match="nn.Linear"):
        BitLinear.from_linear(torch.nn.Conv1d(3, 3, 1))


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("lead", "k", "n"), SHAPES)
def test_cpu_path_equals_the_reference_bit_for_bit(monkeypatch, float32_backward, engine, dtype, lead, k, n):
    monkeypatch.setenv("BITK_CPU_MATMUL", engine)
    if engine == "cpp" and cpu_path._codecs() is None:
        pytest.fail("bitk._codecs.ternary_gemm is not built")
    layer = _layer(k, n)
    torch.manual_seed(1)
    x = torch.randn(*lead, k).to(dtype)
    dy = torch.randn(*lead, n)
    y_ref, g_ref = _run(layer, x, dy, "reference")
    y, g = _run(layer, x, dy, "cpu")
    assert y.dtype == dtype
    assert torch.equal(y, y_ref)
    for a, b in zip(g, g_ref):
        assert a.dtype == b.dtype and torch.equal(a, b)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("lead", "k", "n"), SHAPES)
def test_triton_path_matches_the_reference(dtype, lead, k, n):
    layer = _layer(k, n)
    torch.manual_seed(1)
    x = torch.randn(*lead, k).to(dtype)
    dy = torch.randn(*lead, n).to(dtype)
    y_ref, g_ref = _run(layer, x, dy, "reference")
    y, g = _run(layer, x, dy, "triton")
    assert y.dtype == dtype
    # Same int8 codes and scales, the same float32 epilogue, the same final rounding.
    assert torch.equal(y, y_ref)
    dx64, dw64 = exact_grads(x, layer.weight, dy)
    assert_derived_close(g[0], dx64, g_ref[0], "dx")
    assert_derived_close(g[1], dw64, g_ref[1], "dW")
    assert_derived_close(g[2], dy.double().reshape(-1, n).sum(0), g_ref[2], "dbias")


@pytest.mark.parametrize("variant", cpu_path.kernel_variants())
@pytest.mark.parametrize(("lead", "k", "n"), SHAPES)
def test_every_kernel_variant_gives_the_reference_forward(variant, lead, k, n):
    """Each C++ variant this CPU runs (forced in turn) computes the reference's outputs bit for bit."""
    layer = _layer(k, n)
    x = torch.randn(*lead, k, generator=torch.Generator().manual_seed(3)) * 2
    with torch.no_grad():
        want = numerics.bitlinear(x, layer.weight, layer.bias)
    try:
        cpu_path.set_kernel_variant(variant)
        with torch.no_grad(), use_backend("cpu"):
            got = layer(x)
    finally:
        cpu_path.set_kernel_variant("auto")
    assert torch.equal(got, want)


def _backward_case(seed: int, dtype: torch.dtype):
    """x, the CPU path's and the reference's gradients (the forwards must agree bit for bit), and
    what the backward's formulas start from: (codes, gamma, xq, s, dy as float32 [M, N])."""
    layer = _layer(130, 67)
    torch.manual_seed(seed)
    x = torch.randn(2, 9, 130).to(dtype)
    dy = torch.randn(2, 9, 67)
    y, grads = _run(layer, x, dy, "cpu")
    y_ref, grads_ref = _run(layer, x, dy, "reference")
    assert torch.equal(y, y_ref)
    codes, gamma = numerics.quantize_weights(layer.weight.detach())
    xq, s = numerics.quantize_activations(x.reshape(-1, 130).float())
    return x, grads, grads_ref, (codes, gamma, xq, s, dy.to(y.dtype).reshape(-1, 67).float())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_bf16_backward_is_the_ste_in_bf16(monkeypatch, dtype):
    """BITK_CPU_BACKWARD=bf16: dx = bf16(dy) @ bf16(codes) * gamma, dW = bf16(dy / s)^T @ bf16(xq), dbias
    in float32; within bf16 rounding of the float32 (reference) gradients."""
    monkeypatch.setenv("BITK_CPU_BACKWARD", "bf16")
    x, (dx, dw, db), (dx_ref, dw_ref, db_ref), (codes, gamma, xq, s, dy2) = _backward_case(4, dtype)
    want_dx = ((dy2.bfloat16() @ codes.bfloat16()).float() * gamma).to(dtype).reshape(x.shape)
    want_dw = (dy2 / s).bfloat16().T @ xq.bfloat16()
    assert torch.equal(dx, want_dx)
    assert torch.equal(dw, want_dw.float())
    assert torch.equal(db, dy2.sum(0)) and torch.equal(db, db_ref)
    for got, ref in ((dx, dx_ref), (dw, dw_ref)):
        torch.testing.assert_close(got.float(), ref.float(), rtol=2e-2, atol=2e-2 * ref.abs().max().item())


def test_bf16_weight_gradients_of_several_shapes_share_one_workspace(monkeypatch):
    """The bf16 weight gradient's GEMM writes into a reused buffer: a big layer, a small one, the big
    one again each get their own formula's gradient, and none aliases the buffer."""
    monkeypatch.setenv("BITK_CPU_BACKWARD", "bf16")
    grads = []
    for k, n in ((130, 67), (40, 9), (130, 67)):
        layer = _layer(k, n)
        x, dy = torch.randn(6, k), torch.randn(6, n)
        dw = _run(layer, x, dy, "cpu")[1][1]
        xq, s = numerics.quantize_activations(x)
        assert torch.equal(dw, ((dy / s).bfloat16().T @ xq.bfloat16()).float())
        grads.append(dw)
    assert grads[0].data_ptr() != grads[2].data_ptr() and grads[0].untyped_storage().nbytes() == 130 * 67 * 4


def test_backward_precision_setting(monkeypatch):
    monkeypatch.setenv("BITK_CPU_BACKWARD", "float32")
    assert cpu_path.backward_precision() == "float32"
    monkeypatch.setenv("BITK_CPU_BACKWARD", "bf16")
    assert cpu_path.backward_precision() == "bf16"
    monkeypatch.setenv("BITK_CPU_BACKWARD", "switchback")
    assert cpu_path.backward_precision() == "switchback"
    monkeypatch.setenv("BITK_CPU_BACKWARD", "auto")
    assert cpu_path.backward_precision() == "switchback"  # with bitk's kernels (this build has them)
    native = bool(cpu_path.cpu_flags() & {"avx512_bf16", "amx_bf16"})
    monkeypatch.setattr(cpu_path, "_codecs", lambda: None)
    assert cpu_path.backward_precision() == ("bf16" if native else "float32")
    monkeypatch.setenv("BITK_CPU_BACKWARD", "int8")
    assert cpu_path.backward_precision() == "int8"  # never the default: it quantizes dW's sum too
    monkeypatch.setenv("BITK_CPU_BACKWARD", "fp8")
    with pytest.raises(ValueError, match="BITK_CPU_BACKWARD='fp8' is not one of auto, float32, bf16, switchback, int8"):
        cpu_path.backward_precision()


def _int8_gradient(h: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    amax = h.abs().amax(dim=dim, keepdim=True)  # (no zero or non-finite groups in these tests)
    # 127 / amax correctly rounded (torch's scalar / tensor is 127 * (1 / amax), a bit off at times)
    return torch.round(h * (torch.full_like(amax, 127) / amax)).to(torch.int8), amax / 127


@pytest.fixture
def int8_backward():
    cpu_path.set_backward_precision("int8")
    yield
    cpu_path.set_backward_precision(None)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_int8_backward_is_the_ste_from_int8_gradients(int8_backward, dtype):
    """BITK_CPU_BACKWARD=int8: dx = (q_row(dy) @ codes) * (step * gamma) and dW = (q_col(dy * (1 / s))^T @
    xq) * step, exact integer products; close to the reference's gradients (int8 rounding of dy)."""
    x, (dx, dw, db), (dx_ref, dw_ref, db_ref), (codes, gamma, xq, s, dy2) = _backward_case(5, dtype)
    q, step = _int8_gradient(dy2, 1)
    want_dx = ((q.long() @ codes.long()).float() * (step * gamma)).to(dtype).reshape(x.shape)
    q, step = _int8_gradient(dy2 * (1 / s), 0)
    want_dw = (q.long().T @ xq.long()).float() * step.T
    assert torch.equal(dx, want_dx)
    assert torch.equal(dw, want_dw)
    assert torch.equal(db, db_ref)
    for got, ref in ((dx, dx_ref), (dw, dw_ref)):
        assert (got.float() - ref.float()).norm() <= 2e-2 * ref.float().norm()


@pytest.mark.parametrize("dense", ["bf16", "float32"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_switchback_backward_is_int8_dx_and_dense_dw(monkeypatch, dtype, dense):
    """BITK_CPU_BACKWARD=switchback (the default with bitk's kernels): dx = (q_row(dy) @ codes) *
    (step * gamma), the int8 backward's; dW in bf16 where the CPU multiplies bf16 natively (the bf16
    backward's formula), else in float32 (the reference's, bit for bit)."""
    monkeypatch.setenv("BITK_CPU_BACKWARD", "switchback")
    monkeypatch.setattr(cpu_path, "_dense_precision", lambda: dense)
    x, (dx, dw, db), (dx_ref, dw_ref, db_ref), (codes, gamma, xq, s, dy2) = _backward_case(7, dtype)
    q, step = _int8_gradient(dy2, 1)
    want_dx = ((q.long() @ codes.long()).float() * (step * gamma)).to(dtype).reshape(x.shape)
    assert torch.equal(dx, want_dx)
    assert (dx.float() - dx_ref.float()).norm() <= 2e-2 * dx_ref.float().norm()
    if dense == "bf16":
        assert torch.equal(dw, ((dy2 / s).bfloat16().T @ xq.bfloat16()).float())
    else:
        assert torch.equal(dw, dw_ref)
    assert torch.equal(db, db_ref)


def test_int8_backward_paths_agree(int8_backward, monkeypatch):
    """The C++ quantizers and in-place epilogue, torch's ops (no extension, or traced) and the weight
    gradient summed over the tokens in chunks (more tokens than an int32 sum holds) give the same bits."""
    layer = _layer(96, 40)
    torch.manual_seed(6)
    x, dy = torch.randn(3, 11, 96), torch.randn(3, 11, 40)
    want = _run(layer, x, dy, "cpu")[1]
    monkeypatch.setattr(cpu_path, "_INT32_TOKENS", 7)
    chunked = _run(layer, x, dy, "cpu")[1]
    monkeypatch.setattr(cpu_path, "_codecs", lambda: None)
    plain = _run(layer, x, dy, "cpu")[1]
    for a, b, c in zip(want, chunked, plain):
        assert torch.equal(a, b) and torch.equal(a, c)


def test_gradient_quantizer_paths_agree_near_a_tie(monkeypatch):
    """1.2578125 * (127 / 2.515625) is 63.49999... in float32 with 127 / amax correctly rounded, but
    63.500004 with torch's 127 * (1 / amax): both paths must divide."""
    g = torch.tensor([[1.2578125, 2.515625, -0.5]])
    q, step = cpu_path._quantize_gradient(g, 1)
    monkeypatch.setattr(cpu_path, "_codecs", lambda: None)
    q_torch, step_torch = cpu_path._quantize_gradient(g, 1)
    assert q.tolist() == q_torch.tolist() == [[63, 127, -25]]
    assert torch.equal(step, step_torch)


def test_int8_backward_keeps_a_broken_gradient_visible(int8_backward):
    """A NaN or an infinity in dy is not quantized away: the gradients it reaches are NaN."""
    layer = _layer(64, 32)
    x, dy = torch.randn(4, 64), torch.randn(4, 32)
    dy[1, 3] = float("inf")
    _, (dx, dw, _) = _run(layer, x, dy, "cpu")
    assert dx[1].isnan().all() and dx[[0, 2, 3]].isfinite().all()
    assert dw[3].isnan().all() and dw[[0, 1, 2]].isfinite().all()


def test_backward_precision_can_be_set_in_code(monkeypatch):
    monkeypatch.setenv("BITK_CPU_BACKWARD", "float32")
    try:
        cpu_path.set_backward_precision("int8")
        assert cpu_path.backward_precision() == "int8"
        with pytest.raises(
            ValueError, match="backward precision must be one of auto, float32, bf16, switchback, int8; got 'fp8'"
        ):
            cpu_path.set_backward_precision("fp8")
        assert cpu_path.backward_precision() == "int8"
    finally:
        cpu_path.set_backward_precision(None)
    assert cpu_path.backward_precision() == "float32"


def test_frozen_weights_are_packed_once_and_kept_2_bit():
    layer = _layer(64, 32)
    x = torch.randn(5, 64)
    with torch.no_grad(), use_backend("cpu"):
        first = layer(x)
        entry = cpu_path.packed_weights(layer.weight)
        assert entry["codes"] is None and entry["packed"].nbytes == 32 * 64 // 4
        assert torch.equal(layer(x), first) and cpu_path.packed_weights(layer.weight) is entry
        layer.weight.mul_(-1.0)  # a new version: packed again
        assert torch.equal(layer(x), numerics.bitlinear(x, layer.weight, layer.bias))
        assert cpu_path.packed_weights(layer.weight) is not entry


@pytest.mark.parametrize("backend", ["reference", "cpu", "triton"])
def test_subln_fusion_equals_norm_then_layer(float32_backward, backend):
    layer = _layer(96, 40)
    norm = SubLN(96)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    torch.manual_seed(2)
    x = torch.randn(12, 96) * 4
    dy = torch.randn(12, 40)
    y, g = _run(layer, x, dy, backend, norm=norm)
    xx = x.clone().requires_grad_()
    nw = norm.weight.detach().clone().requires_grad_()
    w = layer.weight.detach().clone().requires_grad_()
    b = layer.bias.detach().clone().requires_grad_()
    y_ref = numerics.bitlinear(numerics.rms_norm(xx, nw, norm.eps), w, b)
    y_ref.backward(dy)
    # The fused kernel rounds the norm's statistics in its own order: a code may move by one at a
    # near-tie, which moves an output by about gamma * |x| / s; compare with that slack.
    tol = 2e-2 * y_ref.abs().max().item() if backend == "triton" else 0.0
    assert (y - y_ref.detach()).abs().max().item() <= tol
    for got, want in zip([g[0], g[1], g[2], g[3]], [xx.grad, w.grad, b.grad, nw.grad]):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * want.abs().max().item())


@pytest.mark.parametrize("backend", ["reference", "cpu", "triton"])
def test_saves_only_int8_activations_and_scales(backend):
    layer = _layer(64, 48, bias=False)
    x = torch.randn(16, 64, requires_grad=True)
    saved = []
    with use_backend(backend), torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        layer(x)
    kinds = sorted((str(t.dtype), tuple(t.shape)) for t in saved)
    # xq [16, 64] int8, s [16, 1] float32, codes [48, 64] int8, gamma [] float32: no float input.
    assert kinds == sorted(
        [("torch.int8", (16, 64)), ("torch.float32", (16, 1)), ("torch.int8", (48, 64)), ("torch.float32", ())]
    )


def test_warmup_lambda_blends_latent_and_quantized():
    layer = _layer(64, 24)
    x = torch.randn(5, 64)
    set_quant_lambda(layer, 0.0)
    torch.testing.assert_close(layer(x), torch.nn.functional.linear(x, layer.weight, layer.bias))
    set_quant_lambda(layer, 0.5)
    assert torch.equal(layer(x), numerics.bitlinear_fake_quant(x, layer.weight, layer.bias, 0.5))
    set_quant_lambda(layer, 1.0)
    torch.testing.assert_close(layer(x), numerics.bitlinear_fake_quant(x, layer.weight, layer.bias, 1.0))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        set_quant_lambda(layer, 1.5)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        functional.bitlinear(x, layer.weight, lam=-0.1)


@pytest.mark.parametrize("backend", ["reference", "cpu", "triton"])
def test_autocast_returns_the_autocast_dtype(backend):
    layer = _layer(64, 24)
    x = torch.randn(5, 64)
    with use_backend(backend):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = layer(x)
        want = layer(x).to(torch.bfloat16)
    assert y.dtype == torch.bfloat16
    assert torch.equal(y, want)


def test_quantized_weight_is_what_the_forward_multiplies_by():
    layer = _layer(64, 24, bias=False)
    codes, gamma = layer.quantized_weight()
    x = torch.randn(3, 64)
    xq, s = numerics.quantize_activations(x)
    torch.testing.assert_close(layer(x), (xq.double() @ codes.double().T).float() * (gamma / s), rtol=0, atol=0)


def test_bad_input_is_named():
    layer = _layer(64, 24)
    with pytest.raises(ValueError, match="in_features=64"):
        layer(torch.randn(3, 63))
    with pytest.raises(ValueError, match="floating point"):
        layer(torch.ones(3, 64, dtype=torch.int64))


def test_check_environment_names_a_setting_this_build_cannot_run(monkeypatch):
    monkeypatch.setenv("BITK_CPU_MATMUL", "cpp")
    cpu_path.check_environment()
    monkeypatch.setattr(cpu_path, "_codecs", lambda: None)
    with pytest.raises(ValueError, match="BITK_CPU_MATMUL=cpp but bitk._codecs is not built"):
        cpu_path.check_environment()
