"""The training loop end to end on a micro model: outputs, learning, accumulation, options."""

from __future__ import annotations

import json
import math

import pytest
import torch

from bitk.train import loop
from bitk.train.config import config_from_dict
from bitk.train.metrics import read_metrics
from bitk.train.state import STATE_FILE, latest_checkpoint, load_state


def train_losses(summary) -> list[float]:
    return [r["loss"] for r in read_metrics(summary["metrics"]) if r["kind"] == "train"]


def test_micro_run_writes_every_output_and_learns(micro_config, tmp_path):
    cfg = micro_config("training.max_steps=12", "training.lr=1e-2", "export_gguf=i2_s")
    summary = loop.train(cfg)
    out = tmp_path / "run"

    assert summary["steps"] == 12 and summary["tokens"] == 12 * 4 * 32
    assert summary["stopped"] is None and summary["skipped_steps"] == 0
    # checkpoint: a bitk checkpoint with the resolved config, step and tokens, plus the trainer state
    ckpt = out / "checkpoints" / "step-000012"
    assert summary["checkpoint"] == str(ckpt) and latest_checkpoint(out) == ckpt
    assert (out / "checkpoints" / "latest").read_text().strip() == "step-000012"
    meta = json.loads((ckpt / "bitk.json").read_text())
    assert meta["step"] == 12 and meta["tokens"] == 12 * 4 * 32
    assert config_from_dict(meta["train_config"]) == cfg
    assert (ckpt / STATE_FILE).is_file() and (ckpt / "tokenizer.json").is_file()
    from bitk.models import load_model

    model = load_model(ckpt)
    assert model.config.hidden_size == 128 and model.config.num_hidden_layers == 1
    # metrics: one train record per step, an eval record every 4 steps (and at the end)
    records = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in records if r["kind"] == "train"] == list(range(1, 13))
    assert [r["step"] for r in records if r["kind"] == "eval"] == [4, 8, 12]
    for r in records:
        if r["kind"] == "train":
            assert set(r) >= {"tokens", "loss", "lr", "grad_norm", "tokens_per_s"} and r["tokens_per_s"] > 0
    assert summary["eval_loss"] == [r for r in records if r["kind"] == "eval"][-1]["loss"]
    # the held-out loss as the I2_S file runs (bitnet.cpp's numerics, F16 embedding): close, not equal
    assert records[-1]["kind"] == "eval_as_exported" and records[-1]["numerics"] == "i2s"
    assert summary["gguf_eval_loss"] == records[-1]["loss"] != summary["eval_loss"]
    assert abs(summary["gguf_eval_loss"] - summary["eval_loss"]) < 0.05
    assert math.isclose(summary["eval_perplexity"], math.exp(summary["eval_loss"]), rel_tol=1e-9)
    # the loss curve and the GGUF
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    gguf = out / "model-i2_s.gguf"
    assert summary["gguf"] == str(gguf) and gguf.read_bytes()[:4] == b"GGUF"
    from bitk.gguf import read_gguf

    assert read_gguf(gguf) is not None
    # it learns: the loss falls well below ln(vocab) = 8.3 and the held-out loss falls too
    losses = train_losses(summary)
    assert all(math.isfinite(x) for x in losses)
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.5, losses
    evals = [r["loss"] for r in records if r["kind"] == "eval"]
    assert evals[-1] < evals[0], evals


def test_gradient_accumulation_matches_one_big_micro_batch(micro_config, tmp_path):
    # global batch 4: micro 2 x accumulation 2 == micro 4 x accumulation 1 (same blocks, same mean loss)
    common = (
        "training.max_steps=4",
        "training.warmup_steps=2",  # the lr of the micro runs' first steps: a few ulps do not grow
        "training.eval_every=0",
        "checkpoint.save_every=0",
        "training.clip=none",
    )
    a = loop.train(micro_config(*common, "training.micro_batch_size=2", output_dir=tmp_path / "a"))
    b = loop.train(micro_config(*common, "training.micro_batch_size=4", output_dir=tmp_path / "b"))
    la, lb = train_losses(a), train_losses(b)
    # float32 sums in another order: equal to a few ulps of the loss, growing slowly over 4 steps
    assert la == pytest.approx(lb, rel=1e-5), (la, lb)


def test_muon_wsd_norm_clip_and_quant_warmup(micro_config, monkeypatch):
    lambdas = []
    real = loop.set_quant_lambda
    monkeypatch.setattr(loop, "set_quant_lambda", lambda m, lam: (lambdas.append(lam), real(m, lam)))
    cfg = micro_config(
        "training.optimizer=muon",
        "training.schedule=wsd",
        "training.clip=norm",
        "training.quant_warmup_steps=4",
        "training.quant_warmup_shape=cosine",
        "training.max_steps=6",
        "training.eval_every=0",
    )
    summary = loop.train(cfg)
    assert summary["steps"] == 6 and all(math.isfinite(x) for x in train_losses(summary))
    assert lambdas[0] == 0.0 and lambdas[1:4] == sorted(lambdas[1:4]) and lambdas[4:] == [1.0, 1.0]
    _, _, state = load_state(summary["checkpoint"])
    assert {g["group"] for g in state["optimizer"]["param_groups"]} == {"muon", "no_decay"}


def test_auto_batch_size_keeps_the_global_batch(micro_config, capsys):
    cfg = micro_config(
        "training.auto_batch_size=true",
        "training.micro_batch_size=1",
        "training.memory_budget_gb=64",
        "training.max_steps=2",
        "training.eval_every=0",
    )
    summary = loop.train(cfg)
    out = capsys.readouterr().out
    assert "auto batch: micro-batch 4" in out
    assert "micro-batch 4 x 1 accumulation" in out
    _, _, state = load_state(summary["checkpoint"])
    assert state["micro_batch_size"] == 4


def test_bad_setups_fail_before_training(micro_config, tmp_path):
    with pytest.raises(ValueError, match="max_position_embeddings"):
        loop.train(micro_config("model.max_position_embeddings=16"))
    with pytest.raises(ValueError, match="no such checkpoint folder"):
        loop.train(micro_config(f"resume={tmp_path / 'missing'}"))
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_training_from_a_model_path(micro_config, tmp_path):
    """model=PATH: a bitk checkpoint with a tokenizer is the starting point (fine-tuning)."""
    from bitk.data import default_tokenizer
    from bitk.models import CausalLM

    start = tmp_path / "start"
    torch.manual_seed(0)
    CausalLM(micro_config().model.config()).save(start, tokenizer=default_tokenizer())
    cfg = micro_config("training.max_steps=2", "training.eval_every=0")
    cfg.model = type(cfg.model)(name=str(start))
    summary = loop.train(cfg)
    assert summary["steps"] == 2
    assert (tmp_path / "run" / "checkpoints" / "step-000002" / "tokenizer.json").is_file()


def test_a_model_path_without_tokenizer_is_refused(micro_config, tmp_path):
    from bitk.models import CausalLM

    start = tmp_path / "start"
    CausalLM(micro_config().model.config()).save(start)
    cfg = micro_config()
    cfg.model = type(cfg.model)(name=str(start))
    with pytest.raises(ValueError, match="no tokenizer.json"):
        loop.train(cfg)
