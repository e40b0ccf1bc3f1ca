"""export -> load: the loaded model computes what the file holds, in the runtime's numerics.

I2_S with an F32 embedding gives bit-identical logits to the source model in "i2s" numerics
(bitnet.cpp's per-token int8 formula); an F16 embedding gives those of the source with its
embedding rounded to float16; F32 projections those of "float" numerics; TQ those of the
source in llama.cpp's numerics ("tq": Q8_K activations, float16 block scales).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import bitk.formats as fmt
from bitk.gguf import export, load, load_tokenizer, pack, read_gguf
from bitk.models import CausalLM
from bitk.nn import BitLinear
from bitk.nn import cpu as cpu_path
from bitk.nn.packed import PackedBitLinear, unpack_ternary_gemm
from bitk_gguf_testing import make_checkpoint, text_ids, tiny_config, tokenizer

PROJ = "model.layers.1.mlp.up_proj"


def make_model(act: str, seed: int = 0, **changes) -> CausalLM:
    torch.manual_seed(seed)
    model = CausalLM(tiny_config(act, **changes))
    with torch.no_grad():  # gains other than 1, so a dropped or misplaced norm shows
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.2 * torch.randn_like(p))
    return model.eval()


@torch.no_grad()
def logits(model: CausalLM) -> torch.Tensor:
    return model(torch.tensor([text_ids()])).logits


@pytest.mark.parametrize("act", ["relu2", "silu"])
def test_i2s_with_f32_embedding_gives_identical_logits(tmp_path, act):
    model = make_model(act)
    export(model, tmp_path / "m.gguf", "i2_s", tokenizer=tokenizer(), embedding_type="f32")
    loaded = load(tmp_path / "m.gguf")
    assert loaded.config.hidden_act == act and loaded.config.ternary and loaded.config.subln
    assert loaded.config.rms_norm_eps == model.config.rms_norm_eps  # 1e-5 survives float32 storage
    assert {m.numerics for m in loaded.modules() if hasattr(m, "numerics")} == {"i2s"}
    model.set_numerics("i2s")
    assert torch.equal(logits(loaded), logits(model))
    model.set_numerics("train")
    assert not torch.equal(logits(loaded), logits(model))  # the numerics matter: the test can fail


def test_i2s_with_f16_embedding_matches_the_f16_rounded_embedding(tmp_path):
    model = make_model("relu2", seed=1)
    export(model, tmp_path / "m.gguf", "i2_s", tokenizer=tokenizer())
    loaded = load(tmp_path / "m.gguf")
    with torch.no_grad():
        model.model.embed_tokens.weight.copy_(model.model.embed_tokens.weight.half().float())
    model.set_numerics("i2s")
    assert torch.equal(logits(loaded), logits(model))


def test_f32_projections_give_float_numerics(tmp_path):
    model = make_model("silu", seed=2)
    export(model, tmp_path / "m.gguf", "f32", tokenizer=tokenizer(), embedding_type="f32")
    loaded = load(tmp_path / "m.gguf")
    assert loaded.config.ternary and {m.numerics for m in loaded.modules() if hasattr(m, "numerics")} == {"float"}
    model.set_numerics("float")
    assert torch.equal(logits(loaded), logits(model))


@pytest.mark.parametrize("qtype", ["tq1_0", "tq2_0"])
def test_tq_loads_in_llama_cpp_numerics(tmp_path, qtype):
    model = make_model("relu2", seed=3)
    export(model, tmp_path / "m.gguf", qtype, tokenizer=tokenizer(), embedding_type="f32")
    loaded = load(tmp_path / "m.gguf")
    assert {m.numerics for m in loaded.modules() if hasattr(m, "numerics")} == {"tq"}
    model.set_numerics("tq")  # Q8_K activations, float16 block scales
    assert torch.equal(logits(loaded), logits(model))
    model.set_numerics("i2s")
    assert not torch.equal(logits(loaded), logits(model))


def test_fallback_tensors_get_f16_numerics(tmp_path):
    # hidden 192 fits no I2_S row; ffn_down (input 256) does
    model = make_model("silu", seed=4, hidden_size=192, num_attention_heads=3, num_key_value_heads=1)
    res = export(model, tmp_path / "m.gguf", "i2_s", tokenizer=tokenizer(), pad="none")
    assert {r.type for r in res.rows if "ffn_down" in r.name} == {"I2_S"}
    loaded = load(tmp_path / "m.gguf")
    numerics = {n: m.numerics for n, m in loaded.named_modules() if hasattr(m, "numerics")}
    assert numerics["model.layers.0.mlp.down_proj"] == "i2s" and numerics["model.layers.0.mlp.up_proj"] == "f16"
    w = model.model.layers[0].mlp.up_proj.weight.detach().numpy()
    codes, scale = fmt.ternarize(w)
    got_codes, got_scale = fmt.ternarize(loaded.model.layers[0].mlp.up_proj.weight.detach().numpy())
    np.testing.assert_array_equal(got_codes, codes)
    assert got_scale == float(np.float32(np.float16(scale)))  # F16 stores codes x float16(scale)


def test_full_precision_subln_model_round_trips(tmp_path):
    model = make_model("silu", seed=5, ternary=False)
    export(model, tmp_path / "m.gguf", "f32", tokenizer=tokenizer(), embedding_type="f32")
    loaded = load(tmp_path / "m.gguf")
    assert not loaded.config.ternary
    assert torch.equal(logits(loaded), logits(model))
    with pytest.raises(ValueError, match="full precision"):
        export(model, tmp_path / "t.gguf", "i2_s", tokenizer=tokenizer())


def test_tokenizer_comes_back(tmp_path):
    model = make_model("relu2")
    export(model, tmp_path / "m.gguf", "i2_s", tokenizer=tokenizer())
    loaded = load(tmp_path / "m.gguf", tokenizer_dir=tmp_path / "tok")
    assert loaded.tokenizer_dir == tmp_path / "tok" and (tmp_path / "tok" / "tokenizer.json").is_file()
    from tokenizers import Tokenizer

    again = Tokenizer.from_file(str(tmp_path / "tok" / "tokenizer.json"))
    text = "class Foo:\n    pass  # 12 <|endoftext|>"
    assert (
        again.encode(text).ids == tokenizer().encode(text).ids == load_tokenizer(tmp_path / "m.gguf").encode(text).ids
    )
    assert loaded.config.bos_token_id == 0 and loaded.config.pad_token_id == 1


def test_export_of_a_folder_packs_it(tmp_path, relu2_ckpt):
    res = export(relu2_ckpt, tmp_path / "m.gguf", "tq1_0")
    assert res.qtype == "TQ1_0" and res.path.is_file()
    with pytest.raises(ValueError, match="CausalLM or a model folder"):
        export(object(), tmp_path / "x.gguf")


def test_tq_blocks_with_different_scales_cannot_be_loaded(tmp_path, relu2_ckpt):
    path = pack(relu2_ckpt, tmp_path / "m.gguf", "tq2_0").path
    with read_gguf(path) as f:
        t = f.tensors["blk.0.attn_q.weight"]
        start = f.data_offset + t.offset
    with open(path, "r+b") as fh:
        fh.seek(start + 64)  # block 0's float16 scale
        fh.write(np.float16(0.25).tobytes())
    with pytest.raises(ValueError, match="blocks with different scales"):
        load(path)


def test_non_bitnet_file_is_refused(tmp_path):
    from gguf import GGUFWriter

    w = GGUFWriter(tmp_path / "l.gguf", "llama")
    w.add_uint32("llama.block_count", 1)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ValueError, match="not an arch bitk writes"):
        load(tmp_path / "l.gguf")


def test_checkpoint_written_by_the_model_helper_packs_like_ours(tmp_path):
    """model.save (bitk.models) and the test builder write the same checkpoint format."""
    model = make_model("relu2", seed=6)
    saved = model.save(tmp_path / "saved", tokenizer=tokenizer())
    tensors = {k: v.detach().numpy().copy() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    ours = make_checkpoint(tmp_path / "ours", model.config, tensors=tensors)
    a = pack(saved, tmp_path / "a.gguf", "i2_s", name="x").path.read_bytes()
    b = pack(ours, tmp_path / "b.gguf", "i2_s", name="x").path.read_bytes()
    assert a == b


def test_bitk_default_tokenizer_and_tiny_preset(tmp_path):
    from bitk.data import default_tokenizer
    from bitk.models import preset

    torch.manual_seed(7)
    model = CausalLM(preset("tiny", num_hidden_layers=1))
    tok = default_tokenizer()
    res = export(model, tmp_path / "m.gguf", "i2_s", tokenizer=tok, embedding_type="f32")
    assert not res.notes and {r.type for r in res.rows if "blk" in r.name and "norm" not in r.name} == {"I2_S"}
    with read_gguf(res.path) as f:
        assert f.metadata["tokenizer.ggml.pre"] == "gpt-2" and f.metadata["tokenizer.ggml.eos_token_id"] == 0
        assert f.metadata["tokenizer.ggml.add_bos_token"] is False
    text = "import os\nprint(os.getcwd())  # 2024"
    assert load_tokenizer(res.path).encode(text).ids == tok.encode(text).ids
    loaded = load(res.path)
    model.set_numerics("i2s")
    ids = torch.tensor([tok.encode(text).ids])
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)


def test_qwen3_tq_file_loads_with_its_q_k_norms(tmp_path):
    model = make_model("silu", seed=8, qk_norm=True, subln=False, head_dim=128, tie_word_embeddings=False)
    res = export(model, tmp_path / "m.gguf", "tq2_0", tokenizer=tokenizer(), embedding_type="f32")
    assert res.arch == "qwen3"
    loaded = load(tmp_path / "m.gguf")
    c = loaded.config
    assert c.qk_norm and not c.subln and not c.tie_word_embeddings and c.head_dim == 128
    assert {m.numerics for m in loaded.modules() if hasattr(m, "numerics")} == {"tq"}
    model.set_numerics("tq")
    assert torch.equal(logits(loaded), logits(model))


# --------------------------------------------------------------------------- 2-bit packed I2_S projections

needs_cpp = pytest.mark.skipif(
    cpu_path.matmul_engine() != "cpp", reason="I2_S projections load 2-bit packed with bitk's C++ kernels only"
)


def load_both(path, monkeypatch) -> tuple[CausalLM, CausalLM]:
    """(the model `load` builds, the same built of float32 latent weights: load without bitk's kernels)."""
    loaded = load(path)
    with monkeypatch.context() as m:
        m.setenv("BITK_CPU_MATMUL", "int_mm")  # read by load only; the forwards below run in bitk's kernels
        latent = load(path)
    return loaded, latent


def packed_layers(model: CausalLM) -> dict[str, PackedBitLinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, PackedBitLinear)}


def assert_same_state(model: CausalLM, other: CausalLM) -> None:
    got, want = model.state_dict(), other.state_dict()
    assert list(got) == list(want)
    for name, t in want.items():
        assert got[name].dtype == t.dtype and torch.equal(got[name], t), name


@needs_cpp
@pytest.mark.parametrize("act,i2s_layout", [("relu2", "x86"), ("silu", "x86"), ("relu2", "x86-1x4"), ("silu", "arm")])
def test_i2s_projections_hold_only_their_2_bit_weights(tmp_path, monkeypatch, act, i2s_layout):
    """The x86 layout's bytes are kept as the file holds them; the other layouts' codes repacked."""
    model = make_model(act, seed=9)
    export(model, tmp_path / "m.gguf", "i2_s", tokenizer=tokenizer(), embedding_type="f32", i2s_layout=i2s_layout)
    loaded, latent = load_both(tmp_path / "m.gguf", monkeypatch)
    projections = {n for n, m in loaded.named_modules() if isinstance(m, BitLinear)}
    assert projections and set(packed_layers(loaded)) == projections and not packed_layers(latent)
    codecs = cpu_path._codecs()
    with read_gguf(tmp_path / "m.gguf") as f:
        stored = {n: np.array(f.tensor_data(n)) for n in f.tensors}
    for name, m in packed_layers(loaded).items():
        weight = m._parameters["weight"]  # not m.weight: reading that gives (and builds) the latent weights
        assert weight.shape == (m.out_features, m.in_features) and weight.dtype == torch.float32, name
        assert weight.untyped_storage().nbytes() == 4 and m.bias is None, name  # no float32 values
        assert not hasattr(m, "_bitk_frozen"), name  # no int8 codes either
        want = latent.get_submodule(name).weight
        codes, gamma = fmt.ternarize(want.detach().numpy())
        assert m.gamma.dtype == torch.float32 and m.gamma.item() == gamma, name
        if i2s_layout == "x86":  # the file's bytes, tail and all
            assert m.layout == "i2s" and m.packed.nbytes == weight.numel() // 4 + 32, name
            [gguf_name] = [n for n, t in stored.items() if t.nbytes == m.packed.nbytes and np.array_equal(t, m.packed)]
            assert gguf_name.endswith(".weight"), name
            np.testing.assert_array_equal(fmt.unpack_i2s(m.packed, tuple(weight.shape))[0], codes)
        else:
            assert m.layout == "panels", name
            assert m.packed.nbytes == codecs.ternary_gemm_packed_size(m.out_features, m.in_features), name
            np.testing.assert_array_equal(unpack_ternary_gemm(m.packed, m.out_features, m.in_features), codes)
    assert torch.equal(logits(loaded), logits(latent))
    model.set_numerics("i2s")
    assert torch.equal(logits(loaded), logits(model))
    assert set(packed_layers(loaded)) == projections  # the forward needed nothing else
    loaded.to("cpu").float().eval().requires_grad_(False)  # no conversion: still packed
    assert set(packed_layers(loaded)) == projections


def _reexport(model: CausalLM, path) -> bytes:
    return export(model, path, "i2_s", tokenizer=tokenizer(), embedding_type="f32").path.read_bytes()


# What needs a packed layer's float weights; each gives both models the same treatment.
NEEDS_WEIGHTS = {
    "state_dict": lambda model: model.state_dict(),
    "weight": lambda model: model.get_submodule(PROJ).weight,
    "numerics tq": lambda model: model.set_numerics("tq"),
    "numerics float": lambda model: model.set_numerics("float"),
    "numerics f16": lambda model: model.set_numerics("f16"),
    "to bfloat16": lambda model: model.to(torch.bfloat16),
}


@needs_cpp
@pytest.mark.parametrize("how", list(NEEDS_WEIGHTS))
def test_packed_projections_give_the_latent_weights_when_needed(tmp_path, monkeypatch, how):
    model = make_model("relu2", seed=10)
    export(model, tmp_path / "m.gguf", "i2_s", tokenizer=tokenizer(), embedding_type="f32")
    loaded, latent = load_both(tmp_path / "m.gguf", monkeypatch)
    NEEDS_WEIGHTS[how](loaded)
    NEEDS_WEIGHTS[how](latent)
    assert torch.equal(logits(loaded), logits(latent))
    left = set(packed_layers(loaded))
    assert left == (set(packed_layers(load(tmp_path / "m.gguf"))) - {PROJ} if how == "weight" else set())
    assert_same_state(loaded, latent)
    assert not packed_layers(loaded)
    loaded.set_numerics("i2s")
    latent.set_numerics("i2s")
    assert torch.equal(logits(loaded), logits(latent))


@needs_cpp
def test_packed_projections_train_export_and_load_state_as_latent_ones(tmp_path, monkeypatch):
    model = make_model("silu", seed=11)
    path = export(model, tmp_path / "m.gguf", "i2_s", tokenizer=tokenizer(), embedding_type="f32").path
    loaded, latent = load_both(path, monkeypatch)
    assert _reexport(loaded, tmp_path / "a.gguf") == _reexport(latent, tmp_path / "b.gguf") == path.read_bytes()
    loaded, latent = load_both(path, monkeypatch)
    ids = torch.tensor([text_ids()])
    for m in (loaded, latent):  # training: the optimizer's Parameters get the latent weights in place
        params = dict(m.named_parameters())
        m.set_numerics("train").train()
        m(ids).logits.float().square().mean().backward()
        assert all(p is params[name] for name, p in m.named_parameters())
    for (name, p), q in zip(loaded.named_parameters(), latent.parameters()):
        assert torch.equal(p, q) and torch.equal(p.grad, q.grad), name
    loaded, latent = load_both(path, monkeypatch)
    with monkeypatch.context() as m:  # another matmul engine than bitk's kernels
        m.setenv("BITK_CPU_MATMUL", "float")
        assert torch.equal(logits(loaded), logits(latent)) and not packed_layers(loaded)
    loaded = load(path)
    loaded.load_state_dict(make_model("silu", seed=12).state_dict())
    assert not packed_layers(loaded)
    assert_same_state(loaded, make_model("silu", seed=12))


@needs_cpp
def test_all_zero_i2s_projection_packs_with_the_absmean_floor(tmp_path, monkeypatch):
    model = make_model("relu2", seed=13)
    with torch.no_grad():
        model.get_submodule(PROJ).weight.zero_()
    export(model, tmp_path / "m.gguf", "i2_s", tokenizer=tokenizer(), embedding_type="f32")
    loaded, latent = load_both(tmp_path / "m.gguf", monkeypatch)
    assert loaded.get_submodule(PROJ).gamma.item() == np.float32(1e-5)  # gamma of all-zero latent weights
    assert torch.equal(logits(loaded), logits(latent))
    assert_same_state(loaded, latent)


@needs_cpp
@pytest.mark.parametrize(
    "where,data,error",
    [(3, b"\xff", "hold the 2-bit value 3"), (-32, np.float32(np.inf).tobytes(), "scale must be finite")],
)
def test_broken_i2s_bytes_are_refused_at_load(tmp_path, relu2_ckpt, where, data, error):
    """The bytes a packed layer would multiply as they are: checked when the file is loaded."""
    path = pack(relu2_ckpt, tmp_path / "m.gguf", "i2_s").path
    with read_gguf(path) as f:
        t = f.tensors["blk.0.ffn_up.weight"]
        start = f.data_offset + t.offset + (where if where >= 0 else t.nbytes + where)
    with open(path, "r+b") as fh:
        fh.seek(start)
        fh.write(data)
    with pytest.raises(ValueError, match=rf"blk\.0\.ffn_up\.weight: .*{error}"):
        load(path)


def test_without_bitk_kernels_i2s_projections_hold_latent_weights(tmp_path, monkeypatch):
    model = make_model("relu2", seed=14)
    export(model, tmp_path / "m.gguf", "i2_s", tokenizer=tokenizer(), embedding_type="f32")
    monkeypatch.setenv("BITK_CPU_MATMUL", "float")
    loaded = load(tmp_path / "m.gguf")
    assert not packed_layers(loaded)
    weight = loaded.get_submodule(PROJ).weight
    assert weight.untyped_storage().nbytes() == 4 * weight.numel()
    model.set_numerics("i2s")
    assert torch.equal(logits(loaded), logits(model))


@needs_cpp
def test_i2s_projections_of_a_full_precision_model_load_as_their_values(tmp_path, monkeypatch):
    """Where the other projections are not ternary, the model is full precision: nothing is packed."""
    import bitk.gguf.model as gguf_model

    model = make_model("silu", seed=4, hidden_size=192, num_attention_heads=3, num_key_value_heads=1)
    res = export(model, tmp_path / "m.gguf", "i2_s", tokenizer=tokenizer(), pad="none")
    assert {r.type for r in res.rows if "ffn_down" in r.name} == {"I2_S"}
    monkeypatch.setattr(gguf_model, "_one_scale", lambda values: None)  # the F16 fallbacks count as full precision
    loaded, latent = load_both(tmp_path / "m.gguf", monkeypatch)
    assert not loaded.config.ternary and not packed_layers(loaded)
    assert_same_state(loaded, latent)
    assert torch.equal(logits(loaded), logits(latent))
