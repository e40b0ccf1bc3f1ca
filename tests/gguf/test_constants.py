"""The tensor-name map is a bijection between bitk's (Hugging Face) names and formats.md's GGUF names."""

from __future__ import annotations

from bitk.gguf.constants import gguf_to_hf_name, hf_to_gguf_names
from bitk.models.config import ModelConfig
from bitk.models.sources import tensor_shapes


def test_names_round_trip_and_cover_the_model():
    names = hf_to_gguf_names(12)
    assert len(set(names.values())) == len(names) == 2 + 12 * 11
    assert all(gguf_to_hf_name(gg) == hf for hf, gg in names.items())
    # exactly the tensors of a tied SubLN model, nothing more
    config = ModelConfig(num_hidden_layers=12, subln=True, tie_word_embeddings=True)
    assert set(names) == set(tensor_shapes(config))
    assert names["model.layers.11.self_attn.attn_sub_norm.weight"] == "blk.11.attn_sub_norm.weight"
    assert names["model.layers.3.mlp.ffn_sub_norm.weight"] == "blk.3.ffn_sub_norm.weight"
    assert names["model.layers.0.post_attention_layernorm.weight"] == "blk.0.ffn_norm.weight"


def test_unknown_gguf_names():
    for name in ("output.weight", "blk.0.attn_q.bias", "blk.x.attn_q.weight", "rope_freqs.weight"):
        assert gguf_to_hf_name(name) is None
