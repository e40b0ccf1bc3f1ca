"""`model=NAME` starts from the preset's pretrained hub repo: conversion, tokenizer, mask token, teacher, export.

The repos are the session's offline Hugging Face cache (tests/conftest.py `hub_cache`): small random
models under the presets' repo ids, each with a tokenizer shaped like the real one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bitk.data import document_tokens, load_tokenizer
from bitk.gguf.reader import read_gguf
from bitk.models import load_checkpoint, load_model
from bitk.train import build as build_module
from bitk.train import loop
from bitk.train.config import parse_args
from bitk.train.distributed import DistInfo
from bitk.train.metrics import read_metrics
from bitk_testing import build_hub_repo

SMALL = (
    "data.block_size=32",
    "data.max_eval_tokens=128",
    "training.max_steps=2",
    "training.global_batch_size=2",
    "training.micro_batch_size=2",
    "training.warmup_steps=1",
    "logging.log_every=1",
    "training.eval_every=0",
    "logging.progress=false",
    "device=cpu",
)
SMOLLM = "HuggingFaceTB/SmolLM2-135M"
CONTROL = 3


def args(out: Path, *overrides: str) -> list[str]:
    return [*SMALL, f"output_dir={out}", *overrides]


def build(cfg, out: Path):
    """The trainer's model and tokenizer for ``cfg`` (no training)."""
    info = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), is_main=True, enabled=False)
    return build_module.build_model(cfg, None, out, info, lambda *a, **k: None)


def test_a_preset_loads_its_repo_converted_like_load_model(hub_cache, tmp_path):
    cfg = parse_args(args(tmp_path, "model=smollm2_135m"))
    model, tokenizer = build(cfg, tmp_path)
    reference = load_model(hub_cache[SMOLLM])  # the conversion bitk.load_model applies
    assert model.config == reference.config and model.config.ternary and model.config.subln
    for (name, a), b in zip(model.state_dict().items(), reference.state_dict().values()):
        assert torch.equal(a, b), name
    assert model.tokenizer_dir == hub_cache[SMOLLM] and tokenizer.get_vocab_size() == 400
    assert model.source.startswith(f"{SMOLLM}@{hub_cache[SMOLLM].name[:12]}")
    # full precision: the repo's model as it is
    fp, _ = build(parse_args(args(tmp_path, "model=smollm2_135m", "model.ternary=false", "export_gguf=f16")), tmp_path)
    assert not fp.config.ternary and not fp.config.subln
    # the architecture is the repo's, whatever the preset's published size: 2 layers of width 64 here
    assert (model.config.num_hidden_layers, model.config.hidden_size) == (2, 64)


def test_the_preset_brings_a_gentler_learning_rate_under_the_training_preset():
    assert parse_args(["model=smollm2_135m"]).training.lr == 1e-3
    assert parse_args(["model=qwen3_4b", "training=unified"]).training.lr == 5e-4
    assert parse_args(["model=qwen3_4b", "training=lrc_calibration"]).training.lr == 1e-3  # the recipe's own
    assert parse_args(["model=qwen3_4b", "training=lrc_calibration"]).training.weight_decay == 0.0
    assert parse_args(["model=smollm2_135m", "training.lr=2e-4"]).training.lr == 2e-4
    assert parse_args(["model=smollm2_135m", "model.pretrained=false"]).training.lr == 3e-3  # from scratch: base


def test_unified_on_smollm2_adds_the_mask_token_everywhere(hub_cache, tmp_path, capsys):
    """SmolLM2's tokenizer has no mask token: DLM adds one (a new row), and it reaches checkpoint, HF and GGUF."""
    out = tmp_path / "run"
    summary = loop.train(
        parse_args(args(out, "model=smollm2_135m", "training=unified", "checkpoint.save_every=1", "export_gguf=i2_s"))
    )
    assert summary["steps"] == 2
    stdout = capsys.readouterr().out
    assert "DLM: the tokenizer has no <|mask|>; added it as id 400" in stdout
    assert "the vocabulary grows to 401 rows" in stdout
    ckpt = Path(summary["checkpoint"])
    tok = load_tokenizer(ckpt)
    assert tok.token_to_id("<|mask|>") == 400 and tok.get_vocab_size() == 401
    assert json.loads((ckpt / "tokenizer_config.json").read_text())["mask_token"] == "<|mask|>"
    assert load_checkpoint(ckpt).config.vocab_size == 401
    # the starting row: the mean of the pretrained embedding's rows (step 1's checkpoint is one AdamW step away)
    start, _ = build(parse_args(args(tmp_path / "probe", "model=smollm2_135m", "training=unified")), tmp_path / "probe")
    emb = start.model.embed_tokens.weight
    assert torch.allclose(emb[400], load_model(hub_cache[SMOLLM]).model.embed_tokens.weight.mean(0), atol=1e-6)
    # the GGUF carries it as a control token, with SmolLM2's pre-tokenizer
    with read_gguf(summary["gguf"]) as f:
        tokens, types = f.metadata["tokenizer.ggml.tokens"], f.metadata["tokenizer.ggml.token_type"]
        assert len(tokens) == 401 and tokens[400] == "<|mask|>" and types[400] == CONTROL
        assert f.metadata["tokenizer.ggml.pre"] == "smollm"
    # a Hugging Face export keeps it too: transformers' tokenizer knows its role
    from transformers import AutoTokenizer

    from bitk.models import export_hf

    export_hf(load_checkpoint(ckpt), tmp_path / "hf")
    assert AutoTokenizer.from_pretrained(tmp_path / "hf").mask_token == "<|mask|>"


def test_resume_needs_no_hub_and_keeps_the_added_token(hub_cache, tmp_path, monkeypatch):
    out = tmp_path / "run"
    loop.train(parse_args(args(out, "model=smollm2_135m", "training=unified", "export_gguf=none")))

    def no_hub(*a, **k):
        raise AssertionError("a resumed run reads its checkpoint, not the hub")

    monkeypatch.setattr(build_module, "resolve_model", no_hub)
    summary = loop.train(
        parse_args(args(out, "model=smollm2_135m", "training=unified", "export_gguf=none", "training.max_steps=4"))
    )
    assert summary["steps"] == 4 and load_checkpoint(summary["checkpoint"]).config.vocab_size == 401
    with pytest.raises(ValueError, match=r"trained from another model \(model.name 'smollm2_135m' -> 'qwen3_0_6b'\)"):
        loop.train(parse_args(args(out, "model=qwen3_0_6b", "training.max_steps=6", "export_gguf=none")))


def test_qwen3_vocabulary_padded_past_the_tokenizer(hub_cache, tmp_path, capsys):
    """Qwen3 has more embedding rows (512) than tokens (400): the mask token takes a free row, nothing grows."""
    summary = loop.train(parse_args(args(tmp_path / "run", "model=qwen3_0_6b", "training=unified", "export_gguf=none")))
    ckpt = Path(summary["checkpoint"])
    assert load_checkpoint(ckpt).config.vocab_size == 512
    assert load_tokenizer(ckpt).token_to_id("<|mask|>") == 400
    assert "added it as id 400 (written to" in capsys.readouterr().out
    # EOS as Qwen3's tokenizer_config says (<|im_end|>), no BOS
    tok = load_tokenizer(hub_cache["Qwen/Qwen3-0.6B"])
    assert document_tokens(tok, hub_cache["Qwen/Qwen3-0.6B"]).eos == tok.token_to_id("<|im_end|>")


def test_a_padded_llama_vocabulary_trains_and_exports(hub_cache, tmp_path):
    build_hub_repo("bitk-tests/padded-llama", "llama", seed=21, vocab_rows=448)
    summary = loop.train(
        parse_args(
            args(
                tmp_path / "run",
                "model=bitk-tests/padded-llama",
                "training=unified",
                "export_gguf=i2_s",
                "training.eval_every=2",
            )
        )
    )
    assert summary["eval_loss"] is not None and summary["gguf"] is not None
    with read_gguf(summary["gguf"]) as f:
        tokens = f.metadata["tokenizer.ggml.tokens"]
        assert len(tokens) == 448 and tokens[400] == "<|mask|>" and tokens[447] == "[PAD447]"
        assert 448 in f.tensors["token_embd.weight"].shape
    from bitk.models import export_hf

    folder = export_hf(load_checkpoint(summary["checkpoint"]), tmp_path / "hf")
    assert json.loads((folder / "config.json").read_text())["vocab_size"] == 448


def test_bitnet_tokenizer_frames_documents_with_its_bos(hub_cache, tmp_path):
    """BitNet 2B4T's Llama 3 tokenizer adds <|begin_of_text|>: every packed document is BOS doc EOS."""
    cfg = parse_args(args(tmp_path, "model=bitnet_2b"))
    model, tokenizer = build(cfg, tmp_path)
    framing = document_tokens(tokenizer, model.tokenizer_dir, model.config.eos_token_id)
    bos, eos = tokenizer.token_to_id("<|begin_of_text|>"), tokenizer.token_to_id("<|end_of_text|>")
    assert (framing.bos, framing.eos) == (bos, eos)
    from bitk.data import TrainData

    data = TrainData(cfg.data, tokenizer, seed=0, framing=framing)
    blocks, pos = data._sources[0].ids.long(), data._sources[0].pos.long()
    inside = pos[:, 1:] == 0  # segment starts other than a row's first token: document starts
    assert inside.sum() > 10 and set(blocks[:, 1:][inside].tolist()) == {bos}
    stream = blocks.flatten()
    at_bos = (stream == bos).nonzero().flatten()
    assert set(stream[at_bos[at_bos > 0] - 1].tolist()) == {eos}  # ... EOS BOS ...: each document is BOS doc EOS
    summary = loop.train(parse_args(args(tmp_path / "run", "model=bitnet_2b", "export_gguf=none")))
    assert summary["steps"] == 2


def test_bitdistill_takes_the_same_repo_as_its_teacher(hub_cache, tmp_path, capsys):
    out = tmp_path / "run"
    summary = loop.train(
        parse_args(
            args(out, "model=smollm2_135m", "training=bitdistill_full", "objectives.phase=2", "export_gguf=none")
        )
    )
    stdout = capsys.readouterr().out
    assert f"teacher: {SMOLLM}@{hub_cache[SMOLLM].name[:12]}" in stdout
    records = [r for r in read_metrics(summary["metrics"]) if r["kind"] == "train"]
    assert set(records[-1]["objectives"]) == {"ce", "logits_kd", "attention_relation"}
    # each objective next to the weighted total, on the console and in the summary
    line = next(s for s in stdout.splitlines() if s.startswith("step      2/2"))
    assert "= attention_relation " in line and " + ce " in line and " + logits_kd " in line
    assert "held-out CE" in stdout or "train loss" in stdout
    # another teacher by preset name or hub id
    cfg = parse_args(
        args(tmp_path / "b", "model=smollm2_135m", "training=bitdistill_full", "objectives.teacher=smollm2_360m")
    )
    assert cfg.teacher_source() == "smollm2_360m"
    cfg = parse_args(
        args(
            tmp_path / "c",
            "model=smollm2_135m",
            "training=bitdistill_full",
            "objectives.teacher=HuggingFaceTB/SmolLM2-360M",
            "objectives.phase=2",
            "export_gguf=none",
        )
    )
    loop.train(cfg)
    assert "teacher: HuggingFaceTB/SmolLM2-360M@" in capsys.readouterr().out


# a preset's architecture made small (built from scratch, the overrides apply)
SMALL_SCRATCH = (
    "model.pretrained=false",
    "model.num_hidden_layers=1",
    "model.hidden_size=64",
    "model.intermediate_size=128",
    "model.num_attention_heads=2",
    "model.num_key_value_heads=1",
    "model.head_dim=32",
)


def test_from_scratch_keeps_the_presets_cached_tokenizer(hub_cache, tmp_path):
    model, tokenizer = build(parse_args(args(tmp_path, "model=smollm2_135m", *SMALL_SCRATCH)), tmp_path)
    assert model.config.vocab_size == 49152 and tokenizer.get_vocab_size() == 400  # the preset's vocabulary
    assert model.tokenizer_dir == hub_cache[SMOLLM] and "from scratch" in model.source


def test_from_scratch_without_a_cached_tokenizer_uses_bitks(tmp_path, monkeypatch, capsys):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    cfg = parse_args(args(tmp_path / "run", "model=qwen3_0_6b", *SMALL_SCRATCH, "export_gguf=none"))
    summary = loop.train(cfg)
    assert load_checkpoint(summary["checkpoint"]).config.vocab_size == 4096
    notes = [line for line in capsys.readouterr().out.splitlines() if line.startswith("note:")]
    assert notes == [
        "note: Qwen/Qwen3-0.6B's tokenizer is not in the Hugging Face cache; using bitk's embedded "
        "4096-token tokenizer (vocab_size 151936 -> 4096)"
    ]


@pytest.mark.slow
def test_not_cached_exits_2_within_seconds_with_one_line(tmp_path, run_env):
    env = {**run_env, "HF_HOME": str(tmp_path / "hf")}
    proc = subprocess.run(
        [sys.executable, "-m", "bitk.train", "model=qwen3_4b", f"output_dir={tmp_path / 'run'}"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("bitk.train: error: Qwen/Qwen3-4B is not in the Hugging Face cache (")
    assert str(tmp_path / "hf" / "hub") in lines[0] and "hf download Qwen/Qwen3-4B" in lines[0]
    assert "model=PATH" in lines[0]
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["model=smollm2_135m", "model.num_hidden_layers=3"], "model.num_hidden_layers changes the architecture"),
        (["model=smollm2_135m", "training=bitdistill_full", "objectives.teacher=nope"], "objectives.teacher='nope'"),
        (["training=bitdistill_full"], "model=tiny is a preset without pretrained weights"),
        (["model=qwen3_0_6b", "model.ternary=false", "model.subln=false"], "model.subln applies to the ternary"),
    ],
)
def test_bad_model_settings_exit_2_before_any_work(tmp_path, run_env, argv, message):
    proc = subprocess.run(
        [sys.executable, "-m", "bitk.train", *argv, f"output_dir={tmp_path / 'run'}"],
        capture_output=True,
        text=True,
        env={**run_env, "HF_HOME": os.environ["HF_HOME"]},
        timeout=60,
    )
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    "model, export, arch, numerics",
    [
        ("smollm2_135m", "i2_s", "bitnet", "i2s"),  # 64-wide hub model: zero-padded to 128
        ("qwen3_0_6b", "tq2_0", "qwen3", "f16"),  # q/k norms: not padded; 64/128 widths fall back to F16
    ],
)
def test_the_run_reports_the_held_out_loss_as_the_gguf_runs(hub_cache, tmp_path, capsys, model, export, arch, numerics):
    extra = ["model.subln=false"] if model.startswith("qwen3") else []
    out = tmp_path / "run"
    summary = loop.train(parse_args(args(out, f"model={model}", *extra, f"export_gguf={export}")))
    stdout = capsys.readouterr().out
    with read_gguf(summary["gguf"]) as f:
        assert f.metadata["general.architecture"] == arch
        if arch == "qwen3":
            assert "blk.0.attn_q_norm.weight" in f.tensors and "blk.0.attn_sub_norm.weight" not in f.tensors
        else:
            assert f.metadata["bitk.unpadded.embedding_length"] == 64 and f.metadata["bitnet.embedding_length"] == 128
    note = "note: zero-padded (hidden 64 -> 128" if arch == "bitnet" else "written as F16"
    assert note in stdout
    assert f"as model-{export}.gguf runs in" in stdout and f"(numerics {numerics}" in stdout
    records = [r for r in read_metrics(out / "metrics.jsonl") if r["kind"] == "eval_as_exported"]
    assert len(records) == 1 and records[0]["loss"] == summary["gguf_eval_loss"]
    # the prediction is the file's own held-out loss: load the GGUF and score the same tokens
    from bitk.data.stream import TrainData
    from bitk.eval import evaluate
    from bitk.gguf import load

    cfg = parse_args(args(tmp_path / "probe", f"model={model}", *extra))
    probe, tokenizer = build(cfg, tmp_path / "probe")
    framing = document_tokens(tokenizer, probe.tokenizer_dir, probe.config.eos_token_id)
    ids, pos = TrainData(cfg.data, tokenizer, seed=cfg.training.seed, framing=framing).heldout()
    got = evaluate(load(summary["gguf"]), ids, pos, batch_size=2)
    assert got.tokens == records[0]["eval_tokens"]
    assert abs(got.loss - summary["gguf_eval_loss"]) < 1e-4 * max(1.0, got.loss)
    assert summary["gguf_eval_loss"] != summary["eval_loss"]  # the runtime's numerics are not training's


def test_qwen3_with_subln_skips_the_export_with_a_retry_command(hub_cache, tmp_path, capsys):
    out = tmp_path / "run"
    summary = loop.train(parse_args(args(out, "model=qwen3_0_6b", "export_gguf=tq2_0")))
    stdout = capsys.readouterr().out
    assert summary["gguf"] is None and "both Qwen3's q/k norms and BitNet's sub-norms" in summary["gguf_error"]
    assert "model.subln=false" in stdout and summary["gguf_eval_loss"] is None
    retry = stdout.split("(retry with: ", 1)[1].split(" and the options", 1)[0]
    assert retry == f"bitk-pack pack {summary['checkpoint']} -o {out / 'model-tq2_0.gguf'} --type tq2_0"
    # the command parses (no usage error): the packer itself refuses it for the same reason
    proc = subprocess.run(
        [sys.executable, "-m", "bitk.gguf", *retry.split()[1:]], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 1 and "sub-norms" in proc.stderr
