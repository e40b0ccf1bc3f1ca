"""ModelConfig validation and presets."""

import pytest

from bitk.models.config import PRESETS, ModelConfig, preset


def test_tiny_fits_every_gguf_type():
    c = preset("tiny")
    for size in (c.hidden_size, c.q_size, c.intermediate_size):
        assert size % 256 == 0


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_round_trip_through_dict(name):
    c = preset(name)
    assert ModelConfig.from_dict(c.to_dict()) == c
    assert c.num_attention_heads % c.num_key_value_heads == 0


def test_bitnet_2b_dimensions():
    c = preset("bitnet_2b")
    assert (
        c.hidden_size,
        c.intermediate_size,
        c.num_hidden_layers,
        c.num_attention_heads,
        c.num_key_value_heads,
        c.rope_theta,
        c.hidden_act,
        c.tie_word_embeddings,
    ) == (2560, 6912, 30, 20, 5, 500000.0, "relu2", True)


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"num_key_value_heads": 3}, "must divide num_attention_heads"),
        ({"hidden_act": "gelu"}, "hidden_act must be one of relu2, silu"),
        ({"hidden_size": 0}, "hidden_size must be a positive integer"),
        ({"rope_theta": float("nan")}, "rope_theta"),
        ({"eos_token_id": 10**9}, "eos_token_id"),
        ({"subln": "yes"}, "subln must be true or false"),
        ({"lrc_rank_ratio": 1.5}, "lrc_rank_ratio must be in"),
        ({"lrc_rank_ratio": 0.1, "ternary": False}, "lrc_rank_ratio > 0 needs ternary"),
    ],
)
def test_validation(changes, match):
    with pytest.raises(ValueError, match=match):
        preset("tiny", **changes)


def test_unknown_names():
    with pytest.raises(ValueError, match="unknown model preset 'huge'; presets: tiny"):
        preset("huge")
    with pytest.raises(ValueError, match="unknown ModelConfig field"):
        ModelConfig.from_dict({"hidden": 3})


def test_lrc_rank():
    assert preset("tiny").lrc_rank(256, 768) == 0
    c = preset("tiny", lrc_rank_ratio=0.1)
    assert (c.lrc_rank(256, 768), c.lrc_rank(768, 256), c.lrc_rank(4, 4)) == (26, 26, 1)
