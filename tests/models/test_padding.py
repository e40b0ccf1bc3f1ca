"""Zero-padding (bitk.models.padding): the padded model computes the unpadded model's logits.

Checked step by step on bitk's own forward (SubLN, GQA, RoPE, tied head): in float64 for a
full-precision model, with per-token int8 activations and the original ternarization for a
ternary one (tests/gguf/test_pad.py goes through packed files).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import bitk.formats as fmt
from bitk.models import CausalLM
from bitk.models.checkpoint import assign_tensors
from bitk.models.config import ModelConfig
from bitk.models.padding import pad_array, pad_codes, padding_to, plan_padding
from bitk.models.sources import tensor_shapes

# SmolLM2-135M's widths (hidden 576, FFN 1536, 9 query / 3 KV heads of 64), two blocks, small vocab.
SMOL = dict(
    vocab_size=300,
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=2,
    num_attention_heads=9,
    num_key_value_heads=3,
    head_dim=64,
    hidden_act="silu",
    max_position_embeddings=64,
    rms_norm_eps=1e-5,
)
IDS = torch.tensor([[5, 17, 299, 42, 42, 7, 0, 123, 88, 250, 3, 64]])


def random_tensors(config: ModelConfig, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in tensor_shapes(config).items():
        if len(shape) == 1:
            out[name] = 1.0 + 0.3 * rng.standard_normal(shape)
        else:
            out[name] = (1.0 if "embed" in name else 0.05) * rng.standard_normal(shape)
    return out


def build(config: ModelConfig, tensors: dict[str, np.ndarray], dtype: torch.dtype) -> CausalLM:
    with torch.device("meta"):
        model = CausalLM(config)
    assign_tensors(model, {k: torch.tensor(v, dtype=dtype) for k, v in tensors.items()})
    return model.eval()


@torch.no_grad()
def logits(model: CausalLM) -> torch.Tensor:
    return model(IDS).logits


def fits(multiple: int):
    return lambda shape: shape[1] % multiple == 0


@pytest.mark.parametrize("multiple", [128, 256])
def test_smollm2_widths_pad_to_768(multiple):
    config = ModelConfig(**SMOL)
    padding = plan_padding(config, fits(multiple))
    p = padding.padded
    assert (p.hidden_size, p.num_attention_heads, p.num_key_value_heads, p.intermediate_size) == (768, 12, 4, 2048)
    assert p.head_dim == 64 and padding.ratio == 0.75
    assert plan_padding(p, fits(multiple)) is None  # fits already: nothing to do


def test_smollm2_360m_widths():
    config = ModelConfig(**{**SMOL, "hidden_size": 960, "intermediate_size": 2560, "num_attention_heads": 15})
    config = config.replace(num_key_value_heads=5)
    assert plan_padding(config, fits(128)).padded.hidden_size == 1152  # 18 heads: 9 x 128
    assert plan_padding(config, fits(256)).padded.hidden_size == 1536  # 24 heads: 6 x 256


def test_what_cannot_be_padded():
    assert plan_padding(ModelConfig(**{**SMOL, "qk_norm": True}), fits(128)) is None
    assert plan_padding(ModelConfig(**{**SMOL, "head_dim": 128}), fits(128)) is None  # heads*head_dim != hidden
    with pytest.raises(ValueError, match="not a zero-padding"):
        padding_to(ModelConfig(**SMOL), 640)  # 10 heads break the 3:1 grouping


def test_full_precision_padded_model_equals_the_original_in_float64():
    config = ModelConfig(**SMOL, ternary=False)
    tensors = random_tensors(config, seed=1)
    padding = plan_padding(config, fits(128))
    padded = {name: pad_array(name, arr, padding) for name, arr in tensors.items()}
    want = logits(build(config, tensors, torch.float64))
    got = logits(build(padding.padded, padded, torch.float64))
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12 * want.abs().max().item())
    # the norm scaling is what makes it exact: without it the logits move
    unscaled = {n: (pad_codes(n, a, padding) if a.ndim == 1 else padded[n]) for n, a in tensors.items()}
    assert (logits(build(padding.padded, unscaled, torch.float64)) - want).abs().max() > 1e-3


@pytest.mark.parametrize("mode", ["train", "i2s"])
def test_ternary_padded_model_equals_the_original(mode):
    """Per-token int8 activations and the original codes and scale: the same logits."""
    config = ModelConfig(**SMOL)
    tensors = {k: v.astype(np.float32) for k, v in random_tensors(config, seed=2).items()}
    padding = plan_padding(config, fits(256))
    padded = {}
    for name, arr in tensors.items():
        if name.endswith("_proj.weight"):
            codes, scale = fmt.ternarize(arr)
            padded[name] = fmt.latent_weights(pad_codes(name, codes, padding), scale)
        else:
            padded[name] = pad_array(name, arr, padding)
    # float32: the latent weights reproduce the float32 scale (float64 would re-derive another absmean)
    want = logits(build(config, tensors, torch.float32).set_numerics(mode))
    got = logits(build(padding.padded, padded, torch.float32).set_numerics(mode))
    torch.testing.assert_close(got, want, rtol=2e-5, atol=2e-5 * want.abs().max().item())
