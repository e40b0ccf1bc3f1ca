"""Hostile model folders: configs that claim what the weights do not hold, malformed safetensors.

Every one must end in a ValueError naming the file (or the field), quickly: the layer-count
cases hung before the fix (10**9 layers were enumerated or built), so they run in subprocesses
with a timeout.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from bitk.models.config import ModelConfig
from bitk.models.sources import config_from_hf, open_source, read_safetensors, tensor_shapes

CONFIG = ModelConfig(
    vocab_size=32,
    hidden_size=16,
    intermediate_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=1,
    hidden_act="silu",
    tie_word_embeddings=True,
    subln=False,
    ternary=False,
)
HF = {
    "model_type": "llama",
    "vocab_size": 32,
    "hidden_size": 16,
    "intermediate_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "hidden_act": "silu",
    "tie_word_embeddings": True,
}


def weights(config: ModelConfig = CONFIG) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {n: rng.standard_normal(s).astype(np.float32) for n, s in tensor_shapes(config).items()}


def hf_folder(path: Path, **changes) -> Path:
    path.mkdir(parents=True)
    save_file(weights(), str(path / "model.safetensors"))
    (path / "config.json").write_text(json.dumps({**HF, **changes}))
    return path


def bitk_folder(path: Path, **changes) -> Path:
    path.mkdir(parents=True)
    save_file(weights(), str(path / "model.safetensors"))
    model = {**CONFIG.to_dict(), **changes}
    (path / "bitk.json").write_text(json.dumps({"format": "bitk", "format_version": 1, "model": model}))
    return path


def run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_the_folders_are_valid_as_written(tmp_path):
    assert open_source(hf_folder(tmp_path / "hf")).config.num_hidden_layers == 2
    assert open_source(bitk_folder(tmp_path / "bitk")).config.num_hidden_layers == 2


@pytest.mark.parametrize("layers", [10**9, 3, 1])
def test_layer_counts_the_weights_do_not_hold(tmp_path, layers):
    hf = hf_folder(tmp_path / "hf", num_hidden_layers=layers)
    ckpt = bitk_folder(tmp_path / "bitk", num_hidden_layers=layers)
    for folder in (hf, ckpt):
        with pytest.raises(ValueError, match=f"num_hidden_layers is {layers}, but the layers the weights hold are 2"):
            open_source(folder)
    proc = run(
        "import bitk.models as m\n"
        f"for p in ({str(hf)!r}, {str(ckpt)!r}):\n"
        "    try:\n"
        "        m.load_model(p, ternary=False)\n"
        "    except ValueError as e:\n"
        "        print('ValueError', e)\n"
        f"m.load_checkpoint({str(ckpt)!r})\n"
    )
    assert proc.stdout.count("ValueError") == 2, proc.stdout + proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("ValueError: checkpoint"), proc.stderr


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"hidden_size": None}, "lacks the field 'hidden_size'"),
        ({"num_attention_heads": 3}, "num_attention_heads (3) does not divide hidden_size (16)"),
        ({"num_attention_heads": 0}, "num_attention_heads must be a positive integer"),
        ({"num_hidden_layers": 0}, "num_hidden_layers must be a positive integer"),
        ({"hidden_size": "16"}, "hidden_size must be an integer, got '16'"),
        ({"vocab_size": [32]}, "vocab_size must be an integer"),
        ({"intermediate_size": 3.5}, "intermediate_size must be an integer"),
        ({"num_key_value_heads": True}, "num_key_value_heads must be an integer"),
        ({"rms_norm_eps": "small"}, "rms_norm_eps must be a number"),
        ({"rope_scaling": [1]}, "rope_scaling must be an object"),
        ({"tie_word_embeddings": "yes"}, "tie_word_embeddings must be true or false"),
        ({"eos_token_id": "</s>"}, "eos_token_id must be an integer"),
        ({"num_key_value_heads": 3, "num_attention_heads": 4, "hidden_size": 16}, "must divide"),
    ],
)
def test_config_json_fields_are_named(change, message):
    hf = {**HF, **change}
    hf = {k: v for k, v in hf.items() if v is not None}
    with pytest.raises(ValueError, match=None) as info:
        config_from_hf(hf, "folder")
    assert message in str(info.value), str(info.value)
    assert str(info.value).startswith("folder/config.json"), str(info.value)


def test_config_json_that_is_no_object(tmp_path):
    folder = hf_folder(tmp_path / "hf")
    (folder / "config.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="expected a JSON object"):
        open_source(folder)


@pytest.mark.parametrize(
    "change",
    [{"hidden_size": "16"}, {"num_attention_heads": "two"}, {"num_attention_heads": 3}, {"num_hidden_layers": 0}],
)
def test_model_config_fields_are_named(change):
    with pytest.raises(ValueError, match=f"ModelConfig.{next(iter(change))}|num_attention_heads"):
        ModelConfig.from_dict({**CONFIG.to_dict(), "head_dim": 0, **change})


def raw_safetensors(path: Path, header, data: bytes = b"") -> Path:
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)
    return path


F32 = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}


@pytest.mark.parametrize(
    ("header", "data"),
    [
        ([1, 2], b""),
        ({"a": 3}, b""),
        ({"a": "x"}, b""),
        ({"a": {"dtype": "F32"}}, b""),
        ({"a": {**F32, "shape": "x"}}, bytes(8)),
        ({"a": {**F32, "data_offsets": [0, "8"]}}, bytes(8)),
        ({"a": F32, "b": {**F32, "data_offsets": [4, 12]}}, bytes(12)),
        ({"a": {**F32, "data_offsets": [0, 8]}}, bytes(4)),
        ({"a": {**F32, "data_offsets": [8, 16]}}, bytes(16)),
        ({"a": {**F32, "shape": [-2]}}, bytes(8)),
        ({"a": {**F32, "dtype": "Q4"}}, bytes(8)),
        ({"__metadata__": 5}, b""),
    ],
)
def test_malformed_safetensors_headers_are_value_errors_naming_the_file(tmp_path, header, data):
    path = raw_safetensors(tmp_path / "bad.safetensors", header, data)
    with pytest.raises(ValueError, match="bad.safetensors"):
        read_safetensors(path)


@pytest.mark.parametrize("shard", ["/etc/passwd", "../outside.safetensors", "sub/../../x.safetensors", ""])
def test_index_shards_outside_the_folder_are_refused(tmp_path, shard):
    folder = hf_folder(tmp_path / "hf")
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": shard}}))
    with pytest.raises(ValueError, match="is not a file name inside"):
        open_source(folder)


@pytest.mark.parametrize("index", ['{"weight_map": [1]}', '{"weight_map": {"a": 5}}', "[]", "{"])
def test_malformed_index_is_a_value_error(tmp_path, index):
    folder = hf_folder(tmp_path / "hf")
    (folder / "model.safetensors.index.json").write_text(index)
    with pytest.raises(ValueError, match="model.safetensors.index.json"):
        open_source(folder)


def test_bitk_json_config_is_checked_before_the_model_is_built(tmp_path):
    from bitk.models.checkpoint import read_checkpoint_meta

    ckpt = bitk_folder(tmp_path / "bitk", hidden_size="16")
    with pytest.raises(ValueError, match="ModelConfig.hidden_size must be a positive integer"):
        read_checkpoint_meta(ckpt)
