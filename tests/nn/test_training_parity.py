"""Five AdamW steps of a small ternary model: every path follows the reference's loss curve.

The model has the parts of a BitNet block that these layers provide: a pre-norm feeding a fused
gate/up BitLinear, the gated ReLU^2, a SubLN fused into the down projection, a full-precision
head. The CPU path equals the reference exactly; the Triton kernels (interpreted here) round
sums in their own order, so their losses agree within a small relative tolerance.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from bitk.nn import BitLinear, RMSNorm, SubLN, use_backend

VOCAB, DIM, FFN, STEPS = 64, 64, 128, 5


class TinyBlockModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, DIM)
        self.norm = RMSNorm(DIM)
        self.gate_up = BitLinear(DIM, 2 * FFN, bias=False)
        self.ffn_sub_norm = SubLN(FFN)
        self.down = BitLinear(FFN, DIM, bias=False)
        self.final_norm = RMSNorm(DIM)
        self.head = nn.Linear(DIM, VOCAB, bias=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.embed(ids)
        gate, up = self.gate_up(h, norm=self.norm).chunk(2, dim=-1)
        h = h + self.down(torch.relu(gate).square() * up, norm=self.ffn_sub_norm)
        return self.head(self.final_norm(h))


def _losses(model: nn.Module, backend: str) -> list[float]:
    model = copy.deepcopy(model)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    # One fixed batch: the model memorises it, so the loss must fall.
    ids = torch.randint(0, VOCAB, (2, 17), generator=torch.Generator().manual_seed(1))
    losses = []
    for _ in range(STEPS):
        with use_backend(backend):
            logits = model(ids[:, :-1])
        loss = nn.functional.cross_entropy(logits.reshape(-1, VOCAB), ids[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.fixture(scope="module")
def model_and_reference():
    torch.manual_seed(0)
    model = TinyBlockModel()
    return model, _losses(model, "reference")


def test_reference_run_learns(model_and_reference):
    _, ref = model_and_reference
    assert ref[-1] < ref[0]


def test_cpu_path_follows_the_reference_exactly(float32_backward, model_and_reference):
    model, ref = model_and_reference
    assert _losses(model, "cpu") == ref


@pytest.mark.parametrize("precision", ["bf16", "switchback", "int8"])
def test_cpu_path_with_a_faster_backward_follows_the_reference(monkeypatch, model_and_reference, precision):
    """BITK_CPU_BACKWARD=bf16 (gradients with bf16 rounding), switchback (the default with bitk's
    kernels: dx from int8-quantized dy) and int8 (dW from int8-quantized dy too): the same forward;
    the loss curve stays within a small relative distance of the reference's."""
    monkeypatch.setenv("BITK_CPU_BACKWARD", precision)
    model, ref = model_and_reference
    got = _losses(model, "cpu")
    assert got[0] == ref[0]  # the first forward is the reference's, bit for bit
    assert got[-1] < got[0]
    for step, (a, b) in enumerate(zip(got, ref)):
        assert abs(a - b) <= 5e-3 * abs(b), f"step {step}: {precision} backward {a} vs reference {b}"


@pytest.mark.slow
def test_triton_kernels_follow_the_reference(model_and_reference):
    model, ref = model_and_reference
    got = _losses(model, "triton")
    for step, (a, b) in enumerate(zip(got, ref)):
        assert abs(a - b) <= 2e-3 * abs(b), f"step {step}: kernels {a} vs reference {b}"
