"""The trainer's configuration: typed groups, named presets, and `key=value` parsing.

    cfg = parse_args(["model=smollm2_135m", "training=unified", "training.max_steps=100"])
    cfg.model.name, cfg.training.lr, cfg.objectives.weights, cfg.data.block_size, cfg.output_dir

`Config` is made of groups, each a dataclass whose fields carry a docstring (shown by
``python -m bitk.train --help`` and docs/train.md): ``model`` (which model, from what),
``data`` (`bitk.data.config.DataConfig`), ``training`` (optimisation), ``objectives``
(`bitk.objectives.settings.ObjectiveSettings`: the loss), ``checkpoint`` and ``logging``, plus the
run's top-level settings (output_dir, device, resume, ...). The command line sets fields as
``group.field=value``; ``model=NAME`` and ``training=NAME`` pick a model and a training preset.
`parse_args` merges, in order, the defaults, what a pretrained model preset brings, the training
preset, and the overrides; unknown keys, values of the wrong type and values out of range raise
ValueError naming the key and the valid choices, before any work. Torch-free.
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import importlib.util
import inspect
import re
import textwrap
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from bitk._checks import check_bool, check_choice, check_int, check_number
from bitk.data.config import DataConfig
from bitk.models import PRESET_REPOS, PRESETS, ModelConfig
from bitk.models.hub import is_hub_id
from bitk.objectives.curriculum import TEACHER_OBJECTIVES
from bitk.objectives.settings import ObjectiveSettings

__all__ = [
    "CheckpointConfig",
    "Config",
    "DataConfig",
    "LoggingConfig",
    "ModelGroup",
    "ObjectiveSettings",
    "TrainingConfig",
    "TRAINING_PRESETS",
    "TRAINING_PRESET_DOCS",
    "register_training_preset",
    "training_preset",
    "parse_args",
    "config_from_dict",
    "config_to_dict",
    "config_to_yaml",
    "migrate_config_dict",
    "OPTIMIZERS",
    "SCHEDULES",
    "CLIPS",
    "PRECISIONS",
    "DISTRIBUTED",
    "EXPORT_TYPES",
    "is_url",
    "check_url",
]

OPTIMIZERS = ("adamw", "muon")
SCHEDULES = ("cosine", "wsd", "constant")
CLIPS = ("zclip", "norm", "none")
QUANT_WARMUP_SHAPES = ("linear", "cosine")
PRECISIONS = ("auto", "fp32", "bf16")
DISTRIBUTED = ("auto", "ddp", "fsdp")
EXPORT_TYPES = ("i2_s", "tq1_0", "tq2_0", "f16", "f32", "none")
TASK_NUMERICS = ("train", "i2s", "tq", "f16", "float")  # bitk.nn.NUMERICS, named here to stay torch-free
TERNARY_EXPORTS = ("i2_s", "tq1_0", "tq2_0")  # export_gguf values whose projections are ternary
# Settings a model preset brings when it starts from its pretrained weights, applied before the
# training preset's own settings and the command line. A converted model starts from working
# weights, so it takes a smaller step than training from scratch (the base preset's 3e-3), yet
# ternary weights want about ten times a full-precision fine-tune's rate to move their codes;
# BitNet 2B is ternary already and the larger models take half of that.
PRETRAINED_DEFAULTS: dict[str, dict[str, Any]] = {
    "smollm2_135m": {"training.lr": 1e-3},
    "smollm2_360m": {"training.lr": 1e-3},
    "qwen3_0_6b": {"training.lr": 1e-3},
    "qwen3_4b": {"training.lr": 5e-4},
    "bitnet_2b": {"training.lr": 5e-4},
}
# ModelConfig fields a pretrained model may change: those that do not alter its weights' shapes or
# meaning, and subln (whether the ternary conversion inserts the two SubLNs: model.subln=false for a
# ternary Qwen3 that llama.cpp's qwen3 graph runs, docs/gguf.md).
PRETRAINED_OVERRIDABLE = ("max_position_embeddings", "subln")


# --------------------------------------------------------------------------- the groups


@dataclass
class _ModelSource:
    """Which model to train and from what (the "model" group; model=NAME sets model.name)."""

    name: str = "tiny"
    """A model preset (see --help: presets with a hub repo start from its pretrained weights), a
    Hugging Face hub id (ORG/NAME, through the Hugging Face cache), a local bitk checkpoint or
    Hugging Face folder, or a training run's output_dir (its latest checkpoint)."""
    pretrained: bool = True
    """Start from the pretrained weights (converted to ternary BitLinear + SubLN when ternary);
    false builds the architecture from scratch with random weights (a preset's, or the repo's
    config.json), keeping its tokenizer when one is at hand."""
    revision: str | None = None
    """Branch, tag or commit of the hub repo (null = its main branch); hub models only."""
    ternary: bool = True
    """Train BitLinear (ternary) projections; false trains the full-precision model."""

    def overrides(self) -> dict[str, Any]:
        """The ModelConfig fields set in this group (model.FIELD=VALUE), by name."""
        return {
            f.name: getattr(self, f.name)
            for f in fields(ModelConfig)
            if f.name != "ternary" and getattr(self, f.name, None) is not None
        }

    def is_preset(self) -> bool:
        return self.name in PRESETS

    def from_scratch(self) -> bool:
        """Random initialisation: pretrained=false, or a preset without a hub repo (tiny)."""
        return not self.pretrained or (self.is_preset() and self.name not in PRESET_REPOS)

    def source(self) -> str | None:
        """Where pretrained weights (and a preset's tokenizer) come from: a hub id or a path; None for tiny."""
        return PRESET_REPOS.get(self.name) if self.is_preset() else self.name

    def config(self) -> ModelConfig:
        """The ModelConfig of a preset built from scratch, overrides and ternary applied."""
        if not self.is_preset():
            raise ValueError(f"model={self.name} is not a preset ({', '.join(PRESETS)})")
        try:
            return PRESETS[self.name].replace(**{"ternary": self.ternary, **self.overrides()})
        except (TypeError, ValueError) as e:
            raise ValueError(f"model: {e}") from e

    def validate(self) -> None:
        """Raise ValueError naming the first bad field (no file is read and nothing is downloaded)."""
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"model must be a preset name, a hub id or a path, got {self.name!r}")
        check_bool("model.pretrained", self.pretrained)
        check_bool("model.ternary", self.ternary)
        if self.revision is not None and (not isinstance(self.revision, str) or not self.revision):
            raise ValueError(f"model.revision must be a branch, tag or commit of the hub repo, got {self.revision!r}")
        local = not self.is_preset() and Path(self.name).expanduser().exists()
        if not self.is_preset() and not local and not is_hub_id(self.name):
            raise ValueError(
                f"model={self.name!r} is neither a preset ({', '.join(PRESETS)}), nor an existing "
                "path (a bitk checkpoint or Hugging Face folder), nor a Hugging Face hub id (ORG/NAME)"
            )
        if self.revision is not None and (local or self.source() is None):
            raise ValueError(
                f"model.revision applies to hub models; model={self.name} is "
                f"{'a local folder' if local else 'a preset without a hub repo'}"
            )
        changed = self.overrides()
        if self.from_scratch():
            if self.is_preset():
                self.config()
            return
        if changed.get("subln") is not None and not self.ternary:
            raise ValueError(
                "model.subln applies to the ternary conversion (model.ternary=true); a full-precision "
                "model is trained as it is"
            )
        fixed = sorted(set(changed) - set(PRETRAINED_OVERRIDABLE))
        if fixed:
            raise ValueError(
                f"model.{fixed[0]} changes the architecture, which comes from the pretrained model's "
                f"config.json; set model.pretrained=false to build a changed architecture from scratch "
                f"(a pretrained model may change only {', '.join(PRETRAINED_OVERRIDABLE)})"
            )


def _model_group() -> type:
    """The "model" group: `_ModelSource` plus every ModelConfig field but ternary as an optional override."""
    import typing

    hints = typing.get_type_hints(ModelConfig)
    extra = [
        (f.name, typing.Optional[hints[f.name]], field(default=None))  # noqa: UP045 (OmegaConf's spelling)
        for f in fields(ModelConfig)
        if f.name != "ternary"
    ]
    cls = dataclasses.make_dataclass("ModelGroup", extra, bases=(_ModelSource,))
    cls.__doc__ = _ModelSource.__doc__
    cls.__module__ = __name__
    cls.__field_docs__ = {
        name: f"{doc} (null: as the preset or the source has it)"
        for name, doc in field_docs(ModelConfig).items()
        if name != "ternary"
    }
    return cls


def field_docs(cls: type) -> dict[str, str]:
    """Field name -> its docstring (the string literal under the field), whitespace folded.

    Base classes count too, and a class made at run time names its docs in ``__field_docs__``.
    """
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__[:-1]):
        docs.update(vars(klass).get("__field_docs__", {}))
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):
            continue
        body = tree.body[0].body
        for node, after in zip(body, body[1:]):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)
            ):
                docs[node.target.id] = " ".join(after.value.value.split())
    return docs


ModelGroup = _model_group()


@dataclass
class TrainingConfig:
    """How to optimise: steps, batch, optimizer, schedule, clipping, precision (the "training" group)."""

    max_steps: int = 400
    """Optimizer steps to run (the step counter also counts skipped NaN/Inf steps)."""
    global_batch_size: int = 4
    """Sequences per optimizer step over all processes (= micro_batch_size x grad. accumulation x processes)."""
    micro_batch_size: int | None = None
    """Sequences per forward/backward on one process; gradients accumulate up to global_batch_size.
    null = the whole per-process batch (global_batch_size / processes), no accumulation."""
    auto_batch_size: bool = False
    """Find the largest micro_batch_size that fits (GPU memory, or memory_budget_gb on CPU) with a
    few real steps, then set gradient accumulation so that global_batch_size is unchanged."""
    memory_budget_gb: float = 8.0
    """Memory the auto batch size may use on CPU (GB), per process: under torchrun each process
    gets this much."""
    optimizer: str = "adamw"
    """"adamw" (fused where available), or "muon" (torch.optim.Muon for the 2-D hidden matrices,
    AdamW for embeddings, norms and biases)."""
    lr: float = 3e-3
    """Peak learning rate (AdamW; for Muon, of the AdamW part)."""
    min_lr_ratio: float = 0.1
    """Final learning rate as a fraction of lr (cosine and WSD)."""
    weight_decay: float = 0.1
    """Decoupled weight decay of matrices (none on norms, biases and embeddings)."""
    betas: tuple[float, float] = (0.9, 0.95)
    """AdamW betas."""
    eps: float = 1e-8
    """AdamW epsilon."""
    muon_lr: float = 0.02
    """Muon's own learning rate for the hidden matrices (optimizer=muon)."""
    schedule: str = "cosine"
    """Learning-rate schedule after warm-up: "cosine", "wsd" (warm-up, stable, decay) or "constant"."""
    warmup_steps: int | None = None
    """Linear learning-rate warm-up from 0, in optimizer steps; less than max_steps. null = 40,
    or max_steps - 1 for a run of 40 steps or fewer."""
    decay_fraction: float = 0.2
    """WSD: share of max_steps spent decaying at the end."""
    clip: str = "zclip"
    """Gradient clipping: "zclip" (adaptive z-score, docs/numerics.md), "norm" (max_grad_norm) or "none"."""
    max_grad_norm: float = 1.0
    """Norm bound of clip=norm (ZClip's own fixed cap is zclip_max_grad_norm)."""
    zclip_alpha: float = 0.97
    """ZClip: EMA factor of the norm statistics."""
    zclip_z_thresh: float = 2.5
    """ZClip: z-score above which a gradient norm is clipped."""
    zclip_warmup_steps: int = 25
    """ZClip: steps that only collect norm statistics before clipping starts."""
    zclip_factor: float = 1.0
    """ZClip: multiplier of the clipped norm."""
    zclip_max_grad_norm: float | None = None
    """ZClip: a fixed norm cap on top of the adaptive threshold (null = none, ZClip alone decides)."""
    quant_warmup_steps: int = 0
    """Quantization warm-up: lambda goes 0 -> 1 over this many steps (0 = plain BitNet from the start)."""
    quant_warmup_shape: str = "linear"
    """Shape of the lambda warm-up: "linear" or "cosine"."""
    eval_every: int = 100
    """Evaluate held-out perplexity every N steps (0 = only at the end)."""
    eval_tasks: list[str] = field(default_factory=list)
    """lm-evaluation-harness tasks scored on the live model at each evaluation (eval_every, and at
    the end), e.g. [sst2,arc_easy]; [] = none. Needs pip install "bitk[eval]"; the names are
    checked before training starts (docs/eval.md "Task evaluation")."""
    eval_tasks_limit: int | None = 100
    """Documents per task at each task evaluation (null = all of them)."""
    eval_tasks_include_path: str | None = None
    """A folder of task YAML files (local tasks) that eval_tasks may name, besides lm-eval's own."""
    eval_tasks_numerics: str = "train"
    """BitLinear numerics of the task evaluation: "train", "i2s" / "tq" (as the exported I2_S /
    TQ GGUF computes), "f16" or "float"; the model computes as trained again afterwards."""
    precision: str = "auto"
    """"auto" (bf16 autocast on CUDA, float32 on CPU), "fp32" or "bf16" (autocast; weights and
    optimizer state stay float32)."""
    compile: bool = False
    """torch.compile the model and, in one process, its loss (under torchrun the model only); bitk's
    kernels are custom ops, so the graph has no breaks. The first step compiles (tens of seconds)."""
    activation_checkpointing: bool = False
    """Recompute each decoder block in the backward instead of keeping its activations: memory for
    long sequences and large models (qwen3_4b, bitnet_2b on one GPU) at about a third more compute."""
    max_bad_steps: int = 5
    """The run stops once this many steps in a row had a NaN/Inf loss or gradient norm (each such
    step is skipped: no update, counted in the metrics)."""
    seed: int = 0
    """Seed of the model initialisation and the data order."""

    def validate(self) -> None:
        """Raise ValueError naming the first bad field."""
        p = "training."
        check_int(p + "max_steps", self.max_steps, low=1)
        check_int(p + "global_batch_size", self.global_batch_size, low=1)
        if self.micro_batch_size is not None:
            check_int(p + "micro_batch_size", self.micro_batch_size, low=1)
        if self.micro_batch_size is not None and self.global_batch_size % self.micro_batch_size:
            raise ValueError(
                f"training.global_batch_size ({self.global_batch_size}) must be a multiple of "
                f"training.micro_batch_size ({self.micro_batch_size})"
            )
        check_bool(p + "auto_batch_size", self.auto_batch_size)
        check_number(p + "memory_budget_gb", self.memory_budget_gb, low=0.0, low_open=True)
        check_choice(p + "optimizer", self.optimizer, OPTIMIZERS)
        check_number(p + "lr", self.lr, low=0.0, low_open=True)
        check_number(p + "min_lr_ratio", self.min_lr_ratio, low=0.0, high=1.0)
        check_number(p + "weight_decay", self.weight_decay, low=0.0)
        if len(self.betas) != 2:
            raise ValueError(f"training.betas must be two numbers, got {self.betas!r}")
        for b in self.betas:
            check_number(p + "betas", b, low=0.0, high=1.0, high_open=True)
        check_number(p + "eps", self.eps, low=0.0, low_open=True)
        check_number(p + "muon_lr", self.muon_lr, low=0.0, low_open=True)
        check_choice(p + "schedule", self.schedule, SCHEDULES)
        if self.warmup_steps is not None:
            check_int(p + "warmup_steps", self.warmup_steps, low=0)
            if self.warmup_steps >= self.max_steps:
                raise ValueError(
                    f"training.warmup_steps ({self.warmup_steps}) must be less than training.max_steps "
                    f"({self.max_steps}): the learning rate would never reach training.lr; allowed: 0 to "
                    f"{self.max_steps - 1} (null: 40, or max_steps - 1 for a shorter run)"
                )
        check_number(p + "decay_fraction", self.decay_fraction, low=0.0, high=1.0, low_open=True)
        check_choice(p + "clip", self.clip, CLIPS)
        check_number(p + "max_grad_norm", self.max_grad_norm, low=0.0, low_open=True)
        check_number(p + "zclip_alpha", self.zclip_alpha, low=0.0, high=1.0, low_open=True, high_open=True)
        check_number(p + "zclip_z_thresh", self.zclip_z_thresh, low=0.0, low_open=True)
        check_int(p + "zclip_warmup_steps", self.zclip_warmup_steps, low=1)
        check_number(p + "zclip_factor", self.zclip_factor, low=0.0, low_open=True)
        if self.zclip_max_grad_norm is not None:
            check_number(p + "zclip_max_grad_norm", self.zclip_max_grad_norm, low=0.0, low_open=True)
        check_int(p + "quant_warmup_steps", self.quant_warmup_steps, low=0)
        check_choice(p + "quant_warmup_shape", self.quant_warmup_shape, QUANT_WARMUP_SHAPES)
        check_int(p + "eval_every", self.eval_every, low=0)
        if not isinstance(self.eval_tasks, list) or not all(isinstance(x, str) and x.strip() for x in self.eval_tasks):
            raise ValueError(f"training.eval_tasks must be a list of task names, got {self.eval_tasks!r}")
        if self.eval_tasks_limit is not None:
            check_int(p + "eval_tasks_limit", self.eval_tasks_limit, low=1)
        if self.eval_tasks_include_path is not None and (
            not isinstance(self.eval_tasks_include_path, str) or not self.eval_tasks_include_path
        ):
            raise ValueError("training.eval_tasks_include_path must be a folder path or null")
        check_choice(p + "eval_tasks_numerics", self.eval_tasks_numerics, TASK_NUMERICS)
        check_choice(p + "precision", self.precision, PRECISIONS)
        check_bool(p + "compile", self.compile)
        check_bool(p + "activation_checkpointing", self.activation_checkpointing)
        check_int(p + "max_bad_steps", self.max_bad_steps, low=1)
        check_int(p + "seed", self.seed, low=0)


@dataclass
class CheckpointConfig:
    """When full-state checkpoints are written and how many are kept (the "checkpoint" group)."""

    save_every: int = 200
    """Save a full-state checkpoint every N steps (0 = only at the end)."""
    keep_last: int = 3
    """Checkpoints kept in output_dir/checkpoints (older ones are deleted; 0 = keep all)."""

    def validate(self) -> None:
        check_int("checkpoint.save_every", self.save_every, low=0)
        check_int("checkpoint.keep_last", self.keep_last, low=0)


@dataclass
class LoggingConfig:
    """Where the numbers go: console, progress bar, TensorBoard, W&B (the "logging" group)."""

    log_every: int = 10
    """Log loss, learning rate, grad norm and tokens/s every N steps."""
    progress: bool | None = None
    """Show a progress bar: null = when stderr is a terminal, true = always, false = never."""
    tensorboard: bool = False
    """Also log to TensorBoard in output_dir/tensorboard (needs the tensorboard package)."""
    wandb: bool = False
    """Also log to Weights & Biases (needs the wandb package and a login)."""
    wandb_project: str = "bitk"
    """W&B project name (logging.wandb=true)."""

    def validate(self) -> None:
        check_int("logging.log_every", self.log_every, low=1)
        if self.progress is not None:
            check_bool("logging.progress", self.progress)
        check_bool("logging.tensorboard", self.tensorboard)
        check_bool("logging.wandb", self.wandb)
        if self.tensorboard and importlib.util.find_spec("tensorboard") is None:
            raise ValueError("logging.tensorboard=true needs the tensorboard package: pip install tensorboard")
        if self.wandb and importlib.util.find_spec("wandb") is None:
            raise ValueError("logging.wandb=true needs the wandb package: pip install wandb (then wandb login)")


@dataclass
class Config:
    """A training run: its groups, and where the results go."""

    model: ModelGroup = field(default_factory=lambda: ModelGroup())
    """The model group (model=NAME picks the model, model.FIELD=VALUE changes it)."""
    data: DataConfig = field(default_factory=DataConfig)
    """The data group."""
    training: TrainingConfig = field(default_factory=TrainingConfig)
    """The training group (choose a preset with training=NAME)."""
    objectives: ObjectiveSettings = field(default_factory=ObjectiveSettings)
    """The objectives group: the loss and its knobs."""
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    """The checkpoint group."""
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    """The logging group."""
    output_dir: str = "runs/tiny"
    """Where checkpoints, metrics.jsonl, loss.png and the GGUF go."""
    remote: str | None = None
    """A copy of output_dir in object storage: an fsspec URL (gs://BUCKET/PATH through gcsfs,
    s3://BUCKET/PATH through s3fs, file://PATH, memory://PATH) that every checkpoint,
    metrics.jsonl, loss.png and the GGUF are uploaded to in the background, and that resume=auto
    falls back to when output_dir holds no checkpoint (docs/distributed.md "Preemptible runs").
    null = none. gcs.enabled=true gcs.bucket=NAME means remote=gs://NAME/RUN, RUN being
    output_dir's folder name."""
    device: str = "auto"
    """"auto" (CUDA when available, else CPU), "cpu", "cuda" or "cuda:N"."""
    distributed: str = "auto"
    """Under torchrun: "auto" (= ddp), "ddp" or "fsdp" (FSDP2 fully_shard per decoder layer)."""
    resume: str = "auto"
    """"auto" (the latest checkpoint in output_dir, else, with remote set, the remote's newest
    complete one, if any), "none" (start afresh; refused when output_dir or the remote holds
    checkpoints), a path: a checkpoint folder (.../checkpoints/step-NNNNNN) or an output_dir (its
    latest checkpoint), or a URL: a remote checkpoint (URL/checkpoints/step-NNNNNN) or a run's
    remote (its newest complete checkpoint), downloaded into output_dir."""
    export_gguf: str = "i2_s"
    """GGUF type written from the final checkpoint to output_dir/model-TYPE.gguf
    (i2_s, tq1_0, tq2_0, f16, f32), or "none"."""

    def validate(self) -> None:
        """Raise ValueError naming the first bad field; checks every group."""
        for group in (self.model, self.data, self.training, self.objectives, self.checkpoint, self.logging):
            group.validate()
        self._validate_objectives()
        if self.model.from_scratch() and self.model.is_preset():
            max_positions = self.model.config().max_position_embeddings
            if self.data.block_size > max_positions:
                raise ValueError(
                    f"data.block_size ({self.data.block_size}) exceeds the model's "
                    f"max_position_embeddings ({max_positions})"
                )
        if not isinstance(self.output_dir, str) or not self.output_dir:
            raise ValueError("output_dir must be a non-empty path")
        kind = self.device.split(":")[0] if isinstance(self.device, str) else None
        if kind not in ("auto", "cpu", "cuda") or (
            ":" in self.device and (kind != "cuda" or not self.device.split(":")[1].isdigit())
        ):
            raise ValueError(f"device must be one of auto, cpu, cuda, cuda:N; got {self.device!r}")
        check_choice("distributed", self.distributed, DISTRIBUTED)
        if not isinstance(self.resume, str) or not self.resume:
            raise ValueError("resume must be auto, none, a checkpoint path or a checkpoint URL")
        if is_url(self.resume):
            check_url("resume", self.resume)
        elif self.resume not in ("auto", "none") and not Path(self.resume).expanduser().is_dir():
            raise ValueError(f"resume={self.resume!r}: no such checkpoint folder (or use resume=auto / resume=none)")
        if self.remote is not None:
            check_url("remote", self.remote)
            if self.remote.startswith("file://"):
                target = Path(self.remote.removeprefix("file://")).expanduser().resolve()
                out = Path(self.output_dir).expanduser().resolve()
                if target == out or out in target.parents:
                    raise ValueError(
                        f"remote={self.remote} lies inside output_dir ({out}): the copy must outlive the machine"
                    )
        check_choice("export_gguf", self.export_gguf, EXPORT_TYPES)
        if not self.model.ternary and self.training.eval_tasks_numerics != "train":
            raise ValueError(
                f"training.eval_tasks_numerics={self.training.eval_tasks_numerics} needs a ternary model; "
                "model.ternary=false trains a full-precision one: leave it at train"
            )
        if not self.model.ternary and self.export_gguf in TERNARY_EXPORTS:
            raise ValueError(
                f"export_gguf={self.export_gguf} stores ternary weights, but model.ternary=false trains "
                "a full-precision model: use export_gguf=f16, f32 or none"
            )

    def teacher_source(self) -> str | None:
        """Where the teacher comes from (None when no objective needs one): a preset, hub id or path.

        "auto" is the model's own pretrained source (the preset's hub repo, the hub id or the
        path), loaded in full precision; None there (tiny) is refused by validation.
        """
        if not self.objectives.needs_teacher():
            return None
        return self.model.source() if self.objectives.teacher == "auto" else self.objectives.teacher

    def teacher_revision(self) -> str | None:
        """The hub revision of the teacher: the model's when the teacher is the model's own repo."""
        return self.model.revision if self.objectives.teacher == "auto" else None

    def _validate_objectives(self) -> None:
        objectives = self.objectives.curriculum().objectives()
        if "lrc" in objectives and not self.model.ternary:
            raise ValueError(
                "the lrc objective calibrates a low-rank correction of ternary projections: it needs model.ternary=true"
            )
        if not self.objectives.needs_teacher():
            return
        wanted = ", ".join(sorted(objectives & set(TEACHER_OBJECTIVES)))
        teacher = self.teacher_source()
        if teacher is None:
            raise ValueError(
                f"the objective(s) {wanted} need a full-precision teacher, and model={self.model.name} is a preset "
                "without pretrained weights: set objectives.teacher=NAME|ORG/NAME|PATH (a preset with a hub repo, a "
                "hub id, or a bitk checkpoint or Hugging Face folder)"
            )
        if teacher in PRESETS and teacher not in PRESET_REPOS:
            raise ValueError(
                f"objectives.teacher={teacher} is a preset without pretrained weights; presets with a "
                f"hub repo: {', '.join(PRESET_REPOS)}"
            )
        if teacher not in PRESETS and not Path(teacher).expanduser().exists() and not is_hub_id(teacher):
            raise ValueError(
                f"objectives.teacher={teacher!r} (needed by {wanted}): no such checkpoint or folder, "
                "and neither a preset nor a Hugging Face hub id (ORG/NAME)"
            )


# --------------------------------------------------------------------------- remote URLs

# the optional extra of pyproject.toml that brings a protocol's fsspec implementation
REMOTE_EXTRAS = {"gs": "gcs", "gcs": "gcs", "s3": "s3", "s3a": "s3"}
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


def is_url(value: Any) -> bool:
    """A URL (PROTOCOL://...), as opposed to a local path."""
    return isinstance(value, str) and _URL.match(value) is not None


def check_url(key: str, value: Any) -> None:
    """ValueError unless ``value`` is an fsspec URL whose implementation is installed (nothing is contacted)."""
    if not is_url(value):
        raise ValueError(
            f"{key} must be a URL (gs://BUCKET/PATH, s3://BUCKET/PATH, file://PATH, memory://PATH or another "
            f"fsspec URL), got {value!r}"
        )
    protocol, _, rest = value.partition("://")
    if not rest.strip("/"):
        raise ValueError(f"{key}={value} names no bucket or folder")
    from fsspec.registry import known_implementations, registry

    if protocol not in registry and protocol not in known_implementations:
        raise ValueError(f"{key}={value}: fsspec knows no protocol {protocol!r} (gs, s3, file, memory, ...)")
    module = known_implementations.get(protocol, {}).get("class", "").split(".")[0]
    if protocol not in registry and module and importlib.util.find_spec(module) is None:
        extra = REMOTE_EXTRAS.get(protocol)
        raise ValueError(
            f"{key}={value} needs the {module} package: pip install {module}"
            + (f" (bitk's [{extra}] extra)" if extra else "")
        )


def run_name(output_dir: str) -> str:
    """The run's name: output_dir's folder name (runs/smollm2 -> smollm2)."""
    return Path(output_dir).expanduser().resolve().name


# gcs.enabled=true gcs.bucket=NAME: the spelling of earlier SkyPilot set-ups, short for remote=gs://NAME/RUN
GCS_KEYS = ("gcs.enabled", "gcs.bucket")


def _gcs_remote(cfg: Config, settings: dict[str, str]) -> None:
    """Set ``cfg.remote`` from the gcs.* keys (ValueError for an unknown key, a missing bucket or a second remote)."""
    unknown = sorted(set(settings) - set(GCS_KEYS))
    if unknown:
        raise ValueError(
            f"unknown key {unknown[0]!r}; valid keys of gcs: {', '.join(GCS_KEYS)} (short for remote=gs://BUCKET/RUN)"
        )
    enabled = settings.get("gcs.enabled", "false").strip().lower()
    if enabled not in ("true", "false"):
        raise ValueError(f"gcs.enabled must be true or false, got {settings['gcs.enabled']!r}")
    if enabled == "false":
        return
    bucket = settings.get("gcs.bucket", "").strip().removeprefix("gs://").strip("/")
    if not bucket:
        raise ValueError("gcs.enabled=true needs gcs.bucket=NAME (short for remote=gs://NAME/RUN)")
    if cfg.remote is not None:
        raise ValueError(
            f"gcs.enabled=true gcs.bucket={bucket} and remote={cfg.remote} both name the run's remote copy: keep one"
        )
    cfg.remote = f"gs://{bucket}/{run_name(cfg.output_dir)}"


# --------------------------------------------------------------------------- training presets

TRAINING_PRESETS: dict[str, dict[str, Any]] = {}
"""name -> the settings it makes (``"group.field": value``); choose with training=NAME."""
TRAINING_PRESET_DOCS: dict[str, str] = {}
"""name -> one line describing the preset (shown by --help)."""


def register_training_preset(name: str, settings: dict[str, Any], doc: str) -> dict[str, Any]:
    """Add (or replace) a training preset: ``settings`` maps keys (``"training.lr"``,
    ``"objectives.weights"``) to values; validated now. Recipes call this at import."""
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"a training preset name must be an identifier, got {name!r}")
    if not isinstance(settings, dict) or not all(isinstance(k, str) and "." in k for k in settings):
        raise ValueError(f"a training preset maps 'group.field' keys to values, got {settings!r}")
    from omegaconf import OmegaConf

    cfg = _merge([OmegaConf.structured(Config), _nested(settings)])
    for group in GROUPS:  # each group on its own: the model and teacher are the run's to choose
        getattr(cfg, group).validate()
    TRAINING_PRESETS[name] = dict(settings)
    TRAINING_PRESET_DOCS[name] = doc
    return settings


def training_preset(name: str) -> dict[str, Any]:
    """A copy of the named training preset's settings (ValueError listing the presets if unknown)."""
    if name not in TRAINING_PRESETS:
        raise ValueError(f"unknown training preset {name!r}; presets: {', '.join(TRAINING_PRESETS)}")
    return copy.deepcopy(TRAINING_PRESETS[name])


TRAINING_PRESETS["base"] = {}
TRAINING_PRESET_DOCS["base"] = "cross-entropy pre-training; the defaults: the tiny model on CPU in a few minutes"


# --------------------------------------------------------------------------- parsing

# Earlier spellings, still accepted on the command line and in saved configs: key -> today's key.
RENAMED = {
    "ternary": "model.ternary",
    "training.objectives": "objectives.weights",
    **{
        f"training.{name}": f"objectives.{name}"
        for name in (
            "phase",
            "teacher",
            "teacher_dtype",
            "dlm_probability",
            "dlm_complementary",
            "dlm_mask_token",
            "kd_temperature",
            "relation_layers",
            "relation_split_heads",
            "relation_gamma",
            "layerwise_weighting",
            "lrc_rank_ratio",
            "lrc_init",
            "lrc_layers",
        )
    },
    "training.save_every": "checkpoint.save_every",
    "training.keep_last": "checkpoint.keep_last",
    "training.log_every": "logging.log_every",
    **{name: f"logging.{name}" for name in ("progress", "tensorboard", "wandb", "wandb_project")},
}
RENAMED_GROUPS = {"model_overrides": "model"}


def parse_args(argv: list[str]) -> Config:
    """A validated Config from ``key=value`` arguments (module doc for the order of the layers).

    ``model=NAME`` is short for ``model.name=NAME``; ``training=NAME`` picks a training preset;
    ``gcs.enabled=true gcs.bucket=NAME`` is short for ``remote=gs://NAME/RUN`` (RUN: output_dir's name).
    ValueError names an unknown key (with the valid keys), a bad type or an out-of-range value.
    """
    from omegaconf import OmegaConf

    training_name = "base"
    dotlist = []
    gcs: dict[str, str] = {}
    for arg in argv:
        key, eq, value = arg.partition("=")
        if not eq or not key:
            raise ValueError(f"argument {arg!r} is not of the form key=value (see --help)")
        key = renamed(key)
        if key.startswith("gcs."):
            gcs[key] = value
        elif key == "training" and value and not value.startswith(("{", "[")):
            training_name = value
        elif key == "model" and value and not value.startswith(("{", "[")):
            dotlist.append(f"model.name={value}")
        elif key in GROUPS:
            hint = {
                "training": f" or pick a preset (training=NAME: {', '.join(TRAINING_PRESETS)})",
                "model": " or pick the model (model=NAME)",
            }.get(key, "")
            raise ValueError(f"{key} is a group: set its fields ({key}.FIELD=VALUE){hint}")
        else:
            dotlist.append(f"{key}={value}")
    preset = training_preset(training_name)
    overrides = _from_dotlist(dotlist)
    name = OmegaConf.select(overrides, "model.name", default=ModelGroup.name)
    pretrained = OmegaConf.select(overrides, "model.pretrained", default=True)
    layers = [OmegaConf.structured(Config)]
    if pretrained is True and isinstance(name, str):
        layers.append(_nested(PRETRAINED_DEFAULTS.get(name, {})))
    cfg = _merge([*layers, _nested(preset), overrides])
    if gcs:
        _gcs_remote(cfg, gcs)
    cfg.validate()
    return cfg


def renamed(key: str) -> str:
    """A key in today's spelling (`RENAMED`: ternary -> model.ternary, training.objectives ->
    objectives.weights, model_overrides.X -> model.X, ...)."""
    if key in RENAMED:
        return RENAMED[key]
    head, dot, rest = key.partition(".")
    return f"{RENAMED_GROUPS[head]}.{rest}" if dot and head in RENAMED_GROUPS else key


def migrate_config_dict(data: dict[str, Any]) -> dict[str, Any]:
    """A saved config dict in today's layout (earlier spellings renamed, ``model: NAME`` into the group)."""
    flat = {}
    for key, value in _flatten(data).items():
        key = renamed(key)
        flat["model.name" if key == "model" else key] = value
    return _nested(flat)


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1} (lists and other values are leaves)."""
    flat = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            flat.update(_flatten(v, f"{prefix}{k}."))
        else:
            flat[f"{prefix}{k}"] = v
    return flat


def _nested(flat: dict[str, Any]) -> dict[str, Any]:
    """{"a.b": 1} -> {"a": {"b": 1}}."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        *groups, leaf = key.split(".")
        node = out
        for g in groups:
            node = node.setdefault(g, {})
        node[leaf] = copy.deepcopy(value)
    return out


def config_from_dict(data: dict[str, Any]) -> Config:
    """A validated Config from a (possibly partial) nested dict, e.g. one saved in a checkpoint."""
    from omegaconf import OmegaConf

    if not isinstance(data, dict):
        raise ValueError(f"a training config must be a mapping, got {type(data).__name__}")
    cfg = _merge([OmegaConf.structured(Config), OmegaConf.create(migrate_config_dict(data))])
    cfg.validate()
    return cfg


def config_changes(before: dict[str, Any], after: Config) -> list[str]:
    """'key old -> new' for every setting that differs between a saved config dict and ``after``."""
    try:
        old = _flatten(config_to_dict(config_from_dict(before)))
    except ValueError:
        return []
    new = _flatten(config_to_dict(after))
    return [f"{k} {old[k]!r} -> {new[k]!r}" for k in new if k in old and old[k] != new[k]]


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """Plain JSON-serialisable dict of every field (tuples become lists)."""
    return json_safe(dataclasses.asdict(cfg))


def config_to_yaml(cfg: Config) -> str:
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(OmegaConf.create(config_to_dict(cfg)))


def json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def _from_dotlist(dotlist: list[str]):
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        return OmegaConf.from_dotlist(dotlist)
    except OmegaConfBaseException as e:
        raise ValueError(f"cannot parse the overrides {dotlist}: {_first_line(e)}") from e


def _merge(layers: list) -> Config:
    from omegaconf import OmegaConf
    from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

    try:
        merged = OmegaConf.merge(*layers)
        return OmegaConf.to_object(merged)
    except ConfigKeyError as e:
        key = getattr(e, "full_key", None) or getattr(e, "key", "?")
        raise ValueError(f"unknown key {key!r}; {_valid_keys(str(key))}") from e
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None)
        where = f"bad value for {key}: " if key else "bad override: "
        hint = ""
        if key and _field_type(key):
            hint = f" (expected {_field_type(key)})"
        raise ValueError(where + _first_line(e) + hint) from e


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def _group_class(prefix: str) -> type | None:
    cls: type = Config
    for part in [p for p in prefix.split(".") if p]:
        f = {f.name: f for f in fields(cls)}.get(part)
        if f is None or not dataclasses.is_dataclass(resolve_type(cls, part)):
            return None
        cls = resolve_type(cls, part)
    return cls


def resolve_type(cls: type, name: str) -> Any:
    import typing

    return typing.get_type_hints(cls)[name]


def _field_type(key: str) -> str | None:
    parent, _, name = key.rpartition(".")
    cls = _group_class(parent)
    if cls is None or name not in {f.name for f in fields(cls)}:
        return None
    return type_name(resolve_type(cls, name))


def type_name(tp: Any) -> str:
    """A field type as --help writes it: int, float | None, list[str], ..."""
    import typing

    args = typing.get_args(tp)
    if typing.get_origin(tp) is typing.Union and len(args) == 2 and type(None) in args:
        return f"{type_name(next(a for a in args if a is not type(None)))} | None"
    if tp is Any:  # a data source: a string or a mapping
        return "str or mapping"
    text = getattr(tp, "__name__", None) if isinstance(tp, type) else None
    return text or str(tp).replace("typing.Any", "str or mapping").replace("typing.", "")


def _valid_keys(key: str) -> str:
    parent = key.rpartition(".")[0]
    cls = _group_class(parent)
    while cls is None and parent:
        parent = parent.rpartition(".")[0]
        cls = _group_class(parent)
    cls = cls or Config
    names = [(f"{parent}." if parent else "") + f.name for f in fields(cls)]
    return f"valid keys{' of ' + parent if parent else ''}: {', '.join(names)}"


GROUPS = ("model", "data", "training", "objectives", "checkpoint", "logging")
"""The groups of `Config`: set their fields as GROUP.FIELD=VALUE."""
