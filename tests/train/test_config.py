"""Configuration: defaults, overrides, groups and presets, refusals, --help."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import pytest

from bitk.models import PRESETS
from bitk.train.config import (
    RENAMED,
    TRAINING_PRESETS,
    CheckpointConfig,
    Config,
    DataConfig,
    LoggingConfig,
    ModelGroup,
    ObjectiveSettings,
    TrainingConfig,
    config_from_dict,
    config_to_dict,
    config_to_yaml,
    field_docs,
    parse_args,
    register_training_preset,
)
from bitk.train.help import format_help, iter_fields


def test_no_arguments_is_the_documented_default():
    # the values docs/train.md and README promise, written out (comparing parse_args([]) with
    # Config() alone could not fail: both are the dataclass defaults)
    cfg = parse_args([])
    assert cfg == Config() and TRAINING_PRESETS["base"] == {}
    assert (cfg.model.name, cfg.model.pretrained, cfg.model.ternary, cfg.model.overrides()) == ("tiny", True, True, {})
    assert (cfg.data.sources, cfg.data.block_size, cfg.data.heldout_fraction) == (["default"], 256, 0.05)
    t = cfg.training
    assert (t.max_steps, t.global_batch_size, t.micro_batch_size, t.lr, t.warmup_steps) == (400, 4, None, 3e-3, None)
    assert (t.optimizer, t.schedule, t.clip, t.seed) == ("adamw", "cosine", "zclip", 0)
    assert (cfg.checkpoint.save_every, cfg.checkpoint.keep_last) == (200, 3)
    assert (cfg.output_dir, cfg.export_gguf, cfg.resume, cfg.device) == ("runs/tiny", "i2_s", "auto", "auto")


def test_the_default_warmup_fits_the_run():
    """warmup_steps=null is 40 steps, shortened to max_steps - 1 for a shorter run; a warm-up the user
    sets must end before the run does."""
    from bitk.train.schedule import lr_factor, warmup_steps

    assert warmup_steps(parse_args([]).training) == 40
    short = parse_args(["training.max_steps=10"]).training
    assert warmup_steps(short) == 9 and lr_factor(8, short) == 1.0 and lr_factor(0, short) == pytest.approx(1 / 9)
    assert warmup_steps(parse_args(["training.max_steps=1"]).training) == 0
    assert warmup_steps(parse_args(["training.max_steps=10", "training.warmup_steps=3"]).training) == 3


def test_overrides_and_groups():
    cfg = parse_args(
        [
            "model=tiny",
            "training=base",
            "training.max_steps=100",
            "training.lr=1e-3",
            "training.auto_batch_size=true",
            "training.betas=[0.8,0.99]",
            "data.sources=[default,web.jsonl]",
            "data.weights=[1,3]",
            "model.num_hidden_layers=2",
            "output_dir=/tmp/x",
            "logging.progress=false",
        ]
    )
    t = cfg.training
    assert (t.max_steps, t.lr, t.auto_batch_size, t.betas) == (100, 1e-3, True, (0.8, 0.99))
    assert cfg.data.weights == [1.0, 3.0] and cfg.data.sources == ["default", "web.jsonl"]
    assert cfg.model.overrides() == {"num_hidden_layers": 2} and cfg.model.config().num_hidden_layers == 2
    assert cfg.output_dir == "/tmp/x" and cfg.logging.progress is False
    # later overrides win, as on any command line
    assert parse_args(["training.lr=1e-3", "training.lr=2e-3"]).training.lr == 2e-3


def test_training_presets_are_a_registry(monkeypatch):
    monkeypatch.setattr("bitk.train.config.TRAINING_PRESETS", dict(TRAINING_PRESETS))
    monkeypatch.setattr("bitk.train.config.TRAINING_PRESET_DOCS", {})
    register_training_preset(
        "short",
        {
            "training.max_steps": 10,
            "training.warmup_steps": 2,
            "training.lr": 1e-3,
            "objectives.weights": "ce=1,dlm=0.5",
            "checkpoint.keep_last": 1,
        },
        "a short run",
    )
    cfg = parse_args(["training=short", "training.lr=5e-4"])
    assert (cfg.training.max_steps, cfg.training.lr) == (10, 5e-4)  # preset, then the override on top
    assert (cfg.objectives.weights, cfg.checkpoint.keep_last) == ("ce=1,dlm=0.5", 1)
    assert "short" in format_help() and "a short run" in format_help()
    with pytest.raises(ValueError, match="training.lr must be in"):
        register_training_preset("broken", {"training.lr": -1.0}, "")
    with pytest.raises(ValueError, match="unknown key 'training.nope'"):
        register_training_preset("broken", {"training.nope": 1}, "")
    with pytest.raises(ValueError, match="maps 'group.field' keys"):
        register_training_preset("broken", {"lr": 1.0}, "")
    with pytest.raises(
        ValueError,
        match="unknown training preset .nope.; presets: base, unified, bitdistill_full, lrc_calibration, short",
    ):
        parse_args(["training=nope"])


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["foo=1"],
            r"unknown key 'foo'; valid keys: model, data, training, objectives, checkpoint, logging, output_dir",
        ),
        (
            ["training.foo=1"],
            r"unknown key 'training.foo'; valid keys of training: training.max_steps, .*training.seed",
        ),
        (["data.foo.bar=1"], r"unknown key 'data.foo'; valid keys of data: data.sources"),
        (["model.foo=1"], r"unknown key 'model.foo'; valid keys of model: model.name, .*model.hidden_size"),
        (["training.lr=abc"], r"bad value for training.lr: .*'abc'.*\(expected float\)"),
        (["training.max_steps=2.5"], r"bad value for training.max_steps.*\(expected int\)"),
        (["logging.progress=maybe"], r"bad value for logging.progress"),
        (["objectives.weights=ce=1,mlm=1"], r"objectives.weights: .*unknown objective 'mlm'"),
        (["checkpoint.keep_last=-1"], r"checkpoint.keep_last must be >= 0"),
        (["logging.log_every=0"], r"logging.log_every must be >= 1"),
        (["objectives=x"], r"objectives is a group: set its fields"),
        (["training.optimizer=sgd"], r"training.optimizer must be one of adamw, muon; got 'sgd'"),
        (["training.schedule=linear"], r"training.schedule must be one of cosine, wsd, constant"),
        (["training.clip=value"], r"training.clip must be one of zclip, norm, none"),
        (["training.precision=fp16"], r"training.precision must be one of auto, fp32, bf16"),
        (["distributed=horovod"], r"distributed must be one of auto, ddp, fsdp"),
        (["export_gguf=q4_0"], r"export_gguf must be one of i2_s, tq1_0, tq2_0, f16, f32, none"),
        (["model.ternary=false"], r"export_gguf=i2_s stores ternary weights.*export_gguf=f16, f32 or none"),
        (["device=tpu"], r"device must be one of auto, cpu, cuda, cuda:N"),
        (["training.lr=0"], r"training.lr must be in \(0.0, inf\]"),
        (["training.lr=-0.001"], r"training.lr must be in \(0.0, inf\], got -0.001"),
        (["training.lr=nan"], r"training.lr must be a finite number, got nan"),
        (["training.lr=inf"], r"training.lr must be a finite number, got inf"),
        (
            ["training.warmup_steps=400"],
            r"training.warmup_steps \(400\) must be less than training.max_steps \(400\).*allowed: 0 to 399",
        ),
        (["training.max_steps=10", "training.warmup_steps=20"], r"allowed: 0 to 9"),
        (["training.warmup_steps=-1"], r"training.warmup_steps must be >= 0"),
        (["training.global_batch_size=0"], r"training.global_batch_size must be >= 1"),
        (["training.micro_batch_size=0"], r"training.micro_batch_size must be >= 1"),
        (["training.max_bad_steps=0"], r"training.max_bad_steps must be >= 1"),
        (["data.heldout_fraction=0.9"], r"data.heldout_fraction must be in \[0.0, 0.5\]"),
        (["training.max_steps=0"], r"training.max_steps must be >= 1"),
        (["training.global_batch_size=12", "training.micro_batch_size=8"], r"must be a multiple of"),
        (["data.block_size=1024"], r"exceeds the model's max_position_embeddings \(512\)"),
        (["data.sources=[a,b]", "data.weights=[1]"], r"data.weights has 1 entries for 2 sources"),
        (
            ["model=nope"],
            r"neither a preset \(tiny, smollm2_135m.*\), nor an existing path .*nor a Hugging Face hub id",
        ),
        (
            ["model=smollm2_135m", "model.hidden_size=128"],
            r"model.hidden_size changes the architecture.*pretrained=false",
        ),
        (
            ["model=tiny", "model.revision=main"],
            r"model.revision applies to hub models; model=tiny is a preset without",
        ),
        (["model=.", "model.revision=main"], r"model.revision applies to hub models; model=. is a local folder"),
        (["model.pretrained=maybe"], r"bad value for model.pretrained"),
        (["model.hidden_size=-3"], r"ModelConfig.hidden_size must be a positive integer"),
        (["model={}"], r"model is a group: set its fields"),
        (["resume=/no/such/dir"], r"no such checkpoint folder"),
        (["logging.wandb=true"], r"logging.wandb=true needs the wandb package"),
        (["logging.tensorboard=true"], r"logging.tensorboard=true needs the tensorboard package"),
        (["data"], r"is not of the form key=value"),
        (["training.max_steps"], r"is not of the form key=value"),
        (["data=x"], r"data is a group: set its fields"),
    ],
)
def test_bad_keys_and_values_are_refused(args, message):
    import importlib.util

    if ("wandb" in message and importlib.util.find_spec("wandb")) or (
        "tensorboard" in message and importlib.util.find_spec("tensorboard")
    ):
        pytest.skip("installed here")
    with pytest.raises(ValueError, match=message):
        parse_args(args)


def test_dict_round_trip_and_yaml():
    cfg = parse_args(["training.max_steps=7", "model.hidden_size=128", "data.weights=null"])
    d = config_to_dict(cfg)
    assert d["training"]["betas"] == [0.9, 0.95]  # JSON-safe
    assert config_from_dict(d) == cfg
    assert config_from_dict({"training": {"max_steps": 3}}).training.max_steps == 3
    with pytest.raises(ValueError, match="unknown key 'training.nope'"):
        config_from_dict({"training": {"nope": 1}})
    text = config_to_yaml(cfg)
    assert "max_steps: 7" in text and "hidden_size: 128" in text


def test_every_field_has_a_docstring():
    for cls in (Config, ModelGroup, DataConfig, TrainingConfig, ObjectiveSettings, CheckpointConfig, LoggingConfig):
        docs = field_docs(cls)
        missing = [f.name for f in dataclasses.fields(cls) if not docs.get(f.name)]
        assert not missing, f"{cls.__name__} fields without a docstring: {missing}"


def test_help_lists_presets_and_every_field():
    text = format_help()
    for name in PRESETS:
        assert f"  {name} " in text
    for name in TRAINING_PRESETS:
        assert f"  {name} " in text
    for key, _, _, _ in iter_fields():
        assert f"  {key} (" in text, key
    assert "training.max_steps (int, default 400)" in text


def test_command_line_help_and_errors():
    """`python -m bitk.train --help` and a bad key: fast (no torch import), clear, right exit status."""
    run = [sys.executable, "-m", "bitk.train"]
    for columns in (100, 60):  # descriptions wrap to the terminal's width (COLUMNS where there is none)
        env = {**os.environ, "COLUMNS": str(columns)}
        proc = subprocess.run([*run, "--help"], capture_output=True, text=True, timeout=60, env=env)
        assert proc.returncode == 0 and proc.stdout == format_help(columns)
        described = [line for line in proc.stdout.splitlines() if line.startswith("      ")]
        assert described and max(len(line) for line in described) <= columns
        assert sum(len(line) > columns - 15 for line in described) > len(described) / 4  # filled, not narrow
    proc = subprocess.run([*run, "training.max_step=3"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "unknown key 'training.max_step'" in proc.stderr and "Did you mean" not in proc.stderr
    assert "training.max_steps" in proc.stderr and proc.stdout == ""
    # no torch needed to parse or reject a config
    code = "import sys; from bitk.train.config import parse_args; parse_args([]); print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"


def test_docs_list_every_field():
    """docs/train.md's field table is the generated one (regenerate: see docs/train.md)."""
    from pathlib import Path

    from bitk.train.help import fields_markdown

    doc = (Path(__file__).parents[2] / "docs" / "train.md").read_text()
    table = doc.split("<!-- fields:begin -->\n", 1)[1].split("<!-- fields:end -->", 1)[0]
    assert table == fields_markdown()


def test_earlier_spellings_still_work():
    """0.1.0 spellings on the command line and in saved configs map to today's keys."""
    old = parse_args(
        [
            "ternary=false",
            "export_gguf=f16",
            "model_overrides.num_hidden_layers=2",
            "training.objectives=ce=1,dlm=1",
            "training.teacher_dtype=fp32",
            "training.save_every=7",
            "training.keep_last=2",
            "training.log_every=3",
            "progress=false",
            "wandb_project=p",
        ]
    )
    new = parse_args(
        [
            "model.ternary=false",
            "export_gguf=f16",
            "model.num_hidden_layers=2",
            "objectives.weights=ce=1,dlm=1",
            "objectives.teacher_dtype=fp32",
            "checkpoint.save_every=7",
            "checkpoint.keep_last=2",
            "logging.log_every=3",
            "logging.progress=false",
            "logging.wandb_project=p",
        ]
    )
    assert old == new
    saved = {
        "model": "tiny",
        "model_overrides": {"num_hidden_layers": 2},
        "ternary": False,
        "export_gguf": "f16",
        "training": {
            "objectives": "ce=1,dlm=1",
            "teacher_dtype": "fp32",
            "save_every": 7,
            "keep_last": 2,
            "log_every": 3,
        },
        "progress": False,
        "wandb_project": "p",
    }
    assert config_from_dict(saved) == new
    for old_key, new_key in RENAMED.items():  # every renamed key names a field that exists
        group, _, name = new_key.partition(".")
        assert name in {f.name for f in dataclasses.fields(getattr(Config(), group))}, (old_key, new_key)
