"""Full-state checkpoints: exact resume, keep-last-K, the latest pointer, refusals."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from bitk.train import loop
from bitk.train.metrics import read_metrics
from bitk.train.state import (
    checkpoint_name,
    find_checkpoint,
    latest_checkpoint,
    list_checkpoints,
    load_state,
    rng_state,
    set_rng_state,
)
from bitk_train_testing import train_until_first_save


def losses(output_dir) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in read_metrics(output_dir / "metrics.jsonl") if r["kind"] == "train"]


@pytest.mark.parametrize(
    "extra",
    [
        (),  # AdamW + ZClip (whose warm-up ends mid-run) + cosine
        ("training.optimizer=muon", "training.schedule=wsd", "training.clip=norm", "training.quant_warmup_steps=5"),
        ("training=unified", "objectives.weights=0:ce=1;0.25:ce=1,dlm=1"),  # DLM masks drawn across the resume
    ],
    ids=["adamw-zclip", "muon-wsd-quantwarmup", "unified-dlm"],
)
def test_resume_reproduces_the_losses_bit_for_bit(micro_config, tmp_path, monkeypatch, extra):
    steps = ("training.max_steps=8", "training.eval_every=0", *extra)
    straight = loop.train(micro_config(*steps, "checkpoint.save_every=0", output_dir=tmp_path / "straight"))

    # the same run, crashing right after its step-4 checkpoint (max_steps=4 would change the schedule)
    half = tmp_path / "half"
    train_until_first_save(micro_config(*steps, "checkpoint.save_every=4", output_dir=half), monkeypatch)
    assert latest_checkpoint(half).name == "step-000004"
    resumed = loop.train(micro_config(*steps, "checkpoint.save_every=0", output_dir=half))

    assert resumed["steps"] == 8
    assert losses(half) == losses(tmp_path / "straight")  # exact floats, steps 1..8, no duplicates
    a = load_state(straight["checkpoint"])[1]
    b = load_state(resumed["checkpoint"])[1]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_keep_last_and_latest_pointer(micro_config, tmp_path):
    out = tmp_path / "run"
    loop.train(
        micro_config(
            "training.max_steps=5", "checkpoint.save_every=1", "checkpoint.keep_last=2", "training.eval_every=0"
        )
    )
    assert [p.name for p in list_checkpoints(out)] == ["step-000004", "step-000005"]
    assert latest_checkpoint(out).name == "step-000005"
    # a pointer to a folder that is gone (or garbage) falls back to the newest complete checkpoint
    (out / "checkpoints" / "latest").write_text("step-000009\n")
    assert latest_checkpoint(out).name == "step-000005"
    (out / "checkpoints" / "latest").write_text("../../etc\n")
    assert latest_checkpoint(out).name == "step-000005"
    # an incomplete folder is not a checkpoint
    (out / "checkpoints" / "latest").unlink()
    (out / "checkpoints" / "step-000005" / "trainer_state.pt").unlink()
    assert latest_checkpoint(out).name == "step-000004"


def test_resume_auto_continues_and_trims_the_metrics(micro_config, tmp_path):
    out = tmp_path / "run"
    loop.train(micro_config("training.max_steps=4", "training.eval_every=0", "checkpoint.save_every=2"))
    # pretend the first run went on to step 4 after its step-2 checkpoint and was then lost
    for p in list_checkpoints(out)[1:]:
        import shutil

        shutil.rmtree(p)
    (out / "checkpoints" / "latest").write_text(checkpoint_name(2) + "\n")
    summary = loop.train(micro_config("training.max_steps=6", "training.eval_every=0", "checkpoint.save_every=2"))
    assert summary["steps"] == 6
    steps = [s for s, _ in losses(out)]
    assert steps == [1, 2, 3, 4, 5, 6]  # the lost run's steps 3-4 were replaced, not duplicated
    # already at max_steps: nothing to train, the outputs are still produced
    again = loop.train(micro_config("training.max_steps=6", "training.eval_every=0", "checkpoint.save_every=2"))
    assert again["steps"] == 6 and again["checkpoint"] == summary["checkpoint"]


def test_refusals(micro_config, tmp_path):
    out = tmp_path / "run"
    loop.train(micro_config("training.max_steps=2", "training.eval_every=0"))
    with pytest.raises(ValueError, match="already holds checkpoints"):
        loop.train(micro_config("training.max_steps=2", "resume=none"))
    with pytest.raises(ValueError, match=r"trained from another model \(model.intermediate_size 256 -> 512\)"):
        loop.train(micro_config("training.max_steps=2", "model.intermediate_size=512"))
    # a bitk model checkpoint is a starting model, not a run to resume
    from bitk.models import CausalLM

    plain = tmp_path / "plain"
    CausalLM(micro_config().model.config()).save(plain)
    with pytest.raises(ValueError, match="model="):
        find_checkpoint(str(plain), out)
    # an output_dir given as resume= means its latest checkpoint
    assert find_checkpoint(str(out), tmp_path / "elsewhere") == latest_checkpoint(out)
    assert find_checkpoint("none", out) is None


def test_rng_state_round_trip():
    state = rng_state()
    a = (random.random(), np.random.rand(), torch.rand(3))
    set_rng_state(state)
    b = (random.random(), np.random.rand(), torch.rand(3))
    assert a[0] == b[0] and a[1] == b[1] and torch.equal(a[2], b[2])
