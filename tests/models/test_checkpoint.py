"""bitk.models.checkpoint: the bitk checkpoint folder, its round trip, atomic writes and validation."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from bitk.models import CausalLM, ModelConfig, load_checkpoint, save_checkpoint
from bitk.models.checkpoint import read_checkpoint_meta
from bitk.models.sources import open_source

SMALL = ModelConfig(
    vocab_size=96,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    initializer_range=0.2,
)
CONFIGS = {
    "ternary_tied": SMALL,
    "ternary_untied_bias_qk": SMALL.replace(tie_word_embeddings=False, attention_bias=True, qk_norm=True, head_dim=16),
    "full_precision": SMALL.replace(ternary=False, subln=False, hidden_act="silu"),
    "ternary_lrc": SMALL.replace(lrc_rank_ratio=0.25),
}


def _model(config=SMALL, seed=0):
    torch.manual_seed(seed)
    return CausalLM(config).eval()


def _siblings(path):
    return sorted(p.name for p in path.parent.iterdir() if p.name != path.name)


@pytest.mark.parametrize("name", CONFIGS)
def test_round_trip_is_bit_exact(name, tmp_path):
    model = _model(CONFIGS[name])
    path = model.save(tmp_path / "ckpt")
    loaded = load_checkpoint(path)
    assert loaded.config == model.config and type(loaded) is CausalLM
    state, back = model.state_dict(), loaded.state_dict()
    assert state.keys() == back.keys() and all(torch.equal(state[k], back[k]) for k in state)
    x = torch.randint(0, 96, (2, 11))
    with torch.no_grad():
        assert torch.equal(model(x).logits, loaded(x).logits)
    assert loaded.tokenizer_dir is None
    if model.config.tie_word_embeddings:
        assert loaded.lm_head.weight is loaded.model.embed_tokens.weight


def test_folder_layout(tmp_path):
    """bitk.json + model.safetensors with HF names, no tied head, metadata format pt; extra keys kept."""
    path = save_checkpoint(_model(), tmp_path / "ckpt", extra={"trainer": {"step": 7}})
    assert sorted(p.name for p in path.iterdir()) == ["bitk.json", "model.safetensors"]
    meta = json.loads((path / "bitk.json").read_text())
    assert meta == {"format": "bitk", "format_version": 1, "model": SMALL.to_dict(), "trainer": {"step": 7}}
    assert read_checkpoint_meta(path)["trainer"] == {"step": 7}
    with safe_open(str(path / "model.safetensors"), "pt") as f:
        assert f.metadata() == {"format": "pt"}
        names = set(f.keys())
        assert "lm_head.weight" not in names and "model.embed_tokens.weight" in names
    src = open_source(path)  # the torch-free reader of the GGUF packer agrees on the format
    assert src.kind == "bitk" and src.config == SMALL


def test_bfloat16_is_kept(tmp_path):
    model = _model().bfloat16()
    loaded = load_checkpoint(model.save(tmp_path / "bf16"))
    assert all(p.dtype == torch.bfloat16 for p in loaded.parameters())
    x = torch.randint(0, 96, (1, 5))
    with torch.no_grad():
        assert torch.equal(model(x).logits, loaded(x).logits)


def test_tokenizer_files(tokenizer, tokenizer_dir, tmp_path):
    model = _model(SMALL.replace(eos_token_id=0, bos_token_id=0))
    a = model.save(tmp_path / "a", tokenizer=tokenizer)  # a tokenizers.Tokenizer
    assert (a / "tokenizer.json").is_file()
    assert json.loads((a / "tokenizer_config.json").read_text())["eos_token"] == "<|endoftext|>"
    b = model.save(tmp_path / "b", tokenizer=tokenizer_dir)  # a folder
    assert (b / "tokenizer.json").read_bytes() == (tokenizer_dir / "tokenizer.json").read_bytes()
    loaded = load_checkpoint(b)
    assert loaded.tokenizer_dir == b
    c = loaded.save(tmp_path / "c")  # None: the folder the model was loaded with
    assert (c / "tokenizer.json").read_bytes() == (tokenizer_dir / "tokenizer.json").read_bytes()
    assert (c / "tokenizer_config.json").is_file()
    loaded.save(b)  # over the folder its tokenizer comes from: read before the swap
    assert (b / "tokenizer.json").read_bytes() == (tokenizer_dir / "tokenizer.json").read_bytes()
    with pytest.raises(ValueError, match="tokenizer must be"):
        model.save(tmp_path / "d", tokenizer=42)
    with pytest.raises(ValueError, match="no tokenizer.json"):
        model.save(tmp_path / "d", tokenizer=tmp_path / "a" / "..")
    assert not (tmp_path / "d").exists()


def test_failed_save_leaves_the_old_checkpoint(tmp_path):
    """A save that fails half-way (after the weights are written) changes nothing at path."""
    old = _model(seed=0)
    path = old.save(tmp_path / "ckpt")
    before = {p.name: p.read_bytes() for p in path.iterdir()}
    new = _model(seed=1)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no tokenizer.json"):
        new.save(path, tokenizer=empty)
    assert {p.name: p.read_bytes() for p in path.iterdir()} == before
    assert _siblings(path) == ["empty"]  # no temporary folder left behind
    new.save(path)  # a good save replaces it
    assert torch.equal(load_checkpoint(path).model.norm.weight, new.model.norm.weight)
    assert _siblings(path) == ["empty"]


def test_refused_saves_write_nothing(tmp_path):
    with pytest.raises(ValueError, match="float32 or bfloat16"):
        _model().double().save(tmp_path / "f64")
    with pytest.raises(ValueError, match="reserved"):
        _model().save(tmp_path / "x", extra={"model": {}})
    with pytest.raises(ValueError, match="JSON"):
        _model().save(tmp_path / "x", extra={"bad": object()})
    with pytest.raises(ValueError, match="CausalLM"):
        save_checkpoint(torch.nn.Linear(2, 2), tmp_path / "x")
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="refusing to overwrite"):
        _model().save(other)
    assert (other / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]


def _edit_weights(path, edit):
    tensors = load_file(str(path / "model.safetensors"))
    edit(tensors)
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda t: t.pop("model.layers.1.mlp.up_proj.weight"), r"missing tensor\(s\) model\.layers\.1\.mlp\.up_proj"),
        (
            lambda t: t.update({"model.layers.0.extra.weight": torch.zeros(3)}),
            r"unexpected tensor\(s\) model\.layers\.0\.extra",
        ),
        (
            lambda t: t.update({"model.norm.weight": torch.zeros(31)}),
            r"mis-shaped tensor\(s\) model\.norm\.weight \(31,\) \(expected \(32,\)\)",
        ),
        (lambda t: t.update({"model.norm.weight": torch.zeros(32, dtype=torch.float16)}), "float32 or bfloat16"),
    ],
    ids=["missing", "unexpected", "mis-shaped", "dtype"],
)
def test_load_validates_tensors(tmp_path, edit, match):
    path = _model().save(tmp_path / "ckpt")
    _edit_weights(path, edit)
    with pytest.raises(ValueError, match=match):
        load_checkpoint(path)


def test_load_validates_the_folder(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_checkpoint(tmp_path / "nothing")
    (tmp_path / "plain").mkdir()
    with pytest.raises(ValueError, match="no bitk.json"):
        load_checkpoint(tmp_path / "plain")
    path = _model().save(tmp_path / "ckpt")
    meta = json.loads((path / "bitk.json").read_text())
    for change, match in [
        ({"format": "gguf"}, "format 'gguf'"),
        ({"format_version": 2}, "format_version 2"),
        ({"model": {**SMALL.to_dict(), "hidden_size": 0}}, "hidden_size"),
    ]:
        (path / "bitk.json").write_text(json.dumps({**meta, **change}))
        with pytest.raises(ValueError, match=match):
            load_checkpoint(path)
    (path / "bitk.json").write_text(json.dumps(meta))
    (path / "model.safetensors").unlink()
    with pytest.raises(ValueError, match="no model.safetensors"):
        load_checkpoint(path)


def test_checkpoint_files_are_ordinary_shareable_files(tmp_path):
    path = _model().save(tmp_path / "ckpt")
    modes = {p.name: p.stat().st_mode & 0o777 for p in path.iterdir() if p.is_file()}
    assert "model.safetensors" in modes
    for name, mode in modes.items():
        assert mode & 0o044 == 0o044, f"{name} is not readable by group/others: {oct(mode)}"
