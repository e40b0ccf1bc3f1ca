"""The trainer's configuration: typed dataclasses, named presets, and `key=value` parsing.

    cfg = parse_args(["model=tiny", "training=base", "training.max_steps=100"])
    cfg.training.lr, cfg.data.block_size, cfg.output_dir

Every field has a docstring (shown by ``python -m bitk.train --help`` and docs/train.md).
`parse_args` builds an OmegaConf schema from `Config`, merges the training preset chosen with
``training=NAME``, then the ``key=value`` overrides; unknown keys, values of the wrong type and
values out of range raise ValueError naming the key and the valid choices, before any work.
Model presets are `bitk.models.PRESETS`; training presets live in `TRAINING_PRESETS`, and other
modules add theirs with `register_training_preset`.
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import importlib.util
import inspect
import math
import textwrap
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from bitk.models import PRESET_REPOS, PRESETS, ModelConfig
from bitk.models.hub import is_hub_id

__all__ = [
    "Config",
    "ModelGroup",
    "DataConfig",
    "TrainingConfig",
    "TRAINING_PRESETS",
    "TRAINING_PRESET_DOCS",
    "register_training_preset",
    "training_preset",
    "parse_args",
    "config_from_dict",
    "config_to_dict",
    "config_to_yaml",
    "field_docs",
    "format_help",
    "OPTIMIZERS",
    "SCHEDULES",
    "CLIPS",
    "PRECISIONS",
    "DISTRIBUTED",
    "EXPORT_TYPES",
]

OPTIMIZERS = ("adamw", "muon")
SCHEDULES = ("cosine", "wsd", "constant")
CLIPS = ("zclip", "norm", "none")
QUANT_WARMUP_SHAPES = ("linear", "cosine")
PRECISIONS = ("auto", "fp32", "bf16")
DISTRIBUTED = ("auto", "ddp", "fsdp")
EXPORT_TYPES = ("i2_s", "tq1_0", "tq2_0", "f16", "f32", "none")
_TERNARY_EXPORTS = ("i2_s", "tq1_0", "tq2_0")
TEACHER_DTYPES = ("auto", "fp32", "bf16")
LAYERWISE_WEIGHTINGS = ("uniform", "depth")
LRC_INITS = ("svd", "random")
LRC_LAYERS = ("all", "final")
# Settings a model preset brings when it starts from its pretrained weights, applied before the
# training preset's own settings and the command line: converting a working model to ternary wants a
# far smaller step than training from scratch (the base preset's 3e-3 wipes out what it knew).
PRETRAINED_DEFAULTS: dict[str, dict[str, Any]] = {
    "smollm2_135m": {"training.lr": 3e-4},
    "smollm2_360m": {"training.lr": 3e-4},
    "qwen3_0_6b": {"training.lr": 3e-4},
    "qwen3_4b": {"training.lr": 1e-4},
    "bitnet_2b": {"training.lr": 1e-4},
}
# ModelConfig fields a pretrained model may change: those that do not alter its weights' shapes or meaning.
PRETRAINED_OVERRIDABLE = ("max_position_embeddings",)
# Earlier spellings, still accepted on the command line and in saved configs.
RENAMED = {"ternary": "model.ternary", "model_overrides": "model"}


# --------------------------------------------------------------------------- checks


def _check_int(name: str, value: Any, *, low: int | None = None, high: int | None = None, why: str = "") -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if low is not None and value < low:
        raise ValueError(f"{name} must be >= {low}{why}, got {value}")
    if high is not None and value > high:
        raise ValueError(f"{name} must be <= {high}{why}, got {value}")


def _check_number(name: str, value: Any, *, low: float | None = None, high: float | None = None,
                  low_open: bool = False, high_open: bool = False) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    lo = low is not None and (value <= low if low_open else value < low)
    hi = high is not None and (value >= high if high_open else value > high)
    if lo or hi:
        left = "(" if low_open else "["
        right = ")" if high_open else "]"
        span = f"{left}{'-inf' if low is None else low}, {'inf' if high is None else high}{right}"
        raise ValueError(f"{name} must be in {span}, got {value}")


def _check_bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {value!r}")


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}; got {value!r}")



@dataclass
class _ModelSource:
    """Which model to train and from what (the "model" group; model=NAME sets model.name)."""

    name: str = "tiny"
    """A model preset (see --help: presets with a hub repo start from its pretrained weights), a
    Hugging Face hub id (ORG/NAME, through the Hugging Face cache), or a local bitk checkpoint or
    Hugging Face folder."""
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
        return {f.name: getattr(self, f.name) for f in fields(ModelConfig)
                if f.name != "ternary" and getattr(self, f.name, None) is not None}

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
        _check_bool("model.pretrained", self.pretrained)
        _check_bool("model.ternary", self.ternary)
        if self.revision is not None and (not isinstance(self.revision, str) or not self.revision):
            raise ValueError(f"model.revision must be a branch, tag or commit of the hub repo, got {self.revision!r}")
        local = not self.is_preset() and Path(self.name).expanduser().exists()
        if not self.is_preset() and not local and not is_hub_id(self.name):
            raise ValueError(f"model={self.name!r} is neither a preset ({', '.join(PRESETS)}), nor an existing "
                             "path (a bitk checkpoint or Hugging Face folder), nor a Hugging Face hub id (ORG/NAME)")
        if self.revision is not None and (local or self.source() is None):
            raise ValueError(f"model.revision applies to hub models; model={self.name} is "
                             f"{'a local folder' if local else 'a preset without a hub repo'}")
        changed = self.overrides()
        if self.from_scratch():
            if self.is_preset():
                self.config()
            return
        fixed = sorted(set(changed) - set(PRETRAINED_OVERRIDABLE))
        if fixed:
            raise ValueError(f"model.{fixed[0]} changes the architecture, which comes from the pretrained model's "
                             f"config.json; set model.pretrained=false to build a changed architecture from scratch "
                             f"(a pretrained model may change only {', '.join(PRETRAINED_OVERRIDABLE)})")


def _model_group() -> type:
    """The "model" group: `_ModelSource` plus every ModelConfig field but ternary as an optional override."""
    import typing

    hints = typing.get_type_hints(ModelConfig)
    extra = [(f.name, typing.Optional[hints[f.name]], field(default=None))  # noqa: UP045 (OmegaConf's spelling)
             for f in fields(ModelConfig) if f.name != "ternary"]
    cls = dataclasses.make_dataclass("ModelGroup", extra, bases=(_ModelSource,))
    cls.__doc__ = _ModelSource.__doc__
    cls.__module__ = __name__
    cls.__field_docs__ = {name: f"{doc} (null: as the preset or the source has it)"
                          for name, doc in field_docs(ModelConfig).items() if name != "ternary"}
    return cls


@dataclass
class DataConfig:
    """What the model reads: sources, mixture, packing, held-out split (the "data" group)."""

    sources: list[str] = field(default_factory=lambda: ["default"])
    """Text sources: "default" (bitk's embedded corpus), local .txt/.jsonl/.json/.parquet files or
    folders, or Hugging Face hub data set names (when online)."""
    weights: list[float] | None = None
    """Mixture weights, one per source (normalised); null = equal weights."""
    text_field: str = "text"
    """Column holding the text in jsonl/json/parquet sources."""
    block_size: int = 256
    """Tokens per packed training sequence (documents joined with EOS, per-document positions)."""
    streaming: bool = False
    """Read sources lazily with `datasets` streaming instead of loading them whole."""
    heldout_fraction: float = 0.05
    """Share of each source's documents kept for evaluation ("default" uses its own held-out split;
    0 holds nothing out)."""
    max_eval_tokens: int = 16384
    """At most this many held-out tokens are evaluated each time."""

    def validate(self) -> None:
        """Raise ValueError naming the first bad field."""
        if not isinstance(self.sources, list) or not self.sources:
            raise ValueError("data.sources must be a non-empty list of sources, e.g. data.sources=[default]")
        for s in self.sources:
            if not isinstance(s, str) or not s.strip():
                raise ValueError(f"data.sources must hold non-empty strings, got {s!r}")
        if self.weights is not None:
            if len(self.weights) != len(self.sources):
                raise ValueError(f"data.weights has {len(self.weights)} entries, data.sources has "
                                 f"{len(self.sources)}: give one weight per source (or weights=null)")
            for w in self.weights:
                _check_number("data.weights", w, low=0.0, low_open=True)
        if not isinstance(self.text_field, str) or not self.text_field:
            raise ValueError(f"data.text_field must be a non-empty string, got {self.text_field!r}")
        _check_int("data.block_size", self.block_size, low=2)
        _check_bool("data.streaming", self.streaming)
        _check_number("data.heldout_fraction", self.heldout_fraction, low=0.0, high=0.5)
        _check_int("data.max_eval_tokens", self.max_eval_tokens, low=self.block_size,
                   why=f" (at least one block of data.block_size={self.block_size})")


@dataclass
class TrainingConfig:
    """How to optimise: steps, batch, optimizer, schedule, clipping, cadence (the "training" group)."""

    max_steps: int = 400
    """Optimizer steps to run (the step counter also counts skipped NaN/Inf steps)."""
    global_batch_size: int = 4
    """Sequences per optimizer step over all processes (= micro_batch_size x grad. accumulation x processes)."""
    micro_batch_size: int = 4
    """Sequences per forward/backward on one process; gradients accumulate up to global_batch_size."""
    auto_batch_size: bool = False
    """Find the largest micro_batch_size that fits (GPU memory, or memory_budget_gb on CPU) with a
    few real steps, then set gradient accumulation so that global_batch_size is unchanged."""
    memory_budget_gb: float = 8.0
    """Memory the auto batch size may use on CPU (GB)."""
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
    warmup_steps: int = 40
    """Linear learning-rate warm-up from 0, in optimizer steps."""
    decay_fraction: float = 0.2
    """WSD: share of max_steps spent decaying at the end."""
    clip: str = "zclip"
    """Gradient clipping: "zclip" (adaptive z-score, numerics.md), "norm" (max_grad_norm) or "none"."""
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
    objectives: str = "ce=1"
    """The loss: weighted objectives (ce, dlm, logits_kd, attention_relation, layerwise, lrc), or a
    curriculum of phases "START:NAME=W,...;START:..." with START a fraction of max_steps, e.g.
    "0:ce=1;0.2:ce=1,dlm=1" (docs/recipes.md)."""
    phase: int | None = None
    """Run only this phase (1, 2, ...) of the objectives for all max_steps, e.g. one BitDistill
    stage; null = every phase at its start fraction."""
    teacher: str = "auto"
    """Full-precision teacher of logits_kd / attention_relation / layerwise / lrc: a bitk checkpoint or
    Hugging Face folder, loaded only when an objective needs it; "auto" = model, when that is a path
    (the original full-precision model, as BitDistill does)."""
    teacher_dtype: str = "auto"
    """Teacher weights: "auto" (bf16 on CUDA, float32 on CPU), "fp32" or "bf16"."""
    dlm_probability: float = 0.15
    """DLM: probability of masking each eligible token (never the first/last position or padding)."""
    dlm_complementary: bool = True
    """DLM: also train on the inverse mask, so every eligible token is masked exactly once per batch."""
    dlm_mask_token: str = "<|mask|>"
    """DLM: the token that replaces masked tokens (must be in the tokenizer; not EOS or padding)."""
    kd_temperature: float = 5.0
    """Logits KD: softmax temperature tau (the loss is tau^2 * KL; its weight is the beta of numerics.md)."""
    relation_layers: list[int] = field(default_factory=lambda: [-1])
    """Attention relation: decoder layers whose Q/K/V relations are distilled (-1 = the last of each model)."""
    relation_split_heads: int = 32
    """Attention relation: relation heads R; must divide the q/k/v widths of student and teacher."""
    relation_gamma: float = 1000.0
    """Attention relation: the factor gamma of the loss (BitDistill's scripts use 1e5 on one late layer)."""
    layerwise_weighting: str = "uniform"
    """Layer-wise distillation: layer weights "uniform" or "depth" (growing with depth)."""
    lrc_rank_ratio: float = 0.1
    """LRC: rank of each projection's correction as a fraction of min(in, out)."""
    lrc_init: str = "svd"
    """LRC: "svd" (truncated SVD of the quantization residual) or "random" (V small random, U zero)."""
    lrc_layers: str = "all"
    """LRC: hidden-state MSE over "all" decoder layers or the "final" one."""
    quant_warmup_steps: int = 0
    """Quantization warm-up: lambda goes 0 -> 1 over this many steps (0 = plain BitNet from the start)."""
    quant_warmup_shape: str = "linear"
    """Shape of the lambda warm-up: "linear" or "cosine"."""
    eval_every: int = 100
    """Evaluate held-out perplexity every N steps (0 = only at the end)."""
    save_every: int = 200
    """Save a full-state checkpoint every N steps (0 = only at the end)."""
    keep_last: int = 3
    """Checkpoints kept in output_dir/checkpoints (older ones are deleted; 0 = keep all)."""
    log_every: int = 10
    """Log loss, learning rate, grad norm and tokens/s every N steps."""
    precision: str = "auto"
    """"auto" (bf16 autocast on CUDA, float32 on CPU), "fp32" or "bf16" (autocast; weights and
    optimizer state stay float32)."""
    compile: bool = False
    """torch.compile the model."""
    max_bad_steps: int = 5
    """The run stops once this many steps in a row had a NaN/Inf loss or gradient norm (each such
    step is skipped: no update, counted in the metrics)."""
    seed: int = 0
    """Seed of the model initialisation and the data order."""

    def validate(self) -> None:
        """Raise ValueError naming the first bad field."""
        p = "training."
        _check_int(p + "max_steps", self.max_steps, low=1)
        _check_int(p + "global_batch_size", self.global_batch_size, low=1)
        _check_int(p + "micro_batch_size", self.micro_batch_size, low=1)
        if self.global_batch_size % self.micro_batch_size:
            raise ValueError(f"training.global_batch_size ({self.global_batch_size}) must be a multiple of "
                             f"training.micro_batch_size ({self.micro_batch_size})")
        _check_bool(p + "auto_batch_size", self.auto_batch_size)
        _check_number(p + "memory_budget_gb", self.memory_budget_gb, low=0.0, low_open=True)
        _check_choice(p + "optimizer", self.optimizer, OPTIMIZERS)
        _check_number(p + "lr", self.lr, low=0.0, low_open=True)
        _check_number(p + "min_lr_ratio", self.min_lr_ratio, low=0.0, high=1.0)
        _check_number(p + "weight_decay", self.weight_decay, low=0.0)
        if len(self.betas) != 2:
            raise ValueError(f"training.betas must be two numbers, got {self.betas!r}")
        for b in self.betas:
            _check_number(p + "betas", b, low=0.0, high=1.0, high_open=True)
        _check_number(p + "eps", self.eps, low=0.0, low_open=True)
        _check_number(p + "muon_lr", self.muon_lr, low=0.0, low_open=True)
        _check_choice(p + "schedule", self.schedule, SCHEDULES)
        _check_int(p + "warmup_steps", self.warmup_steps, low=0)
        _check_number(p + "decay_fraction", self.decay_fraction, low=0.0, high=1.0, low_open=True)
        _check_choice(p + "clip", self.clip, CLIPS)
        _check_number(p + "max_grad_norm", self.max_grad_norm, low=0.0, low_open=True)
        _check_number(p + "zclip_alpha", self.zclip_alpha, low=0.0, high=1.0, low_open=True, high_open=True)
        _check_number(p + "zclip_z_thresh", self.zclip_z_thresh, low=0.0, low_open=True)
        _check_int(p + "zclip_warmup_steps", self.zclip_warmup_steps, low=1)
        _check_number(p + "zclip_factor", self.zclip_factor, low=0.0, low_open=True)
        if self.zclip_max_grad_norm is not None:
            _check_number(p + "zclip_max_grad_norm", self.zclip_max_grad_norm, low=0.0, low_open=True)
        from bitk.objectives.curriculum import Curriculum  # torch-free

        if not isinstance(self.objectives, str):
            raise ValueError(f"training.objectives must be a string such as 'ce=1' or '0:ce=1;0.2:ce=1,dlm=1', "
                             f"got {self.objectives!r}")
        try:
            curriculum = Curriculum.parse(self.objectives)
        except ValueError as e:
            raise ValueError(f"training.objectives: {e}") from None
        if self.phase is not None:
            _check_int(p + "phase", self.phase, low=1, high=len(curriculum.phases),
                       why=f" (training.objectives has {len(curriculum.phases)} phase(s))")
        if not isinstance(self.teacher, str) or not self.teacher:
            raise ValueError('training.teacher must be "auto" or a path to a full-precision model')
        _check_choice(p + "teacher_dtype", self.teacher_dtype, TEACHER_DTYPES)
        _check_number(p + "dlm_probability", self.dlm_probability, low=0.0, high=1.0)
        _check_bool(p + "dlm_complementary", self.dlm_complementary)
        if not isinstance(self.dlm_mask_token, str) or not self.dlm_mask_token:
            raise ValueError("training.dlm_mask_token must be a token of the tokenizer, e.g. <|mask|>")
        _check_number(p + "kd_temperature", self.kd_temperature, low=0.0, low_open=True)
        if not isinstance(self.relation_layers, list) or not self.relation_layers:
            raise ValueError(f"training.relation_layers must be a non-empty list of layer indices, got "
                             f"{self.relation_layers!r}")
        for layer in self.relation_layers:
            if not isinstance(layer, int) or isinstance(layer, bool):
                raise ValueError(f"training.relation_layers must hold layer indices, got {layer!r}")
        _check_int(p + "relation_split_heads", self.relation_split_heads, low=1)
        _check_number(p + "relation_gamma", self.relation_gamma, low=0.0)
        _check_choice(p + "layerwise_weighting", self.layerwise_weighting, LAYERWISE_WEIGHTINGS)
        _check_number(p + "lrc_rank_ratio", self.lrc_rank_ratio, low=0.0, high=1.0, low_open=True)
        _check_choice(p + "lrc_init", self.lrc_init, LRC_INITS)
        _check_choice(p + "lrc_layers", self.lrc_layers, LRC_LAYERS)
        _check_int(p + "quant_warmup_steps", self.quant_warmup_steps, low=0)
        _check_choice(p + "quant_warmup_shape", self.quant_warmup_shape, QUANT_WARMUP_SHAPES)
        _check_int(p + "eval_every", self.eval_every, low=0)
        _check_int(p + "save_every", self.save_every, low=0)
        _check_int(p + "keep_last", self.keep_last, low=0)
        _check_int(p + "log_every", self.log_every, low=1)
        _check_choice(p + "precision", self.precision, PRECISIONS)
        _check_bool(p + "compile", self.compile)
        _check_int(p + "max_bad_steps", self.max_bad_steps, low=1)
        _check_int(p + "seed", self.seed, low=0)


@dataclass
class Config:
    """A training run: model, data, training, and where the results go."""

    model: ModelGroup = field(default_factory=lambda: ModelGroup())
    """The model group (model=NAME picks the model, model.FIELD=VALUE changes it)."""
    data: DataConfig = field(default_factory=DataConfig)
    """The data group."""
    training: TrainingConfig = field(default_factory=TrainingConfig)
    """The training group (choose a preset with training=NAME)."""
    output_dir: str = "runs/tiny"
    """Where checkpoints, metrics.jsonl, loss.png and the GGUF go."""
    device: str = "auto"
    """"auto" (CUDA when available, else CPU), "cpu", "cuda" or "cuda:N"."""
    distributed: str = "auto"
    """Under torchrun: "auto" (= ddp), "ddp" or "fsdp" (FSDP2 fully_shard per decoder layer)."""
    resume: str = "auto"
    """"auto" (the latest checkpoint in output_dir, if any), "none" (start afresh; refused when
    output_dir holds checkpoints), or a path: a checkpoint folder (.../checkpoints/step-NNNNNN) or
    an output_dir (its latest checkpoint)."""
    export_gguf: str = "i2_s"
    """GGUF type written from the final checkpoint to output_dir/model-TYPE.gguf
    (i2_s, tq1_0, tq2_0, f16, f32), or "none"."""
    tensorboard: bool = False
    """Also log to TensorBoard in output_dir/tensorboard (needs the tensorboard package)."""
    wandb: bool = False
    """Also log to Weights & Biases (needs the wandb package and a login)."""
    wandb_project: str = "bitk"
    """W&B project name (wandb=true)."""
    progress: bool | None = None
    """Show a progress bar: null = when stderr is a terminal, true = always, false = never."""

    def validate(self) -> None:
        """Raise ValueError naming the first bad field; checks every group."""
        self.model.validate()
        self.data.validate()
        self.training.validate()
        self._validate_objectives()
        if self.model.from_scratch() and self.model.is_preset():
            max_positions = self.model.config().max_position_embeddings
            if self.data.block_size > max_positions:
                raise ValueError(f"data.block_size ({self.data.block_size}) exceeds the model's "
                                 f"max_position_embeddings ({max_positions})")
        if not isinstance(self.output_dir, str) or not self.output_dir:
            raise ValueError("output_dir must be a non-empty path")
        kind = self.device.split(":")[0] if isinstance(self.device, str) else None
        if kind not in ("auto", "cpu", "cuda") or (":" in self.device and (kind != "cuda" or
                                                                        not self.device.split(":")[1].isdigit())):
            raise ValueError(f"device must be one of auto, cpu, cuda, cuda:N; got {self.device!r}")
        _check_choice("distributed", self.distributed, DISTRIBUTED)
        if not isinstance(self.resume, str) or not self.resume:
            raise ValueError("resume must be auto, none or a checkpoint path")
        if self.resume not in ("auto", "none") and not Path(self.resume).expanduser().is_dir():
            raise ValueError(f"resume={self.resume!r}: no such checkpoint folder (or use resume=auto / resume=none)")
        _check_choice("export_gguf", self.export_gguf, EXPORT_TYPES)
        if not self.model.ternary and self.export_gguf in _TERNARY_EXPORTS:
            raise ValueError(f"export_gguf={self.export_gguf} stores ternary weights, but ternary=false trains a "
                             "full-precision model: use export_gguf=f16, f32 or none")
        _check_bool("tensorboard", self.tensorboard)
        _check_bool("wandb", self.wandb)
        if self.tensorboard and importlib.util.find_spec("tensorboard") is None:
            raise ValueError("tensorboard=true needs the tensorboard package: pip install tensorboard")
        if self.wandb and importlib.util.find_spec("wandb") is None:
            raise ValueError("wandb=true needs the wandb package: pip install wandb (then wandb login)")
        if self.progress is not None:
            _check_bool("progress", self.progress)

    def curriculum(self):
        """The training objectives as a `bitk.objectives.curriculum.Curriculum` (training.phase applied)."""
        from bitk.objectives.curriculum import Curriculum

        curriculum = Curriculum.parse(self.training.objectives)
        if self.training.phase is not None:
            curriculum = Curriculum.constant(curriculum.phases[self.training.phase - 1][1])
        return curriculum

    def teacher_source(self) -> str | None:
        """Where the teacher comes from (None when no objective needs one): a preset, hub id or path.

        "auto" is the model's own pretrained source (the preset's hub repo, the hub id or the
        path), loaded in full precision; None there (tiny) is refused by validation.
        """
        from bitk.objectives.curriculum import needs_teacher

        if not needs_teacher(self.curriculum()):
            return None
        return self.model.source() if self.training.teacher == "auto" else self.training.teacher

    def teacher_revision(self) -> str | None:
        """The hub revision of the teacher: the model's when the teacher is the model's own repo."""
        return self.model.revision if self.training.teacher == "auto" else None

    def _validate_objectives(self) -> None:
        objectives = self.curriculum().objectives()
        if "lrc" in objectives and not self.model.ternary:
            raise ValueError("the lrc objective calibrates a low-rank correction of ternary projections: it needs "
                             "model.ternary=true")
        from bitk.objectives.curriculum import TEACHER_OBJECTIVES, needs_teacher

        if not needs_teacher(self.curriculum()):
            return
        wanted = ", ".join(sorted(objectives & set(TEACHER_OBJECTIVES)))
        teacher = self.teacher_source()
        if teacher is None:
            raise ValueError(
                f"the objective(s) {wanted} need a full-precision teacher, and model={self.model.name} is a preset "
                "without pretrained weights: set training.teacher=NAME|ORG/NAME|PATH (a preset with a hub repo, a "
                "hub id, or a bitk checkpoint or Hugging Face folder)")
        if teacher in PRESETS and teacher not in PRESET_REPOS:
            raise ValueError(f"training.teacher={teacher} is a preset without pretrained weights; presets with a hub "
                             f"repo: {', '.join(PRESET_REPOS)}")
        if teacher not in PRESETS and not Path(teacher).expanduser().exists() and not is_hub_id(teacher):
            raise ValueError(f"training.teacher={teacher!r} (needed by {wanted}): no such checkpoint or folder, and "
                             "neither a preset nor a Hugging Face hub id (ORG/NAME)")


# --------------------------------------------------------------------------- training presets

TRAINING_PRESETS: dict[str, TrainingConfig] = {}
"""name -> TrainingConfig; choose with training=NAME (then training.FIELD=... on top)."""
TRAINING_PRESET_DOCS: dict[str, str] = {}
"""name -> one line describing the preset (shown by --help)."""


def register_training_preset(name: str, config: TrainingConfig, doc: str) -> TrainingConfig:
    """Add (or replace) a training preset; validated now. Recipes call this at import."""
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"a training preset name must be an identifier, got {name!r}")
    if not isinstance(config, TrainingConfig):
        raise ValueError(f"a training preset is a TrainingConfig, got {type(config).__name__}")
    config.validate()
    TRAINING_PRESETS[name] = config
    TRAINING_PRESET_DOCS[name] = doc
    return config


def training_preset(name: str) -> TrainingConfig:
    """A fresh copy of the named training preset (ValueError listing the presets if unknown)."""
    if name not in TRAINING_PRESETS:
        raise ValueError(f"unknown training preset {name!r}; presets: {', '.join(TRAINING_PRESETS)}")
    return copy.deepcopy(TRAINING_PRESETS[name])


register_training_preset(
    "base",
    TrainingConfig(),
    "cross-entropy pre-training; the defaults: the tiny model on CPU in a few minutes",
)


# --------------------------------------------------------------------------- parsing


def parse_args(argv: list[str]) -> Config:
    """A validated Config from ``key=value`` arguments (``training=NAME`` picks a training preset).

    ``model=NAME`` is short for ``model.name=NAME``. Order: the dataclass defaults, then what the
    model preset brings when it starts pretrained (`PRETRAINED_DEFAULTS`), then what the training
    preset sets, then the overrides in the order given. ValueError names an unknown key (with the
    valid keys), a bad type or an out-of-range value.
    """
    from omegaconf import OmegaConf

    training_name = "base"
    dotlist = []
    for arg in argv:
        key, eq, value = arg.partition("=")
        if not eq or not key:
            raise ValueError(f"argument {arg!r} is not of the form key=value (see --help)")
        key = _renamed(key)
        if key == "training" and value and not value.startswith(("{", "[")):
            training_name = value
        elif key == "model" and value and not value.startswith(("{", "[")):
            dotlist.append(f"model.name={value}")
        elif key in ("data", "training", "model"):
            raise ValueError(f"{key} is a group: set its fields ({key}.FIELD=VALUE)"
                             + (f" or pick a preset (training=NAME: {', '.join(TRAINING_PRESETS)})"
                                if key == "training" else " or pick the model (model=NAME)" if key == "model" else ""))
        else:
            dotlist.append(f"{key}={value}")
    training = training_preset(training_name)
    overrides = _from_dotlist(dotlist)
    name = OmegaConf.select(overrides, "model.name", default=ModelGroup.name)
    pretrained = OmegaConf.select(overrides, "model.pretrained", default=True)
    layers = [OmegaConf.structured(Config(training=TrainingConfig()))]
    if pretrained is True and isinstance(name, str):
        layers.append(_from_dotlist([f"{k}={v}" for k, v in PRETRAINED_DEFAULTS.get(name, {}).items()]))
    layers += [OmegaConf.create({"training": _changed_fields(training)}), overrides]
    cfg = _merge(layers)
    cfg.validate()
    return cfg


def _renamed(key: str) -> str:
    """A key in today's spelling (`RENAMED`: ternary -> model.ternary, model_overrides.X -> model.X)."""
    head, dot, rest = key.partition(".")
    return RENAMED[head] + (dot + rest if rest else "") if head in RENAMED else key


def migrate_config_dict(data: dict[str, Any]) -> dict[str, Any]:
    """A saved config dict in today's layout (earlier spellings moved, ``model: NAME`` into the group)."""
    data = dict(data)
    model = data.get("model")
    group = dict(model) if isinstance(model, dict) else ({"name": model} if model is not None else {})
    if "model_overrides" in data:
        group.update(data.pop("model_overrides") or {})
    if "ternary" in data:
        group["ternary"] = data.pop("ternary")
    if group:
        data["model"] = group
    return data


def _changed_fields(config: Any) -> dict[str, Any]:
    """The fields of a dataclass instance that differ from its class defaults (what a preset sets)."""
    defaults = type(config)()
    return {f.name: json_safe(getattr(config, f.name)) for f in fields(config)
            if getattr(config, f.name) != getattr(defaults, f.name)}


def config_from_dict(data: dict[str, Any]) -> Config:
    """A validated Config from a (possibly partial) nested dict, e.g. one saved in a checkpoint."""
    from omegaconf import OmegaConf

    if not isinstance(data, dict):
        raise ValueError(f"a training config must be a mapping, got {type(data).__name__}")
    cfg = _merge([OmegaConf.structured(Config), OmegaConf.create(migrate_config_dict(data))])
    cfg.validate()
    return cfg


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
        if f is None or not dataclasses.is_dataclass(_resolve_type(cls, part)):
            return None
        cls = _resolve_type(cls, part)
    return cls


def _resolve_type(cls: type, name: str) -> Any:
    import typing

    return typing.get_type_hints(cls)[name]


def _field_type(key: str) -> str | None:
    parent, _, name = key.rpartition(".")
    cls = _group_class(parent)
    if cls is None or name not in {f.name for f in fields(cls)}:
        return None
    return _type_name(_resolve_type(cls, name))


def _type_name(tp: Any) -> str:
    import typing

    args = typing.get_args(tp)
    if typing.get_origin(tp) is typing.Union and len(args) == 2 and type(None) in args:
        return f"{_type_name(next(a for a in args if a is not type(None)))} | None"
    text = getattr(tp, "__name__", None) if isinstance(tp, type) else None
    return text or str(tp).replace("typing.", "")


def _valid_keys(key: str) -> str:
    parent = key.rpartition(".")[0]
    cls = _group_class(parent)
    while cls is None and parent:
        parent = parent.rpartition(".")[0]
        cls = _group_class(parent)
    cls = cls or Config
    names = [(f"{parent}." if parent else "") + f.name for f in fields(cls)]
    return f"valid keys{' of ' + parent if parent else ''}: {', '.join(names)}"


# --------------------------------------------------------------------------- help


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
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                    and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
                    and isinstance(after.value.value, str)):
                docs[node.target.id] = " ".join(after.value.value.split())
    return docs


ModelGroup = _model_group()


def iter_fields(cls: type = Config, prefix: str = "", defaults: Any = None):
    """(key, type name, default, doc) of every leaf field, groups flattened (``training.lr``)."""
    defaults = cls() if defaults is None else defaults
    docs = field_docs(cls)
    for f in fields(cls):
        value = getattr(defaults, f.name)
        if dataclasses.is_dataclass(value):
            yield from iter_fields(type(value), f"{prefix}{f.name}.", value)
        else:
            yield f"{prefix}{f.name}", _type_name(_resolve_type(cls, f.name)), value, docs.get(f.name, "")


def _format_default(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_format_default(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{}" if not value else str(value)
    return str(value)


def format_help(columns: int | None = None) -> str:
    """The text of ``python -m bitk.train --help``: usage, presets, every field with doc and default.

    Descriptions wrap to ``columns`` (default: the terminal's width, at most 100).
    """
    import shutil

    columns = min(shutil.get_terminal_size((100, 24)).columns, 100) if columns is None else columns
    lines = [
        "usage: python -m bitk.train [key=value ...]",
        "",
        "Train a bitk model: a thin PyTorch loop (docs/train.md). With no arguments it trains the tiny",
        "preset on bitk's embedded corpus on CPU, then writes a checkpoint, metrics.jsonl, loss.png and",
        "an I2_S GGUF into output_dir. Under torchrun the same command runs DDP or FSDP2.",
        "",
        "examples:",
        "  python -m bitk.train",
        "  python -m bitk.train model=smollm2_135m training=unified output_dir=runs/smollm2",
        "  python -m bitk.train model=ORG/NAME training=base training.auto_batch_size=true data.sources=[my.jsonl]",
        "  torchrun --nproc_per_node 8 -m bitk.train model=PATH distributed=fsdp",
        "",
        "model presets (model=NAME; or model=ORG/NAME of the Hugging Face hub, or model=PATH of a folder):",
    ]
    names = max(len(name) for name in [*PRESETS, *TRAINING_PRESETS])
    for name, mc in PRESETS.items():
        source = (f"pretrained {PRESET_REPOS[name]}" if name in PRESET_REPOS
                  else f"from scratch, {mc.num_hidden_layers} layers, hidden {mc.hidden_size}, bitk's tokenizer")
        lines.append(f"  {name:<{names}} {source}")
    lines += ["", "training presets (training=NAME, then training.FIELD=VALUE on top):"]
    for name in TRAINING_PRESETS:
        lines += textwrap.wrap(TRAINING_PRESET_DOCS.get(name, ""), width=columns,
                               initial_indent=f"  {name:<{names}} ", subsequent_indent=" " * (names + 3))
    lines += ["", "fields (key=value; lists as [a,b]; null for none):"]
    for key, tp, default, doc in iter_fields():
        lines.append(f"  {key} ({tp}, default {_format_default(default)})")
        lines += textwrap.wrap(doc, width=columns, initial_indent="      ", subsequent_indent="      ")
    return "\n".join(lines) + "\n"


def fields_markdown() -> str:
    """The fields table of docs/train.md (key, type, default, doc), generated from the docstrings."""
    rows = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for key, tp, default, doc in iter_fields():
        rows.append(f"| `{key}` | {tp.replace('|', 'or')} | `{_format_default(default)}` | "
                    f"{doc.replace('|', chr(92) + '|')} |")
    return "\n".join(rows) + "\n"


from . import recipes  # noqa: F401  (registers the recipe presets: unified, bitdistill_full, lrc_calibration)
