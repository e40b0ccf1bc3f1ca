"""The training loop: `train(cfg)`, one function to read top to bottom.

    start (processes, seed, output folder, model, teacher, data, batch geometry, optimizer, resume)
    -> loop (one optimizer step: micro-steps with gradient accumulation, NaN/Inf check, clip, step;
       log, evaluate, checkpoint) -> finish (final checkpoint, evaluation, loss curve, GGUF)

`Run` holds what the loop works on and names each part; the pieces it calls live in the modules
that own their data (config, build, optim, schedule, zclip, auto_batch, flops, distributed, state,
remote, metrics, stop, export; the data stream is `bitk.data.TrainData`, the loss
`bitk.objectives.compute_loss`). Options and outputs: docs/train.md.
"""

from __future__ import annotations

import copy
import functools
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bitk.data import MASK_ID, DocumentTokens, TrainData, document_tokens
from bitk.models import CausalLM
from bitk.nn import cpu, set_quant_lambda
from bitk.objectives import Curriculum, compute_loss

from .auto_batch import auto_micro_batch
from .build import build_model, load_teacher, prepare_lrc_student
from .config import TERNARY_EXPORTS, Config, config_changes, config_to_dict, config_to_yaml
from .distributed import (
    DistInfo,
    barrier,
    cleanup,
    init_distributed,
    load_state_for_resume,
    no_sync,
    params_finite,
    state_dict_for_save,
    step_outcome,
    wrap_model,
)
from .export import export_gguf, runtime_of
from .flops import flops_per_token, peak_flops
from .lock import OutputDirLock
from .metrics import (
    LOSS_CURVE_FILE,
    MIXTURE_CURVE_FILE,
    Metrics,
    ProgressBar,
    Window,
    format_record,
    format_summary,
    plot_loss_curve,
    plot_mixture,
)
from .mixture import InfluenceMixer, mixture_record
from .optim import build_optimizer, sync_hyperparameters
from .remote import Mirror, find_resume, open_remote
from .schedule import apply_lr, quant_lambda
from .state import CHECKPOINTS_DIR, list_checkpoints, load_state, rng_state, save_state, seed_everything, set_rng_state
from .stop import StopSignal
from .tasks import check_eval_tasks, evaluate_tasks
from .zclip import clip_gradients, make_zclip

__all__ = ["Run", "TrainingError", "describe_os_error", "train"]


class TrainingError(RuntimeError):
    """The run stopped on a fault it cannot step over; the message names the checkpoint to resume from."""


def train(cfg: Config) -> dict[str, Any]:
    """Train as ``cfg`` says; returns a summary (steps, tokens, losses, paths, stop reason).

    Raises ValueError for a bad configuration (before any work) and TrainingError when too many
    steps in a row have a non-finite loss. SIGTERM / SIGINT end the run after the current step
    with a checkpoint; the summary's "stopped" then names the signal.
    """
    cfg.validate()
    check_eval_tasks(cfg.training)  # lm_eval and the task names, before anything loads
    cpu.check_environment()  # BITK_CPU_* settings this machine cannot run
    cfg = copy.deepcopy(cfg)  # the auto batch size writes micro_batch_size into the saved config
    t = cfg.training
    run = Run.start(cfg)
    try:
        with run.progress:
            while run.step < t.max_steps:
                stopping = run.train_step()
                if run.bad_run >= t.max_bad_steps:
                    raise TrainingError(
                        f"stopped at step {run.step}: {run.bad_run} steps in a row had a non-finite loss or gradient "
                        f"norm (training.max_bad_steps={t.max_bad_steps}). The last good checkpoint is "
                        f"{run.last_good()}; resume from it with resume=PATH and, e.g., a lower training.lr, or "
                        "check the data around this step."
                    )
                run.log_step()
                if stopping:
                    run.save()
                    break
                if t.eval_every and run.step % t.eval_every == 0:
                    run.evaluate()
                if cfg.checkpoint.save_every and run.step % cfg.checkpoint.save_every == 0 and run.bad_run == 0:
                    run.save()
        run.finish()
    except TrainingError:
        raise
    except OSError as e:  # a full disk, a folder turned read-only: one line naming the file
        raise TrainingError(
            f"training failed at step {run.step}: {describe_os_error(e)}; the last good checkpoint is {run.last_good()}"
        ) from e
    except Exception as e:  # a fault mid-run (a kernel error, bad data): say where to resume from
        raise TrainingError(
            f"training failed at step {run.step} ({type(e).__name__}: {e}); the last good "
            f"checkpoint is {run.last_good()}"
        ) from e
    finally:
        run.close()
    summary = run.summary()
    run.say(format_summary(summary), flush=True)
    return summary


@dataclass
class Run:
    """Everything a run works on, and its counters; `start` builds it, `train` drives it."""

    cfg: Config
    info: DistInfo
    out: Path
    raw: CausalLM
    """The bare model (its config, its tokenizer folder); ``model`` is what trains (wrapped, compiled)."""
    tokenizer: Any
    """The model's tokenizers.Tokenizer."""
    model: torch.nn.Module
    teacher: torch.nn.Module | None
    curriculum: Curriculum
    framing: DocumentTokens
    mask_token_id: int
    """The DLM mask token's id (objectives.dlm_mask_token)."""
    data: TrainData
    bf16: bool
    """bf16 autocast (training.precision)."""
    say: Any
    started: float
    grad_accum: int = 1
    optimizer: torch.optim.Optimizer | None = None
    zclip: Any = None
    metrics: Metrics | None = None
    progress: ProgressBar | None = None
    peak: float | None = None
    """The device's peak FLOP/s, when known (MFU)."""
    model_flops: float = 0.0
    """FLOPs per trained token."""
    step: int = 0
    tokens: int = 0
    bad_total: int = 0
    bad_run: int = 0
    saved_path: Path | None = None
    saved_step: int = -1
    last_eval: dict[str, Any] | None = None
    eval_step: int = -1
    weights: dict[str, float] | None = None
    window: Window = field(default_factory=Window)
    stop: StopSignal = field(default_factory=StopSignal)
    gguf: Path | None = None
    gguf_error: str | None = None
    gguf_eval: dict[str, Any] | None = None
    curve: Path | None = None
    mirror: Mirror | None = None
    """The uploads to the remote copy (remote=URL; main process only)."""
    remote_missing: list[str] = field(default_factory=list)
    """What did not reach the remote by the end."""
    lock: OutputDirLock | None = None
    """output_dir's lock (main process only), released by close()."""
    mixer: InfluenceMixer | None = None
    """data.mixture=influence: the re-weighting of the sources."""
    mixture_curve: Path | None = None
    """mixture.png, the sources' weights and token shares (runs with several sources)."""

    # ------------------------------------------------------------------ start

    @classmethod
    def start(cls, cfg: Config) -> Run:
        """Processes, seed, output folder -> model, teacher -> data -> batch geometry -> optimizer -> resume."""
        started = time.perf_counter()
        info = init_distributed(cfg.device)
        out = Path(cfg.output_dir).expanduser()
        # one writer per output_dir: a second run would delete this one's checkpoints (keep_last) and
        # interleave metrics.jsonl; under torchrun the main process holds the lock for all
        lock = OutputDirLock.acquire(out) if info.is_main else None
        try:
            run = cls._start(cfg, info, out, started)
        except BaseException:
            if lock is not None:
                lock.release()
            raise
        run.lock = lock
        return run

    @classmethod
    def _start(cls, cfg: Config, info: DistInfo, out: Path, started: float) -> Run:
        t = cfg.training
        seed_everything(t.seed)
        if cfg.resume == "none" and list_checkpoints(out):
            raise ValueError(
                f"output_dir {out} already holds checkpoints of another run; resume=auto continues it, "
                "or choose another output_dir (or delete that one) to start afresh"
            )
        if t.eval_tasks and info.enabled and cfg.distributed == "fsdp":
            raise ValueError(
                "training.eval_tasks runs the whole model in the main process, which FSDP shards across "
                "processes: use distributed=ddp, or score the saved checkpoints with python -m bitk.eval --tasks"
            )
        if t.global_batch_size % info.world_size:
            raise ValueError(
                f"training.global_batch_size ({t.global_batch_size}) must be a multiple of the number "
                f"of processes ({info.world_size})"
            )
        say = print if info.is_main else _quiet
        say(f"bitk.train: resolved config\n{config_to_yaml(cfg).rstrip()}", flush=True)
        remote = open_remote(cfg, info)  # probed: missing credentials or a wrong bucket stop the run here
        resume_from = find_resume(cfg, out, info, say)  # a remote checkpoint is downloaded into output_dir

        raw, tokenizer = build_model(cfg, resume_from, out, info, say)
        if cfg.data.block_size > raw.config.max_position_embeddings:
            raise ValueError(
                f"data.block_size ({cfg.data.block_size}) exceeds the model's max_position_embeddings "
                f"({raw.config.max_position_embeddings})"
            )
        if "lrc" in cfg.objectives.curriculum().objectives():
            prepare_lrc_student(raw, cfg, say)
        teacher = load_teacher(cfg, raw, info, say)
        raw.activation_checkpointing = t.activation_checkpointing
        model = wrap_model(raw, info, cfg.distributed)
        if t.compile:
            model = torch.compile(model)
        use_bf16 = t.precision == "bf16" or (t.precision == "auto" and info.device.type == "cuda")

        framing = document_tokens(tokenizer, raw.tokenizer_dir, raw.config.eos_token_id)
        data = TrainData(cfg.data, tokenizer, seed=t.seed, rank=info.rank, world_size=info.world_size, framing=framing)
        mask = tokenizer.token_to_id(cfg.objectives.dlm_mask_token)
        run = cls(
            cfg=cfg,
            info=info,
            out=out,
            raw=raw,
            tokenizer=tokenizer,
            model=model,
            teacher=teacher,
            curriculum=cfg.objectives.curriculum(),
            framing=framing,
            mask_token_id=MASK_ID if mask is None else mask,
            data=data,
            bf16=use_bf16,
            say=say,
            started=started,
            zclip=make_zclip(t),
        )
        run.grad_accum = run.batch_geometry()
        run.optimizer = build_optimizer(model, t)
        if cfg.data.mixture == "influence":
            if len(data.names) == 1:
                say("data.mixture=influence with one source: nothing to weigh against it, the mixture stays fixed")
            else:
                run.mixer = InfluenceMixer(model, raw, data, info, t.micro_batch_size, run.autocast)
        if resume_from is not None:
            run.resume(resume_from)
        run.metrics = Metrics(
            out,
            enabled=info.is_main,
            resume_step=run.step if resume_from else None,
            tensorboard=cfg.logging.tensorboard,
            wandb=cfg.logging.wandb,
            wandb_project=cfg.logging.wandb_project,
            config=config_to_dict(cfg),
        )
        run.progress = ProgressBar(t.max_steps, run.step, enabled=cfg.logging.progress, quiet=not info.is_main)
        if resume_from is None and len(data.names) > 1:
            run.metrics.log(mixture_record(data, 0, 0))
        if remote is not None:
            run.mirror = Mirror(remote, out, keep_last=cfg.checkpoint.keep_last, say=run.progress.print)
            if resume_from is not None and resume_from.parent == out / CHECKPOINTS_DIR:
                run.mirror.checkpoint(resume_from, if_missing=True)  # a crash may have kept it from the remote
        run.peak = peak_flops(info.device, torch.bfloat16 if use_bf16 else torch.float32)
        run.model_flops = flops_per_token(raw.config, data.tokens_per_block)
        if run.tracks_objectives:
            say(
                f"objectives: {run.curriculum.describe(t.max_steps)}"
                + (f"; teacher: {teacher.source}" if teacher is not None else ""),
                flush=True,
            )
        run.stop.install()
        model.train()
        return run

    def batch_geometry(self) -> int:
        """Gradient accumulation: global batch = micro-batch x accumulation x processes (auto micro-batch)."""
        t, info, data = self.cfg.training, self.info, self.data
        per_rank = t.global_batch_size // info.world_size
        if t.micro_batch_size is None and not t.auto_batch_size:
            t.micro_batch_size = per_rank  # the default: no accumulation, whatever the process count
        if t.auto_batch_size:
            loss_fn = functools.partial(self.loss, weights=self.curriculum.all_weights())
            t.micro_batch_size = auto_micro_batch(
                self.model,
                self.raw.config.vocab_size,
                info,
                t,
                data.tokens_per_block,
                self.autocast,
                self.say,
                loss_fn=loss_fn,
            )
        if per_rank % t.micro_batch_size:
            raise ValueError(
                f"training.micro_batch_size ({t.micro_batch_size}) must divide the per-process batch "
                f"({t.global_batch_size} / {info.world_size} processes = {per_rank})"
            )
        grad_accum = per_rank // t.micro_batch_size
        self.say(
            f"model: {self.raw.source} ({self.raw.extra_repr()}) on {info.device}"
            f"{f' x {info.world_size} processes' if info.enabled else ''}; "
            f"{'bf16 autocast' if self.bf16 else 'float32'}\n"
            f"batch: {t.global_batch_size} sequences x {data.tokens_per_block} tokens = {self.tokens_per_step:,} "
            f"tokens per step (micro-batch {t.micro_batch_size} x {grad_accum} accumulation x "
            f"{info.world_size} processes)\ndata:\n{data.summary()}",
            flush=True,
        )
        return grad_accum

    def resume(self, path: Path) -> None:
        """Model, optimizer, clipping, data position, RNG and counters as the checkpoint has them."""
        meta, model_sd, state = load_state(path)
        load_state_for_resume(self.model, self.optimizer, model_sd, state["optimizer"], self.info)
        sync_hyperparameters(self.optimizer, self.cfg.training)  # a changed lr / weight decay applies from here on
        del model_sd
        if self.zclip is not None and state.get("zclip") is not None:
            self.zclip.load_state_dict(state["zclip"])
        self.data.load_state_dict(state["data"])
        set_rng_state(state["rng"])
        self.step, self.tokens = state["step"], state["tokens"]
        self.bad_total, self.bad_run = state["bad_steps"]["total"], state["bad_steps"]["consecutive"]
        self.last_eval, self.saved_path, self.saved_step = meta.get("eval"), path, self.step
        changes = config_changes(meta.get("train_config") or {}, self.cfg)
        self.say(
            f"resumed from {path} (step {self.step}, {self.tokens:,} tokens)"
            + (f"; changed since: {', '.join(changes)}" if changes else ""),
            flush=True,
        )
        if self.step >= self.cfg.training.max_steps:
            self.say(
                f"already at training.max_steps={self.cfg.training.max_steps}: nothing to train (raise it to "
                "go on, or use another output_dir to start afresh)",
                flush=True,
            )

    # ------------------------------------------------------------------ the loop

    @property
    def tokens_per_step(self) -> int:
        return self.cfg.training.global_batch_size * self.data.tokens_per_block

    @property
    def tracks_objectives(self) -> bool:
        """Each objective's value is logged (anything but plain CE for the whole run)."""
        return len(self.curriculum.phases) > 1 or self.curriculum.objectives() != {"ce"}

    def autocast(self) -> Any:
        """bf16 autocast on the run's device when training.precision asks for it, else a no-op context."""
        return torch.autocast(self.info.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def loss(
        self,
        model: torch.nn.Module,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        *,
        weights: dict[str, float],
        generator: torch.Generator | None = None,
    ):
        """The weighted objectives of one micro-batch and each one's value (DLM masks from the global RNG).

        With training.compile (one process; DDP and FSDP compile the model only) the loss is compiled
        too: the compiled model is inlined, so its forward and the objectives are one graph.
        """
        loss_fn = compute_loss
        if self.cfg.training.compile and generator is None and not self.info.enabled:
            loss_fn = _compiled_loss()
        return loss_fn(
            model,
            input_ids,
            position_ids,
            weights,
            self.cfg.objectives,
            teacher=self.teacher,
            mask_token_id=self.mask_token_id,
            generator=generator,
        )

    def train_step(self) -> bool:
        """One optimizer step (or a skipped one, when the loss or gradient is not finite); True: stop now."""
        t, info = self.cfg.training, self.info
        step_start = time.perf_counter()
        apply_lr(self.optimizer, self.step, t)
        if t.quant_warmup_steps:
            set_quant_lambda(self.raw, quant_lambda(self.step, t))
        weights = self.curriculum.weights_at(self.step, t.max_steps)
        if self.weights is not None and weights != self.weights:
            self.progress.print(
                f"step {self.step:>6} | objectives now "
                + ", ".join(f"{name}={w:g}" for name, w in weights.items() if w > 0)
            )
        self.weights = weights
        batches = None
        if self.mixer is not None and self.mixer.due(self.step):  # re-weight on the rows this step draws
            batches = [
                (*self.data.next_batch(t.micro_batch_size), self.data.last_sources) for _ in range(self.grad_accum)
            ]
            self.remix(batches)
        loss_sum = torch.zeros((), device=info.device)
        parts_sum: dict[str, torch.Tensor] = {}
        for micro in range(self.grad_accum):
            batch = self.data.next_batch(t.micro_batch_size) if batches is None else batches[micro][:2]
            input_ids, position_ids = (x.to(info.device, non_blocking=True) for x in batch)
            with no_sync(self.model, info, last_micro_step=micro == self.grad_accum - 1):
                with self.autocast():
                    loss, parts = self.loss(self.model, input_ids, position_ids, weights=weights)
                (loss / self.grad_accum).backward()
            loss_sum += loss.detach()
            for name, value in parts.items():
                parts_sum[name] = parts_sum.get(name, 0.0) + value / self.grad_accum
        grad_norm = clip_gradients(self.model.parameters(), t, self.zclip)
        # the step's one host sync: its global loss and gradient norm, and whether any process must stop
        loss_value, norm_value, stopping = step_outcome(
            loss_sum / self.grad_accum, grad_norm, self.stop.requested is not None, info
        )
        self.step += 1
        self.tokens += self.tokens_per_step
        if math.isfinite(loss_value) and math.isfinite(norm_value):
            self.optimizer.step()
            self.bad_run = 0
            self.window.add(loss_value, norm_value, parts_sum if self.tracks_objectives else None)
        else:  # skipped: weights and optimizer state stay as they were
            self.bad_total += 1
            self.bad_run += 1
            self.metrics.log(
                {
                    "kind": "bad_step",
                    "step": self.step,
                    "loss": loss_value,
                    "grad_norm": norm_value,
                    "consecutive": self.bad_run,
                }
            )
            self.progress.print(
                f"step {self.step:>6} | non-finite loss {loss_value} / grad norm {norm_value}: step "
                f"skipped ({self.bad_run} in a row, {self.bad_total} in all)"
            )
        self.optimizer.zero_grad(set_to_none=True)
        self.window.seconds += time.perf_counter() - step_start
        self.window.tokens += self.tokens_per_step
        return stopping

    def remix(self, batches: list) -> None:
        """data.mixture=influence: new source weights from the step's rows (`InfluenceMixer`), logged."""
        record = self.mixer.update(batches, self.step, self.tokens)
        self.metrics.log(record)
        weights = ", ".join(f"{n} {w:.3f}" for n, w in zip(self.data.names, self.data.weights))
        self.progress.print(f"step {self.step:>6} | mixture {weights} ({record['seconds']:.2f} s)")

    def log_step(self) -> None:
        """A train record every logging.log_every steps (and at the last), the progress bar every step."""
        for line in self.data.new_passes():
            self.progress.print(f"step {self.step:>6} | {line}")
        if self.step % self.cfg.logging.log_every == 0 or self.step == self.cfg.training.max_steps:
            record = self.window.record(
                self.step, self.tokens, self.optimizer, self.bad_total, self.info, self.peak, self.model_flops
            )
            record.update({f"tokens/{name}": n for name, n in self.data.source_tokens().items()})
            self.metrics.log(record)
            self.progress.print(format_record(record, self.cfg.training.max_steps, self.weights))
            self.progress.update(self.step, f"loss {record['loss']:.3f}, {record['tokens_per_s']:,.0f} tok/s")
        else:
            self.progress.update(self.step)

    def evaluate(self) -> None:
        """Held-out loss and perplexity (`bitk.eval.evaluate`), logged and kept for the checkpoint;
        then training.eval_tasks, if any."""
        from bitk.eval import evaluate

        ids, pos = self.data.heldout()
        probe = self.data.probe()
        self.eval_step = self.step
        if ids.shape[0] > 0 or probe is not None:
            batch = self.cfg.training.micro_batch_size
            self.last_eval = {"kind": "eval", "step": self.step, "tokens": self.tokens}
            line = f"step {self.step:>6} |"
            if ids.shape[0] > 0:
                with self.autocast():
                    result = evaluate(self.model, ids, pos, batch_size=batch)
                self.last_eval.update(loss=result.loss, perplexity=result.perplexity, eval_tokens=result.tokens)
                line += (
                    f" held-out {'CE ' if self.tracks_objectives else ''}loss {result.loss:.4f} | perplexity "
                    f"{result.perplexity:.2f}"
                )
            if probe is not None:  # the loss on the text the mixture serves (data.probe)
                with self.autocast():
                    result = evaluate(self.model, probe[0], probe[1], batch_size=batch, labels=probe[2])
                self.last_eval.update(probe_loss=result.loss, probe_perplexity=result.perplexity)
                line += f"{' |' if ids.shape[0] > 0 else ''} probe loss {result.loss:.4f}"
            self.metrics.log(self.last_eval)
            self.progress.print(line)
        if self.cfg.training.eval_tasks:
            self.evaluate_tasks()

    def evaluate_tasks(self) -> None:
        """training.eval_tasks on the bare model in the main process (`bitk.train.tasks`), logged;
        the other processes wait."""
        if self.info.is_main:
            record = evaluate_tasks(
                self.raw, self.tokenizer, self.cfg.training, step=self.step, tokens=self.tokens, autocast=self.autocast
            )
            self.metrics.log(record)
            scores = [f"{k.removeprefix('tasks/')} {v:.4g}" for k, v in record.items() if k.startswith("tasks/")]
            self.progress.print(f"step {self.step:>6} | tasks: " + (", ".join(scores) or "no scores"))
        barrier(self.info)

    def save(self) -> Path:
        """A full-state checkpoint of this step (every process takes part; the main one writes)."""
        info = self.info
        if not params_finite(self.model, info):
            raise TrainingError(
                f"step {self.step}: the weights hold NaN/Inf values, not saved; the last good "
                f"checkpoint is {self.last_good()}"
            )
        model_sd, optim_sd = state_dict_for_save(self.model, self.optimizer, info)
        path = self.out / "checkpoints" / f"step-{self.step:06d}"
        if info.is_main:
            trainer_state = {
                "step": self.step,
                "tokens": self.tokens,
                "optimizer": optim_sd,
                "zclip": None if self.zclip is None else self.zclip.state_dict(),
                "data": self.data.state_dict(),
                "rng": rng_state(),
                "bad_steps": {"total": self.bad_total, "consecutive": self.bad_run},
                "world_size": info.world_size,
                "micro_batch_size": self.cfg.training.micro_batch_size,
            }
            meta = {
                "train_config": config_to_dict(self.cfg),
                "step": self.step,
                "tokens": self.tokens,
                "eval": self.last_eval,
            }
            try:
                path = save_state(
                    self.out,
                    self.step,
                    self.raw,
                    model_sd,
                    trainer_state,
                    keep_last=self.cfg.checkpoint.keep_last,
                    meta=meta,
                )
            except OSError as e:
                if e.filename is None:  # torch.save's and write's errors name no file: name the checkpoint
                    e.filename = str(path)
                raise
            self.progress.print(f"saved {path}")
            if self.mirror is not None:  # uploaded in the background
                self.mirror.checkpoint(path)
                self.mirror.file(self.metrics.path, copy=True)
        barrier(info)
        self.saved_path, self.saved_step = path, self.step
        return path

    def last_good(self) -> str:
        return str(self.saved_path) if self.saved_path else "none (nothing was saved yet)"

    # ------------------------------------------------------------------ the end

    def evaluate_as_exported(self) -> dict[str, Any] | None:
        """Held-out loss in the numerics the runtime computes the export with (`bitk.gguf.runtime_numerics`).

        Every projection as the GGUF file computes it: I2_S in bitnet.cpp's per-token int8, TQ in
        llama.cpp's int8 per block of 256, F16 fallbacks with float16 activations, the token
        embedding rounded to float16; a zero-padded file computes what the unpadded model does.
        Decided from the config alone, so every process takes part (FSDP) while only the main one
        writes the file.
        """
        from bitk.eval import evaluate
        from bitk.gguf import runtime_numerics, set_runtime_numerics

        ids, pos = self.data.heldout()
        if ids.shape[0] == 0 or not self.raw.config.ternary or self.raw.config.lrc_rank_ratio:
            return None
        try:
            numerics = runtime_numerics(self.raw.config, self.cfg.export_gguf)
        except ValueError:
            return None
        heads = [self.raw.model.embed_tokens.weight]  # the file's F16 token embedding (and untied head)
        if not self.raw.config.tie_word_embeddings:
            heads.append(self.raw.lm_head.weight)
        kept = [w.detach().clone() for w in heads]
        before = set_runtime_numerics(self.raw, numerics)
        try:
            with torch.no_grad():
                for w in heads:
                    w.copy_(w.to(torch.float16).to(w.dtype))
            with self.autocast():
                result = evaluate(self.model, ids, pos, batch_size=self.cfg.training.micro_batch_size)
        finally:
            set_runtime_numerics(self.raw, before)
            with torch.no_grad():
                for w, k in zip(heads, kept, strict=True):
                    w.copy_(k)
        modes = sorted(set(numerics.values()))
        return {
            "kind": "eval_as_exported",
            "step": self.step,
            "tokens": self.tokens,
            "loss": result.loss,
            "perplexity": result.perplexity,
            "eval_tokens": result.tokens,
            "numerics": "+".join(modes),
            "fallback_projections": (
                sum(1 for m in numerics.values() if m == "f16") if self.cfg.export_gguf in TERNARY_EXPORTS else 0
            ),
        }

    def finish(self) -> None:
        """The final checkpoint and evaluation, the loss curve and the GGUF export."""
        cfg, info = self.cfg, self.info
        if self.saved_step != self.step:
            self.save()
        if self.stop.requested is None and self.eval_step != self.step:
            self.evaluate()
        exporting = cfg.export_gguf != "none" and self.stop.requested is None
        predicted = self.evaluate_as_exported() if exporting else None
        if info.is_main:
            self.curve = plot_loss_curve(
                self.metrics.path, self.out / LOSS_CURVE_FILE, title=f"bitk.train {cfg.model.name}"
            )
            if len(self.data.names) > 1:
                self.mixture_curve = plot_mixture(
                    self.metrics.path, self.out / MIXTURE_CURVE_FILE, title=f"bitk.train {cfg.model.name}: data mixture"
                )
        if info.is_main and exporting:
            if self.raw.config.lrc_rank_ratio:
                self.gguf_error = (
                    "GGUF export skipped: a model with low-rank correction factors has no GGUF form "
                    "(bitnet.cpp and llama.cpp have no LRC); the checkpoint keeps them"
                )
                self.say(self.gguf_error, flush=True)
            else:
                result, self.gguf_error = export_gguf(
                    self.saved_path, self.out / f"model-{cfg.export_gguf}.gguf", cfg.export_gguf, self.say
                )
                self.gguf = None if result is None else result.path
                if result is not None and predicted is not None:
                    predicted["runtime"] = runtime_of(result.arch, result.qtype)
                    self.gguf_eval = predicted
                    self.metrics.log(predicted)
                    fallbacks = predicted["fallback_projections"]
                    self.say(
                        f"step {self.step:>6} | held-out {'CE ' if self.tracks_objectives else ''}loss "
                        f"{predicted['loss']:.4f} | perplexity {predicted['perplexity']:.2f} as {result.path.name} "
                        f"runs in {predicted['runtime']} (numerics {predicted['numerics']}"
                        + (f"; {fallbacks} F16 fallback projection(s)" if fallbacks else "")
                        + ")",
                        flush=True,
                    )
        if self.mirror is not None:
            for path in (self.curve, self.mixture_curve, self.gguf):
                if path is not None:
                    self.mirror.file(path)
            self.mirror.file(self.metrics.path, copy=True)
        barrier(info)

    def close(self) -> None:
        """Signal handlers back, files closed, queued uploads finished (or reported), processes left."""
        self.stop.restore()
        try:
            if self.metrics is not None:
                self.metrics.close()
            if self.mirror is not None:
                self.remote_missing = self.mirror.close()
        finally:
            try:
                cleanup(self.info)
            finally:
                if self.lock is not None:
                    self.lock.release()
                    self.lock = None

    def summary(self) -> dict[str, Any]:
        last_eval, tracks = self.last_eval, self.tracks_objectives
        return {
            "steps": self.step,
            "tokens": self.tokens,
            "train_loss": self.window.last_loss,
            "train_objectives": self.window.last_parts,
            "objective_weights": self.weights if tracks else None,
            "eval_loss": None if last_eval is None else last_eval.get("loss"),
            "eval_perplexity": None if last_eval is None else last_eval.get("perplexity"),
            "probe_loss": None if last_eval is None else last_eval.get("probe_loss"),
            "mixture": dict(zip(self.data.names, self.data.weights.tolist())) if len(self.data.names) > 1 else None,
            "source_tokens": self.data.source_tokens(),
            "skipped_steps": self.bad_total,
            "checkpoint": str(self.saved_path),
            "metrics": str(self.metrics.path),
            "loss_curve": None if self.curve is None else str(self.curve),
            "mixture_curve": None if self.mixture_curve is None else str(self.mixture_curve),
            "gguf": None if self.gguf is None else str(self.gguf),
            "gguf_error": self.gguf_error,
            "gguf_eval_loss": None if self.gguf_eval is None else self.gguf_eval["loss"],
            "gguf_eval_perplexity": None if self.gguf_eval is None else self.gguf_eval["perplexity"],
            "gguf_runtime": None if self.gguf_eval is None else self.gguf_eval["runtime"],
            "seconds": time.perf_counter() - self.started,
            "stopped": self.stop.requested,
            "remote": self.cfg.remote,
            "remote_checkpoint": None if self.mirror is None else self.mirror.newest,
            "remote_missing": self.remote_missing,
        }


def describe_os_error(e: OSError) -> str:
    """One line of an OSError: "PATH: no space left on device"."""
    reason = e.strerror or str(e) or type(e).__name__
    reason = reason[:1].lower() + reason[1:]
    if e.filename is None:
        return reason
    return f"{e.filename}: {reason}"


def _quiet(*args: Any, **kwargs: Any) -> None:
    pass


@functools.cache
def _compiled_loss() -> Any:
    """`compute_loss` under torch.compile. Random ops run as in eager (inductor's fallback_random),
    so the DLM masks are the ones the uncompiled loss draws."""
    return torch.compile(compute_loss, options={"fallback_random": True})
