"""The recipe presets in the trainer: objectives, curricula, the teacher, LRC calibration.

A micro full-precision teacher is trained once (ternary=false); students start from it, as
BitDistill's do (the same weights converted to ternary with SubLN).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from bitk.data import load_tokenizer
from bitk.models import load_checkpoint, load_model
from bitk.train import loop
from bitk.train.config import TRAINING_PRESETS, parse_args
from bitk.train.metrics import read_metrics
from bitk_train_testing import MICRO_ARGS, micro_args


def _path_args(model, output_dir, *overrides):
    """The micro run's arguments for a model given by path (no preset overrides)."""
    kept = [a for a in MICRO_ARGS if not a.startswith(("model=", "model."))]
    return [f"model={model}", *kept, f"output_dir={output_dir}", *overrides]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A micro full-precision model trained for 8 steps: its checkpoint path."""
    out = tmp_path_factory.mktemp("teacher")
    summary = loop.train(
        parse_args(
            micro_args(
                out,
                "model.ternary=false",
                "training.eval_every=0",
                "model.num_attention_heads=4",
                "model.num_key_value_heads=2",
            )
        )
    )
    return summary["checkpoint"]


def train_records(summary):
    return [r for r in read_metrics(summary["metrics"]) if r["kind"] == "train"]


def test_recipe_presets_are_registered_and_valid():
    assert {"base", "unified", "bitdistill_full", "lrc_calibration"} <= set(TRAINING_PRESETS)
    assert TRAINING_PRESETS["unified"] == {"objectives.weights": "0:ce=1;0.2:ce=1,dlm=1"}
    cfg = parse_args(["training=unified", "training.max_steps=10"])
    assert [cfg.objectives.curriculum().weights_at(s, 10) for s in (1, 2)] == [{"ce": 1.0}, {"ce": 1.0, "dlm": 1.0}]
    cfg = parse_args(["training=unified", "objectives.phase=1"])
    assert cfg.objectives.curriculum().objectives() == {"ce"}


@pytest.mark.parametrize(
    "args, match",
    [
        (["training=bitdistill_full"], "need a full-precision teacher, and model=tiny is a preset without pretrained"),
        (["objectives.weights=logits_kd=1", "objectives.teacher=/no/such/teacher"], "no such checkpoint"),
        (["objectives.weights=logits_kd=1", "objectives.teacher=tiny"], "is a preset without pretrained weights"),
        (["training=lrc_calibration", "model.ternary=false", "objectives.teacher=."], "needs model.ternary=true"),
        (["objectives.weights=ce=1,mlm=1"], "unknown objective 'mlm'"),
        (["objectives.weights=0:ce=1;0.5:dlm=1", "objectives.phase=3"], "phase must be <= 2"),
        (["objectives.dlm_probability=2"], r"dlm_probability must be in \[0.0, 1.0\]"),
        (["objectives.relation_layers=[]"], "relation_layers must be a non-empty list"),
        (["objectives.lrc_init=zero"], "lrc_init must be one of svd, random"),
        (["objectives.teacher_dtype=fp8"], "teacher_dtype must be one of"),
    ],
)
def test_bad_recipe_settings_are_refused_before_any_work(args, match):
    with pytest.raises(ValueError, match=match):
        parse_args(args)


def test_unified_switches_on_dlm_at_its_step(micro_config):
    summary = loop.train(
        micro_config("training=unified", "objectives.weights=0:ce=1;0.5:ce=1,dlm=0.5", "training.eval_every=0")
    )
    records = train_records(summary)
    assert [sorted(r["objectives"]) for r in records] == [["ce"]] * 4 + [["ce", "dlm"]] * 4
    for r in records:  # the logged loss is the weighted sum of the objectives
        want = r["objectives"]["ce"] + 0.5 * r["objectives"].get("dlm", 0.0)
        assert r["loss"] == pytest.approx(want, rel=1e-5)


def test_a_missing_dlm_mask_token_is_added_and_a_framing_token_refused(micro_config, tmp_path):
    summary = loop.train(
        micro_config(
            "training=unified",
            "objectives.dlm_mask_token=<|new-mask|>",
            "training.max_steps=2",
            "training.eval_every=0",
        )
    )
    ckpt = Path(summary["checkpoint"])
    tok = load_tokenizer(ckpt)
    assert tok.token_to_id("<|new-mask|>") == 4096 and tok.get_vocab_size() == 4097
    assert json.loads((ckpt / "tokenizer_config.json").read_text())["mask_token"] == "<|new-mask|>"
    assert load_model(ckpt).config.vocab_size == 4097  # one more embedding row
    with pytest.raises(ValueError, match="is the token that frames the packed documents"):
        loop.train(
            micro_config("training=unified", "objectives.dlm_mask_token=<|endoftext|>", output_dir=tmp_path / "other")
        )


def test_bitdistill_runs_both_stages_with_the_teacher(teacher, tmp_path):
    summary = loop.train(
        parse_args(
            _path_args(
                teacher,
                tmp_path / "bd",
                "training=bitdistill_full",
                "training.max_steps=8",
                "objectives.relation_split_heads=4",
                "training.eval_every=0",
            )
        )
    )
    records = train_records(summary)
    assert [sorted(r["objectives"]) for r in records] == [["ce"]] * 4 + [["attention_relation", "ce", "logits_kd"]] * 4
    assert all(r["objectives"]["logits_kd"] >= 0 and r["objectives"]["attention_relation"] >= 0 for r in records[4:])
    student = load_checkpoint(summary["checkpoint"])
    assert student.config.ternary and student.config.subln  # the teacher converted to ternary
    # stage 3 alone: phase 2 for every step
    summary = loop.train(
        parse_args(
            _path_args(
                teacher,
                tmp_path / "stage3",
                "training=bitdistill_full",
                "objectives.phase=2",
                "training.max_steps=2",
                "objectives.relation_split_heads=4",
                "training.eval_every=0",
            )
        )
    )
    assert all("logits_kd" in r["objectives"] for r in train_records(summary))


def test_distillation_from_an_identical_teacher_is_zero(teacher, tmp_path):
    # a full-precision student loaded from the teacher's own checkpoint: KD and relation are 0 at step 1
    summary = loop.train(
        parse_args(
            _path_args(
                teacher,
                tmp_path / "self",
                "model.ternary=false",
                "objectives.weights=ce=1,logits_kd=1,attention_relation=1",
                "training.max_steps=2",
                "objectives.relation_split_heads=4",
                "training.eval_every=0",
                "export_gguf=none",
            )
        )
    )
    first, second = (r["objectives"] for r in train_records(summary))
    assert first["logits_kd"] == pytest.approx(0.0, abs=1e-6)
    assert first["attention_relation"] == pytest.approx(0.0, abs=1e-3)
    assert first["ce"] > 1 and second["logits_kd"] > 0  # after one update the student has moved


def test_lrc_calibration_trains_only_the_factors(teacher, tmp_path):
    summary = loop.train(
        parse_args(
            _path_args(
                teacher,
                tmp_path / "lrc",
                "training=lrc_calibration",
                "training.max_steps=6",
                "training.eval_every=3",
                "export_gguf=i2_s",
            )
        )
    )
    assert summary["gguf"] is None and "LRC" in summary["gguf_error"]
    before = load_file(f"{teacher}/model.safetensors")
    after = load_file(f"{summary['checkpoint']}/model.safetensors")
    factors = {k for k in after if k.endswith((".lrc_u", ".lrc_v"))}
    assert factors and set(after) - factors == set(before)
    for name in before:  # ternary latent weights, embeddings and norms: unchanged to the bit
        assert torch.equal(before[name], after[name]), name
    model = load_checkpoint(summary["checkpoint"])
    assert model.config.lrc_rank_ratio == 0.1
    losses = [r["objectives"]["lrc"] for r in train_records(summary)]
    assert losses[-1] < losses[0]


def test_the_evidence_script_parses_its_arguments():
    """docs/examples/recipe_evidence.py (its output is recorded in docs/recipes.md) still starts."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).parents[2] / "docs" / "examples" / "recipe_evidence.py"
    proc = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "--teacher-steps" in proc.stdout and "BitDistill" in proc.stdout
