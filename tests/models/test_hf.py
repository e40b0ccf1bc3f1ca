"""bitk.models.hf: loading Hugging Face folders, the conversion rule and export, checked against transformers.

Tolerances. Full precision (Llama, Qwen3): bitk and transformers compute the same float32 graph
in different orders; against bitk's float64 run of the same weights, bitk's float32 logits may err
at most 2x as much as transformers' (tests/conftest.py `assert_derived_close`), and transformers'
own error must stay float32-sized (1e-5 of the logit scale; measured ~5e-7), which checks that the
float64 reference is the same model. Ternary (BitNet): see `assert_bitnet_agrees`.
"""

from __future__ import annotations

import copy
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import bitk
import bitk.models
import bitk.nn
from bitk.models import CausalLM, ModelConfig, export_hf, load_model
from bitk.models.checkpoint import state_dict_to_save, write_safetensors
from bitk.models.hf import BITNET_QUANTIZATION_CONFIG, hf_config
from bitk.nn import BitLinear
from bitk_testing import assert_derived_close, max_err

FLOAT32_REL = 1e-5
FLIP_REL = 2e-2


def _logits(model, x, position_ids=None):
    with torch.no_grad():
        return model(x, position_ids).logits if isinstance(model, CausalLM) else model(x).logits


def assert_matches_transformers(ours: CausalLM, theirs, x: torch.Tensor) -> None:
    ours64 = copy.deepcopy(ours).double()
    ref64 = _logits(ours64, x)
    theirs32 = _logits(theirs, x)
    assert max_err(theirs32, ref64) <= FLOAT32_REL * ref64.abs().max().item()
    assert_derived_close(_logits(ours, x), ref64, theirs32, "logits")


def assert_bitnet_agrees(ours: CausalLM, theirs, inputs: list[torch.Tensor]) -> None:
    """bitk's ternary logits against transformers' BitNet layers, over several inputs.

    Both quantize the same way (absmean ternary weights, per-token absmax int8 activations) but
    round differently: transformers forms the activation scale as 127 * (1/amax) (two roundings,
    bitk divides once), quantizes weights with 1/gamma and dequantizes by dividing, and its norms
    use rsqrt. That leaves float32-sized differences (measured 1.5e-7 to 3e-7 of the logit scale
    on every input here). Rarely an activation lands within an ulp of a rounding boundary and one
    int8 code differs by 1: that moves one projection output by one quantization step
    (gamma * amax / 127); on a model twice as wide this hit 2 inputs of 12, at up to 6e-3 of the
    logit scale. So every input must agree within 2e-2 of the scale (a wrong block is off by O(1)),
    and at least half of them to float32 accuracy, which shows the two compute the same model.
    """
    exact = 0
    for x in inputs:
        a, b = _logits(ours, x), _logits(theirs, x)
        rel = max_err(a, b) / b.abs().max().item()
        assert rel <= FLIP_REL, f"bitk and transformers differ by {rel:.3g} of the logit scale"
        exact += rel <= FLOAT32_REL
    assert exact * 2 >= len(inputs), f"only {exact} of {len(inputs)} inputs agree to float32 accuracy"


def _inputs(helpers, n=8, length=12):
    return [helpers.ids(2, length, seed=s) for s in range(n)]


# --------------------------------------------------------------------------- full precision


@pytest.mark.parametrize("kind, extra", [("llama", {}), ("qwen3", {"head_dim": 16, "tie_word_embeddings": True})])
def test_full_precision_matches_transformers(make_hf, helpers, kind, extra):
    """Llama / Qwen3 loaded with ternary=False compute transformers' logits and hidden states;
    packed documents give each document's logits (attention stays inside documents)."""
    theirs, folder = make_hf(kind, rope_theta=5000.0, **extra)
    ours = load_model(folder, ternary=False)
    assert not ours.config.ternary and not ours.config.subln and ours.config.qk_norm == (kind == "qwen3")
    assert all(type(m) is nn.Linear for n, m in ours.named_modules() if n.endswith("_proj"))
    x = helpers.ids(2, 13)
    assert_matches_transformers(ours, theirs, x)

    with torch.no_grad():
        hidden = ours(x, output_hidden_states=True).hidden_states
        ref = theirs(x, output_hidden_states=True).hidden_states
    assert len(hidden) == len(ref) == helpers.DIMS["num_hidden_layers"] + 1
    for h, r in zip(hidden, ref):
        assert max_err(h, r) <= FLOAT32_REL * r.abs().max().item()

    a, b = helpers.ids(1, 6, seed=1), helpers.ids(1, 9, seed=2)
    packed = _logits(ours, torch.cat([a, b], 1), torch.cat([torch.arange(6), torch.arange(9)]))
    ours64 = copy.deepcopy(ours).double()
    for part, doc in ((packed[:, :6], a), (packed[:, 6:], b)):
        assert_derived_close(part, _logits(ours64, doc), _logits(theirs, doc), "packed document")


@pytest.mark.parametrize("kind", ["llama", "qwen3"])
def test_full_precision_export_round_trip(make_hf, transformers, tokenizer_dir, tmp_path, kind):
    """HF -> bitk (ternary=False) -> export_hf -> transformers: the same tensors, the same logits bit
    for bit, the tokenizer files copied."""
    theirs, folder = make_hf(kind, head_dim=16)
    for f in tokenizer_dir.iterdir():
        shutil.copy(f, folder / f.name)
    ours = load_model(folder, ternary=False)
    assert ours.tokenizer_dir == folder
    out = export_hf(ours, tmp_path / "export")
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == kind and config["rope_parameters"] == {"rope_theta": 10000.0, "rope_type": "default"}
    original, exported = load_file(str(folder / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert original.keys() == exported.keys() and all(torch.equal(original[k], exported[k]) for k in original)
    back = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(back) is type(theirs)
    x = torch.randint(0, 96, (2, 10), generator=torch.Generator().manual_seed(3))
    assert torch.equal(_logits(back, x), _logits(theirs, x))
    assert (out / "tokenizer.json").read_bytes() == (tokenizer_dir / "tokenizer.json").read_bytes()
    tok = transformers.AutoTokenizer.from_pretrained(out)
    assert tok("the lazy dog")["input_ids"] == [4, 11, 12]
    again = export_hf(ours, tmp_path / "again", tokenizer=tok)  # a transformers tokenizer object
    assert transformers.AutoTokenizer.from_pretrained(again)("the lazy dog")["input_ids"] == [4, 11, 12]


# --------------------------------------------------------------------------- the conversion rule


def test_full_precision_to_ternary_inserts_subln(make_hf, tokenizer_dir):
    theirs, folder = make_hf("llama")
    for f in tokenizer_dir.iterdir():
        shutil.copy(f, folder / f.name)
    ours = load_model(folder)  # ternary=True is the default
    assert ours.config == load_model(folder, ternary=False).config.replace(ternary=True, subln=True)
    assert ours.tokenizer_dir == folder
    hf_state = theirs.state_dict()
    for name, p in ours.state_dict().items():
        if "sub_norm" in name:
            assert torch.equal(p, torch.ones_like(p)), name
        else:
            assert torch.equal(p, hf_state[name]), name
    projections = {n: m for n, m in ours.named_modules() if n.endswith("_proj")}
    assert len(projections) == 14 and all(type(m) is BitLinear for m in projections.values())
    assert type(ours.lm_head) is nn.Linear
    # The SubLN sits where docs/numerics.md puts it: before o_proj (size q_size) and down_proj.
    layer = ours.model.layers[0]
    assert layer.self_attn.attn_sub_norm.weight.shape == (ours.config.q_size,)
    assert layer.mlp.ffn_sub_norm.weight.shape == (ours.config.intermediate_size,)


def test_qwen3_to_ternary_without_subln(make_hf):
    """subln=False: BitLinear projections on the same weights, q/k norms kept, no sub-norms."""
    theirs, folder = make_hf("qwen3")
    ours = load_model(folder, subln=False)
    assert ours.config == load_model(folder, ternary=False).config.replace(ternary=True)
    assert ours.config.qk_norm and not ours.config.subln
    assert not any("sub_norm" in n for n in ours.state_dict())
    hf_state = theirs.state_dict()
    assert all(torch.equal(p, hf_state[n]) for n, p in ours.state_dict().items())
    assert all(type(m) is BitLinear for n, m in ours.named_modules() if n.endswith("_proj"))
    assert not load_model(folder, ternary=False, subln=False).config.subln  # agrees: nothing to convert
    with pytest.raises(ValueError, match="subln=True applies when a full-precision model is converted"):
        load_model(folder, ternary=False, subln=True)  # full precision stays as it is
    with pytest.raises(ValueError, match="subln must be True, False or None"):
        load_model(folder, subln="no")


def test_ternary_false_on_a_ternary_source(make_hf, helpers):
    """A ternary source loaded with ternary=False: its stored weights in nn.Linear, SubLN kept."""
    theirs, folder = make_hf("bitnet", quantization=helpers.BITNET_ONLINE)
    ours = load_model(folder, ternary=False)
    assert not ours.config.ternary and ours.config.subln
    assert all(type(m) is nn.Linear for n, m in ours.named_modules() if n.endswith("_proj"))
    state = ours.state_dict()
    assert all(torch.equal(state[k], v) for k, v in theirs.state_dict().items())


def test_bitk_checkpoints_through_load_model(tmp_path, helpers):
    torch.manual_seed(0)
    config = ModelConfig(**helpers.DIMS)
    model = helpers.scramble(CausalLM(config), 0).eval()
    path = model.save(tmp_path / "ckpt")
    x = helpers.ids(1, 8)
    assert torch.equal(_logits(load_model(path), x), _logits(model, x))
    plain = load_model(path, ternary=False)
    assert type(plain.model.layers[0].mlp.up_proj) is nn.Linear and plain.config.subln
    assert torch.equal(plain.model.layers[1].mlp.up_proj.weight, model.model.layers[1].mlp.up_proj.weight)
    fp_path = load_model(path, ternary=False).save(tmp_path / "fp")
    again = load_model(fp_path, ternary=True)
    assert torch.equal(_logits(again, x), _logits(model, x))
    half = load_model(path, dtype="bfloat16")
    assert all(p.dtype == torch.bfloat16 for p in half.parameters())
    assert bitk.models.load_model is load_model and bitk.load_model is load_model


# --------------------------------------------------------------------------- BitNet


def test_bitnet_online_matches_transformers(make_hf, helpers):
    """A transformers BitNet folder with online quantization (AutoBitLinear on latent weights)."""
    theirs, folder = make_hf("bitnet", quantization=helpers.BITNET_ONLINE, tie_word_embeddings=True)
    assert type(theirs.model.layers[0].self_attn.q_proj).__name__ == "AutoBitLinear"
    ours = load_model(folder)
    assert ours.config.ternary and ours.config.subln and ours.config.hidden_act == "relu2"
    assert ours.config.rope_theta == 500000.0
    inputs = _inputs(helpers)
    assert_bitnet_agrees(ours, theirs, inputs)
    with bitk.nn.use_backend("reference"):  # the reference and the default CPU path are both exact
        reference = _logits(ours, inputs[0])
    assert torch.equal(reference, _logits(ours, inputs[0]))


def _pack(codes: torch.Tensor) -> torch.Tensor:
    """transformers' offline BitNet packing: uint8 [out/4, in]; byte row r, bits 2i..2i+1 hold
    output row i*(out/4) + r, stored as value + 1."""
    rows = codes.shape[0] // 4
    u = (codes.to(torch.int16) + 1).to(torch.uint8)
    packed = torch.zeros(rows, codes.shape[1], dtype=torch.uint8)
    for i in range(4):
        packed |= u[i * rows : (i + 1) * rows] << (2 * i)
    return packed


def test_packed_bitnet_folder(transformers, helpers, tmp_path):
    """A pre-quantized BitNet folder (uint8 codes + weight_scale, linear_class bitlinear: effective
    weight = unpacked / weight_scale) built from a bitk model: bitk recovers exactly its codes,
    and transformers' BitLinear computes the same model."""
    torch.manual_seed(0)
    config = ModelConfig(**helpers.DIMS, tie_word_embeddings=False)
    model = helpers.scramble(CausalLM(config), 1).eval()
    tensors = state_dict_to_save(model)
    for name, m in model.named_modules():
        if isinstance(m, BitLinear):
            codes, gamma = m.quantized_weight()
            tensors[f"{name}.weight"] = _pack(codes)
            tensors[f"{name}.weight_scale"] = (1 / gamma).reshape(1)
    folder = tmp_path / "packed"
    folder.mkdir()
    write_safetensors(tensors, folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps({**hf_config(config), "quantization_config": helpers.BITNET_PACKED}))

    ours = load_model(folder)
    for name, m in model.named_modules():
        if isinstance(m, BitLinear):
            codes, gamma = m.quantized_weight()
            got_codes, got_gamma = ours.get_submodule(name).quantized_weight()
            assert torch.equal(got_codes, codes), name
            # The folder holds 1/gamma in float32; the scale read back is float32(1 / that).
            scale = torch.tensor(1 / tensors[f"{name}.weight_scale"].double().item(), dtype=torch.float32)
            assert got_gamma == scale, name
            assert abs(got_gamma - gamma) <= torch.finfo(torch.float32).eps * gamma, name
    inputs = _inputs(helpers)
    for x in inputs[:2]:
        want = _logits(model, x)
        assert max_err(_logits(ours, x), want) <= FLOAT32_REL * want.abs().max().item()

    theirs = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    assert type(theirs.model.layers[0].mlp.down_proj).__name__ == "BitLinear"
    assert_bitnet_agrees(ours, theirs, inputs)

    plain = load_model(folder, ternary=False)  # packed weights as codes * scale in nn.Linear
    codes, gamma = ours.model.layers[0].mlp.up_proj.quantized_weight()
    assert torch.equal(plain.model.layers[0].mlp.up_proj.weight, codes.float() * gamma)


@pytest.mark.parametrize("form", ["packed", "values"])
def test_autobitlinear_offline_folder(transformers, helpers, tmp_path, form):
    """linear_class autobitlinear offline: transformers' AutoBitLinear computes
    (quantized x) @ W.T * weight_scale, W stored uint8-packed (transformers' own pack_weights, which
    its loader unpacks) or as the ternary values in float32. bitk reads both to exactly the codes
    and gamma = weight_scale (multiplied, where bitlinear divides), and computes what transformers does."""
    from transformers.integrations.bitnet import pack_weights

    torch.manual_seed(0)
    config = ModelConfig(**helpers.DIMS, tie_word_embeddings=False)
    model = helpers.scramble(CausalLM(config), 3).eval()
    tensors = state_dict_to_save(model)
    quantized = {name: m.quantized_weight() for name, m in model.named_modules() if isinstance(m, BitLinear)}
    for name, (codes, gamma) in quantized.items():
        # pack_weights adds 1 in place: it gets its own float copy of the codes
        tensors[f"{name}.weight"] = pack_weights(codes.float()) if form == "packed" else codes.float()
        tensors[f"{name}.weight_scale"] = gamma.reshape(1)
    down = tensors["model.layers.0.mlp.down_proj.weight"]
    if form == "packed":
        assert down.dtype == torch.uint8 and down.shape == (config.hidden_size // 4, config.intermediate_size)
    folder = tmp_path / form
    folder.mkdir()
    write_safetensors(tensors, folder / "model.safetensors")
    qc = {"quant_method": "bitnet", "linear_class": "autobitlinear", "quantization_mode": "offline"}
    (folder / "config.json").write_text(json.dumps({**hf_config(config), "quantization_config": qc}))

    ours = load_model(folder)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    for name, (codes, gamma) in quantized.items():
        got_codes, got_gamma = ours.get_submodule(name).quantized_weight()
        assert torch.equal(got_codes, codes) and got_gamma == gamma, name
        layer = theirs.get_submodule(name)
        assert type(layer).__name__ == "AutoBitLinear" and not layer.online_quant, name
        assert torch.equal(layer.weight, codes.float()), name  # transformers' own unpacking
        assert torch.equal(layer.weight_scale, gamma.reshape(1)), name
    assert_bitnet_agrees(ours, theirs, _inputs(helpers))


def test_ternary_export_round_trip(transformers, helpers, tokenizer, tmp_path):
    """bitk ternary -> export_hf -> a BitNet folder transformers loads (online AutoBitLinear) and
    computes like bitk; loading the export back into bitk gives the model bit for bit."""
    torch.manual_seed(0)
    config = ModelConfig(**helpers.DIMS, rope_theta=20000.0, eos_token_id=0)
    model = helpers.scramble(CausalLM(config), 2).eval()
    out = export_hf(model, tmp_path / "bitnet", tokenizer=tokenizer)
    written = json.loads((out / "config.json").read_text())
    assert written["architectures"] == ["BitNetForCausalLM"] and written["model_type"] == "bitnet"
    assert written["quantization_config"] == BITNET_QUANTIZATION_CONFIG
    assert written["quantization_config"]["linear_class"] == "autobitlinear"
    assert written["rope_parameters"] == {"rope_theta": 20000.0, "rope_type": "default"}
    theirs = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(theirs).__name__ == "BitNetForCausalLM"
    assert type(theirs.model.layers[1].self_attn.o_proj).__name__ == "AutoBitLinear"
    assert theirs.config.rope_parameters["rope_theta"] == 20000.0 and theirs.config.eos_token_id == 0
    assert_bitnet_agrees(model, theirs, _inputs(helpers))
    back = load_model(out)
    x = helpers.ids(2, 9)
    assert torch.equal(_logits(back, x), _logits(model, x))
    assert transformers.AutoTokenizer.from_pretrained(out)("the fox")["input_ids"] == [4, 7]

    half = export_hf(model, tmp_path / "bf16", dtype="bfloat16")
    assert json.loads((half / "config.json").read_text())["dtype"] == "bfloat16"
    assert all(t.dtype == torch.bfloat16 for t in load_file(str(half / "model.safetensors")).values())
    theirs16 = transformers.AutoModelForCausalLM.from_pretrained(half).eval()
    assert theirs16.model.embed_tokens.weight.dtype == torch.bfloat16
    assert torch.equal(load_model(half).model.norm.weight, model.model.norm.weight.bfloat16().float())


def test_hf_extra_brings_what_loading_an_export_needs(transformers):
    """`pip install "bitk[hf]"` brings transformers and an accelerate that transformers counts
    (it loads BitNet folders only with accelerate, and reports one below its minimum as missing)."""
    tomllib = pytest.importorskip("tomllib")
    from packaging.requirements import Requirement
    from packaging.version import Version

    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    extras = pyproject["project"]["optional-dependencies"]
    minimum = Version(getattr(transformers.utils.import_utils, "ACCELERATE_MIN_VERSION", "0"))
    for extra in ("hf", "test"):
        reqs = {r.name: r.specifier for r in map(Requirement, extras[extra])}
        assert {"transformers", "accelerate"} <= set(reqs), extra
        floor = max(Version(s.version) for s in reqs["accelerate"] if s.operator == ">=")
        assert floor >= minimum, f"the {extra} extra admits accelerate {floor}; transformers needs >= {minimum}"


def test_loading_an_export_without_accelerate_names_the_package(transformers, helpers, tmp_path, monkeypatch):
    """Without accelerate, transformers refuses the BitNet export with an error naming the package
    to add (the message docs/models.md promises), instead of failing somewhere later."""
    import importlib.util

    from transformers.utils import import_utils

    out = export_hf(CausalLM(ModelConfig(**helpers.DIMS)), tmp_path / "bitnet")
    find_spec = importlib.util.find_spec
    clear = getattr(import_utils.is_accelerate_available, "cache_clear", lambda: None)
    clear()
    try:
        with monkeypatch.context() as m:
            m.setattr(
                importlib.util, "find_spec", lambda name, *a: None if name == "accelerate" else find_spec(name, *a)
            )
            m.setitem(sys.modules, "accelerate", None)
            with pytest.raises(ImportError, match=r"requires accelerate \(`pip install accelerate`\)"):
                transformers.AutoModelForCausalLM.from_pretrained(out)
    finally:
        clear()
    assert type(transformers.AutoModelForCausalLM.from_pretrained(out)).__name__ == "BitNetForCausalLM"


# --------------------------------------------------------------------------- refusals and errors


@pytest.mark.parametrize(
    "change, match",
    [
        ({"qk_norm": True}, "q/k norm"),
        ({"head_dim": 16}, "attention width"),
        ({"subln": False}, "without SubLN"),
        ({"ternary": False}, "full-precision model with SubLN"),
        ({"lrc_rank_ratio": 0.25}, "low-rank correction"),
    ],
)
def test_export_refusals_write_nothing(helpers, tmp_path, change, match):
    model = CausalLM(ModelConfig(**helpers.DIMS).replace(**change))
    with pytest.raises(ValueError, match=match):
        export_hf(model, tmp_path / "out")
    assert not any(tmp_path.iterdir())


def test_failed_export_keeps_the_old_folder(helpers, tmp_path):
    model = CausalLM(ModelConfig(**helpers.DIMS))
    out = export_hf(model, tmp_path / "out")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no tokenizer.json"):
        export_hf(model, out, tokenizer=tmp_path / "empty")
    with pytest.raises(ValueError, match="dtype"):
        export_hf(model, out, dtype="float16")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "out"]


def test_load_errors(make_hf, tmp_path):
    with pytest.raises(ValueError, match="no such file or folder"):
        load_model(tmp_path / "missing")
    # Looks like a hub id: taken from the Hugging Face cache (the tests' is offline), else the error says so.
    with pytest.raises(ValueError, match="bitk-tests-no-such-org/no-such-model is not in the Hugging Face cache"):
        load_model("bitk-tests-no-such-org/no-such-model")
    _, folder = make_hf("llama", "gpt")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "gpt2"}))
    with pytest.raises(ValueError, match="model_type 'gpt2' is not supported.*llama, qwen3, bitnet"):
        load_model(folder)

    _, folder = make_hf("llama", "broken")
    weights = load_file(str(folder / "model.safetensors"))
    weights.pop("model.layers.1.self_attn.v_proj.weight")
    write_safetensors(weights, folder / "model.safetensors")
    with pytest.raises(ValueError, match="missing tensor.*model.layers.1.self_attn.v_proj.weight"):
        load_model(folder)

    _, folder = make_hf("llama", "shaped")
    weights = load_file(str(folder / "model.safetensors"))
    weights["model.layers.0.mlp.gate_proj.weight"] = torch.zeros(64, 31)
    write_safetensors(weights, folder / "model.safetensors")
    with pytest.raises(ValueError, match=r"model.layers.0.mlp.gate_proj.weight has shape \[64, 31\]"):
        load_model(folder)
    with pytest.raises(ValueError, match="ternary must be"):
        load_model(folder, ternary="yes")
    with pytest.raises(ValueError, match="dtype"):
        load_model(folder, dtype=torch.float16)
