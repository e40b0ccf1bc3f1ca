"""Faults: a kill during a save, NaN/Inf losses, SIGTERM / SIGINT."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest
import torch

from bitk.train import loop
from bitk.train.__main__ import main
from bitk.train.config import parse_args
from bitk.train.metrics import read_metrics
from bitk.train.state import latest_checkpoint, list_checkpoints, load_state
from bitk_train_testing import start_training

# --------------------------------------------------------------------------- kill during save

KILL_DURING_SAVE = """
import os, signal, sys, torch
from bitk.train import loop, state
from bitk.train.config import parse_args

real_save = torch.save
def save_and_die(obj, f, *args, **kwargs):
    if ".step-000004" in str(f):  # the trainer state of the step-4 checkpoint, in its hidden folder
        with open(f, "wb") as out:
            out.write(b"partial")  # half a trainer state, then the power goes
            out.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    return real_save(obj, f, *args, **kwargs)
state.torch.save = save_and_die
loop.train(parse_args(sys.argv[1:]))
"""


@pytest.mark.slow
def test_sigkill_during_save_leaves_the_previous_checkpoint(micro_argv, tmp_path, run_env):
    out = tmp_path / "run"
    args = micro_argv("training.max_steps=6", "checkpoint.save_every=2", "training.eval_every=0")
    proc = subprocess.run(
        [sys.executable, "-c", KILL_DURING_SAVE, *args], env=run_env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr
    root = out / "checkpoints"
    # the killed save left only a hidden temporary folder; step 2 and `latest` are untouched
    assert (root / "latest").read_text() == "step-000002\n"
    assert [p.name for p in list_checkpoints(out)] == ["step-000002"]
    assert not (root / "step-000004").exists()
    leftovers = [p.name for p in root.iterdir() if p.name.startswith(".")]
    assert leftovers and all(name.startswith(".step-000004") for name in leftovers), leftovers
    meta, _, state = load_state(root / "step-000002")
    assert state["step"] == 2 and meta["step"] == 2
    from bitk.models import load_model

    load_model(root / "step-000002")
    # resume=auto continues from step 2 and the next save sweeps the leftovers away
    summary = loop.train(parse_args(args))
    assert summary["steps"] == 6
    assert [p.name for p in list_checkpoints(out)] == ["step-000002", "step-000004", "step-000006"]
    assert not [p for p in root.iterdir() if p.name.startswith(".")]


def test_failed_save_keeps_the_previous_checkpoint(micro_config, tmp_path, monkeypatch):
    """An exception in the middle of a save (disk full, say): no partial folder, no partial `latest`."""
    from bitk.train import state

    out = tmp_path / "run"
    real = torch.save

    def fail_at_step_4(obj, f, *args, **kwargs):
        if "step-000004" in str(f):
            with open(f, "wb") as fh:
                fh.write(b"partial")
            raise OSError(28, "No space left on device")
        return real(obj, f, *args, **kwargs)

    monkeypatch.setattr(state.torch, "save", fail_at_step_4)
    with pytest.raises(loop.TrainingError, match="step-000004: no space left on device.*step-000002"):
        loop.train(micro_config("training.max_steps=6", "checkpoint.save_every=2", "training.eval_every=0"))
    root = out / "checkpoints"
    assert (root / "latest").read_text() == "step-000002\n"
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step-000002"]
    assert load_state(root / "step-000002")[2]["step"] == 2


# --------------------------------------------------------------------------- NaN / Inf


def poison_losses(monkeypatch, bad_calls):
    """Make the loss NaN on the given 0-based calls of `compute_loss` (micro-steps: 2 per step here)."""
    real = loop.compute_loss
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        loss, parts = real(*args, **kwargs)
        n = calls["n"]
        calls["n"] += 1
        return (loss * float("nan"), parts) if n in bad_calls else (loss, parts)

    monkeypatch.setattr(loop, "compute_loss", poisoned)


def test_a_nan_loss_skips_the_step_and_is_counted(micro_config, monkeypatch):
    # step 3's second micro-step (call 5) and step 5's first (call 8) are NaN
    poison_losses(monkeypatch, {5, 8})
    summary = loop.train(micro_config("training.max_steps=6", "training.eval_every=0", "checkpoint.save_every=0"))
    assert summary["steps"] == 6 and summary["skipped_steps"] == 2
    records = read_metrics(summary["metrics"])
    bad = [r for r in records if r["kind"] == "bad_step"]
    assert [(r["step"], r["loss"], r["consecutive"]) for r in bad] == [(3, "nan", 1), (5, "nan", 1)]
    train = {r["step"]: r for r in records if r["kind"] == "train"}
    assert all(isinstance(train[s]["loss"], float) for s in (1, 2, 4, 6))  # finite losses
    assert train[3]["loss"] == "nan" and train[6]["skipped_steps"] == 2  # no good step in step 3's window
    # the optimizer stepped 4 times, not 6
    _, _, state = load_state(summary["checkpoint"])
    steps = {float(s["step"]) for s in state["optimizer"]["state"].values() if "step" in s}
    assert steps == {4.0}
    assert state["bad_steps"] == {"total": 2, "consecutive": 0}


def test_too_many_bad_steps_stop_with_the_last_good_checkpoint(micro_argv, tmp_path, monkeypatch, capsys):
    # every loss from step 4 on (call 6) is NaN: steps 4, 5, 6 are skipped, then the run stops
    poison_losses(monkeypatch, set(range(6, 100)))
    args = micro_argv(
        "training.max_steps=10",
        "checkpoint.save_every=2",
        "training.eval_every=0",
        "training.max_bad_steps=3",
        "export_gguf=i2_s",
    )
    assert main(args) == 1
    err = capsys.readouterr().err
    out = tmp_path / "run"
    good = out / "checkpoints" / "step-000002"
    assert "stopped at step 6: 3 steps in a row" in err and str(good) in err
    assert [p.name for p in list_checkpoints(out)] == ["step-000002"]  # nothing saved during the streak
    assert latest_checkpoint(out) == good and not (out / "model-i2_s.gguf").exists()


@pytest.mark.parametrize("ternary", [True, False])
def test_non_finite_weights_stop_the_run_and_are_never_saved(micro_config, monkeypatch, ternary):
    """A weight turned inf at step 3: BitLinear refuses it at once (ternary), or every later loss is NaN
    and the final save refuses the weights (full precision). Either way: TrainingError, step 2 named."""
    model = {}
    real_build, real_loss = loop.build_model, loop.compute_loss
    calls = {"n": 0}

    def build_and_keep(*args):
        model["m"], tokenizer = real_build(*args)
        return model["m"], tokenizer

    def break_weights(*args, **kwargs):
        result = real_loss(*args, **kwargs)  # this micro-step's forward saw the weights intact
        calls["n"] += 1
        if calls["n"] == 5:
            with torch.no_grad():
                model["m"].model.layers[0].self_attn.q_proj.weight.view(-1)[0] = float("inf")
        return result

    monkeypatch.setattr(loop, "build_model", build_and_keep)
    monkeypatch.setattr(loop, "compute_loss", break_weights)
    cfg = micro_config(
        "training.max_steps=6",
        "checkpoint.save_every=2",
        "training.eval_every=0",
        "training.max_bad_steps=8",
        f"model.ternary={str(ternary).lower()}",
    )
    with pytest.raises(loop.TrainingError, match="last good checkpoint is .*step-000002"):
        loop.train(cfg)
    assert [p.name for p in list_checkpoints(cfg.output_dir)] == ["step-000002"]


# --------------------------------------------------------------------------- signals


@pytest.mark.slow
@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 0), (signal.SIGINT, 130)], ids=["SIGTERM", "SIGINT"])
def test_signal_saves_a_checkpoint_and_exits_cleanly(micro_argv, tmp_path, run_env, sig, code):
    out = tmp_path / "run"
    args = micro_argv(
        "training.max_steps=100000", "checkpoint.save_every=0", "training.eval_every=0", "export_gguf=i2_s"
    )
    proc = start_training(args, run_env)
    lines = []
    try:
        for line in proc.stdout:  # wait until training is under way
            lines.append(line)
            if line.startswith("step ") and "/100000" in line:
                proc.send_signal(sig)
                break
        rest, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = "".join(lines) + rest
    assert proc.returncode == code, text
    assert f"{sig.name} received" in text and f"stopped by {sig.name}" in text
    ckpt = latest_checkpoint(out)
    assert ckpt is not None and 1 <= load_state(ckpt)[2]["step"] < 100000
    assert not (out / "model-i2_s.gguf").exists()  # a preempted run exports nothing: it saves and leaves
    records = read_metrics(out / "metrics.jsonl")
    assert records and records[-1]["step"] <= load_state(ckpt)[2]["step"]


# --------------------------------------------------------------------------- CPU settings


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("BITK_CPU_KERNEL", "avx9", "BITK_CPU_KERNEL='avx9' is not one of scalar, avx2, avx_vnni, avx512_vnni"),
        ("BITK_CPU_BACKWARD", "fp8", "BITK_CPU_BACKWARD='fp8' is not one of"),
        ("BITK_CPU_MATMUL", "gpu", "BITK_CPU_MATMUL='gpu' is not one of cpp, int_mm, float"),
    ],
)
def test_a_cpu_setting_this_machine_cannot_run_is_refused_before_training(
    micro_argv, tmp_path, monkeypatch, capsys, name, value, message
):
    monkeypatch.setenv(name, value)
    assert main(micro_argv()) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("bitk.train: error: ") and message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "run").exists()
