"""FLOPs per token (PaLM appendix B), peak FLOP/s of known GPUs, MFU."""

from __future__ import annotations

import pytest
import torch

from bitk.models import CausalLM, preset
from bitk.train.flops import flops_per_token, matmul_params, mfu, peak_flops

SMALL = {
    "vocab_size": 32,
    "hidden_size": 8,
    "intermediate_size": 16,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "head_dim": 4,
    "bos_token_id": None,
    "eos_token_id": None,
    "pad_token_id": None,
}


def test_hand_computed_small_config():
    c = preset("tiny", **SMALL)
    # per layer: q 8*8 + k 8*4 + v 8*4 + o 8*8 = 192, gate/up/down 3*8*16 = 384; head 8*32
    assert matmul_params(c) == 2 * (192 + 384) + 256 == 1408
    # 6 N + 12 * layers * q_size * T
    assert flops_per_token(c, 16) == 6 * 1408 + 12 * 2 * 8 * 16 == 11520


@pytest.mark.parametrize("tied", [True, False])
def test_matmul_params_match_the_model(tied):
    c = preset("tiny", **SMALL, tie_word_embeddings=tied, qk_norm=True, attention_bias=True)
    model = CausalLM(c)
    projections = sum(p.numel() for n, p in model.named_parameters() if n.endswith("_proj.weight"))
    assert matmul_params(c) == projections + c.hidden_size * c.vocab_size  # the head's matmul even when tied


def test_tiny_preset_order_of_magnitude():
    c = preset("tiny")
    non_embedding = CausalLM(c).num_parameters(exclude_embeddings=True)
    # 6N with the head, plus attention over 256 tokens
    assert flops_per_token(c, 256) == pytest.approx(6 * (non_embedding + 256 * 4096) + 12 * 4 * 256 * 256, rel=0.01)


def test_peak_flops(monkeypatch):
    assert peak_flops(torch.device("cpu"), torch.bfloat16) is None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for name, peak in (
        ("NVIDIA H100 80GB HBM3", 989e12),
        ("NVIDIA H200", 989e12),
        ("NVIDIA H100 PCIe", 756e12),
        ("NVIDIA A100-SXM4-80GB", 312e12),
        ("NVIDIA GeForce GTX 1080", None),
    ):
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None, name=name: name)
        assert peak_flops(torch.device("cuda"), torch.bfloat16) == peak, name
        assert peak_flops("cuda:0", torch.float16) == peak
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 80GB HBM3")
    assert peak_flops(torch.device("cuda"), torch.float32) is None


def test_mfu():
    assert mfu(1000.0, 1e9, 1e13) == pytest.approx(0.1)
    assert mfu(1000.0, 1e9, None) is None


def test_bad_seq_len():
    with pytest.raises(ValueError):
        flops_per_token(preset("tiny"), 0)
