"""pack(): every type for both archs, read back by gguf-py (TQ, F16, F32) and bitk's reader (I2_S).

What is in the file must be the model's own ternarization (bitk.formats.ternarize of the latent
weights, docs/numerics.md): TQ tensors dequantize to codes x scale with the scale rounded to float16
(the type's block scale), I2_S holds the codes and the float32 scale exactly, F16/F32 projections
the dequantized ternary weights, norms F32 and the embedding F16/F32 as stored.
"""

from __future__ import annotations

import json
import struct

import gguf
import numpy as np
import pytest
from gguf import quants as gq

import bitk.formats as fmt
from bitk.gguf import pack, read_gguf
from bitk.gguf.constants import hf_to_gguf_names
from bitk.models.sources import open_source
from bitk_gguf_testing import (
    make_checkpoint,
    random_tensors,
    tiny_config,
)

QTYPES = ("i2_s", "tq1_0", "tq2_0", "f16", "f32")
ARCH = {"relu2": "bitnet-b1.58", "silu": "bitnet"}
FILE_TYPE = {"i2_s": 40, "tq1_0": 36, "tq2_0": 37, "f16": 1, "f32": 0}


def expected_values(src, hf: str, gguf_type: str) -> np.ndarray:
    """What the file must decode to for source tensor `hf` stored as `gguf_type`."""
    if src.is_projection(hf):
        codes, scale = fmt.ternarize(src.tensor(hf))
        s = np.float32(np.float16(scale)) if gguf_type.startswith("TQ") else np.float32(scale)
        values = codes.astype(np.float32) * s
    else:
        values = src.tensor(hf)
    return values.astype(np.float16).astype(np.float32) if gguf_type == "F16" else values


@pytest.mark.parametrize("act", ["relu2", "silu"])
@pytest.mark.parametrize("qtype", QTYPES)
def test_every_type_reads_back_as_the_ternarized_model(tmp_path, relu2_ckpt, silu_ckpt, act, qtype):
    ckpt = relu2_ckpt if act == "relu2" else silu_ckpt
    out = tmp_path / "m.gguf"
    res = pack(ckpt, out, qtype)
    assert res.arch == ARCH[act] and out.is_file() and res.file_bytes == out.stat().st_size
    src = open_source(ckpt)
    names = hf_to_gguf_names(src.config.num_hidden_layers)
    with read_gguf(out) as f:
        assert f.metadata["general.architecture"] == ARCH[act]
        assert f.metadata["general.file_type"] == FILE_TYPE[qtype]
        assert f.metadata["general.alignment"] == 32 and f.data_offset % 32 == 0
        assert list(f.tensors) == list(names.values())
        types = {n: t.type_name for n, t in f.tensors.items()}
    want_proj = qtype.upper()
    for hf, gg in names.items():
        role = "embedding" if gg == "token_embd.weight" else "projection" if src.is_projection(hf) else "norm"
        assert types[gg] == {"embedding": "F16", "norm": "F32", "projection": want_proj}[role], gg

    if qtype == "i2_s":  # gguf-py cannot read type 36: bitk's reader
        with read_gguf(out) as f:
            for hf, gg in names.items():
                if types[gg] != "I2_S":
                    continue
                codes, scale = fmt.unpack_i2s(f.tensor_data(gg), f.tensors[gg].shape)
                want_codes, want_scale = fmt.ternarize(src.tensor(hf))
                np.testing.assert_array_equal(codes, want_codes)
                assert np.float32(scale) == np.float32(want_scale)
        return
    reader = gguf.GGUFReader(out)
    assert reader.fields["general.architecture"].contents() == ARCH[act]
    by_name = {t.name: t for t in reader.tensors}
    for hf, gg in names.items():
        t = by_name[gg]
        got = np.asarray(gq.dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(src.shape(hf))
        want = expected_values(src, hf, t.tensor_type.name)
        np.testing.assert_array_equal(got, want, err_msg=gg)


@pytest.mark.parametrize("layout", ["x86", "arm", "x86-1x4"])
def test_i2s_layouts_are_recorded_and_decode(tmp_path, relu2_ckpt, layout):
    out = tmp_path / "m.gguf"
    pack(relu2_ckpt, out, "i2_s", i2s_layout=layout)
    src = open_source(relu2_ckpt)
    hf = "model.layers.1.mlp.down_proj.weight"
    with read_gguf(out) as f:
        assert f.metadata["bitk.i2s_layout"] == layout
        data = np.array(f.tensor_data("blk.1.ffn_down.weight"))
    codes, scale = fmt.ternarize(src.tensor(hf))
    np.testing.assert_array_equal(data, fmt.pack_i2s(codes, scale, layout))
    got, _ = fmt.unpack_i2s(data, codes.shape, layout)
    np.testing.assert_array_equal(got, codes)


def test_tq_is_never_per_block_absmax_of_latent_weights(tmp_path, relu2_ckpt):
    """The "TQ2_0 gives garbage" bug: gguf's quantizer fed latent weights keeps ~13% non-zeros."""
    out = tmp_path / "m.gguf"
    pack(relu2_ckpt, out, "tq2_0")
    src = open_source(relu2_ckpt)
    latent = src.tensor("model.layers.0.mlp.gate_proj.weight")
    t = next(t for t in gguf.GGUFReader(out).tensors if t.name == "blk.0.ffn_gate.weight")
    ours = gq.dequantize(t.data, t.tensor_type).reshape(latent.shape)
    naive = gq.dequantize(gq.quantize(latent, gguf.GGMLQuantizationType.TQ2_0), gguf.GGMLQuantizationType.TQ2_0)
    codes, _ = fmt.ternarize(latent)
    assert np.count_nonzero(ours) == np.count_nonzero(codes)
    assert np.count_nonzero(ours) / ours.size > 0.6  # absmean keeps ~69% non-zeros
    assert np.count_nonzero(naive) / naive.size < 0.3  # per-block absmax of latent weights: ~13%


def test_metadata_keys(tmp_path, relu2_ckpt):
    out = tmp_path / "m.gguf"
    pack(relu2_ckpt, out, "i2_s", name="tiny")
    c = open_source(relu2_ckpt).config
    a = "bitnet-b1.58"
    with read_gguf(out) as f:
        m = f.metadata
        expected = {
            f"{a}.context_length": c.max_position_embeddings,
            f"{a}.embedding_length": c.hidden_size,
            f"{a}.block_count": c.num_hidden_layers,
            f"{a}.feed_forward_length": c.intermediate_size,
            f"{a}.attention.head_count": c.num_attention_heads,
            f"{a}.attention.head_count_kv": c.num_key_value_heads,
            f"{a}.rope.dimension_count": c.head_dim,
            f"{a}.vocab_size": c.vocab_size,
            "general.name": "tiny",
            "bitk.i2s_layout": "x86",
            "tokenizer.ggml.model": "gpt2",
            "tokenizer.ggml.pre": "gpt-2",
            "general.quantization_version": 2,
        }
        for key, value in expected.items():
            assert m[key] == value, key
        assert m[f"{a}.attention.layer_norm_rms_epsilon"] == np.float32(c.rms_norm_eps)
        assert m[f"{a}.rope.freq_base"] == np.float32(c.rope_theta)
        assert f"{a}.attention.key_length" not in m  # head_dim == hidden / heads
        assert m["general.quantized_by"].startswith("bitk ") and m["bitk.version"]
        assert len(m["tokenizer.ggml.tokens"]) == c.vocab_size == len(m["tokenizer.ggml.token_type"])
        assert m["tokenizer.ggml.bos_token_id"] == 0 and m["tokenizer.ggml.padding_token_id"] == 1
        assert "bitk.changes" not in m


def test_head_dim_other_than_hidden_over_heads_writes_key_length(tmp_path):
    cfg = tiny_config("silu", head_dim=128, qk_norm=True, subln=False)  # Qwen3: q_size 512 != hidden 256
    ckpt = make_checkpoint(tmp_path / "ckpt", cfg, seed=3)
    out = tmp_path / "m.gguf"
    pack(ckpt, out, "tq2_0")
    with read_gguf(out) as f:
        m = f.metadata
        assert m["qwen3.attention.key_length"] == m["qwen3.attention.value_length"] == 128
        assert m["qwen3.rope.dimension_count"] == 128
        assert f.tensors["blk.0.attn_q.weight"].ne == (256, 512)  # ggml {in, out}
        assert f.tensors["blk.0.attn_output.weight"].ne == (512, 256)
        assert f.tensors["blk.0.attn_k_norm.weight"].ne == (128,)


def test_bf16_source_is_ternarized_from_its_decoded_values(tmp_path):
    cfg = tiny_config("silu")
    tensors = random_tensors(cfg, seed=4)
    ckpt = make_checkpoint(tmp_path / "ckpt", cfg, tensors=tensors, bf16=True)
    out = tmp_path / "m.gguf"
    pack(ckpt, out, "i2_s", embedding_type="f32")
    src = open_source(ckpt)
    w = src.tensor("model.layers.0.self_attn.q_proj.weight")
    assert not np.array_equal(w, tensors["model.layers.0.self_attn.q_proj.weight"])  # really bf16
    with read_gguf(out) as f:
        codes, scale = fmt.unpack_i2s(f.tensor_data("blk.0.attn_q.weight"), w.shape)
        emb = np.asarray(f.tensor_data("token_embd.weight")).view("<f4").reshape(cfg.vocab_size, cfg.hidden_size)
    want_codes, want_scale = fmt.ternarize(w)
    np.testing.assert_array_equal(codes, want_codes)
    assert np.float32(scale) == np.float32(want_scale)
    np.testing.assert_array_equal(emb, src.tensor("model.embed_tokens.weight"))


def _corrupt(ckpt_dir, name, value, tmp_path):
    cfg = tiny_config("relu2")
    tensors = random_tensors(cfg, seed=5)
    tensors[name] = tensors[name].copy()
    tensors[name].flat[7] = value
    return make_checkpoint(tmp_path / ckpt_dir, cfg, tensors=tensors)


@pytest.mark.parametrize(
    "name",
    ["model.layers.1.mlp.down_proj.weight", "model.layers.0.input_layernorm.weight", "model.embed_tokens.weight"],
)
@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_weights_are_refused_and_nothing_is_written(tmp_path, name, value):
    ckpt = _corrupt("bad", name, value, tmp_path)
    out = tmp_path / "m.gguf"
    with pytest.raises(ValueError, match=name.replace(".", r"\.")):
        pack(ckpt, out, "i2_s")
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad"]  # no temporary file left behind


def test_failure_leaves_an_existing_output_untouched(tmp_path, relu2_ckpt):
    out = tmp_path / "m.gguf"
    out.write_bytes(b"old contents")
    ckpt = _corrupt("bad", "model.layers.1.mlp.down_proj.weight", np.nan, tmp_path)  # fails on the last tensors
    with pytest.raises(ValueError, match="NaN"):
        pack(ckpt, out, "tq2_0")
    assert out.read_bytes() == b"old contents"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad", "m.gguf"]


def test_interrupt_mid_write_leaves_no_partial_file(tmp_path, relu2_ckpt):
    out = tmp_path / "m.gguf"
    out.write_bytes(b"old")
    seen = []

    def interrupt(i, n, row):
        seen.append(row.name)
        if i == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pack(relu2_ckpt, out, "i2_s", on_tensor=interrupt)
    assert len(seen) == 6
    assert out.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["m.gguf"]


def test_embedding_that_overflows_float16_is_refused_unless_f32(tmp_path):
    ckpt = _corrupt("big", "model.embed_tokens.weight", 1e6, tmp_path)
    with pytest.raises(ValueError, match="overflows float16.*embedding-type f32"):
        pack(ckpt, tmp_path / "m.gguf", "i2_s")
    res = pack(ckpt, tmp_path / "m.gguf", "i2_s", embedding_type="f32")
    assert res.rows[0].name == "token_embd.weight" and res.rows[0].type == "F32"


def test_summary_rows_account_for_every_byte(tmp_path, relu2_ckpt):
    res = pack(relu2_ckpt, tmp_path / "m.gguf", "i2_s")
    with read_gguf(res.path) as f:
        assert [(r.name, r.nbytes) for r in res.rows] == [(t.name, t.nbytes) for t in f.tensors.values()]
        last = list(f.tensors.values())[-1]
        assert f.data_offset + last.offset + last.nbytes == res.path.stat().st_size  # I2_S tail present at the end
    i2s = [r for r in res.rows if r.type == "I2_S"]
    assert all(2.0 < r.bits_per_weight < 2.01 for r in i2s)
    assert res.n_params == sum(int(np.prod(r.shape)) for r in res.rows)


def test_unknown_options_and_bad_choices_are_value_errors(tmp_path, relu2_ckpt):
    with pytest.raises(ValueError, match="unknown pack option"):
        pack(relu2_ckpt, tmp_path / "m.gguf", "i2_s", layout="x86")
    with pytest.raises(ValueError, match="unknown --type"):
        pack(relu2_ckpt, tmp_path / "m.gguf", "q4_0")
    with pytest.raises(ValueError, match="--i2s-layout"):
        pack(relu2_ckpt, tmp_path / "m.gguf", "i2_s", i2s_layout="avx")
    with pytest.raises(ValueError, match="no such folder"):
        pack(relu2_ckpt, tmp_path / "nope" / "m.gguf", "i2_s")
    assert not any(tmp_path.iterdir())


def test_checkpoint_extra_keys_are_ignored(tmp_path, relu2_ckpt):
    meta = json.loads((relu2_ckpt / "bitk.json").read_text())
    assert "trainer" in meta  # the fixture writes a key a reader must ignore
    assert pack(relu2_ckpt, tmp_path / "m.gguf", "f16").rows


@pytest.mark.parametrize(
    "values",
    [
        ["<|endoftext|>", "Ġthe", "é€", "", "x" * 300],
        [""],
        [0, 1, -2, 2**31 - 1, -(2**31)],
        [2**31],
        [0.5, -1.25, 1e-5, 3.4e38, float("nan")],
        [1e39],
        [1 / 3, 0.1],
        [True, False],
        [[1, 2], [3]],
        ["a", 1],
    ],
)
def test_bulk_array_packing_matches_gguf_byte_for_byte(values):
    from gguf import GGUFValueType, GGUFWriter

    from bitk.gguf.writer import _writer_class

    def packed(writer):
        try:
            return writer._pack_val(values, GGUFValueType.ARRAY, True)
        except (ValueError, OverflowError, struct.error) as exc:
            return type(exc)

    assert packed(_writer_class()(None, "x")) == packed(GGUFWriter(None, "x"))


def test_sentencepiece_vocabulary_end_to_end(tmp_path):
    from bitk_gguf_testing import tokenizer as test_tokenizer

    n = test_tokenizer("spm").get_vocab_size()
    cfg = tiny_config("relu2", vocab_size=n, bos_token_id=1, eos_token_id=2, pad_token_id=None)
    ckpt = make_checkpoint(tmp_path / "ckpt", cfg, tokenizer_kind="spm")
    out = pack(ckpt, tmp_path / "m.gguf", "tq2_0").path
    r = gguf.GGUFReader(out)
    assert r.fields["tokenizer.ggml.model"].contents() == "llama"
    assert "tokenizer.ggml.pre" not in r.fields and "tokenizer.ggml.merges" not in r.fields
    assert r.fields["tokenizer.ggml.add_space_prefix"].contents() is True
    tokens, types = r.fields["tokenizer.ggml.tokens"].contents(), r.fields["tokenizer.ggml.token_type"].contents()
    scores = r.fields["tokenizer.ggml.scores"].contents()
    assert len(tokens) == len(types) == len(scores) == n
    assert tokens[3:259] == [f"<0x{b:02X}>" for b in range(256)] and set(types[3:259]) == {6}
    assert r.fields["tokenizer.ggml.bos_token_id"].contents() == 1
    assert r.fields["tokenizer.ggml.unknown_token_id"].contents() == 0


def test_wrong_shapes_and_missing_files_are_refused(tmp_path):
    cfg = tiny_config("relu2")
    tensors = random_tensors(cfg)
    tensors["model.layers.0.self_attn.k_proj.weight"] = tensors["model.layers.0.self_attn.k_proj.weight"][:64]
    bad = make_checkpoint(tmp_path / "shape", cfg, tensors=tensors)
    with pytest.raises(ValueError, match=r"k_proj.weight has shape \[64, 256\], the config needs \[128, 256\]"):
        pack(bad, tmp_path / "m.gguf")
    gone = make_checkpoint(tmp_path / "gone", cfg)
    (gone / "model.safetensors").unlink()
    with pytest.raises(ValueError, match="no .safetensors weights"):
        pack(gone, tmp_path / "m.gguf")
    assert not (tmp_path / "m.gguf").exists()
