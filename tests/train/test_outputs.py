"""output_dir and the trainer's exception contract: one writer per folder, retention that a kill cannot
half-do, a failed GGUF export after a finished run, a full disk, an unusable output_dir, a corrupt
checkpoint, bad data: one line on stderr and a documented exit status, no traceback (but with --debug)."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bitk.train import loop
from bitk.train.__main__ import main
from bitk.train.lock import LOCK_FILE, OutputDirLock
from bitk.train.metrics import read_metrics
from bitk.train.state import list_checkpoints, load_state
from bitk_train_testing import start_training

SHORT = ("training.max_steps=4", "checkpoint.save_every=2", "training.eval_every=0")


def one_line(err: str) -> str:
    """The stderr of a refused or failed run: exactly one line, no traceback."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err and len(lines) == 1, err
    return lines[0]


# --------------------------------------------------------------------------- one writer per output_dir

HOLD_LOCK = """
import sys, time
from bitk.train.lock import OutputDirLock
lock = OutputDirLock.acquire(sys.argv[1])
print("locked", flush=True)
time.sleep(600)
"""


def test_a_second_run_on_a_held_output_dir_is_refused(micro_argv, tmp_path, capsys):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert main(micro_argv(*SHORT)) == 2
        line = one_line(capsys.readouterr().err)
        assert f"output_dir {out} is in use by process {holder.pid}" in line
        assert not (out / "checkpoints").exists() and not (out / "metrics.jsonl").exists()  # nothing touched
    finally:
        holder.kill()  # SIGKILL: the lock file stays behind, the lock does not
        holder.wait()
    assert (out / LOCK_FILE).read_text().strip() == str(holder.pid)
    assert main(micro_argv(*SHORT)) == 0
    assert [p.name for p in list_checkpoints(out)] == ["step-000002", "step-000004"]
    OutputDirLock.acquire(out).release()  # the finished run released it


def test_an_unusable_output_dir_is_one_line(micro_argv, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    for out in (blocker, blocker / "run"):  # the folder is a file; a file is in the way of its path
        assert main(micro_argv(*SHORT, output_dir=out)) == 2
        line = one_line(capsys.readouterr().err)
        assert line.startswith(f"bitk.train: error: cannot use output_dir {out}: it is a file"), line


def test_a_read_only_parent_folder_is_one_line(micro_argv, tmp_path, capsys, monkeypatch):
    parent = tmp_path / "read-only"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        if os.access(parent, os.W_OK):  # root writes into read-only folders: the OS answer, made by hand
            real_mkdir, refused = Path.mkdir, parent / "run"

            def no_mkdir(self, *args, **kwargs):
                if self == refused:
                    raise PermissionError(errno.EACCES, "Permission denied", str(self))
                return real_mkdir(self, *args, **kwargs)

            monkeypatch.setattr(Path, "mkdir", no_mkdir)
        assert main(micro_argv(*SHORT, output_dir=parent / "run")) == 2
        line = one_line(capsys.readouterr().err)
        assert f"cannot use output_dir {parent / 'run'}: permission denied" in line
    finally:
        parent.chmod(0o755)


def test_debug_shows_the_traceback(micro_argv, tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(OSError, match="it is a file"):
        main(["--debug", *micro_argv(*SHORT, output_dir=blocker)])
    monkeypatch.setenv("BITK_DEBUG", "1")
    with pytest.raises(OSError, match="it is a file"):
        main(micro_argv(*SHORT, output_dir=blocker))


@pytest.mark.slow
def test_two_live_runs_on_one_output_dir(micro_argv, tmp_path, run_env):
    """Two real `python -m bitk.train` on one folder: the second refuses, the first ends intact; a
    SIGKILLed run leaves its lock file, and the next run resumes past it."""
    out = tmp_path / "run"
    args = micro_argv(
        "training.max_steps=100000", "checkpoint.save_every=3", "checkpoint.keep_last=2", "training.eval_every=0"
    )
    first = start_training(args, run_env)
    lines = []
    try:
        for line in first.stdout:  # under way: past its first checkpoint
            lines.append(line)
            if line.startswith("saved "):
                break
        second = subprocess.run(
            [sys.executable, "-m", "bitk.train", *args], env=run_env, capture_output=True, text=True, timeout=300
        )
        assert first.poll() is None, "".join(lines)  # still training when the second gave up
        assert second.returncode == 2, second.stdout + second.stderr
        assert f"output_dir {out} is in use by process {first.pid}" in one_line(second.stderr)
        first.send_signal(signal.SIGTERM)
        rest, _ = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, "".join(lines) + rest
    ckpts = list_checkpoints(out)
    assert 1 <= len(ckpts) <= 2 and all(load_state(c)[2]["step"] > 0 for c in ckpts)
    steps = [r["step"] for r in read_metrics(out / "metrics.jsonl") if r["kind"] == "train"]
    assert steps and steps == sorted(steps) and len(steps) == len(set(steps))  # one writer: no interleaving
    # kill -9 a run under way: its lock dies with it, the next run continues the folder
    killed = start_training(args, run_env)
    try:
        for line in killed.stdout:
            if line.startswith("step "):
                break
        killed.kill()
        killed.wait(timeout=60)
    finally:
        if killed.poll() is None:
            killed.kill()
    assert (out / LOCK_FILE).exists()
    start = load_state(list_checkpoints(out)[-1])[2]["step"]
    resumed = subprocess.run(
        [sys.executable, "-m", "bitk.train", *micro_argv(f"training.max_steps={start + 2}", "training.eval_every=0")],
        env=run_env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"resumed from {list_checkpoints(out)[-2]}" in resumed.stdout or "resumed from" in resumed.stdout
    assert load_state(list_checkpoints(out)[-1])[2]["step"] == start + 2


# --------------------------------------------------------------------------- retention


def test_a_checkpoint_half_deleted_by_a_kill_is_never_listed(micro_config, tmp_path, monkeypatch):
    """keep_last deletes an old checkpoint; a kill in the middle of that must not leave a `step-N`
    folder that looks complete but is not."""
    from bitk.models import load_model
    from bitk.train import state

    out = tmp_path / "run"
    real_rmtree = state.shutil.rmtree

    def killed_midway(path, *args, **kwargs):
        name = os.path.basename(path)  # the old checkpoint, under its own name or one set aside for deleting
        if not (name == "step-000002" or name.startswith(".step-000002.deleting")):
            return real_rmtree(path, *args, **kwargs)
        os.remove(os.path.join(path, "tokenizer.json"))  # the first file goes, then the power does
        raise KeyboardInterrupt

    monkeypatch.setattr(state.shutil, "rmtree", killed_midway)
    with pytest.raises(KeyboardInterrupt):
        loop.train(micro_config(*SHORT, "checkpoint.keep_last=1"))
    monkeypatch.setattr(state.shutil, "rmtree", real_rmtree)
    listed = list_checkpoints(out)
    assert [p.name for p in listed] == ["step-000004"]
    for path in listed:
        load_model(path)
    # the next save sweeps away what the kill left
    loop.train(micro_config("training.max_steps=6", "checkpoint.save_every=2", "training.eval_every=0"))
    assert not [p.name for p in (out / "checkpoints").iterdir() if p.name.startswith(".step-")]


# --------------------------------------------------------------------------- GGUF export


def test_a_failed_gguf_export_reports_the_finished_training(micro_argv, tmp_path, capsys):
    out = tmp_path / "run"
    (out / "model-i2_s.gguf").mkdir(parents=True)  # a folder where the file goes
    assert main(micro_argv(*SHORT, "export_gguf=i2_s")) == 0
    captured = capsys.readouterr()
    ckpt = out / "checkpoints" / "step-000004"
    line = one_line(captured.err)
    assert line.startswith(f"bitk.train: warning: training finished and its checkpoint {ckpt} is complete"), line
    assert "model-i2_s.gguf" in line
    assert "GGUF export skipped" in captured.out and "Traceback" not in captured.out
    assert load_state(ckpt)[2]["step"] == 4


def test_a_failed_gguf_export_is_in_the_summary(micro_config, tmp_path, monkeypatch):
    import bitk.gguf

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "run" / "model-i2_s.gguf"))

    monkeypatch.setattr(bitk.gguf, "pack", disk_full)
    summary = loop.train(micro_config(*SHORT, "export_gguf=i2_s"))
    assert summary["steps"] == 4 and summary["gguf"] is None
    assert summary["gguf_error"] == f"cannot write {tmp_path / 'run' / 'model-i2_s.gguf'}: no space left on device"


# --------------------------------------------------------------------------- full disk, corrupt checkpoints


def test_disk_full_during_a_save_is_one_line(micro_argv, tmp_path, monkeypatch, capsys):
    from bitk.train import state

    out = tmp_path / "run"
    real = torch.save

    def full_at_step_4(obj, f, *args, **kwargs):
        if "step-000004" in str(f):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(obj, f, *args, **kwargs)

    monkeypatch.setattr(state.torch, "save", full_at_step_4)
    assert main(micro_argv("training.max_steps=6", "checkpoint.save_every=2", "training.eval_every=0")) == 1
    line = one_line(capsys.readouterr().err)
    good = out / "checkpoints" / "step-000002"
    assert f"{out / 'checkpoints' / 'step-000004'}: no space left on device" in line, line
    assert f"the last good checkpoint is {good}" in line
    assert [p.name for p in list_checkpoints(out)] == ["step-000002"] and load_state(good)[2]["step"] == 2


def test_disk_full_writing_metrics_is_one_line(micro_argv, tmp_path, monkeypatch, capsys):
    from bitk.train import metrics

    real_log = metrics.Metrics.log

    def full_at_step_3(self, record):
        if record["step"] == 3:
            self._file.write = lambda text: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left on device"))
        return real_log(self, record)

    monkeypatch.setattr(metrics.Metrics, "log", full_at_step_3)
    assert main(micro_argv("training.max_steps=6", "checkpoint.save_every=2", "training.eval_every=0")) == 1
    line = one_line(capsys.readouterr().err)
    assert f"{tmp_path / 'run' / 'metrics.jsonl'}: no space left on device" in line, line


@pytest.mark.parametrize("broken", ["trainer_state.pt", "model.safetensors"])
def test_a_corrupt_checkpoint_on_resume_is_one_line(micro_argv, tmp_path, capsys, broken):
    out = tmp_path / "run"
    assert main(micro_argv("training.max_steps=2", "training.eval_every=0")) == 0
    ckpt = out / "checkpoints" / "step-000002"
    (ckpt / broken).write_bytes(b"\x80\x04 not what was saved" * 10)
    capsys.readouterr()
    assert main(micro_argv("training.max_steps=4", "training.eval_every=0")) == 2
    line = one_line(capsys.readouterr().err)
    assert line.startswith(f"bitk.train: error: {ckpt / broken}") and ("corrupt" in line or "truncated" in line), line


# --------------------------------------------------------------------------- bad data, bad settings


def test_bad_training_data_names_the_file_and_line(micro_argv, tmp_path, capsys):
    data = tmp_path / "bad.jsonl"
    data.write_text(json.dumps({"text": "a fine document " * 40}) + "\n" + json.dumps({"text": 17}) + "\n")
    assert main(micro_argv(*SHORT, f"data.sources=[{data}]")) == 2
    line = one_line(capsys.readouterr().err)
    assert f"{data} line 2: 'text' holds a number (17), not a string" in line, line


@pytest.mark.parametrize(
    "override, message",
    [
        ("training.warmup_steps=4", r"training.warmup_steps \(4\) must be less than training.max_steps \(4\).*0 to 3"),
        ("training.lr=nan", r"training.lr must be a finite number"),
        ("training.micro_batch_size=3", r"must be a multiple of training.micro_batch_size \(3\)"),
    ],
)
def test_implausible_settings_are_refused_before_training(micro_argv, tmp_path, capsys, override, message):
    import re

    started = time.perf_counter()
    assert main(micro_argv(*SHORT, override)) == 2
    err = capsys.readouterr().err
    assert re.search(message, err), err
    assert not (tmp_path / "run").exists() and time.perf_counter() - started < 30
