"""Packing with zero-padding (--pad auto): SmolLM2's 576-wide layers written fully ternary.

The padded file records the model's own dimensions (bitk.unpadded.*), verifies against the
unpadded source (through `PaddedSource`), and loads back as a model whose logits, in the
runtime's numerics, equal the source model's.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import bitk.formats as fmt
from bitk.gguf import export, load, pack, read_gguf
from bitk.gguf.verifier import verify
from bitk.models import CausalLM
from bitk.models.padding import PaddedSource, plan_padding
from bitk.models.sources import open_source, tensor_shapes
from bitk_gguf_testing import make_checkpoint, run_cli, smol_config, text_ids, tokenizer


def fits(multiple: int):
    return lambda shape: shape[1] % multiple == 0


def test_padded_source_pads_the_original_ternarization(tmp_path):
    config = smol_config(num_hidden_layers=1)
    src = open_source(make_checkpoint(tmp_path / "ckpt", config, seed=3))
    padding = plan_padding(config, fits(128))
    view = PaddedSource(src, padding)
    name = "model.layers.0.self_attn.q_proj.weight"
    codes, scale = fmt.ternarize(src.tensor(name))
    got_codes, got_scale = view.ternary(name)
    assert got_codes.shape == (768, 768) and got_scale == scale  # not the absmean of the padded weight
    np.testing.assert_array_equal(got_codes[:576, :576], codes)
    assert not got_codes[576:].any() and not got_codes[:, 576:].any()
    norm = view.tensor("model.norm.weight")
    np.testing.assert_allclose(norm[:576], src.tensor("model.norm.weight") * np.sqrt(0.75), rtol=1e-6)
    assert not norm[576:].any() and view.shape("model.embed_tokens.weight") == (320, 768)
    assert view.names() == list(tensor_shapes(padding.padded))


@pytest.fixture(scope="module")
def smol_ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("smol") / "ckpt", smol_config(), seed=6)


@pytest.mark.parametrize("qtype", ["i2_s", "tq1_0", "tq2_0"])
def test_padded_file_records_the_dims_and_verifies_against_the_source(tmp_path, smol_ckpt, qtype):
    out = tmp_path / "m.gguf"
    res = pack(smol_ckpt, out, qtype)
    assert {r.type for r in res.rows if r.name.endswith(("_q.weight", "_output.weight", "_gate.weight"))} == {
        qtype.upper()
    }
    with read_gguf(out) as f:
        m = f.metadata
        assert (m["bitnet.embedding_length"], m["bitnet.feed_forward_length"]) == (768, 2048)
        assert (m["bitnet.attention.head_count"], m["bitnet.attention.head_count_kv"]) == (12, 4)
        assert m["bitk.unpadded.embedding_length"] == 576 and m["bitk.unpadded.feed_forward_length"] == 1536
        assert (m["bitk.unpadded.head_count"], m["bitk.unpadded.head_count_kv"]) == (9, 3)
        assert m["bitnet.attention.layer_norm_rms_epsilon"] == pytest.approx(1e-5 * 0.75, rel=1e-6)
        assert "bitnet.attention.key_length" not in m  # heads x head_dim == hidden, as bitnet.cpp requires
    report = verify(out, against=smol_ckpt)
    assert report.ok, report.failures
    assert any(c.what == "padding" and c.ok and "hidden 576 -> 768" in c.detail for c in report.checks)
    # against another model of the same dims, the ternarization differs
    other = make_checkpoint(tmp_path / "other", smol_config(), seed=7)
    assert not verify(out, against=other).ok


def test_unpadded_file_is_larger_and_falls_back(tmp_path, smol_ckpt):
    padded, fallback = tmp_path / "p.gguf", tmp_path / "f.gguf"
    pack(smol_ckpt, padded, "i2_s")
    res = pack(smol_ckpt, fallback, "i2_s", pad="none")
    assert {r.type for r in res.rows if "attn_q" in r.name} == {"F16"}
    with read_gguf(fallback) as f:
        assert "bitk.unpadded.embedding_length" not in f.metadata
    assert padded.stat().st_size < fallback.stat().st_size
    assert verify(fallback, against=smol_ckpt).ok


@torch.no_grad()
def logits(model: CausalLM) -> torch.Tensor:
    return model(torch.tensor([text_ids()[:24]])).logits


def test_padded_i2s_file_loads_as_the_same_model(tmp_path):
    torch.manual_seed(0)
    model = CausalLM(smol_config()).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.2 * torch.randn_like(p))
    res = export(model, tmp_path / "m.gguf", "i2_s", tokenizer=tokenizer(), embedding_type="f32")
    assert any(n.startswith("zero-padded") for n in res.notes)
    loaded = load(tmp_path / "m.gguf")
    assert loaded.config.hidden_size == 768 and loaded.config.num_attention_heads == 12
    assert {m.numerics for m in loaded.modules() if hasattr(m, "numerics")} == {"i2s"}
    want = logits(model.set_numerics("i2s"))
    got = logits(loaded)
    torch.testing.assert_close(got, want, rtol=2e-5, atol=2e-5 * want.abs().max().item())
    unpadded = load_unpadded(tmp_path, model)
    assert (logits(unpadded) - want).abs().max() > 1e-3  # F16 fallback layers: another function


def load_unpadded(tmp_path, model):
    export(model, tmp_path / "f.gguf", "i2_s", tokenizer=tokenizer(), embedding_type="f32", pad="none")
    return load(tmp_path / "f.gguf")


def test_cli_pads_by_default_and_says_so(tmp_path, smol_ckpt):
    out = tmp_path / "m.gguf"
    proc = run_cli("pack", smol_ckpt, "-o", out, check=True)
    assert "note: zero-padded (hidden 576 -> 768, query heads 9 -> 12, KV heads 3 -> 4, FFN 1536 -> 2048)" in (
        proc.stdout.replace("\n", " ")
    )
    proc = run_cli("verify", out, "--against", smol_ckpt, check=True)
    assert "zero-padded" in proc.stdout
    proc = run_cli("pack", smol_ckpt, "-o", out, "--pad", "none", check=True)
    assert "written as F16" in proc.stdout.replace("\n", " ")
