"""bitk.models.sources: reading bitk checkpoints and Hugging Face folders without torch."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

from bitk.models.config import ModelConfig
from bitk.models.sources import config_from_hf, open_source, tensor_shapes, unpack_bitnet_weight

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


@pytest.mark.parametrize("linear_class", ["bitlinear", "autobitlinear"])
def test_prequantized_bitnet_scale_direction(tmp_path, linear_class):
    """bitlinear divides the output by weight_scale, autobitlinear multiplies (as transformers)."""
    rng = np.random.default_rng(3)
    config = SMALL.replace(hidden_act="relu2")
    weights, expected = {}, {}
    for name, shape in tensor_shapes(config).items():
        if (".self_attn." in name and name.endswith("_proj.weight")) or (
            ".mlp." in name and name.endswith("_proj.weight")
        ):
            codes = rng.integers(-1, 2, shape).astype(np.int8)
            ws = np.float32(rng.uniform(0.5, 4))
            weights[name] = _pack_rows(codes) if linear_class == "bitlinear" else codes.astype(np.float32)
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
