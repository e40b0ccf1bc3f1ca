"""bitk.models.sources: reading bitk checkpoints and Hugging Face folders without torch."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

from bitk.models.config import ModelConfig
from bitk.models.sources import PROJECTIONS, config_from_hf, open_source, tensor_shapes, unpack_bitnet_weight

SMALL = ModelConfig(
    vocab_size=64,
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
)


def _weights(config, rng, dtype=np.float32):
    return {n: rng.standard_normal(s).astype(dtype) for n, s in tensor_shapes(config).items()}


def _bitk_folder(path, config, weights):
    path.mkdir()
    (path / "bitk.json").write_text(json.dumps({"format": "bitk", "format_version": 1, "model": config.to_dict()}))
    save_file(weights, str(path / "model.safetensors"), metadata={"format": "pt"})
    return path


def _hf_bitnet_config(config, **extra):
    return {
        "model_type": "bitnet",
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_hidden_layers,
        "num_attention_heads": config.num_attention_heads,
        "num_key_value_heads": config.num_key_value_heads,
        "hidden_act": "relu2",
        "max_position_embeddings": 64,
        "rms_norm_eps": 1e-5,
        "tie_word_embeddings": True,
        "rope_parameters": {"rope_theta": 500000.0, "rope_type": "default"},
        **extra,
    }


def _pack_rows(codes):
    """transformers' packing: byte row r, bits 2i..2i+1 = output row i*(out/4) + r, value + 1."""
    u = (codes + 1).astype(np.uint8)
    q = u.shape[0] // 4
    return u[:q] | u[q : 2 * q] << 2 | u[2 * q : 3 * q] << 4 | u[3 * q :] << 6


def test_bitk_checkpoint(tmp_path):
    weights = _weights(SMALL, np.random.default_rng(0))
    src = open_source(_bitk_folder(tmp_path / "ckpt", SMALL, weights))
    assert src.kind == "bitk" and src.config == SMALL
    assert src.names() == list(weights)
    for name, value in weights.items():
        assert np.array_equal(src.tensor(name), value)
        assert src.ternary(name) is None


def test_bf16_is_widened_exactly(tmp_path):
    rng = np.random.default_rng(1)
    weights = {n: torch.from_numpy(v).bfloat16() for n, v in _weights(SMALL, rng).items()}
    folder = tmp_path / "bf16"
    folder.mkdir()
    (folder / "bitk.json").write_text(json.dumps({"format": "bitk", "model": SMALL.to_dict()}))
    from safetensors.torch import save_file as save_torch

    save_torch(weights, str(folder / "model.safetensors"))
    src = open_source(folder)
    for name, value in weights.items():
        assert np.array_equal(src.tensor(name), value.float().numpy())


def test_unpack_matches_transformers():
    from transformers.integrations.bitnet import unpack_weights

    codes = np.random.default_rng(2).integers(-1, 2, (16, 12)).astype(np.int8)
    packed = _pack_rows(codes)
    assert np.array_equal(unpack_bitnet_weight(packed), codes)
    theirs = unpack_weights(torch.from_numpy(packed), dtype=torch.float32).numpy()
    assert np.array_equal(theirs, codes.astype(np.float32))


@pytest.mark.parametrize(
    "linear_class, form", [("bitlinear", "packed"), ("autobitlinear", "packed"), ("autobitlinear", "values")]
)
def test_prequantized_bitnet_scale_direction(tmp_path, linear_class, form):
    """bitlinear divides the output by weight_scale, autobitlinear multiplies (as transformers);
    autobitlinear offline weights are uint8-packed like bitlinear's, or the ternary values as floats."""
    rng = np.random.default_rng(3)
    config = SMALL.replace(hidden_act="relu2")
    weights, expected = {}, {}
    for name, shape in tensor_shapes(config).items():
        if (".self_attn." in name and name.endswith("_proj.weight")) or (
            ".mlp." in name and name.endswith("_proj.weight")
        ):
            codes = rng.integers(-1, 2, shape).astype(np.int8)
            ws = np.float32(rng.uniform(0.5, 4))
            weights[name] = _pack_rows(codes) if form == "packed" else codes.astype(np.float32)
            weights[name[:-6] + "weight_scale"] = np.array([ws], np.float32)
            expected[name] = (codes, float(np.float32(1 / np.float64(ws) if linear_class == "bitlinear" else ws)))
        else:
            weights[name] = rng.standard_normal(shape).astype(np.float32)
    folder = tmp_path / "hf"
    folder.mkdir()
    qc = {"quant_method": "bitnet", "linear_class": linear_class, "quantization_mode": "offline"}
    (folder / "config.json").write_text(json.dumps(_hf_bitnet_config(config, quantization_config=qc)))
    save_file(weights, str(folder / "model.safetensors"))
    src = open_source(folder)
    assert src.kind == "bitnet" and src.config.ternary and src.config.subln
    for name, (codes, scale) in expected.items():
        got_codes, got_scale = src.ternary(name)
        assert np.array_equal(got_codes, codes) and got_scale == scale
        assert np.array_equal(src.tensor(name), codes.astype(np.float32) * np.float32(scale))


# A BitNet folder as transformers loads it with linear_class autobitlinear offline, readable by the
# GGUF packer too: vocabulary 320 holds the byte-level tokenizer below (2 specials + 256 bytes).
ABL = SMALL.replace(vocab_size=320, hidden_act="relu2", tie_word_embeddings=True)
ABL_SCALES = (0.5, 2.0, 3.0, 0.375, 1.5, 0.75, 2.5)  # bfloat16-exact, one per projection


def _abl_scale(name: str) -> float:
    return next(ABL_SCALES[i] for i, p in enumerate(PROJECTIONS) if p in name)


def _byte_level_tokenizer(folder):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {t: i for i, t in enumerate(["<|endoftext|>", "<|pad|>", *alphabet])}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|endoftext|>"}))


def _autobitlinear_folder(path, form="packed", change=None, linear_class="autobitlinear"):
    """(folder, {projection: codes}): bf16 tensors, projections packed by transformers' own
    pack_weights (form "packed") or the ternary values in bf16 ("values"), each with a bf16
    weight_scale of shape [1] (transformers' AutoBitLinear buffer). ``change(tensors)`` edits the
    tensors before they are written."""
    from safetensors.torch import save_file as save_torch
    from transformers.integrations.bitnet import pack_weights

    rng = np.random.default_rng(6)
    tensors, codes = {}, {}
    for name, shape in tensor_shapes(ABL).items():
        if not any(f".{p}." in name for p in PROJECTIONS):
            tensors[name] = torch.from_numpy(rng.standard_normal(shape).astype(np.float32)).bfloat16()
            continue
        codes[name] = rng.integers(-1, 2, shape).astype(np.int8)
        values = torch.from_numpy(codes[name].astype(np.float32))
        tensors[name] = pack_weights(values) if form == "packed" else values.bfloat16()  # pack_weights adds 1 in place
        tensors[name[: -len("weight")] + "weight_scale"] = torch.tensor([_abl_scale(name)], dtype=torch.bfloat16)
    if change is not None:
        change(tensors)
    path.mkdir()
    save_torch(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    qc = {"quant_method": "bitnet", "linear_class": linear_class, "quantization_mode": "offline"}
    config = _hf_bitnet_config(ABL, architectures=["BitNetForCausalLM"], quantization_config=qc)
    (path / "config.json").write_text(json.dumps(config))
    _byte_level_tokenizer(path)
    return path, codes


@pytest.mark.parametrize("form", ["packed", "values"])
def test_autobitlinear_offline_reads_and_packs(transformers, tmp_path, form):
    """The autobitlinear offline forms, checked against transformers' loader (its unpacking and
    its weight_scale), then through load_model and the GGUF packer and verifier."""
    from bitk.gguf import pack, read_gguf, verify
    from bitk.gguf.verifier import decode
    from bitk.models import load_model

    folder, codes = _autobitlinear_folder(tmp_path / form, form)
    q = "model.layers.0.self_attn.q_proj.weight"
    stored = open_source(folder)._entries[q]
    assert (stored.dtype, stored.shape) == (("U8", (8, 32)) if form == "packed" else ("BF16", (32, 32)))
    src = open_source(folder)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(folder)
    for name, want in codes.items():
        got, scale = src.ternary(name)
        assert np.array_equal(got, want), name
        layer = theirs.get_submodule(name[: -len(".weight")])
        assert type(layer).__name__ == "AutoBitLinear" and not layer.online_quant
        assert np.array_equal(layer.weight.detach().float().numpy(), want), name  # transformers' own unpacking
        assert scale == layer.weight_scale.float().item() == _abl_scale(name), name
        assert np.array_equal(src.tensor(name), want.astype(np.float32) * np.float32(scale))

    ours = load_model(folder)
    got_codes, gamma = ours.get_submodule("model.layers.1.mlp.down_proj").quantized_weight()
    assert np.array_equal(got_codes.numpy(), codes["model.layers.1.mlp.down_proj.weight"])
    assert gamma.item() == _abl_scale("mlp.down_proj")

    for qtype in ("i2_s", "f32"):
        out = tmp_path / f"{form}-{qtype}.gguf"
        pack(folder, out, qtype)
        report = verify(out, against=folder)
        assert report.ok, [c.detail for c in report.failures]
        with read_gguf(out) as f:
            values, gguf_codes, _ = decode(f, "blk.1.ffn_down.weight")
        if gguf_codes is not None:
            assert np.array_equal(gguf_codes, codes["model.layers.1.mlp.down_proj.weight"])
        nz = values[values != 0]
        assert np.all(np.abs(nz) == np.float32(_abl_scale("mlp.down_proj")))


def _set(name, value):
    def change(tensors):
        tensors[name] = value

    return change


@pytest.mark.parametrize(
    ("change", "linear_class", "match"),
    [
        (  # a scale per output row: transformers' AutoBitLinear holds one number, so does bitk
            _set("model.layers.0.mlp.up_proj.weight_scale", torch.ones(48, dtype=torch.bfloat16)),
            "autobitlinear",
            r"mlp.up_proj.weight_scale has shape \[48\], a scale per output row.*one scale per tensor",
        ),
        (
            _set("model.layers.0.mlp.up_proj.weight_scale", torch.ones(48, 1)),
            "bitlinear",
            r"up_proj.weight_scale has shape \[48, 1\]",
        ),
        (
            _set("model.layers.0.mlp.up_proj.weight_scale", torch.ones(1, dtype=torch.uint8)),
            "autobitlinear",
            r"up_proj.weight_scale has dtype U8; expected a float tensor",
        ),
        (
            lambda t: t.pop("model.layers.1.self_attn.o_proj.weight_scale"),
            "autobitlinear",
            "o_proj.weight_scale is missing",
        ),
        (  # the packed shape in floats: not a form bitk takes
            _set("model.layers.0.self_attn.k_proj.weight", torch.zeros(4, 32)),
            "autobitlinear",
            r"k_proj.weight is F32 \[4, 32\]; linear_class 'autobitlinear' offline stores it as uint8 \[4, 32\] "
            r"\(four output rows per byte\) or ternary values -1/0/1 as floats \[16, 32\]",
        ),
        (
            _set("model.layers.0.self_attn.k_proj.weight", torch.zeros(16, 32, dtype=torch.uint8)),
            "autobitlinear",
            r"k_proj.weight is U8 \[16, 32\]",
        ),
        (  # bitlinear holds only the packed form
            _set("model.layers.0.self_attn.k_proj.weight", torch.zeros(16, 32)),
            "bitlinear",
            r"k_proj.weight is F32 \[16, 32\]; linear_class 'bitlinear' offline stores it as uint8 \[4, 32\]",
        ),
    ],
)
def test_prequantized_bitnet_refusals(tmp_path, change, linear_class, match):
    folder, _ = _autobitlinear_folder(tmp_path / "hf", change=change, linear_class=linear_class)
    with pytest.raises(ValueError, match=match):
        open_source(folder)


def test_prequantized_bitnet_bad_values(tmp_path):
    """Read errors name the tensor: float values that are not ternary, the unused packed code 3."""
    name = "model.layers.0.mlp.gate_proj.weight"
    folder, _ = _autobitlinear_folder(tmp_path / "values", "values", _set(name, torch.full((48, 32), 0.5)))
    with pytest.raises(ValueError, match="gate_proj.weight should hold ternary values"):
        open_source(folder).ternary(name)
    folder, _ = _autobitlinear_folder(
        tmp_path / "code3", change=_set(name, torch.full((12, 32), 255, dtype=torch.uint8))
    )
    with pytest.raises(ValueError, match="gate_proj.weight: packed BitNet weight holds the invalid code 3"):
        open_source(folder).tensor(name)


def test_hf_config_mapping():
    hf = {
        "model_type": "qwen3",
        "vocab_size": 100,
        "hidden_size": 64,
        "intermediate_size": 96,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 32,
        "hidden_act": "silu",
        "rope_theta": 1e6,
        "rms_norm_eps": 1e-6,
        "tie_word_embeddings": True,
        "eos_token_id": [7, 8],
    }
    c = config_from_hf(hf)
    assert (c.qk_norm, c.ternary, c.subln, c.head_dim, c.q_size, c.rope_theta, c.eos_token_id) == (
        True,
        False,
        False,
        32,
        128,
        1e6,
        7,
    )
    # transformers 5 nests the base; a missing one takes transformers' own default, never a guess
    llama = {**hf, "model_type": "llama", "rope_parameters": {"rope_theta": 5e5, "rope_type": "default"}}
    del llama["rope_theta"]
    assert config_from_hf(llama).rope_theta == 5e5
    del llama["rope_parameters"]
    assert config_from_hf(llama).rope_theta == 10000.0
    assert config_from_hf({**llama, "model_type": "bitnet", "hidden_act": "relu2"}).rope_theta == 500000.0


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"model_type": "gpt2"}, "model_type 'gpt2' is not supported; bitk reads llama, qwen3, bitnet"),
        ({"hidden_act": "gelu"}, "hidden_act 'gelu' is not supported"),
        ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "RoPE scaling 'llama3'"),
        ({"mlp_bias": True}, "mlp_bias"),
    ],
)
def test_hf_config_refusals(change, match):
    hf = {
        "model_type": "llama",
        "vocab_size": 100,
        "hidden_size": 64,
        "intermediate_size": 96,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
    }
    with pytest.raises(ValueError, match=match):
        config_from_hf({**hf, **change})


def test_bad_folders(tmp_path):
    weights = _weights(SMALL, np.random.default_rng(4))
    with pytest.raises(ValueError, match="no such file"):
        open_source(tmp_path / "nothing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="neither a bitk checkpoint"):
        open_source(empty)
    missing = dict(weights)
    del missing["model.layers.1.mlp.down_proj.weight"]
    with pytest.raises(ValueError, match="missing tensor.*layers.1.mlp.down_proj"):
        open_source(_bitk_folder(tmp_path / "missing", SMALL, missing))
    bad = {**weights, "model.norm.weight": np.ones(7, np.float32)}
    with pytest.raises(ValueError, match=r"model.norm.weight has shape \[7\]"):
        open_source(_bitk_folder(tmp_path / "shape", SMALL, bad))
    extra = {**weights, "model.layers.0.mlp.experts.weight": np.ones(3, np.float32)}
    with pytest.raises(ValueError, match="unexpected tensor"):
        open_source(_bitk_folder(tmp_path / "extra", SMALL, extra))
    folder = _bitk_folder(tmp_path / "trunc", SMALL, weights)
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) - 100])
    with pytest.raises(ValueError, match="truncated"):
        open_source(folder)


def test_reading_needs_no_torch(tmp_path):
    folder = _bitk_folder(tmp_path / "ckpt", SMALL, _weights(SMALL, np.random.default_rng(5)))
    code = (
        "import sys; from bitk.models.sources import open_source; s = open_source(sys.argv[1]); "
        "[s.tensor(n) for n in s.names()]; assert 'torch' not in sys.modules, 'torch was imported'"
    )
    subprocess.run([sys.executable, "-c", code, str(folder)], check=True)
