"""training.compile=true: the model and its loss compile (inductor on CPU) without graph breaks.

bitk's kernels are torch.library custom ops (tests/nn/test_ops.py), so Dynamo sees each layer as
one op instead of tracing into the C++ codecs or Triton launches.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch._dynamo.utils import counters

from bitk.models import CausalLM
from bitk.nn import set_quant_lambda
from bitk.objectives import compute_loss
from bitk.train import loop
from bitk.train.loop import Run

STEPS = 5
# CE and the DLM objective: its masks are random draws, which the compiled loss must draw as eager does.
COMMON = ("objectives.weights=ce=1,dlm=0.5", "training.eval_every=0", "checkpoint.save_every=0")


def _losses(cfg) -> tuple[list[float], dict[str, int]]:
    """The train losses of STEPS steps of ``cfg``, and what Dynamo compiled from the second step on."""
    run = Run.start(cfg)
    losses, total, first = [], 0.0, {}
    try:
        for step in range(STEPS):
            if step == 1:
                first = dict(counters["stats"])
            run.train_step()
            losses.append(run.window.loss - total)  # the window sums the losses of good steps
            total = run.window.loss
    finally:
        run.close()
    return losses, {k: v - first.get(k, 0) for k, v in counters["stats"].items() if v != first.get(k, 0)}


def _compiled_losses(cfg) -> tuple[list[float], dict[str, int], dict[str, int]]:
    """(losses, graphs compiled after the first step, graph breaks) of a training.compile run."""
    torch._dynamo.reset()
    counters.clear()
    try:
        losses, steady = _losses(cfg)
        return losses, steady, dict(counters["graph_break"])
    finally:
        torch._dynamo.reset()
        loop._compiled_loss.cache_clear()


def test_the_compiled_graph_trains_as_eager_bit_for_bit(micro_config, tmp_path, monkeypatch):
    # Dynamo and AOTAutograd without inductor (the aot_eager backend): the captured forward and
    # backward (bitk's ops, their fake shapes, the saved tensors, the DLM draws) are eager's.
    eager, _ = _losses(micro_config(*COMMON, output_dir=tmp_path / "eager"))
    compile_ = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: compile_(fn, backend="aot_eager"))
    loop._compiled_loss.cache_clear()
    compiled, steady, breaks = _compiled_losses(
        micro_config(*COMMON, "training.compile=true", output_dir=tmp_path / "compiled")
    )
    assert compiled == eager
    assert breaks == {}
    assert steady == {}


def test_compiled_training_steps_give_the_eager_losses(micro_config, tmp_path):
    """Tolerance: with inductor the losses move by float rounding alone (the graph itself gives the
    eager losses bit for bit, test above). Inductor fuses and reorders float32 ops (norms, softmax,
    cross-entropy), moving results by a few ulps; where that moves an int8 activation code across
    a rounding tie, the loss moves by more, and each update then trains from slightly different
    weights, where latent weights at a ternary threshold flip (measured here: 0 at the first step,
    5e-6 relative at the fifth). The bounds, 1e-5 at the first step (no update yet) and 1e-4
    over five, catch what a compile-specific fault would change: DLM masks drawn differently from
    eager move the losses by 2e-5 at the first step and up to 8e-4 later, a wrong update by about
    the 1e-2 the loss falls per step. (The 4-layer tiny preset at 1024 tokens a step drifts more:
    2e-5 at the first step, 2.3e-4 after five.)
    """
    eager, _ = _losses(micro_config(*COMMON, output_dir=tmp_path / "eager"))
    compiled, steady, breaks = _compiled_losses(
        micro_config(*COMMON, "training.compile=true", output_dir=tmp_path / "compiled")
    )
    assert all(math.isfinite(v) for v in eager + compiled)
    assert compiled[0] == pytest.approx(eager[0], rel=1e-5, abs=0)
    assert compiled == pytest.approx(eager, rel=1e-4, abs=0)
    # No graph break at all (one traced at the first step would split every later step too), and
    # the steady state reuses the first step's graphs: nothing is compiled again.
    assert breaks == {}
    assert steady == {}


def _micro_model(lrc: bool = False) -> CausalLM:
    from bitk.train.config import parse_args

    args = ["model.num_hidden_layers=1", "model.hidden_size=64", "model.intermediate_size=128"]
    args += ["model.num_attention_heads=2", "model.num_key_value_heads=1"]
    cfg = parse_args(["model=tiny", *args, *(["model.lrc_rank_ratio=0.25"] if lrc else []), "device=cpu"])
    torch.manual_seed(0)
    return CausalLM(cfg.model.config())


@pytest.mark.parametrize(
    ("case", "weights"),
    [
        pytest.param("plain", {"ce": 1.0}, id="ce"),
        pytest.param("dlm", {"ce": 1.0, "dlm": 0.5}, id="ce+dlm"),
        pytest.param("warm-up", {"ce": 1.0}, id="warm-up"),  # quant lambda < 1: the fake-quant reference
        pytest.param("lrc", {"ce": 1.0}, id="lrc"),  # BitLinearLRC layers
    ],
)
@pytest.mark.parametrize("packed", [False, True], ids=["positions=None", "packed"])
def test_the_loss_traces_without_graph_breaks(case, weights, packed):
    model = _micro_model(lrc=case == "lrc")
    if case == "warm-up":
        set_quant_lambda(model, 0.5)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, model.config.vocab_size, (2, 32), generator=g)
    # Two documents per row (position_ids restart at 0), as the trainer's packed batches have.
    pos = torch.cat([torch.arange(20), torch.arange(12)]).expand(2, 32).contiguous() if packed else None
    torch._dynamo.reset()
    try:
        explained = torch._dynamo.explain(compute_loss)(model, ids, pos, weights, mask_token_id=2)
    finally:
        torch._dynamo.reset()
    reasons = [
        f"{r.reason.splitlines()[0]} at {r.user_stack[-1] if r.user_stack else '?'}" for r in explained.break_reasons
    ]
    assert explained.graph_break_count == 0, "\n".join(reasons)
    assert explained.graph_count == 1
