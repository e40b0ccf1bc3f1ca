"""bitk.models.attention: every path of packed-document attention gives the masked reference's result."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bitk.models import CausalLM, ModelConfig
from bitk.models.attention import DENSE_MAX_ELEMENTS, PackedDocuments, attend, choose_path, packed_causal_mask
from bitk_testing import scramble

# Row 0: three documents; row 1: one document; row 2 starts mid-document (no 0 at the start),
# then two more; row 3: a document of one token at the end.
POSITIONS = torch.tensor(
    [
        [0, 1, 2, 3, 4, 0, 1, 2, 0, 1, 2, 3, 4, 5, 6, 7],
        list(range(16)),
        [5, 6, 7, 8, 0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 5],
        [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 0],
    ]
)


def _qkv(heads: int, kv_heads: int, seed: int = 0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    B, L, D = POSITIONS.shape[0], POSITIONS.shape[1], 8
    q = torch.randn(B, heads, L, D, generator=g, dtype=dtype)
    k = torch.randn(B, kv_heads, L, D, generator=g, dtype=dtype)
    v = torch.randn(B, kv_heads, L, D, generator=g, dtype=dtype)
    return [t.requires_grad_(True) for t in (q, k, v)]


def _reference(q, k, v, positions):
    """Dense-mask SDPA in float64, repeated K/V heads: the definition."""
    rep = q.shape[1] // k.shape[1]
    k64, v64 = k.double().repeat_interleave(rep, 1), v.double().repeat_interleave(rep, 1)
    return F.scaled_dot_product_attention(q.double(), k64, v64, attn_mask=packed_causal_mask(positions))


@pytest.mark.parametrize("path", ["dense", "documents"])
@pytest.mark.parametrize("heads", [(4, 4), (4, 2)], ids=["mha", "gqa"])
def test_paths_match_the_masked_reference(path, heads):
    q, k, v = _qkv(*heads)
    docs = PackedDocuments(POSITIONS, POSITIONS.shape[0], path)
    out = attend(q, k, v, docs, scale=8**-0.5, enable_gqa=heads[0] != heads[1])
    grads = torch.autograd.grad(out.pow(2).sum(), (q, k, v))
    qd, kd, vd = (t.detach().double().requires_grad_(True) for t in (q, k, v))
    ref = _reference(qd, kd, vd, POSITIONS)
    ref_grads = torch.autograd.grad(ref.pow(2).sum(), (qd, kd, vd))
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g.double(), r, rtol=1e-4, atol=1e-4)


def test_flex_path_matches_the_masked_reference():
    """FlexAttention (the CUDA path) on CPU: forward only (its CPU backend has no backward)."""
    pytest.importorskip("torch.nn.attention.flex_attention")
    q, k, v = (t.detach() for t in _qkv(4, 2, seed=1))
    docs = PackedDocuments(POSITIONS, POSITIONS.shape[0], "flex")
    out = attend(q, k, v, docs, scale=8**-0.5, enable_gqa=True)
    torch.testing.assert_close(out.double(), _reference(q, k, v, POSITIONS), rtol=1e-5, atol=1e-5)


def test_shared_positions_and_single_documents():
    """[1, L] positions serve every row; rows without a boundary take one is_causal call."""
    q, k, v = (t.detach() for t in _qkv(2, 2, seed=2))
    shared = POSITIONS[:1]
    docs = PackedDocuments(shared, q.shape[0], "documents")
    assert docs.spans() == [[(0, 5), (5, 8), (8, 16)]] * 4
    torch.testing.assert_close(
        attend(q, k, v, docs, scale=0.3, enable_gqa=False).double(),
        _reference(q * 0.3 / 8**-0.5, k, v, shared.expand(4, -1)),
        rtol=1e-5,
        atol=1e-5,
    )
    single = PackedDocuments(torch.arange(16)[None].expand(4, -1), 4, "documents")
    assert all(len(row) == 1 for row in single.spans())
    torch.testing.assert_close(
        attend(q, k, v, single, scale=8**-0.5, enable_gqa=False),
        F.scaled_dot_product_attention(q, k, v, is_causal=True),
    )


def test_choose_path():
    small = torch.cat([torch.arange(24), torch.arange(40)])[None]
    assert choose_path(small, 8) == "dense"  # 8 x 64^2 elements: the mask is small
    long = torch.cat([torch.arange(1000), torch.arange(3096)])[None]
    assert DENSE_MAX_ELEMENTS < 4096 * 4096
    assert choose_path(long, 1) == "documents"  # CPU: no FlexAttention backward
    # CPU, every row one document (a row may begin mid-document): SDPA's is_causal path, no mask
    assert choose_path(torch.arange(64)[None], 8) == "causal"
    assert choose_path(torch.arange(4096)[None], 1) == "causal"
    assert choose_path(torch.arange(10, 74).expand(3, -1), 3) == "causal"
    assert choose_path(torch.stack([torch.arange(64), small[0]]), 2) == "dense"  # one row has a boundary
    with pytest.raises(ValueError, match="unknown attention path"):
        attend(*_qkv(2, 2), PackedDocuments(small, 1, "sparse"), scale=1.0, enable_gqa=False)


@pytest.mark.parametrize("heads", [(4, 4), (4, 2)], ids=["mha", "gqa"])
def test_causal_path_of_single_documents_matches_the_dense_path_bit_for_bit(heads):
    """Rows that each hold one document take is_causal on the CPU: the dense mask's outputs and gradients exactly."""
    pos = torch.arange(3, 19).expand(POSITIONS.shape[0], -1)  # every row one document (begun earlier)
    assert PackedDocuments(pos, pos.shape[0]).path == "causal"
    results = {}
    for path in ("causal", "dense"):
        q, k, v = _qkv(*heads, seed=6)
        docs = PackedDocuments(pos, pos.shape[0], path)
        out = attend(q, k, v, docs, scale=8**-0.5, enable_gqa=heads[0] != heads[1])
        out.backward(torch.ones_like(out).cumsum(-1))
        results[path] = (out.detach(), q.grad, k.grad, v.grad)
    for a, b in zip(results["causal"], results["dense"]):
        assert torch.equal(a, b)


def _long_model(**changes) -> CausalLM:
    config = ModelConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=0,
        eos_token_id=0,
    ).replace(**changes)
    return scramble(CausalLM(config), 3)


@pytest.mark.parametrize("ternary", [False, True])
def test_model_documents_path_matches_dense(ternary):
    """A whole CausalLM: the per-document path gives the dense path's logits and gradients."""
    model = _long_model(ternary=ternary)
    ids = torch.randint(0, 64, (2, 48), generator=torch.Generator().manual_seed(4))
    pos = torch.cat([torch.arange(20), torch.arange(28)]).expand(2, -1).clone()
    pos[1] = torch.arange(48)
    results = {}
    for path in ("dense", "documents"):
        model.attention_path = path
        model.zero_grad(set_to_none=True)
        logits = model(ids, pos).logits
        logits.square().mean().backward()
        results[path] = (logits.detach(), [p.grad.clone() for p in model.parameters()])
    torch.testing.assert_close(results["documents"][0], results["dense"][0], rtol=1e-4, atol=1e-5)
    for g, r in zip(results["documents"][1], results["dense"][1]):
        torch.testing.assert_close(g, r, rtol=1e-3, atol=1e-5)


def test_activation_checkpointing_gives_the_same_gradients():
    model = _long_model(ternary=True).train()
    ids = torch.randint(0, 64, (2, 40), generator=torch.Generator().manual_seed(5))
    pos = torch.cat([torch.arange(15), torch.arange(25)])
    results = []
    for recompute in (False, True):
        model.activation_checkpointing = recompute
        model.zero_grad(set_to_none=True)
        loss = model(ids, pos, output_attention_states=True).logits.square().mean()
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    assert torch.equal(results[0][0], results[1][0])
    for g, r in zip(results[1][1], results[0][1]):
        assert torch.equal(g, r)


def test_documents_path_reads_boundaries_once(monkeypatch):
    """The spans are worked out once per forward, not once per layer."""
    calls = []
    original = PackedDocuments.spans

    def counting(self):
        calls.append(self._spans is None)
        return original(self)

    monkeypatch.setattr(PackedDocuments, "spans", counting)
    model = _long_model()
    model.attention_path = "documents"
    with torch.no_grad():
        model(torch.randint(0, 64, (1, 30)), torch.cat([torch.arange(10), torch.arange(20)]))
    assert calls == [True, False]  # two layers, one host read
