"""The C++ kernels' run-time dispatch: one build per instruction set, chosen by the CPU's features.

Each variant this CPU supports is forced in turn and must give the reference's results bit for
bit (the GEMM has its own suite, tests/csrc/test_ternary_gemm.py, run once per variant too): the
activation quantizer against bitk.numerics, the codecs against the numpy reference. BITK_CPU_KERNEL
picks a variant at start-up; bad names get one clear error from bitk.nn.cpu. And the extension
must not run wide instructions where the CPU may lack them: no function outside the AVX2 and
AVX-512 builds (the dispatcher, the bindings, a library template the linker kept once) uses a
ymm or zmm register, and the AVX2 build uses no AVX-512 register.
"""

from __future__ import annotations

import bisect
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from bitk import _codecs as C
from bitk import numerics
from bitk.formats import reference
from bitk.nn import cpu as cpu_path

VARIANTS = C.cpu_kernels()


@pytest.fixture(params=VARIANTS)
def variant(request):
    C.set_cpu_kernel(request.param)
    yield request.param
    C.set_cpu_kernel("auto")


def test_the_baseline_always_runs_and_the_best_is_the_default():
    assert VARIANTS[0] == "scalar" and set(VARIANTS) <= {"scalar", "avx2", "avx_vnni", "avx512_vnni"}
    order = ["scalar", "avx2", "avx_vnni", "avx512_vnni"]
    assert sorted(VARIANTS, key=order.index) == VARIANTS
    flags = cpu_path.cpu_flags()
    if flags:  # Linux names the same features
        assert ("avx2" in VARIANTS) == ({"avx2", "fma", "bmi2"} <= flags)
        assert ("avx512_vnni" in VARIANTS) == ({"avx2", "avx512f", "avx512bw", "avx512vl", "avx512_vnni"} <= flags)
        # AVX-VNNI's vpdpbusd on ymm registers, or the same instruction in AVX-512 VNNI's encoding
        vnni_256 = "avx_vnni" in flags or {"avx512_vnni", "avx512vl"} <= flags
        assert ("avx_vnni" in VARIANTS) == ({"avx2", "fma", "bmi2"} <= flags and vnni_256)
    env = {k: v for k, v in os.environ.items() if k != "BITK_CPU_KERNEL"}
    out = subprocess.run(
        [sys.executable, "-c", "from bitk import _codecs as C; print(C.cpu_kernel())"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == VARIANTS[-1]


@pytest.mark.parametrize("name", VARIANTS)
def test_environment_forces_a_variant(name):
    code = "from bitk import _codecs as C; from bitk.nn import cpu; print(C.cpu_kernel(), cpu.kernel_variant())"
    out = subprocess.run(
        [sys.executable, "-c", code], env=dict(os.environ, BITK_CPU_KERNEL=name), capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [name, name]


def test_bad_names_are_refused(monkeypatch):
    with pytest.raises(
        ValueError, match="unknown CPU kernel 'avx9'; expected auto, scalar, avx2, avx_vnni or avx512_vnni"
    ):
        C.set_cpu_kernel("avx9")
    assert C.cpu_kernel() == VARIANTS[-1]
    monkeypatch.setenv("BITK_CPU_KERNEL", "avx9")
    with pytest.raises(ValueError, match=r"BITK_CPU_KERNEL='avx9' is not one of scalar, avx2, avx_vnni, avx512_vnni"):
        cpu_path.kernel_variant()
    if "avx512_vnni" not in VARIANTS:  # a variant this CPU cannot run
        missing = "avx512_vnni"
        with pytest.raises(ValueError, match="this CPU cannot run the 'avx512_vnni' kernels"):
            C.set_cpu_kernel(missing)
        monkeypatch.setenv("BITK_CPU_KERNEL", missing)
        with pytest.raises(ValueError, match="is not supported by this CPU"):
            cpu_path.kernel_variant()


def _activations(seed: int, m: int, k: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g) * torch.exp(torch.randn(m, 1, generator=g) * 3)
    if m > 2:
        x[1] = 0.0  # max|x| clamped to 1e-5
        x[2] = x[2] * 1e-7  # every value below the clamp
    if m > 3 and k > 8:  # exact ties at max 127: x * s lands on .5, rounded half to even
        x[3] = 0.0
        x[3, :8] = torch.tensor([127.0, 0.5, 1.5, 2.5, -0.5, -1.5, -126.5, 126.5])
    return x


@pytest.mark.parametrize("k", [1, 7, 15, 16, 17, 31, 32, 33, 100, 576, 2560])
def test_activation_quantizer_is_the_reference(variant, k):
    x = _activations(k, 9, k)
    xq, s = C.quantize_activations(x.numpy(), "train")
    want_q, want_s = numerics.quantize_activations(x)
    assert torch.equal(torch.from_numpy(xq), want_q) and torch.equal(torch.from_numpy(s), want_s.reshape(-1))
    xq, s = C.quantize_activations(x.numpy(), "bitnet")
    want_q, want_s = numerics.quantize_activations_bitnet_cpp(x)
    assert torch.equal(torch.from_numpy(xq), want_q) and torch.equal(torch.from_numpy(s), want_s.reshape(-1))


def test_activation_quantizer_bad_input():
    with pytest.raises(ValueError, match="mode must be 'train' or 'bitnet'"):
        C.quantize_activations(np.zeros((2, 3), np.float32), "i2s")
    with pytest.raises(TypeError, match="x must have dtype float32"):
        C.quantize_activations(np.zeros((2, 3)), "train")
    out = np.empty((2, 4), np.int8)
    with pytest.raises(ValueError, match=r"out has shape \(2, 4\); expected \(2, 3\)"):
        C.quantize_activations(np.zeros((2, 3), np.float32), "train", out=out)
    out = np.empty((2, 3), np.int8)
    assert C.quantize_activations(np.ones((2, 3), np.float32), "train", out=out)[0] is out
    assert (out == 127).all()


@pytest.mark.parametrize("shape", [(1, 1), (7, 33), (64, 512), (130, 2560)])
def test_codecs_are_the_reference(variant, shape):
    rng = np.random.default_rng(shape[1])
    w = (rng.standard_normal(shape) * 0.02).astype(np.float32)
    codes, scale = C.ternarize(w)
    want_codes, want_scale = reference.ternarize(w)
    np.testing.assert_array_equal(codes, want_codes)
    assert scale == want_scale
    assert C.abs_sum(w) == reference.abs_sum(w)
    for layout in ("x86", "arm"):
        if shape[1] % 128 == 0 or (layout == "arm" and shape[1] % 64 == 0):
            packed = C.pack_i2s(codes, scale, layout)
            np.testing.assert_array_equal(packed, reference.pack_i2s(codes, scale, layout))
            np.testing.assert_array_equal(C.unpack_i2s(packed, *shape, layout)[0], codes)
    if shape[1] % 256 == 0:
        t = codes.astype(np.float32) * np.float32(scale)
        for qtype in ("tq2_0", "tq1_0"):
            data = getattr(C, f"quantize_{qtype}")(t)
            np.testing.assert_array_equal(data, getattr(reference, f"quantize_{qtype}")(t))
            want = getattr(reference, f"dequantize_{qtype}")(data, *shape)
            np.testing.assert_array_equal(getattr(C, f"dequantize_{qtype}")(data, *shape), want)


_WIDE = re.compile(r"%(?:[yz]mm\d+|k[0-7]\b)")
_AVX512 = re.compile(r"%(?:zmm\d+|k[0-7]\b)")


def test_no_wide_instructions_outside_their_builds():
    objdump = shutil.which("objdump")
    if objdump is None:
        pytest.fail("objdump (binutils) is needed to read the extension's machine code")
    path = C.__file__
    symbols = []  # (start, end, name) of every exported function, weak library templates included
    for line in subprocess.run(
        [objdump, "-T", "-C", path], capture_output=True, text=True, check=True
    ).stdout.splitlines():
        fields = line.split(None, 6)
        if len(fields) == 7 and "F" in fields[2] and fields[3] == ".text":
            start, size = int(fields[0], 16), int(fields[4], 16)
            symbols.append((start, start + size, fields[6]))
    assert any("isa_avx2" in name for *_, name in symbols) or "avx2" not in VARIANTS
    assert any(name.startswith("bitk::ternary_gemm(") for *_, name in symbols)
    symbols.sort()
    starts = [s for s, _, _ in symbols]
    disassembly = subprocess.run(
        [objdump, "-d", "--no-show-raw-insn", path], capture_output=True, text=True, check=True
    )
    wrong = {}
    for line in disassembly.stdout.splitlines():
        m = re.match(r"\s*([0-9a-f]+):\t(.*)", line)
        if not m or not _WIDE.search(m.group(2)):
            continue
        address = int(m.group(1), 16)
        i = bisect.bisect_right(starts, address) - 1
        if i < 0 or address >= symbols[i][1]:
            continue  # a function with internal linkage: one build's own
        name = symbols[i][2]
        # the AVX2 and AVX-VNNI builds: ymm registers only (the latter's EVEX-encoded vpdpbusd,
        # for AVX-512 machines, also names ymm0..15 only)
        narrow = ("isa_avx2" in name or "isa_avx_vnni" in name) and not _AVX512.search(m.group(2))
        allowed = "isa_avx512_vnni" in name or narrow
        if not allowed:
            wrong.setdefault(name, m.group(2))
    assert not wrong, f"wide instructions where any CPU may run them: {wrong}"


def test_avx_vnni_encodings_are_twins():
    """The avx_vnni build's vpdpbusd on ymm registers in AVX-VNNI's VEX encoding (what an AVX2 CPU
    with AVX-VNNI runs; not every test machine can) and in AVX-512 VNNI's EVEX encoding (what the
    tests run where the CPU has AVX-512 instead): the same instructions, one for one, operands and
    all. (The AVX-512 build's own vpdpbusd work on zmm registers.)"""
    objdump = shutil.which("objdump")
    if objdump is None:
        pytest.fail("objdump (binutils) is needed to read the extension's machine code")
    text = subprocess.run([objdump, "-d", "--no-show-raw-insn", C.__file__], capture_output=True, text=True, check=True)
    vex, evex = [], []
    for m in re.finditer(r"\t(\{vex\} )?vpdpbusd (%ymm\d+,%ymm\d+,%ymm\d+)\s*$", text.stdout, re.MULTILINE):
        (vex if m.group(1) else evex).append(m.group(2))
    assert vex and sorted(vex) == sorted(evex)


def test_bf16_conversions_are_torchs(variant):
    """The backward's bf16 operands: torch's round-to-nearest-even bits (a NaN stays a NaN)."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(300, 77, generator=g) * torch.exp(torch.randn(300, 1, generator=g) * 10)
    x[0, :7] = torch.tensor([float("inf"), -float("inf"), 1.00390625, 1.01171875, -1.00390625, 3.4e38, 1e-40])
    divisor = torch.rand(300, generator=g) + 0.1
    got = torch.from_numpy(C.float_to_bf16(x.numpy(), divisor.numpy())).view(torch.int16)
    assert torch.equal(got, (x / divisor[:, None]).bfloat16().view(torch.int16))
    got = torch.from_numpy(C.float_to_bf16(x.numpy())).view(torch.int16)
    assert torch.equal(got, x.bfloat16().view(torch.int16))
    x[1, 1] = float("nan")
    assert torch.from_numpy(C.float_to_bf16(x.numpy())).view(torch.bfloat16)[1, 1].isnan()
    q = torch.randint(-128, 128, (50, 33), dtype=torch.int8, generator=g)
    assert torch.equal(torch.from_numpy(C.int8_to_bf16(q.numpy())).view(torch.bfloat16), q.bfloat16())
    with pytest.raises(ValueError, match=r"divisor has shape \(3,\); expected \(300,\)"):
        C.float_to_bf16(x.numpy(), np.ones(3, np.float32))


def _gradient_formula(h: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The int8 gradients in float32 torch ops: scale = 127 / max|h| (0 where not finite or where max|h|
    is infinite), q = round(h * scale), step = max|h| / 127 (0 with scale 0, NaN for a non-finite group)."""
    amax = h.abs().amax(dim=dim, keepdim=True)
    scale = 127 / amax
    ok = torch.isfinite(scale) & (scale > 0)
    step = torch.where(ok, amax / 127, torch.where(torch.isfinite(amax), 0.0, float("nan")))
    q = torch.round(torch.where(ok, h * torch.where(ok, scale, 0.0), 0.0)).to(torch.int8)
    return q, step.reshape(-1)


def _gradients(rows: int, cols: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(rows * 1000 + cols)
    h = torch.randn(rows, cols, generator=g) * torch.exp(torch.randn(rows, 1, generator=g) * 10) * 1e-6
    if rows >= 6:
        h[1] = 0.0  # all zero: step 0
        h[2] = 1e-39  # 127 / max|h| overflows: step 0, codes 0
        h[3] = h[3].clamp(-1.0, 1.0)
        h[3, :3] = torch.tensor([127.0, 2.5, -3.5])  # scale 1: ties to even
        h[4, cols // 2] = float("inf")
        h[5, cols - 1] = float("nan")
    return h


@pytest.mark.parametrize("shape", [(1, 1), (6, 15), (9, 16), (7, 17), (40, 33), (13, 300), (70, 513)])
def test_gradient_quantizers_are_the_formula(variant, shape):
    """The int8 backward's quantizers: per row of g, and per column of g * factor (float32 product),
    against the formula in torch; a group holding a NaN or an infinity gets step NaN."""
    rows, cols = shape
    h = _gradients(rows, cols)
    q, step = C.quantize_gradient_rows(h.numpy())
    want_q, want_step = _gradient_formula(h, 1)
    finite = torch.isfinite(want_step)
    assert torch.equal(torch.from_numpy(step)[finite], want_step[finite])
    assert torch.isnan(torch.from_numpy(step)[~finite]).all()
    assert torch.equal(torch.from_numpy(q)[finite], want_q[finite])
    if rows >= 6:
        assert q[3, :3].tolist() == [127, 2, -4]
        assert step[1] == 0 and step[2] == 0 and not q[1].any() and not q[2].any()

    factor = torch.rand(rows, 1, generator=torch.Generator().manual_seed(9)) + 0.25
    g = torch.where(torch.isfinite(h), h, 0.0)
    g[0, 0] = float("inf") if rows >= 6 else g[0, 0]
    q, step = C.quantize_gradient_columns(g.numpy(), factor.reshape(-1).numpy())
    want_q, want_step = _gradient_formula(g * factor, 0)
    finite = torch.isfinite(want_step)
    assert torch.equal(torch.from_numpy(step)[finite], want_step[finite])
    assert torch.isnan(torch.from_numpy(step)[~finite]).all()
    assert torch.equal(torch.from_numpy(q)[:, finite], want_q[:, finite])


def test_int32_products_become_float32_in_place(variant):
    g = torch.Generator().manual_seed(6)
    acc = torch.randint(-(2**31), 2**31 - 1, (37, 45), dtype=torch.int32, generator=g)
    acc[0, :2] = torch.tensor([2**31 - 1, -(2**31)], dtype=torch.int32)
    step = torch.rand(37, generator=g) * 1e-3
    a = acc.numpy().copy()
    C.dequantize_int32_rows(a, step.numpy())
    assert torch.equal(torch.from_numpy(a.view(np.float32)), acc.float() * step[:, None])
    with pytest.raises(ValueError, match="acc must be writeable"):
        frozen = acc.numpy().copy()
        frozen.flags.writeable = False
        C.dequantize_int32_rows(frozen, step.numpy())
    with pytest.raises(TypeError, match="acc must have dtype int32"):
        C.dequantize_int32_rows(acc.float().numpy(), step.numpy())
    with pytest.raises(ValueError, match=r"step has shape \(3,\); expected \(37,\)"):
        C.dequantize_int32_rows(acc.numpy().copy(), np.ones(3, np.float32))


def test_a_kernel_this_cpu_cannot_run_is_refused_at_the_first_kernel_call(monkeypatch):
    """BITK_CPU_KERNEL with a typo: the extension alone would fall back to the best variant without a
    word; bitk's layers refuse it at their first kernel call."""
    monkeypatch.setenv("BITK_CPU_KERNEL", "avx9")
    with pytest.raises(ValueError, match="BITK_CPU_KERNEL='avx9' is not one of"):
        cpu_path.bitlinear(torch.randn(3, 16), torch.randn(8, 16))
    with pytest.raises(ValueError, match="BITK_CPU_KERNEL='avx9' is not one of"):
        cpu_path.check_environment()
