"""What the benchmarks time: named implementations of each fast path on one shared input.

A *group* is one operation on one input (e.g. "TQ2_0 quantize" of 4096 x 4096 ternary weights)
with several implementations: bitk's C++ backend ("cpp"), its numpy reference ("numpy") and a
peer such as gguf-py ("gguf"). The pytest-benchmark suites time every implementation; the gate
(gate.py) times pairs of them alternately and checks the ratio against bench/thresholds.toml.
Every implementation of a group must give the reference's output, checked before timing.
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
import torch

from bitk import formats

SHAPE = (4096, 4096)
PARAMS = SHAPE[0] * SHAPE[1]


@functools.cache
def latent_weights() -> np.ndarray:
    """4096 x 4096 float32 latent weights, the size the codec targets are stated for."""
    return np.random.default_rng(0).standard_normal(SHAPE, dtype=np.float32) * np.float32(0.02)


@functools.cache
def ternary_weights() -> np.ndarray:
    """The same weights ternarized ({-gamma, 0, +gamma}): what the TQ/I2_S quantizers take."""
    codes, scale = formats.ternarize(latent_weights())
    return codes.astype(np.float32) * np.float32(scale)


@functools.cache
def encoded(qtype: str) -> np.ndarray:
    return formats.quantize(ternary_weights(), qtype)


def _on(backend: str, fn: Callable, *args) -> Callable[[], object]:
    def run():
        with formats.use_backend(backend):
            return fn(*args)

    return run


def _ternarize_pack(w: np.ndarray) -> np.ndarray:
    return formats.pack_i2s(*formats.ternarize(w))


def _copy_of(w: np.ndarray) -> Callable[[], None]:
    out = np.empty_like(w)
    return lambda: np.copyto(out, w)


@dataclass(frozen=True)
class Group:
    """One operation on one input and the implementations that compute it."""

    name: str
    params: int
    make: Callable[[], dict[str, Callable[[], object]]]  # implementation name -> zero-arg call
    reference: str = "numpy"  # whose output every other implementation must equal
    unchecked: tuple[str, ...] = ()  # baselines that compute something else (a memory copy)
    suite: str = "formats"  # the bench_<suite>.py file that times it


def _tq_quantize(qtype: str) -> dict[str, Callable[[], object]]:
    w = ternary_weights()
    return {
        **{b: _on(b, formats.quantize, w, qtype) for b in formats.available_backends()},
        "gguf": lambda: gguf.quants.quantize(w, gguf.GGMLQuantizationType[qtype]).reshape(-1),
    }


def _dequantize(qtype: str) -> dict[str, Callable[[], object]]:
    data = encoded(qtype)
    impls = {b: _on(b, formats.dequantize, data, SHAPE, qtype) for b in formats.available_backends()}
    if qtype != "I2_S":  # gguf-py does not know I2_S
        rows = data.reshape(SHAPE[0], -1)
        impls["gguf"] = lambda: gguf.quants.dequantize(rows, gguf.GGMLQuantizationType[qtype])
    return impls


def _i2s_ternarize_pack() -> dict[str, Callable[[], object]]:
    w = latent_weights()
    return {
        **{b: _on(b, _ternarize_pack, w) for b in formats.available_backends()},
        "copy": _copy_of(w),  # one plain copy of the input: the machine's memory speed
    }


# --------------------------------------------------------------------------- BitLinear on CPU

# BitNet b1.58 2B4T's FFN up projection on 512 tokens: the shape of the CPU targets (docs/perf.md),
# and SmolLM2-135M's (576 -> 1536), where the GEMMs are small and the rest of the layer counts.
NN_TOKENS, NN_IN, NN_OUT = 512, 2560, 6912
NN_SHAPES = {"2B4T": (NN_TOKENS, NN_IN, NN_OUT), "SmolLM2": (512, 576, 1536)}


@functools.cache
def _nn_tensors(shape: str = "2B4T") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    tokens, k, n = NN_SHAPES[shape]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(tokens, k, generator=g)
    w = torch.randn(n, k, generator=g) * 0.02
    dy = torch.randn(tokens, n, generator=g)
    return x, w, dy


def _nn_layers(shape: str = "2B4T") -> dict[str, torch.nn.Module]:
    """bitk's BitLinear and its peers: float32 and bfloat16 nn.Linear (the faster of the two is the
    bar: bf16 where the CPU multiplies it natively, float32 elsewhere) and transformers' AutoBitLinear."""
    from transformers.integrations.bitnet import AutoBitLinear

    from bitk.nn import BitLinear

    _, k, n = NN_SHAPES[shape]
    _, w, _ = _nn_tensors(shape)
    linear = torch.nn.Linear(k, n, bias=False)
    auto = AutoBitLinear(k, n, bias=False, online_quant=True)
    with torch.no_grad():
        linear.weight.copy_(w)
        auto.weight.copy_(w)
    linear_bf16 = torch.nn.Linear(k, n, bias=False, dtype=torch.bfloat16)
    with torch.no_grad():
        linear_bf16.weight.copy_(w)
    bit = BitLinear.from_linear(torch.nn.Linear(k, n, bias=False))
    with torch.no_grad():
        bit.weight.copy_(w)
    return {"bitk": bit, "linear": linear, "linear_bf16": linear_bf16, "autobitlinear": auto}


def _with_backend(name: str, fn: Callable[[], object]) -> Callable[[], object]:
    from bitk.nn import use_backend

    def run():
        with use_backend(name):
            return fn()

    return run


def _bitlinear_forward(shape: str = "2B4T") -> dict[str, Callable[[], object]]:
    """A forward with no gradient (evaluation, generation): bitk ternarizes and packs the unchanging
    weight once (bitk.nn.cpu.packed_weights), as it does for every frozen weight."""
    x, _, _ = _nn_tensors(shape)
    layers = _nn_layers(shape)
    x16 = x.to(torch.bfloat16)

    def forward(layer, inp):
        def run():
            with torch.no_grad():
                return layer(inp)

        return run

    impls = {name: forward(layer, x16 if name == "linear_bf16" else x) for name, layer in layers.items()}
    impls["reference"] = _with_backend("reference", forward(layers["bitk"], x))
    impls["bitk"] = _with_backend("cpu", impls["bitk"])
    return impls


def _bitlinear_forward_backward(autocast: bool = False, shape: str = "2B4T") -> dict[str, Callable[[], object]]:
    """A training step's layer work: forward (the weight ternarized and packed anew, as after every
    optimizer step) and backward to x and W."""
    x0, _, dy = _nn_tensors(shape)
    layers = _nn_layers(shape)

    def step(layer, bf16: bool = False):
        def run():
            x = (x0.to(torch.bfloat16) if bf16 else x0).clone().requires_grad_()
            layer.weight.grad = None
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                y = layer(x)
            y.backward(dy.to(y.dtype))
            return y.detach(), x.grad, layer.weight.grad

        return run

    impls = {name: step(layer, bf16=name == "linear_bf16") for name, layer in layers.items()}
    impls["reference"] = _with_backend("reference", step(layers["bitk"]))
    impls["bitk"] = _with_backend("cpu", impls["bitk"])
    impls["bitk_int8"] = _with_int8_backward(impls["bitk"])
    from bitk.nn import cpu

    precision = cpu.backward_precision()
    if precision in ("bf16", "switchback"):  # what bitk's backward computes then (docs/kernels.md)
        impls["reference"] = _backward_reference(layers["bitk"], x0, dy, autocast, precision)
    return impls


def _with_int8_backward(fn: Callable[[], object]) -> Callable[[], object]:
    """``fn`` with BitLinear's opt-in int8 backward (BITK_CPU_BACKWARD=int8: gradients quantized to
    int8, so not the reference's values; tests/nn/test_bitlinear.py checks them against their formulas)."""
    from bitk.nn import cpu

    def run():
        cpu.set_backward_precision("int8")
        try:
            return fn()
        finally:
            cpu.set_backward_precision(None)

    return run


def _backward_reference(layer: torch.nn.Module, x: torch.Tensor, dy: torch.Tensor, autocast: bool, precision: str):
    """The reference forward and the formulas of bitk's ``precision`` backward (bitk.nn.cpu,
    BITK_CPU_BACKWARD=bf16 or switchback): dx from bf16 dy, or from dy quantized to int8 per token;
    dW from bf16 dy / s, or in float32 (switchback without native bf16)."""
    from bitk import numerics
    from bitk.nn import cpu

    def run():
        w = layer.weight.detach()
        y = numerics.bitlinear(x, w)
        out_dtype = torch.bfloat16 if autocast else torch.float32
        codes, gamma = numerics.quantize_weights(w)
        xq, s = numerics.quantize_activations(x)
        dy2 = dy.to(out_dtype).float()
        if precision == "switchback":
            amax = dy2.abs().amax(dim=1, keepdim=True)  # (no zero rows here)
            q = torch.round(dy2 * (torch.full_like(amax, 127) / amax))
            dx = (q.double() @ codes.double()).float() * ((amax / 127) * gamma)
        else:
            dx = (dy2.bfloat16() @ codes.bfloat16()).float() * gamma
        if precision == "switchback" and cpu._dense_precision() == "float32":
            dw = dy2.T @ (xq.float() / s)
        else:
            dw = ((dy2 / s).bfloat16().T @ xq.bfloat16()).float()
        return y.to(out_dtype), dx, dw

    return run


def _gguf_export() -> dict[str, Callable[[], object]]:
    """pack() of a bf16 BitNet folder at 2B4T widths (bench_gguf.py) against reading + writing its bytes."""
    from bench_gguf import _read_and_write, write_source

    from bitk.gguf import pack

    tmp = Path(tempfile.mkdtemp(prefix="bitk-bench-gguf-"))
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)
    src, out = tmp / "src", tmp / "model.gguf"
    write_source(src, GGUF_LAYERS)
    pack(src, out, "i2_s")
    out_bytes = out.stat().st_size
    return {
        "bitk": lambda: pack(src, out, "i2_s"),
        "io": lambda: _read_and_write(src / "model.safetensors", tmp / "floor.bin", out_bytes),
    }


def _with_engine(engine: str, fn: Callable[[], object]) -> Callable[[], object]:
    """``fn`` with BITK_CPU_MATMUL=engine (the engine of the integer products, bitk.nn.cpu)."""

    def run():
        previous = os.environ.get("BITK_CPU_MATMUL")
        os.environ["BITK_CPU_MATMUL"] = engine
        try:
            return fn()
        finally:
            if previous is None:
                del os.environ["BITK_CPU_MATMUL"]
            else:
                os.environ["BITK_CPU_MATMUL"] = previous

    return run


def _eval_forward(preset_name: str) -> dict[str, Callable[[], object]]:
    """One evaluation forward (bench_eval.py) in the I2_S-faithful int8 numerics and in float; the
    int8 numerics by each engine too ("i2s" is the default one, bitk's kernels from 2-bit weights)."""
    from bench_eval import eval_step

    impls = {numerics: eval_step(preset_name, numerics) for numerics in ("i2s", "float")}
    for engine in ("int_mm", "float"):
        impls[f"i2s_{engine}"] = _with_engine(engine, eval_step(preset_name, "i2s"))
    # The loss, which every engine must give exactly (the result also holds timings).
    return {name: (lambda step=step: step().loss) for name, step in impls.items()}


def _gguf_prefill() -> dict[str, Callable[[], object]]:
    """A 256-token prefill (`bitk.generate`'s, bench_runtime.py) of an I2_S GGUF of the
    smollm2_135m shape (random weights, padded in the file) loaded by `bitk.gguf.load`: "i2s", its
    I2_S bytes multiplied as they are; "panels", the same layers repacked into the training
    kernel's layout (the same logits); "float", the file's model in float numerics."""
    from bench_runtime import BitkModel, export_preset

    from bitk import formats
    from bitk.nn import set_numerics
    from bitk.nn.packed import PackedBitLinear, pack_ternary

    with tempfile.TemporaryDirectory(prefix="bitk-gate-") as tmp:
        path = export_preset("smollm2_135m", Path(tmp) / "m.gguf")
        models = {name: BitkModel(path, 256) for name in ("i2s", "panels", "float")}
    for m in models["panels"].model.modules():
        if isinstance(m, PackedBitLinear) and m.layout == "i2s":
            codes = formats.unpack_i2s(m.packed, (m.out_features, m.in_features))[0]
            m.packed, m.layout = pack_ternary(codes, m.gamma.item())[0], "panels"
    set_numerics(models["float"].model, "float")
    return {name: model.prefill for name, model in models.items()}


def _train_step() -> dict[str, Callable[[], object]]:
    """One training step of the tiny preset (bench_train.py): ternary BitLinear against float nn.Linear."""
    from bench_train import CPU_STEP, make_train_step

    return {name: make_train_step(**CPU_STEP, ternary=name == "ternary")[0] for name in ("ternary", "float")}


def _vs_llama_step() -> dict[str, Callable[[], object]]:
    """One training step of the tiny preset (bench_train.py `vs_llama_steps`): bitk's ternary model
    against a transformers LlamaForCausalLM of the same shape (and bitk's float model)."""
    from bench_train import vs_llama_steps

    return vs_llama_steps("tiny")


def _vs_llama_step_smollm2() -> dict[str, Callable[[], object]]:
    """One training step of the smollm2_135m shape (bench_train.py `vs_llama_steps`, 2 x 256 tokens):
    bitk's ternary model against a transformers LlamaForCausalLM of the same shape."""
    from bench_train import vs_llama_steps

    return vs_llama_steps("smollm2_135m", models=("ternary", "llama"))


def _mixture_step() -> dict[str, Callable[[], object]]:
    """A training step of the README run that re-weights first (data.mixture=influence, 3 sources,
    2048-token probe; bench_train.py `mixture_due_step`) against a plain step with data.mixture=fixed."""
    from bench_train import mixture_due_step

    return mixture_due_step()


def _generate() -> dict[str, Callable[[], object]]:
    """Greedy generation (bench_generate.py) in i2s numerics: with the KV cache against recomputing the prefix.

    32 new tokens, not the suite's 64: recomputing costs the gate a minute less, and the ratio
    still grows with every token (each recomputed step runs the whole prefix)."""
    from bench_generate import generate_step

    return {n: generate_step("i2s", n == "cache", new_tokens=GATE_NEW_TOKENS) for n in ("cache", "recompute")}


GATE_NEW_TOKENS = 32
VS_LLAMA_GROUP = "Train step tiny vs transformers Llama (8 x 256, AdamW)"
VS_LLAMA_SMOL_GROUP = "Train step smollm2_135m vs transformers Llama (2 x 256, AdamW)"
SMOL_FORWARD = "BitLinear forward (SmolLM2 width, 512 x 576 -> 1536)"
SMOL_FORWARD_BACKWARD = "BitLinear forward+backward (SmolLM2 width, 512 x 576 -> 1536)"
GGUF_PREFILL = "Prefill of a loaded I2_S GGUF, smollm2_135m shape (1 x 256)"
MIXTURE_GROUP = "Train step tiny with an influence re-weighting (4 x 256, 3 sources, 2048-token probe)"

GGUF_LAYERS = 2  # two 2B4T blocks + a 4096-token embedding: 149.45 M parameters, 299 MB of bf16
GGUF_PARAMS = 149_453_824

NN_PARAMS = NN_IN * NN_OUT
NN_BASELINES = ("linear", "linear_bf16", "autobitlinear")  # compute something else: not compared with the reference
NN_UNCHECKED = (*NN_BASELINES, "bitk_int8")  # (the int8 backward's gradients are its own: not the reference's)

GROUPS = {
    g.name: g
    for g in [
        Group("TQ2_0 quantize", PARAMS, lambda: _tq_quantize("TQ2_0")),
        Group("TQ1_0 quantize", PARAMS, lambda: _tq_quantize("TQ1_0")),
        Group("I2_S ternarize+pack", PARAMS, _i2s_ternarize_pack, unchecked=("copy",)),
        Group("I2_S dequantize", PARAMS, lambda: _dequantize("I2_S")),
        Group("TQ2_0 dequantize", PARAMS, lambda: _dequantize("TQ2_0")),
        Group("TQ1_0 dequantize", PARAMS, lambda: _dequantize("TQ1_0")),
        Group(
            "BitLinear forward",
            NN_PARAMS,
            _bitlinear_forward,
            reference="reference",
            unchecked=NN_BASELINES,
            suite="nn",
        ),
        Group(
            "BitLinear forward+backward",
            NN_PARAMS,
            _bitlinear_forward_backward,
            reference="reference",
            unchecked=NN_UNCHECKED,
            suite="nn",
        ),
        Group(
            "BitLinear forward+backward (bf16 autocast)",
            NN_PARAMS,
            lambda: _bitlinear_forward_backward(autocast=True),
            reference="reference",
            unchecked=NN_UNCHECKED,
            suite="nn",
        ),
        Group(
            SMOL_FORWARD,
            576 * 1536,
            lambda: _bitlinear_forward("SmolLM2"),
            reference="reference",
            unchecked=NN_BASELINES,
            suite="nn",
        ),
        Group(
            SMOL_FORWARD_BACKWARD,
            576 * 1536,
            lambda: _bitlinear_forward_backward(shape="SmolLM2"),
            reference="reference",
            unchecked=NN_UNCHECKED,
            suite="nn",
        ),
        Group(
            "GGUF export (2B4T widths, bf16 -> I2_S)",
            GGUF_PARAMS,
            _gguf_export,
            reference="bitk",
            unchecked=("io",),
            suite="gguf",
        ),
        Group(
            "Eval forward smollm2_135m (1 x 256)",
            134_578_368,
            lambda: _eval_forward("smollm2_135m"),
            reference="i2s",
            unchecked=("float",),
            suite="eval",
        ),
        Group(
            GGUF_PREFILL,
            134_578_368,
            _gguf_prefill,
            reference="i2s",
            unchecked=("float",),
            suite="eval",
        ),
        Group(
            "Train step tiny (8 x 256, AdamW)",
            8 * 256,
            _train_step,
            reference="ternary",
            unchecked=("float",),
            suite="train",
        ),
        Group(
            VS_LLAMA_GROUP,
            8 * 256,
            _vs_llama_step,
            reference="ternary",
            unchecked=("float", "llama"),
            suite="train",
        ),
        Group(
            VS_LLAMA_SMOL_GROUP,
            2 * 256,
            _vs_llama_step_smollm2,
            reference="ternary",
            unchecked=("llama",),
            suite="train",
        ),
        Group(
            MIXTURE_GROUP,
            4 * 256,
            _mixture_step,
            reference="influence",
            unchecked=("fixed",),
            suite="train",
        ),
        Group(
            "Generate tiny (128-token prompt + 32 greedy tokens, i2s)",
            GATE_NEW_TOKENS,
            _generate,
            reference="cache",
            suite="generate",
        ),
    ]
}


@dataclass(frozen=True)
class GateCase:
    """A ratio the gate checks: time(peer) / time(bitk), higher is better."""

    metric: str  # key in bench/thresholds.toml
    group: str
    bitk: str
    peer: str


GATE_CASES = [
    GateCase("tq2_0_quantize_vs_gguf", "TQ2_0 quantize", "cpp", "gguf"),
    GateCase("tq1_0_quantize_vs_gguf", "TQ1_0 quantize", "cpp", "gguf"),
    GateCase("i2s_ternarize_pack_vs_numpy", "I2_S ternarize+pack", "cpp", "numpy"),
    GateCase("i2s_ternarize_pack_vs_copy", "I2_S ternarize+pack", "cpp", "copy"),
    GateCase("i2s_dequantize_vs_numpy", "I2_S dequantize", "cpp", "numpy"),
    GateCase("tq2_0_dequantize_vs_gguf", "TQ2_0 dequantize", "cpp", "gguf"),
    GateCase("tq1_0_dequantize_vs_gguf", "TQ1_0 dequantize", "cpp", "gguf"),
    GateCase("bitlinear_forward_vs_linear", "BitLinear forward", "bitk", "linear"),
    GateCase("bitlinear_forward_vs_autobitlinear", "BitLinear forward", "bitk", "autobitlinear"),
    GateCase("bitlinear_forward_backward_vs_linear", "BitLinear forward+backward", "bitk", "linear"),
    GateCase("bitlinear_forward_backward_vs_autobitlinear", "BitLinear forward+backward", "bitk", "autobitlinear"),
    GateCase("bitlinear_forward_vs_bf16_linear", "BitLinear forward", "bitk", "linear_bf16"),
    GateCase("bitlinear_forward_backward_vs_bf16_linear", "BitLinear forward+backward", "bitk", "linear_bf16"),
    GateCase("bitlinear_forward_smollm2_vs_linear", SMOL_FORWARD, "bitk", "linear"),
    GateCase("bitlinear_forward_smollm2_vs_bf16_linear", SMOL_FORWARD, "bitk", "linear_bf16"),
    GateCase("bitlinear_forward_backward_smollm2_vs_linear", SMOL_FORWARD_BACKWARD, "bitk", "linear"),
    GateCase("bitlinear_forward_backward_smollm2_vs_bf16_linear", SMOL_FORWARD_BACKWARD, "bitk", "linear_bf16"),
    GateCase(
        "bitlinear_forward_backward_int8_vs_bf16_linear", "BitLinear forward+backward", "bitk_int8", "linear_bf16"
    ),
    GateCase(
        "bitlinear_forward_backward_smollm2_int8_vs_bf16_linear", SMOL_FORWARD_BACKWARD, "bitk_int8", "linear_bf16"
    ),
    GateCase("gguf_export_vs_io", "GGUF export (2B4T widths, bf16 -> I2_S)", "bitk", "io"),
    GateCase("eval_i2s_vs_float", "Eval forward smollm2_135m (1 x 256)", "i2s", "float"),
    GateCase("gguf_prefill_i2s_vs_float", GGUF_PREFILL, "i2s", "float"),
    GateCase("gguf_prefill_i2s_bytes_vs_panels", GGUF_PREFILL, "i2s", "panels"),
    GateCase("train_step_ternary_vs_float", "Train step tiny (8 x 256, AdamW)", "ternary", "float"),
    GateCase("mixture_influence_step_vs_fixed", MIXTURE_GROUP, "influence", "fixed"),
    GateCase("train_step_ternary_vs_llama", VS_LLAMA_GROUP, "ternary", "llama"),
    GateCase("train_step_smollm2_ternary_vs_llama", VS_LLAMA_SMOL_GROUP, "ternary", "llama"),
    GateCase(
        "generate_kv_cache_vs_recompute",
        "Generate tiny (128-token prompt + 32 greedy tokens, i2s)",
        "cache",
        "recompute",
    ),
]


def _same(a: object, b: object) -> bool:
    if isinstance(a, tuple):
        return isinstance(b, tuple) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    return np.array_equal(np.asarray(a).reshape(-1), np.asarray(b).reshape(-1))


def check_outputs(group: Group, impls: dict[str, Callable[[], object]], names: list[str] | None = None) -> None:
    """Raise AssertionError unless each named implementation returns the reference's output."""
    expected = impls[group.reference]()
    for name in names or list(impls):
        if name in group.unchecked or name == group.reference:
            continue
        if not _same(impls[name](), expected):
            raise AssertionError(f"{group.name}: {name} does not give the {group.reference} reference's output")
