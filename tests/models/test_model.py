"""bitk.models.model: the decoder's structure, outputs, packed sequences, init and presets."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bitk.models import PRESETS, CausalLM, CausalLMOutput, ModelConfig, preset
from bitk.models.model import packed_causal_mask
from bitk.models.sources import tensor_shapes
from bitk.nn import BitLinear, SubLN
from bitk_testing import assert_derived_close

SMALL = ModelConfig(
    vocab_size=96,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    initializer_range=0.2,
)
VARIANTS = {
    "bitnet": SMALL,
    "llama": SMALL.replace(ternary=False, subln=False, hidden_act="silu", tie_word_embeddings=False),
    "qwen3": SMALL.replace(ternary=False, subln=False, hidden_act="silu", qk_norm=True, head_dim=16),
    "ternary_qwen3_bias": SMALL.replace(qk_norm=True, head_dim=16, attention_bias=True, tie_word_embeddings=False),
}


def _model(config: ModelConfig, seed: int = 0) -> CausalLM:
    torch.manual_seed(seed)
    return CausalLM(config).eval()


@pytest.mark.parametrize("variant", VARIANTS)
def test_parameter_names_are_the_shared_hf_names(variant):
    """The state dict is exactly the tensor set of the shared naming contract (sources.tensor_shapes)."""
    config = VARIANTS[variant]
    model = _model(config)
    shapes = {n: tuple(t.shape) for n, t in model.state_dict().items()}
    if config.tie_word_embeddings:
        assert model.lm_head.weight is model.model.embed_tokens.weight
        assert shapes.pop("lm_head.weight") == (config.vocab_size, config.hidden_size)
    assert shapes == tensor_shapes(config)
    projections = [m for n, m in model.named_modules() if n.endswith("_proj")]
    assert len(projections) == 7 * config.num_hidden_layers
    expected = BitLinear if config.ternary else nn.Linear
    assert all(type(m) is expected for m in projections)
    assert type(model.lm_head) is nn.Linear and type(model.model.embed_tokens) is nn.Embedding


def test_init_from_scratch():
    config = SMALL.replace(tie_word_embeddings=False, attention_bias=True, initializer_range=0.05)
    model = CausalLM.from_config(config)
    assert model.config is config and model.tokenizer_dir is None
    for name, p in model.named_parameters():
        if name.endswith("norm.weight"):
            assert torch.equal(p, torch.ones_like(p)), name
        elif name.endswith(".bias"):
            assert torch.equal(p, torch.zeros_like(p)), name
        else:
            assert p.mean().abs() < 0.01 and abs(p.std().item() - 0.05) < 0.01, name
    assert all(isinstance(m.attn_sub_norm, SubLN) for m in (layer.self_attn for layer in model.model.layers))


@pytest.mark.parametrize("variant", VARIANTS)
def test_extra_outputs(variant):
    """hidden_states and attention_states have the documented shapes and leave the logits unchanged."""
    config = VARIANTS[variant]
    model = _model(config)
    x = torch.randint(0, config.vocab_size, (2, 7))
    with torch.no_grad():
        plain = model(x)
        full = model(x, output_hidden_states=True, output_attention_states=True)
    assert isinstance(plain, CausalLMOutput) and plain.hidden_states is None and plain.attention_states is None
    assert plain.logits.shape == (2, 7, config.vocab_size)
    assert torch.equal(plain.logits, full.logits)
    assert len(full.hidden_states) == config.num_hidden_layers + 1
    assert all(h.shape == (2, 7, config.hidden_size) for h in full.hidden_states)
    assert torch.equal(full.hidden_states[0], model.model.embed_tokens(x))
    assert torch.equal(model.lm_head(full.hidden_states[-1]), full.logits)  # the last is after the final norm
    assert len(full.attention_states) == config.num_hidden_layers
    for q, k, v in full.attention_states:
        assert q.shape == (2, 7, config.q_size) and k.shape == v.shape == (2, 7, config.kv_size)


def test_attention_states_are_taken_before_rope():
    """Layer 0's (q, k, v) are the projections (and q/k norms) of the normed embedding, unrotated."""
    config = VARIANTS["qwen3"]
    model = _model(config)
    x = torch.randint(0, config.vocab_size, (1, 6))
    with torch.no_grad():
        q, k, v = model(x, output_attention_states=True).attention_states[0]
        attn = model.model.layers[0].self_attn
        h = model.model.layers[0].input_layernorm(model.model.embed_tokens(x))
        heads = (1, 6, -1, config.head_dim)
        assert torch.equal(q, attn.q_norm(attn.q_proj(h).view(heads)).flatten(2))
        assert torch.equal(k, attn.k_norm(attn.k_proj(h).view(heads)).flatten(2))
        assert torch.equal(v, attn.v_proj(h))


def test_packed_mask():
    pos = torch.tensor([[0, 1, 2, 0, 1], [0, 1, 2, 3, 4]])
    mask = packed_causal_mask(pos)
    assert mask.shape == (2, 1, 5, 5) and mask.dtype == torch.bool
    first = torch.tensor([[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [0, 0, 0, 1, 0], [0, 0, 0, 1, 1]])
    assert torch.equal(mask[0, 0], first.bool())
    assert torch.equal(mask[1, 0], torch.ones(5, 5, dtype=torch.bool).tril())


@pytest.mark.parametrize("variant", ["llama", "bitnet"])
def test_packed_documents_match_separate_runs(variant):
    """Two documents packed in one row give each document's own logits.

    The packed run differs from the separate runs only in float32 rounding (a masked SDPA instead
    of the is_causal path), so it may err against float64 separate runs at most 2x as much as the
    float32 separate runs do (tests/conftest.py). A leak across the boundary would be O(1).
    """
    model = _model(VARIANTS[variant], seed=1)
    a, b = torch.randint(0, 96, (1, 5)), torch.randint(0, 96, (1, 7))
    packed, pos = torch.cat([a, b], 1), torch.cat([torch.arange(5), torch.arange(7)])
    with torch.no_grad():
        out = model(packed, pos).logits
        alone32 = [model(a).logits, model(b).logits]
        model64 = model.double()
        alone64 = [model64(a).logits, model64(b).logits]
    assert_derived_close(out[:, :5], alone64[0], alone32[0], "document 1")
    assert_derived_close(out[:, 5:], alone64[1], alone32[1], "document 2")


def test_position_ids_batch_and_default_path():
    """position_ids 0..L-1 (mask path) equals position_ids None (is_causal path); [L] broadcasts."""
    model = _model(VARIANTS["llama"])
    x = torch.randint(0, 96, (3, 9))
    with torch.no_grad():
        ref = model(x).logits
        assert torch.allclose(model(x, torch.arange(9)).logits, ref, rtol=0, atol=1e-5)
        assert torch.allclose(model(x, torch.arange(9).expand(3, 9)).logits, ref, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="position_ids"):
        model(x, torch.arange(8))
    with pytest.raises(ValueError, match="input_ids"):
        model(x[0])


def test_no_attention_across_documents():
    """Changing document 1 leaves document 2's logits exactly as they were (full precision)."""
    model = _model(VARIANTS["llama"])
    x = torch.randint(0, 96, (1, 10))
    pos = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3, 4, 5])
    y = x.clone()
    y[0, :4] = (y[0, :4] + 1) % 96
    with torch.no_grad():
        assert torch.equal(model(x, pos).logits[:, 4:], model(y, pos).logits[:, 4:])
        assert not torch.equal(model(x).logits[:, 4:], model(y).logits[:, 4:])


def test_set_numerics():
    model = _model(SMALL)
    x = torch.randint(0, 96, (1, 6))
    with torch.no_grad():
        train = model(x).logits
        assert model.set_numerics("float") is model
        assert all(m.numerics == "float" for m in model.modules() if isinstance(m, BitLinear))
        floating = model(x).logits
        model.set_numerics("train")
        assert torch.equal(model(x).logits, train)
    assert not torch.equal(floating, train)
    with pytest.raises(ValueError, match="numerics"):
        model.set_numerics("int4")


def test_bad_config():
    with pytest.raises(ValueError, match="ModelConfig"):
        CausalLM({"hidden_size": 32})


# --------------------------------------------------------------------------- presets


def _count(config: ModelConfig) -> int:
    """Parameters of a bitk decoder by formula (tied head counted once)."""
    c = config
    per_layer = (
        2 * c.hidden_size
        + c.hidden_size * (c.q_size + 2 * c.kv_size)
        + c.q_size * c.hidden_size
        + 3 * c.hidden_size * c.intermediate_size
    )
    per_layer += c.attention_bias * (2 * c.q_size + 2 * c.kv_size)
    per_layer += c.qk_norm * 2 * c.head_dim + c.subln * (c.q_size + c.intermediate_size)
    head = 0 if c.tie_word_embeddings else c.vocab_size * c.hidden_size
    return c.vocab_size * c.hidden_size + head + c.num_hidden_layers * per_layer + c.hidden_size


@pytest.mark.parametrize("name", PRESETS)
def test_presets_build(name):
    """Every preset is a valid ternary config whose model (on the meta device: no weights) has the
    formula's parameter count; the full-precision parents of the SmolLM2 presets match their
    published sizes."""
    config = preset(name)
    assert config.ternary and config.subln
    with torch.device("meta"):
        model = CausalLM(config)
        parent = CausalLM(config.replace(ternary=False, subln=False))
    assert model.num_parameters() == _count(config)
    assert model.num_parameters() - parent.num_parameters() == config.num_hidden_layers * (
        config.q_size + config.intermediate_size
    )
    published = {"smollm2_135m": 134_515_008, "smollm2_360m": 361_821_120}
    if name in published:
        assert parent.num_parameters() == published[name]


def test_tiny_preset_trains_on_cpu():
    """The tiny preset: real weights, parameter count, a forward and backward reaching every parameter."""
    config = preset("tiny")
    torch.manual_seed(0)
    model = CausalLM(config)
    assert model.num_parameters() == _count(config) == 4_200_704
    assert model.num_parameters(exclude_embeddings=True) == _count(config) - config.vocab_size * config.hidden_size
    x = torch.randint(0, config.vocab_size, (2, 32))
    logits = model(x).logits
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), x[:, 1:].flatten())
    assert abs(loss.item() - torch.log(torch.tensor(float(config.vocab_size))).item()) < 0.5  # near-uniform at init
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_resize_token_embeddings_appends_mean_rows(tied):
    config = ModelConfig(
        vocab_size=96,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=tied,
    )
    torch.manual_seed(0)
    model = CausalLM(config)
    emb, head = model.model.embed_tokens.weight.detach().clone(), model.lm_head.weight.detach().clone()
    ids = torch.randint(0, 96, (2, 7))
    before = model(ids).logits
    assert model.resize_token_embeddings(99) is model and model.config.vocab_size == 99
    new_emb, new_head = model.model.embed_tokens.weight, model.lm_head.weight
    assert new_emb.shape == new_head.shape == (99, 32) and (new_emb is new_head) == tied
    assert torch.equal(new_emb[:96], emb) and torch.equal(new_head[:96], head)
    assert torch.allclose(new_emb[96:], emb.mean(0).expand(3, -1)) and torch.allclose(new_head[96:], head.mean(0))
    after = model(ids).logits
    assert torch.equal(after[..., :96], before)  # the old tokens compute what they did
    assert model.resize_token_embeddings(99) is model
    with pytest.raises(ValueError, match="grows the vocabulary"):
        model.resize_token_embeddings(50)
    assert sum(p.requires_grad for p in model.parameters()) == len(list(model.parameters()))
