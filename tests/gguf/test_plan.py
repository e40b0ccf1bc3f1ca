"""plan_pack(): arch by activation, per-tensor fallbacks, and what is refused unless a flag accepts it."""

from __future__ import annotations

import numpy as np
import pytest

from bitk.gguf import pack, read_gguf
from bitk.gguf.plan import PackOptions, plan_pack
from bitk.gguf.verifier import verify
from bitk.models.sources import open_source
from bitk_gguf_testing import make_checkpoint, make_hf_folder, random_tensors, smol_config, tiny_config


def plan_of(folder, **options):
    return plan_pack(open_source(folder), PackOptions(**options))


def types_by_kind(plan) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for t in plan.tensors:
        out.setdefault(
            t.name.split(".", 2)[-1].removesuffix(".weight") if t.name.startswith("blk.") else t.name, set()
        ).add(t.type)
    return out


def test_arch_follows_the_activation(relu2_ckpt, silu_ckpt):
    assert plan_of(relu2_ckpt).arch == "bitnet-b1.58"
    assert plan_of(silu_ckpt).arch == "bitnet"
    assert plan_of(relu2_ckpt, arch="bitnet-b1.58").arch == "bitnet-b1.58"
    assert plan_of(relu2_ckpt, arch="bitnet-25").arch == "bitnet-25"  # the fork's other name
    with pytest.raises(ValueError, match="--arch bitnet evaluates a silu FFN but the model uses relu2"):
        plan_of(relu2_ckpt, arch="bitnet")
    with pytest.raises(ValueError, match="matching arch is bitnet\\b"):
        plan_of(silu_ckpt, arch="bitnet-b1.58")


@pytest.fixture(scope="module")
def smollm_like(tmp_path_factory):
    """SmolLM2-135M's widths (hidden 576, ffn 1536, 9/3 heads of 64), one block."""
    return make_checkpoint(tmp_path_factory.mktemp("smol") / "ckpt", smol_config(num_hidden_layers=1), seed=6)


@pytest.mark.parametrize("qtype", ["i2_s", "tq2_0", "tq1_0"])
def test_smollm2_dims_are_zero_padded_to_fit_every_type(smollm_like, qtype):
    plan = plan_of(smollm_like, qtype=qtype)
    q = qtype.upper()
    assert {t.type for t in plan.tensors if t.role == "projection"} == {q}
    p = plan.padding.padded
    assert (p.hidden_size, p.num_attention_heads, p.num_key_value_heads, p.intermediate_size) == (768, 12, 4, 2048)
    assert p.rms_norm_eps == pytest.approx(plan.padding.original.rms_norm_eps * 576 / 768, rel=1e-15)
    shapes = {t.name: t.shape for t in plan.tensors}
    assert shapes["blk.0.attn_q.weight"] == (768, 768) and shapes["blk.0.attn_k.weight"] == (256, 768)
    assert shapes["blk.0.ffn_down.weight"] == (768, 2048) and shapes["token_embd.weight"] == (320, 768)
    assert any(n.startswith("zero-padded (hidden 576 -> 768, query heads 9 -> 12") for n in plan.notes)


def test_padding_that_cannot_help_leaves_the_fallback(tmp_path):
    # q/k norms share the epsilon: Qwen3 widths are never padded (they fit in practice)
    cfg = tiny_config("silu", qk_norm=True, subln=False, hidden_size=320, num_attention_heads=5, num_key_value_heads=1)
    plan = plan_of(make_checkpoint(tmp_path / "q", cfg), qtype="tq2_0")
    assert plan.padding is None and {t.type for t in plan.tensors if t.name.endswith("attn_q.weight")} == {"F16"}
    assert any("no zero-padding makes every projection fit (its q/k norms" in n for n in plan.notes)


@pytest.mark.parametrize("qtype", ["i2_s", "tq2_0", "tq1_0"])
def test_smollm2_dims_fall_back_to_f16_per_tensor_without_padding(smollm_like, qtype):
    plan = plan_of(smollm_like, qtype=qtype, pad="none")
    assert plan.padding is None
    kinds = types_by_kind(plan)
    q = qtype.upper()
    # only ffn_down (input 1536 = 12 x 128 = 6 x 256) fits; everything reading the 576-wide stream does not
    assert kinds["ffn_down"] == {q}
    for k in ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up"):
        assert kinds[k] == {"F16"}, k
    multiple = 128 if q == "I2_S" else 256
    assert any("6 projection(s)" in n and f"in_features % {multiple} == 0, got 576" in n for n in plan.notes)
    fallback = next(t for t in plan.tensors if t.name == "blk.0.attn_q.weight")
    assert fallback.fallback == f"{q} needs in_features % {multiple} == 0, got 576"


def test_x86_1x4_needs_rows_in_fours(tmp_path):
    cfg = tiny_config("relu2", num_attention_heads=128, num_key_value_heads=1, head_dim=2)  # k/v have 2 rows
    ckpt = make_checkpoint(tmp_path / "ckpt", cfg)
    plan = plan_of(ckpt, qtype="i2_s", i2s_layout="x86-1x4", pad="none")
    k = next(t for t in plan.tensors if t.name == "blk.0.attn_k.weight")
    assert k.type == "F16" and k.fallback == "I2_S x86-1x4 needs out_features % 4 == 0, got 2"
    assert next(t for t in plan.tensors if t.name == "blk.0.ffn_gate.weight").type == "I2_S"
    assert next(t for t in plan_of(ckpt, qtype="i2_s").tensors if t.name == "blk.0.attn_k.weight").type == "I2_S"
    padded = plan_of(ckpt, qtype="i2_s", i2s_layout="x86-1x4")  # 2 KV heads of 2: 4 rows
    assert padded.padding.padded.num_key_value_heads == 2 and padded.padding.padded.hidden_size == 512
    assert {t.type for t in padded.tensors if t.role == "projection"} == {"I2_S"}


def test_full_precision_model_with_subln_only_as_float(tmp_path):
    cfg = tiny_config("silu", ternary=False)
    ckpt = make_checkpoint(tmp_path / "ckpt", cfg)
    with pytest.raises(ValueError, match="full precision.*--type f16 or --type f32"):
        plan_of(ckpt, qtype="i2_s")
    out = tmp_path / "m.gguf"
    pack(ckpt, out, "f32")
    src = open_source(ckpt)
    with read_gguf(out) as f:  # written as they are: no ternarization
        got = (
            np.asarray(f.tensor_data("blk.0.attn_q.weight"))
            .view("<f4")
            .reshape(src.shape("model.layers.0.self_attn.q_proj.weight"))
        )
    np.testing.assert_array_equal(got, src.tensor("model.layers.0.self_attn.q_proj.weight"))


def test_model_without_subln_is_refused(tmp_path):
    cfg = tiny_config("silu", ternary=False, subln=False)
    hf = make_hf_folder(tmp_path / "llama", cfg, "llama", random_tensors(cfg))
    with pytest.raises(ValueError, match="no SubLN"):
        plan_of(hf, qtype="f16")


def test_qwen3_with_sub_norms_is_refused(tmp_path):
    cfg = tiny_config("silu", qk_norm=True)
    ckpt = make_checkpoint(tmp_path / "ckpt", cfg)
    for qtype in ("i2_s", "tq2_0", "f16"):
        with pytest.raises(ValueError, match="both Qwen3's q/k norms and BitNet's sub-norms.*model.subln=false"):
            plan_of(ckpt, qtype=qtype)


def qwen3_config(**changes):
    """A Qwen3-shaped ternary model without sub-norms: q/k norms, heads*head_dim (512) != hidden (256)."""
    return tiny_config("silu", qk_norm=True, subln=False, head_dim=128, **changes)


def test_qwen3_without_sub_norms_is_arch_qwen3_for_llama_cpp(tmp_path):
    ckpt = make_checkpoint(tmp_path / "ckpt", qwen3_config())
    with pytest.raises(ValueError, match="I2_S is read only by bitnet.cpp, which has no qwen3 architecture"):
        plan_of(ckpt, qtype="i2_s")
    with pytest.raises(ValueError, match="--arch bitnet has no q/k norms"):
        plan_of(ckpt, qtype="tq2_0", arch="bitnet")
    out = tmp_path / "m.gguf"
    res = pack(ckpt, out, "tq2_0")
    assert res.arch == "qwen3" and not res.changes
    with read_gguf(out) as f:
        assert f.metadata["general.architecture"] == "qwen3"
        assert f.metadata["qwen3.attention.key_length"] == 128 and f.metadata["qwen3.embedding_length"] == 256
        assert f.tensors["blk.1.attn_q_norm.weight"].shape == (128,)
        assert f.tensors["blk.0.attn_q.weight"].type_name == "TQ2_0"
        assert not any("sub_norm" in n for n in f.tensors) and "output.weight" not in f.tensors
    assert verify(out, against=ckpt).ok


def test_qwen3_untied_head_is_written_as_output(tmp_path):
    ckpt = make_checkpoint(tmp_path / "ckpt", qwen3_config(tie_word_embeddings=False))
    out = tmp_path / "m.gguf"
    res = pack(ckpt, out, "tq1_0")
    assert not res.changes
    with read_gguf(out) as f:
        assert f.tensors["output.weight"].shape == (320, 256) and f.tensors["output.weight"].type_name == "F16"
    report = verify(out, against=ckpt)
    assert report.ok, report.failures


def test_bitnet_arch_needs_the_attention_width_to_equal_hidden(tmp_path):
    ckpt = make_checkpoint(tmp_path / "ckpt", tiny_config("silu", head_dim=128))
    with pytest.raises(ValueError, match="attention width num_attention_heads\\*head_dim = 512 differs"):
        plan_of(ckpt)


def test_relu2_tq_files_say_only_bitnet_cpp_runs_them(relu2_ckpt, silu_ckpt):
    note = "only bitnet.cpp runs this file: upstream llama.cpp has no architecture for a ReLU^2 FFN"
    for qtype in ("tq1_0", "tq2_0"):
        assert any(note in n for n in plan_of(relu2_ckpt, qtype=qtype).notes)
        assert not any(note in n for n in plan_of(silu_ckpt, qtype=qtype).notes)
    assert not any(note in n for n in plan_of(relu2_ckpt, qtype="i2_s").notes)


def test_attention_bias_is_refused_unless_dropped(tmp_path):
    cfg = tiny_config("relu2", attention_bias=True)
    ckpt = make_checkpoint(tmp_path / "ckpt", cfg)
    with pytest.raises(ValueError, match="attention biases.*--allow-drop-bias"):
        plan_of(ckpt)
    plan = plan_of(ckpt, allow_drop_bias=True)
    assert not any("bias" in t.name for t in plan.tensors) and plan.changes


def test_untied_head(tmp_path):
    cfg = tiny_config("relu2", tie_word_embeddings=False)
    tensors = random_tensors(cfg, seed=8)
    ckpt = make_checkpoint(tmp_path / "untied", cfg, tensors=tensors)
    with pytest.raises(ValueError, match="own output head.*--allow-untied-head"):
        plan_of(ckpt)
    plan = plan_of(ckpt, allow_untied_head=True)
    assert any("dropped lm_head" in c for c in plan.changes)
    assert not any(t.source == "lm_head.weight" for t in plan.tensors)
    # an lm_head that is a copy of the embedding is a tied model: no flag needed, nothing changed
    tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"].copy()
    same = make_checkpoint(tmp_path / "copy", cfg, tensors=tensors)
    plan = plan_of(same)
    assert not plan.changes and any("equals the embedding" in n for n in plan.notes)


def test_missing_tokenizer_is_refused_and_can_be_supplied(tmp_path, relu2_ckpt):
    cfg = tiny_config("relu2")
    ckpt = make_checkpoint(tmp_path / "ckpt", cfg, tokenizer_kind=None)
    with pytest.raises(ValueError, match="no tokenizer files.*--tokenizer DIR"):
        plan_of(ckpt)
    plan = plan_of(ckpt, tokenizer=relu2_ckpt)
    assert len(plan.vocab.tokens) == cfg.vocab_size


def test_vocab_is_padded_to_the_model(tmp_path):
    cfg = tiny_config("relu2", vocab_size=384)  # tokenizer has 320
    plan = plan_of(make_checkpoint(tmp_path / "ckpt", cfg))
    assert len(plan.vocab.tokens) == 384 and plan.vocab.tokens[383] == "[PAD383]"
    assert any("padded with 64 [PAD] tokens" in n for n in plan.notes)


def test_tokenizer_bigger_than_the_model_is_refused(tmp_path):
    cfg = tiny_config("relu2", vocab_size=256)
    with pytest.raises(ValueError, match="only 256 embedding rows"):
        plan_of(make_checkpoint(tmp_path / "ckpt", cfg))


def test_lrc_models_are_refused(tmp_path):
    ckpt = make_checkpoint(tmp_path / "ckpt", tiny_config("relu2", lrc_rank_ratio=0.1))
    with pytest.raises(ValueError, match="low-rank correction"):
        plan_of(ckpt)
