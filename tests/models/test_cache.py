"""bitk.models.KVCache: prefill + incremental decoding gives the full forward's logits."""

from __future__ import annotations

import pytest
import torch

from bitk.models import CausalLM, KVCache, ModelConfig
from bitk_testing import scramble

GQA_QK_NORM = ModelConfig(
    vocab_size=96,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    qk_norm=True,
    ternary=False,
    subln=False,
    hidden_act="silu",
    max_position_embeddings=40,
)
TERNARY = GQA_QK_NORM.replace(ternary=True, subln=True, hidden_act="relu2", qk_norm=False, head_dim=8)
CASES = {"gqa_qk_norm": (GQA_QK_NORM, "train"), "ternary_train": (TERNARY, "train"), "ternary_i2s": (TERNARY, "i2s")}


def _model(config: ModelConfig, numerics: str, seed: int = 0) -> CausalLM:
    torch.manual_seed(seed)
    return scramble(CausalLM(config), seed).eval().set_numerics(numerics)


def _ids(length: int, vocab: int = 96, batch: int = 1, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


def _assert_float32_close(got: torch.Tensor, want: torch.Tensor) -> None:
    # The cached path sums attention in another order: float32 rounding, tens of ulps of the largest logit.
    atol = 32 * torch.finfo(torch.float32).eps * want.abs().max().item()
    torch.testing.assert_close(got, want, rtol=0, atol=atol)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("chunks", [(12,), (7, 5)], ids=["prefill", "two_chunk_prefill"])
@torch.no_grad()
def test_decoding_with_the_cache_gives_the_full_forward(case, chunks):
    config, numerics = CASES[case]
    model = _model(config, numerics)
    ids = _ids(20, batch=2)
    full = model(ids).logits
    cache = KVCache.for_model(model, batch_size=2, max_length=20)
    parts, start = [], 0
    for n in chunks:
        parts.append(model(ids[:, start : start + n], cache=cache).logits)
        start += n
    while start < ids.shape[1]:
        parts.append(model(ids[:, start : start + 1], cache=cache).logits)
        start += 1
    assert cache.length == 20
    _assert_float32_close(torch.cat(parts, dim=1), full)


@torch.no_grad()
def test_a_growing_cache_gives_what_a_preallocated_one_gives():
    model = _model(*CASES["ternary_i2s"])
    ids = _ids(15)
    grown, fixed = KVCache.for_model(model), KVCache.for_model(model, max_length=15)
    for cache in (grown, fixed):
        model(ids[:, :3], cache=cache)
    for t in range(3, 15):
        a = model(ids[:, t : t + 1], cache=grown).logits
        b = model(ids[:, t : t + 1], cache=fixed).logits
        assert torch.equal(a, b)
    assert grown.length == fixed.length == 15


@torch.no_grad()
def test_without_a_cache_the_forward_is_unchanged_and_last_hidden_matches():
    model = _model(*CASES["gqa_qk_norm"])
    ids = _ids(9)
    cache = KVCache.for_model(model)
    out = model(ids, cache=cache, logits=False)
    assert out.logits is None and torch.equal(out.head(out.last_hidden), model(ids, cache=None).logits)


@torch.no_grad()
def test_cache_misuse_is_refused():
    model = _model(*CASES["ternary_train"])
    ids = _ids(4)
    with pytest.raises(ValueError, match="position_ids"):
        model(ids, torch.arange(4), cache=KVCache.for_model(model))
    with pytest.raises(ValueError, match="batch size 2; the input has 1 rows"):
        model(ids, cache=KVCache.for_model(model, batch_size=2))
    with pytest.raises(ValueError, match="at most 6 tokens"):
        cache = KVCache.for_model(model, max_length=6)
        model(ids, cache=cache)
        model(ids, cache=cache)
    cache = KVCache.for_model(model)
    model(_ids(38), cache=cache)
    with pytest.raises(
        ValueError, match=r"38 cached \+ 4 new tokens exceed the model's max_position_embeddings \(40\)"
    ):
        model(ids, cache=cache)
    assert cache.length == 38  # a refused forward leaves the cache as it was
    with pytest.raises(ValueError, match="num_layers"):
        KVCache(0)
