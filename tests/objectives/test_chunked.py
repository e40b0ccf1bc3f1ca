"""bitk.objectives.chunked: the chunked losses give the unfused losses' values and gradients."""

from __future__ import annotations

import pytest
import torch

from bitk.objectives import chunked
from bitk.objectives.ce import next_token_ce, next_token_losses
from bitk.objectives.chunked import (
    chunk_rows,
    chunked_logits_kd,
    chunked_next_token_ce,
    chunked_next_token_losses,
)
from bitk.objectives.combiner import compute_loss
from bitk.objectives.dlm import dlm_loss, dlm_mask
from bitk.objectives.logits_kd import logits_kd_loss
from bitk.objectives.settings import ObjectiveSettings
from bitk_objectives_testing import full_precision_twin, random_ids, tiny_model

B, L, H, V = 3, 19, 16, 50


def _inputs(seed: int, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, L, H, generator=g, dtype=dtype).requires_grad_(True)
    head = torch.nn.Linear(H, V, bias=False).to(dtype)
    with torch.no_grad():
        head.weight.copy_(torch.randn(V, H, generator=g, dtype=dtype))
    labels = torch.randint(0, V, (B, L), generator=g)
    return hidden, head, labels


def _grads(loss, hidden, head):
    loss.backward()
    grads = hidden.grad.clone(), head.weight.grad.clone()
    hidden.grad = None
    head.weight.grad = None
    return grads


@pytest.mark.parametrize("masking", ["none", "some", "all"])
@pytest.mark.parametrize("rows", [1, 7, 16, 1000])
def test_ce_matches_unfused(masking, rows):
    hidden, head, labels = _inputs(0)
    if masking == "some":
        labels[:, ::3] = -100
    elif masking == "all":
        labels[:] = -100
    want = next_token_ce(head(hidden), labels)
    want_grads = _grads(want, hidden, head)
    got = chunked_next_token_ce(hidden, head, labels, rows=rows)
    got_grads = _grads(got, hidden, head)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-7)
    if masking == "all":
        assert got.item() == 0 and not any(g.abs().sum() for g in got_grads)


def test_one_chunk_is_the_unfused_loss_bit_for_bit(monkeypatch):
    """A batch of one chunk: the unfused loss's value bit for bit, its gradients computed in the
    forward (autograd never runs the log-softmax's backward), equal to the unfused ones to rounding;
    a head that cannot be fused takes the unfused loss itself."""
    hidden, head, labels = _inputs(1)
    labels[0, :5] = -100
    want = next_token_ce(head(hidden), labels)
    want_grads = _grads(want, hidden, head)
    with torch.autograd.profiler.profile() as prof:
        got = chunked_next_token_ce(hidden, head, labels, rows=B * L)
        got_grads = _grads(got, hidden, head)
    names = {e.name for e in prof.function_events}
    assert "aten::_log_softmax" in names and "aten::_log_softmax_backward_data" not in names
    assert torch.equal(got, want)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-7)
    _checkpointed(monkeypatch)
    got = chunked_next_token_ce(hidden, head, labels, rows=B * L)
    assert torch.equal(got, want)
    assert all(torch.equal(g, w) for g, w in zip(_grads(got, hidden, head), want_grads))


def _checkpointed(monkeypatch):
    """Run chunked_next_token_ce's checkpointed chunks (the path for heads it cannot fuse)."""
    monkeypatch.setattr(chunked, "_fused_head", lambda head, h: False)


def test_ce_gradients_come_from_the_forward(monkeypatch):
    """A plain head by chunks: no chunk is checkpointed (nothing is recomputed), the loss is the
    checkpointed chunks' bit for bit (the same per-chunk math, summed in the same order), and the
    gradients agree with theirs."""
    hidden, head, labels = _inputs(3)
    labels[1, ::4] = -100

    def no_checkpoint(*args, **kwargs):
        raise AssertionError("the fused path checkpointed a chunk")

    with monkeypatch.context() as m:
        m.setattr(chunked, "checkpoint", no_checkpoint)
        got = chunked_next_token_ce(hidden, head, labels, rows=8)
        got_grads = _grads(got, hidden, head)
    _checkpointed(monkeypatch)
    want = chunked_next_token_ce(hidden, head, labels, rows=8)
    want_grads = _grads(want, hidden, head)
    assert torch.equal(got, want)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("trainable", ["hidden", "head"])
def test_ce_gradient_of_one_side(trainable):
    """Only the side that requires a gradient gets one (a frozen head, or hidden states that are
    not trained through), equal to the unfused loss's."""
    hidden, head, labels = _inputs(4)
    hidden.requires_grad_(trainable == "hidden")
    head.weight.requires_grad_(trainable == "head")
    leaf = hidden if trainable == "hidden" else head.weight
    want = torch.autograd.grad(next_token_ce(head(hidden), labels), leaf)[0]
    got = torch.autograd.grad(chunked_next_token_ce(hidden, head, labels, rows=8), leaf)[0]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)


def test_ce_scales_by_the_incoming_gradient():
    hidden, head, labels = _inputs(5)
    want = _grads(next_token_ce(head(hidden), labels) * 3.5, hidden, head)
    got = _grads(chunked_next_token_ce(hidden, head, labels, rows=8) * 3.5, hidden, head)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)


def test_ce_under_bf16_autocast_matches_the_checkpointed_chunks(monkeypatch):
    """The head's product in bfloat16 (autocast), as the checkpointed chunks compute it: the same
    loss, gradients to bfloat16 rounding."""
    hidden, head, labels = _inputs(6)

    def run():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = chunked_next_token_ce(hidden, head, labels, rows=8)
        return loss, _grads(loss, hidden, head)

    got, got_grads = run()
    _checkpointed(monkeypatch)
    want, want_grads = run()
    assert torch.equal(got, want)
    for g, w in zip(got_grads, want_grads):
        assert g.dtype == w.dtype == torch.float32
        torch.testing.assert_close(g, w, rtol=2e-2, atol=2e-3)


def test_ce_by_chunks_compiles_as_eager():
    """torch.compile traces the chunks' gradients in the forward as one graph (no graph break) and
    computes what eager computes (aot_eager: the captured graph without inductor)."""
    hidden, head, labels = _inputs(11)
    eager = chunked_next_token_ce(hidden, head, labels, rows=8)
    eager_grads = _grads(eager, hidden, head)
    torch._dynamo.reset()
    try:
        compiled = torch.compile(
            lambda h: chunked_next_token_ce(h, head, labels, rows=8), backend="aot_eager", fullgraph=True
        )(hidden)
        compiled_grads = _grads(compiled, hidden, head)
    finally:
        torch._dynamo.reset()
    assert torch.equal(compiled, eager)
    for g, w in zip(compiled_grads, eager_grads):
        assert torch.equal(g, w)


def test_ce_second_backward_is_refused():
    hidden, head, labels = _inputs(7)
    loss = chunked_next_token_ce(hidden, head, labels, rows=8)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="hands them out once"):
        loss.backward()


def test_ce_without_gradients_takes_no_gradient_work(monkeypatch):
    """Under no_grad (scoring) the chunks compute the loss only: the same value."""
    hidden, head, labels = _inputs(8)
    want = chunked_next_token_ce(hidden, head, labels, rows=8).detach()

    def no_gradients(*args, **kwargs):
        raise AssertionError("gradients computed under no_grad")

    monkeypatch.setattr(chunked._ChunkedHead, "apply", no_gradients)
    with torch.no_grad():
        assert torch.equal(chunked_next_token_ce(hidden, head, labels, rows=8), want)


def test_ce_in_float64_agrees_to_rounding():
    hidden, head, labels = _inputs(2, torch.float64)
    want = next_token_ce(head(hidden).double(), labels)  # the unfused loss computes in float32
    got = chunked_next_token_ce(hidden, head, labels, rows=5)
    assert abs(got.item() - want.item()) < 1e-5


def test_dlm_matches_unfused():
    _hidden, head, _ = _inputs(3)
    ids = torch.randint(3, V, (B, L), generator=torch.Generator().manual_seed(3))
    masked = dlm_mask(ids, mask_token_id=2, probability=0.3, generator=torch.Generator().manual_seed(4))
    rows2 = masked.input_ids.shape[0]
    hidden2 = torch.randn(rows2, L, H, generator=torch.Generator().manual_seed(5)).requires_grad_(True)
    want = dlm_loss(head(hidden2), masked.labels)
    want_grads = _grads(want, hidden2, head)
    got = chunked_next_token_ce(hidden2, head, masked.labels, rows=6)
    got_grads = _grads(got, hidden2, head)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("rows", [4, 1000])
def test_kd_matches_unfused(masked, rows):
    hidden, head, _ = _inputs(6)
    teacher_hidden = torch.randn(B, L, H + 8, generator=torch.Generator().manual_seed(7))
    teacher_head = torch.nn.Linear(H + 8, V, bias=False).requires_grad_(False)
    valid = None
    if masked:
        valid = torch.ones(B, L, dtype=torch.bool)
        valid[0, 10:] = False
    want = logits_kd_loss(head(hidden), teacher_head(teacher_hidden), temperature=2.0, beta=0.5, valid_mask=valid)
    want_grads = _grads(want, hidden, head)
    got = chunked_logits_kd(
        hidden, head, teacher_hidden, teacher_head, temperature=2.0, beta=0.5, valid_mask=valid, rows=rows
    )
    got_grads = _grads(got, hidden, head)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
    # float32 rounding at the tensor's scale (by chunks the gradient is softmax(s) - softmax(t))
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6 * w.abs().max().item())
    assert teacher_head.weight.grad is None


def test_kd_gradients_come_from_the_forward(monkeypatch):
    """Logits KD by chunks: neither the student's nor the teacher's chunk is recomputed, the loss is
    the checkpointed chunks' bit for bit and the gradients agree with theirs."""
    hidden, head, _ = _inputs(9)
    teacher_hidden = torch.randn(B, L, H, generator=torch.Generator().manual_seed(10))
    teacher_head = torch.nn.Linear(H, V, bias=False).requires_grad_(False)
    valid = torch.ones(B, L, dtype=torch.bool)
    valid[1, 3:9] = False
    teacher_calls = []
    teacher_head.register_forward_hook(lambda *args: teacher_calls.append(1))

    def run():
        teacher_calls.clear()
        loss = chunked_logits_kd(hidden, head, teacher_hidden, teacher_head, temperature=3.0, valid_mask=valid, rows=8)
        return loss, _grads(loss, hidden, head), len(teacher_calls)

    got, got_grads, got_calls = run()
    _checkpointed(monkeypatch)
    want, want_grads, want_calls = run()
    assert torch.equal(got, want)
    assert got_calls == -(-B * L // 8) and want_calls == 2 * got_calls  # the checkpoints run the teacher again
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-8)


def test_kd_refuses_mismatched_inputs():
    hidden, head, _ = _inputs(8)
    with pytest.raises(ValueError, match="share a vocabulary"):
        chunked_logits_kd(hidden, head, hidden.detach(), torch.nn.Linear(H, V + 1), rows=4)
    with pytest.raises(ValueError, match="same tokens"):
        chunked_logits_kd(hidden, head, hidden.detach()[:, :5], head, rows=4)
    with pytest.raises(ValueError, match="temperature"):
        chunked_logits_kd(hidden, head, hidden.detach(), head, temperature=0, rows=4)


def test_per_token_losses_match_unfused():
    hidden, head, labels = _inputs(9)
    labels[1, 3:8] = -100
    with torch.no_grad():
        want, want_counted = next_token_losses(head(hidden), labels)
    got, counted = chunked_next_token_losses(hidden, head, labels, rows=5)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
    assert torch.equal(counted, want_counted)


def test_chunk_rows():
    assert chunk_rows(151936) == chunked.CHUNK_ELEMENTS // 151936
    assert chunk_rows(10**12) == 16
    assert chunk_rows(100, elements=1000) == 16 and chunk_rows(10, elements=1000) == 100


@pytest.mark.parametrize(
    "weights",
    [
        {"ce": 1.0},
        {"dlm": 1.0},
        {"ce": 1.0, "dlm": 0.5},
        {"ce": 1.0, "logits_kd": 2.0, "attention_relation": 1.0},
        {"logits_kd": 1.0, "layerwise": 1.0},
    ],
    ids=lambda w: "+".join(w),
)
@pytest.mark.parametrize("pad", [None, 1])
def test_compute_loss_is_the_same_by_chunks(monkeypatch, weights, pad):
    """Every objective through compute_loss: many small chunks give the one-chunk losses and gradients."""
    student = tiny_model(11)
    teacher = full_precision_twin(tiny_model(12)).eval().requires_grad_(False)
    ids = random_ids(2, 24, seed=13)
    if pad is not None:
        ids[0, 16:] = pad
    settings = ObjectiveSettings(relation_split_heads=4)

    def run():
        total, parts = compute_loss(
            student,
            ids,
            None,
            weights,
            settings,
            teacher=teacher,
            pad_token_id=pad,
            generator=torch.Generator().manual_seed(14),
        )
        total.backward()
        grads = [p.grad.clone() for p in student.parameters() if p.grad is not None]
        student.zero_grad(set_to_none=True)
        return total.detach(), parts, grads

    whole, whole_parts, whole_grads = run()
    monkeypatch.setattr(chunked, "CHUNK_ELEMENTS", 64 * 7)  # 7 tokens of the 64-token vocabulary per chunk
    assert chunk_rows(64) == 16  # the floor: still several chunks of a 2 x 24 batch
    by_chunks, parts, grads = run()
    torch.testing.assert_close(by_chunks, whole, rtol=1e-5, atol=1e-6)
    assert parts.keys() == whole_parts.keys()
    for g, w in zip(grads, whole_grads):  # float32 rounding at the tensor's scale (the chunks' formulas)
        torch.testing.assert_close(g, w, rtol=1e-4, atol=2e-6 * max(1.0, w.abs().max().item()))
