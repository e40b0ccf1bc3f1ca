"""The training loop: `train(cfg)`, one function to read top to bottom.

processes and seed -> tokenizer and model -> data -> batch geometry -> optimizer and clipping ->
resume -> loop (micro-steps with gradient accumulation, NaN/Inf check, clip, step, schedule, log,
eval, checkpoint) -> final checkpoint, loss curve, GGUF. The pieces it calls live next to it
(config, optim, schedule, zclip, data, auto_batch, flops, distributed, state, metrics); the helpers
below the loop are small and only keep it short. Options and outputs: docs/train.md.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import math
import random
import signal
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from bitk.data.tokenizer import MASK_ID, DocumentTokens, document_tokens
from bitk.models import CausalLM, load_model, resolve_model
from bitk.models.checkpoint import read_checkpoint_meta
from bitk.nn import set_quant_lambda
from bitk.objectives.combiner import ObjectiveSettings, compute_loss
from bitk.objectives.curriculum import Curriculum
from bitk.objectives.dlm import init_mask_embedding
from bitk.objectives.lrc import prepare_lrc
from bitk.objectives.teacher import load_teacher

from .auto_batch import find_micro_batch
from .config import Config, config_from_dict, config_to_dict, config_to_yaml, migrate_config_dict
from .data import TrainData
from .distributed import (
    DistInfo,
    all_reduce_mean,
    barrier,
    cleanup,
    init_distributed,
    load_state_for_resume,
    no_sync,
    state_dict_for_save,
    wrap_model,
)
from .flops import flops_per_token, mfu, peak_flops
from .metrics import LOSS_CURVE_FILE, Metrics, ProgressBar, plot_loss_curve
from .optim import build_optimizer, sync_hyperparameters
from .schedule import apply_lr, quant_lambda
from .state import find_checkpoint, list_checkpoints, load_state, rng_state, save_state, set_rng_state
from .zclip import clip_gradients, make_zclip

__all__ = ["train", "TrainingError", "next_token_loss"]


class TrainingError(RuntimeError):
    """The run stopped on a fault it cannot step over; the message names the checkpoint to resume from."""


def train(cfg: Config) -> dict[str, Any]:
    """Train as ``cfg`` says; returns a summary (steps, tokens, losses, paths, stop reason).

    Raises ValueError for a bad configuration (before any work) and TrainingError when too many
    steps in a row have a non-finite loss. SIGTERM / SIGINT end the run after the current step
    with a checkpoint; the summary's "stopped" then names the signal.
    """
    cfg.validate()
    cfg = copy.deepcopy(cfg)  # the auto batch size writes micro_batch_size into the saved config
    t = cfg.training
    started = time.perf_counter()

    # -- processes, seed, output folder
    info = init_distributed(cfg.device)
    seed_everything(t.seed)
    out = Path(cfg.output_dir).expanduser()
    resume_from = find_checkpoint(cfg.resume, out)
    if cfg.resume == "none" and list_checkpoints(out):
        raise ValueError(f"output_dir {out} already holds checkpoints of another run; resume=auto continues it, "
                         "or choose another output_dir (or delete that one) to start afresh")
    if t.global_batch_size % info.world_size:
        raise ValueError(f"training.global_batch_size ({t.global_batch_size}) must be a multiple of the number "
                         f"of processes ({info.world_size})")
    say = print if info.is_main else _quiet
    say(f"bitk.train: resolved config\n{config_to_yaml(cfg).rstrip()}", flush=True)

    # -- tokenizer and model
    curriculum = cfg.curriculum()
    raw, tokenizer = build_model(cfg, resume_from, out, info, say)
    framing = document_tokens(tokenizer, raw.tokenizer_dir, raw.config.eos_token_id)
    if cfg.data.block_size > raw.config.max_position_embeddings:
        raise ValueError(f"data.block_size ({cfg.data.block_size}) exceeds the model's max_position_embeddings "
                         f"({raw.config.max_position_embeddings})")
    if "lrc" in curriculum.objectives():
        prepare_lrc_student(raw, t, say)
    teacher = load_teacher_for(cfg, curriculum, raw, info, say)
    settings = objective_settings(t, tokenizer, curriculum, framing)
    model = wrap_model(raw, info, cfg.distributed)
    if t.compile:
        model = torch.compile(model)
    use_bf16 = t.precision == "bf16" or (t.precision == "auto" and info.device.type == "cuda")
    autocast = functools.partial(torch.autocast, info.device.type, dtype=torch.bfloat16, enabled=use_bf16)

    # -- data
    data = TrainData(cfg.data, tokenizer, seed=t.seed, rank=info.rank, world_size=info.world_size, framing=framing)
    eval_ids, eval_pos = data.heldout()

    # -- batch geometry: global batch = micro-batch x accumulation x processes
    per_rank = t.global_batch_size // info.world_size
    if t.auto_batch_size:
        t.micro_batch_size = auto_micro_batch(model, raw, info, t, data.tokens_per_block, autocast, say,
                                              loss_fn=functools.partial(batch_loss, weights=curriculum.all_weights(),
                                                                        settings=settings, teacher=teacher))
    if per_rank % t.micro_batch_size:
        raise ValueError(f"training.micro_batch_size ({t.micro_batch_size}) must divide the per-process batch "
                         f"({t.global_batch_size} / {info.world_size} processes = {per_rank})")
    grad_accum = per_rank // t.micro_batch_size
    tokens_per_step = t.global_batch_size * data.tokens_per_block
    say(f"model: {raw.source} ({raw.extra_repr()}) on {info.device}"
        f"{f' x {info.world_size} processes' if info.enabled else ''}; "
        f"{'bf16 autocast' if use_bf16 else 'float32'}\n"
        f"batch: {t.global_batch_size} sequences x {data.tokens_per_block} tokens = {tokens_per_step:,} tokens per "
        f"step (micro-batch {t.micro_batch_size} x {grad_accum} accumulation x {info.world_size} processes)\n"
        f"data:\n{data.summary()}", flush=True)

    # -- optimizer and clipping
    optimizer = build_optimizer(model, t)
    zclip = make_zclip(t)

    # -- resume: model, optimizer, clipping, data position, RNG, counters
    step = tokens = bad_total = bad_run = 0
    last_eval: dict[str, Any] | None = None
    if resume_from is not None:
        meta, model_sd, state = load_state(resume_from)
        load_state_for_resume(model, optimizer, model_sd, state["optimizer"], info)
        sync_hyperparameters(optimizer, t)  # a changed lr / weight decay / betas applies from here on
        del model_sd
        if zclip is not None and state.get("zclip") is not None:
            zclip.load_state_dict(state["zclip"])
        data.load_state_dict(state["data"])
        set_rng_state(state["rng"])
        step, tokens = state["step"], state["tokens"]
        bad_total, bad_run = state["bad_steps"]["total"], state["bad_steps"]["consecutive"]
        last_eval = meta.get("eval")
        say(f"resumed from {resume_from} (step {step}, {tokens:,} tokens){describe_changes(meta, cfg)}", flush=True)
        if step >= t.max_steps:
            say(f"already at training.max_steps={t.max_steps}: nothing to train (raise it to go on, or use another "
                "output_dir to start afresh)", flush=True)

    track_parts = len(curriculum.phases) > 1 or curriculum.objectives() != {"ce"}  # log each objective's value
    if track_parts:
        say(f"objectives: {curriculum.describe(t.max_steps)}"
            + (f"; teacher: {teacher.source}" if teacher is not None else ""), flush=True)

    metrics = Metrics(out, enabled=info.is_main, resume_step=step if resume_from else None,
                      tensorboard=cfg.tensorboard, wandb=cfg.wandb, wandb_project=cfg.wandb_project,
                      config=config_to_dict(cfg))
    peak = peak_flops(info.device, torch.bfloat16 if use_bf16 else torch.float32)
    model_flops = flops_per_token(raw.config, data.tokens_per_block)
    saved = Saved(path=resume_from, step=step if resume_from else -1)
    eval_step = -1
    window = Window()
    last_weights: dict[str, float] | None = None
    stop = StopSignal()
    progress = ProgressBar(t.max_steps, step, enabled=cfg.progress, quiet=not info.is_main)

    def save() -> Path:  # every process takes part; the main one writes
        nonlocal saved
        if not params_finite(model, info):
            raise TrainingError(f"step {step}: the weights hold NaN/Inf values, not saved; the last good "
                                f"checkpoint is {saved.path or 'none (nothing was saved yet)'}")
        model_sd, optim_sd = state_dict_for_save(model, optimizer, info)
        path = out / "checkpoints" / f"step-{step:06d}"
        if info.is_main:
            trainer_state = {"step": step, "tokens": tokens, "optimizer": optim_sd,
                             "zclip": None if zclip is None else zclip.state_dict(), "data": data.state_dict(),
                             "rng": rng_state(), "bad_steps": {"total": bad_total, "consecutive": bad_run},
                             "world_size": info.world_size, "micro_batch_size": t.micro_batch_size}
            meta = {"train_config": config_to_dict(cfg), "step": step, "tokens": tokens, "eval": last_eval}
            path = save_state(out, step, raw, model_sd, trainer_state, keep_last=t.keep_last, meta=meta,
                              tokenizer=None if raw.tokenizer_dir else tokenizer)
            progress.print(f"saved {path}")
        barrier(info)
        saved = Saved(path=path, step=step)
        return path

    def evaluate_heldout() -> dict[str, Any] | None:
        from bitk.eval import evaluate

        if eval_ids.shape[0] == 0:
            return None
        with autocast():
            result = evaluate(model, eval_ids, eval_pos, batch_size=t.micro_batch_size)
        record = {"kind": "eval", "step": step, "tokens": tokens, "loss": result.loss,
                  "perplexity": result.perplexity, "eval_tokens": result.tokens}
        metrics.log(record)
        progress.print(f"step {step:>6} | held-out {'CE ' if track_parts else ''}loss {result.loss:.4f} | "
                       f"perplexity {result.perplexity:.2f}")
        return record

    # -- the loop
    stop.install()
    model.train()
    try:
        with progress:
            while step < t.max_steps:
                step_start = time.perf_counter()
                apply_lr(optimizer, step, t)
                if t.quant_warmup_steps:
                    set_quant_lambda(raw, quant_lambda(step, t))
                weights = curriculum.weights_at(step, t.max_steps)
                if weights != last_weights:
                    if last_weights is not None:
                        progress.print(f"step {step:>6} | objectives now {_weights_text(weights)}")
                    last_weights = weights
                loss_sum = torch.zeros((), device=info.device)
                parts_sum: dict[str, torch.Tensor] = {}
                for micro in range(grad_accum):
                    input_ids, position_ids = (x.to(info.device, non_blocking=True)
                                               for x in data.next_batch(t.micro_batch_size))
                    with no_sync(model, info, last_micro_step=micro == grad_accum - 1):
                        with autocast():
                            loss, parts = batch_loss(model, input_ids, position_ids, weights=weights,
                                                     settings=settings, teacher=teacher)
                        (loss / grad_accum).backward()
                    loss_sum += loss.detach()
                    for name, value in parts.items():
                        parts_sum[name] = parts_sum.get(name, 0.0) + value / grad_accum
                grad_norm = clip_gradients(model.parameters(), t, zclip)
                # the step's one host sync: its global loss and gradient norm, and whether any process must stop
                loss_value, norm_value, stopping = step_outcome(loss_sum / grad_accum, grad_norm, stop, info)
                step += 1
                tokens += tokens_per_step
                if math.isfinite(loss_value) and math.isfinite(norm_value):
                    optimizer.step()
                    bad_run = 0
                    window.add(loss_value, norm_value, parts_sum if track_parts else None)
                else:  # skipped: weights and optimizer state stay as they were
                    bad_total += 1
                    bad_run += 1
                    metrics.log({"kind": "bad_step", "step": step, "loss": loss_value, "grad_norm": norm_value,
                                 "consecutive": bad_run})
                    progress.print(f"step {step:>6} | non-finite loss {loss_value} / grad norm {norm_value}: step "
                                   f"skipped ({bad_run} in a row, {bad_total} in all)")
                optimizer.zero_grad(set_to_none=True)
                window.seconds += time.perf_counter() - step_start
                window.tokens += tokens_per_step
                if bad_run >= t.max_bad_steps:
                    raise TrainingError(
                        f"stopped at step {step}: {bad_run} steps in a row had a non-finite loss or gradient norm "
                        f"(training.max_bad_steps={t.max_bad_steps}). The last good checkpoint is "
                        f"{saved.path or 'none (nothing was saved yet)'}; resume from it with resume=PATH and, "
                        "e.g., a lower training.lr, or check the data around this step.")
                if step % t.log_every == 0 or step == t.max_steps:
                    record = window.record(step, tokens, optimizer, bad_total, info, peak, model_flops)
                    metrics.log(record)
                    progress.print(format_record(record, t.max_steps, weights))
                    progress.update(step, f"loss {record['loss']:.3f}, {record['tokens_per_s']:,.0f} tok/s")
                else:
                    progress.update(step)
                if stopping:
                    save()
                    break
                if t.eval_every and step % t.eval_every == 0:
                    last_eval, eval_step = evaluate_heldout() or last_eval, step
                if t.save_every and step % t.save_every == 0 and bad_run == 0:
                    save()

        # -- the end: final checkpoint, evaluation, loss curve, GGUF
        if saved.step != step:
            save()
        if stop.requested is None and eval_step != step:
            last_eval = evaluate_heldout() or last_eval
        curve = plot_loss_curve(metrics.path, out / LOSS_CURVE_FILE, title=f"bitk.train {cfg.model.name}") \
            if info.is_main else None
        gguf, gguf_error = None, None
        if info.is_main and cfg.export_gguf != "none" and stop.requested is None:
            if raw.config.lrc_rank_ratio:
                gguf_error = ("GGUF export skipped: a model with low-rank correction factors has no GGUF form "
                              "(bitnet.cpp and llama.cpp have no LRC); the checkpoint keeps them")
                say(gguf_error, flush=True)
            else:
                gguf, gguf_error = export_gguf(saved.path, out / f"model-{cfg.export_gguf}.gguf", cfg.export_gguf,
                                               say)
        barrier(info)
    except TrainingError:
        raise
    except Exception as e:  # a fault mid-run (a failed save, a kernel error): say where to resume from
        raise TrainingError(f"training failed at step {step} ({type(e).__name__}: {e}); the last good checkpoint "
                            f"is {saved.path or 'none (nothing was saved yet)'}") from e
    finally:
        stop.restore()
        metrics.close()
        cleanup(info)

    summary = {
        "steps": step,
        "tokens": tokens,
        "train_loss": window.last_loss,
        "train_objectives": window.last_parts,
        "objective_weights": last_weights if track_parts else None,
        "eval_loss": None if last_eval is None else last_eval["loss"],
        "eval_perplexity": None if last_eval is None else last_eval["perplexity"],
        "skipped_steps": bad_total,
        "checkpoint": str(saved.path),
        "metrics": str(metrics.path),
        "loss_curve": None if curve is None else str(curve),
        "gguf": None if gguf is None else str(gguf),
        "gguf_error": gguf_error,
        "seconds": time.perf_counter() - started,
        "stopped": stop.requested,
    }
    say(format_summary(summary), flush=True)
    return summary


# --------------------------------------------------------------------------- the loss


def next_token_loss(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of predicting token t+1 from the logits at t, over every position of the batch."""
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), input_ids[:, 1:].flatten())


def batch_loss(model: torch.nn.Module, input_ids: torch.Tensor, position_ids: torch.Tensor, *,
               weights: dict[str, float], settings: ObjectiveSettings, teacher: torch.nn.Module | None,
               generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The weighted objectives of one micro-batch and each one's value (`bitk.objectives.compute_loss`).

    Plain CE (the default) is one forward and `next_token_loss`; DLM masks draw from the global RNG
    (saved in checkpoints) unless a generator is given.
    """
    if weights == {"ce": 1.0}:
        loss = next_token_loss(model(input_ids, position_ids=position_ids).logits, input_ids)
        return loss, {"ce": loss.detach()}
    return compute_loss(model, input_ids, position_ids, weights, settings, teacher=teacher, generator=generator)


def _weights_text(weights: dict[str, float]) -> str:
    return ", ".join(f"{name}={w:g}" for name, w in weights.items() if w > 0)


def prepare_lrc_student(raw: CausalLM, t: Any, say: Any) -> None:
    """LRC calibration: low-rank factors on every projection, everything else frozen (`prepare_lrc`)."""
    ratio = raw.config.lrc_rank_ratio or t.lrc_rank_ratio  # a model that has LRC already keeps its rank
    if raw.config.lrc_rank_ratio and raw.config.lrc_rank_ratio != t.lrc_rank_ratio:
        say(f"LRC: the model already has low-rank factors of rank ratio {raw.config.lrc_rank_ratio}; "
            f"training.lrc_rank_ratio={t.lrc_rank_ratio} is not used", flush=True)
    trainable = prepare_lrc(raw, rank_ratio=ratio, init=t.lrc_init)
    raw.config = raw.config.replace(lrc_rank_ratio=ratio)
    frozen = sum(p.numel() for p in raw.parameters()) - sum(p.numel() for p in trainable)
    say(f"LRC: rank ratio {ratio} ({t.lrc_init} init): {sum(p.numel() for p in trainable):,} trainable parameters, "
        f"{frozen:,} frozen (ternary weights, embeddings, norms)", flush=True)


def load_teacher_for(cfg: Config, curriculum: Curriculum, raw: CausalLM, info: DistInfo,
                     say: Any) -> torch.nn.Module | None:
    """The frozen full-precision teacher when an objective needs one (else None); checked against the student."""
    source = cfg.teacher_source()
    if source is None:
        return None
    t = cfg.training
    device = info.device
    bf16 = t.teacher_dtype == "bf16" or (t.teacher_dtype == "auto" and device.type == "cuda")
    location = resolve_on_main_first(source, cfg.teacher_revision(), info, what="training.teacher")
    teacher = load_teacher(location.path, dtype=torch.bfloat16 if bf16 else torch.float32, device=device)
    teacher.source = location.describe()
    s, c = raw.config, teacher.config
    if c.vocab_size != s.vocab_size:
        raise ValueError(f"teacher {teacher.source} has a {c.vocab_size}-token vocabulary, the student "
                         f"{s.vocab_size}: distillation compares logits token by token, so both need the same "
                         "tokenizer")
    objectives = curriculum.objectives()
    if "attention_relation" in objectives:
        r = t.relation_split_heads
        for who, config in (("student", s), ("teacher", c)):
            for what, size in (("q", config.q_size), ("k/v", config.kv_size)):
                if size % r:
                    raise ValueError(f"training.relation_split_heads={r} must divide the {who}'s {what} width "
                                     f"{size}; choose a common divisor of {s.q_size}, {s.kv_size}, {c.q_size} "
                                     f"and {c.kv_size}")
    if objectives & {"layerwise", "lrc"} and (c.num_hidden_layers, c.hidden_size) != (s.num_hidden_layers,
                                                                                      s.hidden_size):
        raise ValueError(f"layerwise / lrc compare hidden states layer by layer: the teacher {teacher.source} has "
                         f"{c.num_hidden_layers} layers of width {c.hidden_size}, the student "
                         f"{s.num_hidden_layers} of width {s.hidden_size}")
    say(f"teacher: {teacher.source} ({'bf16' if bf16 else 'float32'}, frozen, {teacher.num_parameters():,} "
        "parameters)", flush=True)
    return teacher


def objective_settings(t: Any, tokenizer: Any, curriculum: Curriculum,
                       framing: DocumentTokens | None = None) -> ObjectiveSettings:
    """The objectives' knobs from the training config; the DLM mask token is looked up in the tokenizer."""
    mask_id = MASK_ID
    if "dlm" in curriculum.objectives():
        mask_id = tokenizer.token_to_id(t.dlm_mask_token)
        if mask_id is None:
            raise ValueError(f"training.dlm_mask_token={t.dlm_mask_token!r} is not a token of the model's tokenizer; "
                             "name one it has and the data never uses (a dedicated added token is best)")
        if framing is not None and mask_id in (framing.eos, framing.bos):
            raise ValueError(f"training.dlm_mask_token={t.dlm_mask_token!r} is the token that frames the packed "
                             "documents (EOS or BOS): choose another token")
    return ObjectiveSettings(dlm_probability=t.dlm_probability, dlm_complementary=t.dlm_complementary,
                             kd_temperature=t.kd_temperature, relation_layers=tuple(t.relation_layers),
                             relation_split_heads=t.relation_split_heads, relation_gamma=t.relation_gamma,
                             layerwise_weighting=t.layerwise_weighting, lrc_layers=t.lrc_layers, mask_token_id=mask_id)


# --------------------------------------------------------------------------- helpers of train()


def _quiet(*args: Any, **kwargs: Any) -> None:
    pass


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # every device


def build_model(cfg: Config, resume_from: Path | None, out: Path, info: DistInfo,
                say: Any) -> tuple[CausalLM, Any]:
    """The model to train and its `tokenizers.Tokenizer` (``model.source`` says where it came from).

    Resuming: the checkpoint's model and tokenizer, as saved (nothing is downloaded). Otherwise a
    preset or repo architecture from scratch (`build_from_scratch`), or the pretrained model,
    converted (`bitk.models.load_model`); then, for the DLM objective, the mask token
    (`prepare_mask_token`).
    """
    from bitk.data import load_tokenizer
    from bitk.models.checkpoint import load_checkpoint

    if resume_from is not None:
        check_same_model(read_checkpoint_meta(resume_from), cfg, resume_from)
        model = load_checkpoint(resume_from)
        model.source = f"{cfg.model.name} (resumed)"
        return model, load_tokenizer(resume_from)
    m = cfg.model
    if m.from_scratch():
        model, tokenizer = build_from_scratch(cfg, info, say)
    else:
        location = resolve_on_main_first(m.source(), m.revision, info)
        model = load_model(location.path, ternary=m.ternary)
        model.source = location.describe()
        if model.tokenizer_dir is None:
            raise ValueError(f"model={m.name} has no tokenizer.json next to its weights: the trainer tokenizes "
                             "the data with the model's own tokenizer")
        if m.overrides():
            model.config = model.config.replace(**m.overrides())
        tokenizer = load_tokenizer(model.tokenizer_dir)
    if "dlm" in cfg.curriculum().objectives():
        tokenizer = prepare_mask_token(model, tokenizer, cfg, out, info, say)
    return model, tokenizer


def build_from_scratch(cfg: Config, info: DistInfo, say: Any) -> tuple[CausalLM, Any]:
    """A randomly initialised model of a preset's (or a repo's) architecture, and the tokenizer it reads.

    The tokenizer is the model's own when at hand (a repo's, or a preset's cached hub repo);
    otherwise bitk's embedded tokenizer, with the vocabulary sized to it (said in one note).
    """
    from bitk.data import VOCAB_SIZE, default_tokenizer, load_tokenizer
    from bitk.models.hf import convert_config
    from bitk.models.hub import TOKENIZER_PATTERNS, cached_snapshot
    from bitk.models.sources import open_source

    m = cfg.model
    if m.is_preset():
        config = m.config()
        repo = m.source()
        folder = cached_snapshot(repo, m.revision, TOKENIZER_PATTERNS) if repo else None
        if folder is not None and not (folder / "tokenizer.json").is_file():
            folder = None
        source = f"{m.name} (from scratch)"
    else:
        location = resolve_on_main_first(m.source(), m.revision, info)
        config = convert_config(open_source(location.path).config, m.ternary).replace(**m.overrides())
        folder = location.path if (location.path / "tokenizer.json").is_file() else None
        source = f"{location.describe()} (architecture only, from scratch)"
    if folder is None:
        tokenizer = default_tokenizer()
        if config.vocab_size != VOCAB_SIZE:
            why = f"{m.source()}'s tokenizer is not in the Hugging Face cache" if m.source() else "it has none"
            say(f"note: {why}; using bitk's embedded {VOCAB_SIZE}-token tokenizer (vocab_size "
                f"{config.vocab_size} -> {VOCAB_SIZE})", flush=True)
            from bitk.data import EOS_ID, PAD_ID

            config = config.replace(vocab_size=VOCAB_SIZE, bos_token_id=EOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID)
    else:
        tokenizer = load_tokenizer(folder)
        if tokenizer.get_vocab_size() > config.vocab_size:
            raise ValueError(f"the tokenizer of {m.name} ({folder}) has {tokenizer.get_vocab_size()} tokens, more "
                             f"than the model's vocab_size {config.vocab_size}")
    model = CausalLM(config)
    model.tokenizer_dir = folder
    model.source = source
    return model, tokenizer


def resolve_on_main_first(source: str, revision: str | None, info: DistInfo, what: str = "model"):
    """`resolve_model`, run by the main process first (it downloads), then by the others (from the cache)."""
    if not info.is_main:
        barrier(info)
    location = resolve_model(source, revision, what=what)
    if info.is_main:
        barrier(info)
    return location


def prepare_mask_token(model: CausalLM, tokenizer: Any, cfg: Config, out: Path, info: DistInfo, say: Any) -> Any:
    """Make sure the DLM mask token exists and starts sensibly; returns the tokenizer (changed or not).

    A tokenizer without the token gains it as a new special token (tokenizer files written to
    output_dir/tokenizer, so every checkpoint, HF export and GGUF carries it), with one more
    embedding row unless the vocabulary is padded past the tokenizer already. Its embedding starts
    as the mean embedding, as does the existing token of a pretrained model, which has never seen it.
    """
    from bitk.data import load_tokenizer, save_tokenizer
    from bitk.data.tokenizer import add_special_token

    token = cfg.training.dlm_mask_token
    mask_id = tokenizer.token_to_id(token)
    if mask_id is None:
        folder = out / "tokenizer"
        if info.is_main:
            source = model.tokenizer_dir
            if source is None:  # bitk's own tokenizer (a dlm_mask_token it lacks): write it out first
                source = save_tokenizer(folder, tokenizer)
            mask_id = add_special_token(source, folder, token, "mask_token")
        barrier(info)
        tokenizer = load_tokenizer(folder)
        mask_id = tokenizer.token_to_id(token)
        model.tokenizer_dir = folder
        grew = mask_id >= model.config.vocab_size
        if grew:
            model.resize_token_embeddings(mask_id + 1)
        say(f"DLM: the tokenizer has no {token}; added it as id {mask_id} (written to {folder})"
            + (f", the vocabulary grows to {model.config.vocab_size} rows" if grew else ""), flush=True)
    elif cfg.model.from_scratch():
        return tokenizer  # random weights: the mask row is as good as any other
    init_mask_embedding(model, mask_id, rows=tokenizer.get_vocab_size())
    say(f"DLM: the embedding of {token} (id {mask_id}) starts as the mean embedding", flush=True)
    return tokenizer


def check_same_model(meta: dict[str, Any], cfg: Config, path: Path) -> None:
    """ValueError when the checkpoint was trained from another model than this run names."""
    saved = migrate_config_dict(meta.get("train_config") or {}).get("model") or {}
    now = config_to_dict(cfg)["model"]
    keys = [k for k in now if k != "revision"]  # the revision only says where the first weights came from
    diff = [k for k in keys if k in saved and saved[k] != now[k]]
    if diff:
        changes = ", ".join(f"model.{k} {saved[k]!r} -> {now[k]!r}" for k in diff)
        raise ValueError(f"cannot resume from {path}: it was trained from another model ({changes}); use the same "
                         "model settings, or resume=none with another output_dir")


def describe_changes(meta: dict[str, Any], cfg: Config) -> str:
    """'' or '; changed since: key old -> new, ...' between the checkpoint's config and this run's."""
    try:
        before = _flatten(config_to_dict(config_from_dict(meta.get("train_config") or {})))
    except ValueError:
        return ""
    now = _flatten(config_to_dict(cfg))
    changed = [f"{k} {before[k]!r} -> {now[k]!r}" for k in now if k in before and before[k] != now[k]]
    return f"; changed since: {', '.join(changed)}" if changed else ""


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for k, v in d.items():
        if isinstance(v, dict):
            flat.update(_flatten(v, f"{prefix}{k}."))
        else:
            flat[f"{prefix}{k}"] = v
    return flat


def auto_micro_batch(model: torch.nn.Module, raw: CausalLM, info: DistInfo, t: Any, block: int, autocast: Any,
                     say: Any, loss_fn: Any = None) -> int:
    """The largest micro-batch that fits (`find_micro_batch`), tried with real steps that leave no trace.

    Each try runs forward (``loss_fn(model, ids, positions, generator=...)``, default plain CE),
    backward and a step of a scratch optimizer with lr 0 and no weight decay (its state is what the
    real optimizer will hold; the weights do not move), then drops it all.
    """
    per_rank = t.global_batch_size // info.world_size
    scratch_cfg = dataclasses.replace(t, lr=0.0, muon_lr=0.0, weight_decay=0.0)
    generator = torch.Generator().manual_seed(0)
    positions = torch.arange(block, device=info.device)

    def try_step(mb: int) -> None:
        scratch = build_optimizer(model, scratch_cfg)
        try:
            ids = torch.randint(0, raw.config.vocab_size, (mb, block), generator=generator).to(info.device)
            with no_sync(model, info, last_micro_step=False):
                with autocast():
                    if loss_fn is None:
                        loss = next_token_loss(model(ids, position_ids=positions.expand(mb, block)).logits, ids)
                    else:  # the run's objectives (DLM's extra rows and the teacher count too)
                        loss = loss_fn(model, ids, positions.expand(mb, block), generator=generator)[0]
                loss.backward()
            scratch.step()
        finally:
            model.zero_grad(set_to_none=True)
            del scratch

    mb = find_micro_batch(try_step, start=t.micro_batch_size, limit=per_rank, device=info.device,
                          memory_budget_gb=t.memory_budget_gb, log=say)
    if info.enabled:  # every process takes the smallest choice
        import torch.distributed as dist

        choice = torch.tensor([mb], device=info.device)
        dist.all_reduce(choice, op=dist.ReduceOp.MIN)
        mb = int(choice.item())
    return mb


def step_outcome(loss: torch.Tensor, grad_norm: torch.Tensor, stop: StopSignal,
                 info: DistInfo) -> tuple[float, float, bool]:
    """(loss, gradient norm, stop now) of a step, the same on every process: one host sync.

    Under torchrun the loss is averaged over the processes (the norm already is global) and a stop
    request seen by any process stops all of them, so they never disagree about the next collective.
    """
    values = torch.stack([loss.detach().float(), grad_norm.detach().float().to(loss.device)])
    if not info.enabled:
        loss_value, norm_value = values.tolist()
        return loss_value, norm_value, stop.requested is not None
    flag = values.new_tensor([float(stop.requested is not None)])
    reduced = all_reduce_mean(torch.cat([values[:1], flag]), info)  # the norm is global already
    loss_value, stop_value, norm_value = torch.cat([reduced, values[1:]]).tolist()
    return loss_value, norm_value, stop_value > 0


@torch.no_grad()
def params_finite(model: torch.nn.Module, info: DistInfo) -> bool:
    """Every weight is finite, on every process (FSDP2: each checks its shards)."""
    local = [getattr(p, "to_local", lambda p=p: p)() for p in model.parameters()]
    bad = torch.zeros((), device=info.device)
    for p in local:
        bad += (~torch.isfinite(p)).any().float().to(bad.device)
    return all_reduce_mean(bad, info).item() == 0


def export_gguf(checkpoint: Path, path: Path, qtype: str, say: Any) -> tuple[Path | None, str | None]:
    """Pack the final checkpoint with bitk.gguf.pack; a refusal is reported, not raised (training is done)."""
    from bitk.gguf import pack

    try:
        pack(checkpoint, path, qtype)
    except ValueError as e:
        say(f"GGUF export skipped: {e}\n(retry with: bitk-pack {checkpoint} {path} --type {qtype} and the options "
            "the message names)", flush=True)
        return None, str(e)
    say(f"wrote {path}", flush=True)
    return path, None


@dataclasses.dataclass
class Saved:
    path: Path | None
    step: int


class Window:
    """Sums over the steps since the last log record (good steps only for loss and norm)."""

    def __init__(self) -> None:
        self.last_loss: float | None = None
        self.last_parts: dict[str, float] | None = None
        self._reset()

    def _reset(self) -> None:
        self.loss = self.norm = self.seconds = 0.0
        self.good = self.tokens = 0
        self.parts: dict[str, torch.Tensor] = {}
        self.part_steps: dict[str, int] = {}

    def add(self, loss: float, norm: float, parts: dict[str, torch.Tensor] | None = None) -> None:
        """A good step; ``parts`` (each objective's value, on the device) are summed without a host sync."""
        self.loss += loss
        self.norm += norm
        self.good += 1
        for name, value in (parts or {}).items():
            self.parts[name] = self.parts.get(name, 0.0) + value
            self.part_steps[name] = self.part_steps.get(name, 0) + 1

    def record(self, step: int, tokens: int, optimizer: Any, skipped: int, info: DistInfo, peak: float | None,
               model_flops: float) -> dict[str, Any]:
        tokens_per_s = self.tokens / self.seconds if self.seconds > 0 else 0.0
        loss = self.loss / self.good if self.good else math.nan
        rec = {"kind": "train", "step": step, "tokens": tokens, "loss": loss,
               "lr": optimizer.param_groups[-1]["lr"], "grad_norm": self.norm / self.good if self.good else math.nan,
               "tokens_per_s": tokens_per_s, "skipped_steps": skipped}
        value = mfu(tokens_per_s / info.world_size, model_flops, peak)
        if value is not None:
            rec["mfu"] = value
        if self.parts:  # each objective's mean since the last record (one sync per record, not per step)
            names = sorted(self.parts)
            values = torch.stack([torch.as_tensor(self.parts[n], dtype=torch.float32) / self.part_steps[n]
                                  for n in names])
            rec["objectives"] = dict(zip(names, all_reduce_mean(values, info).tolist()))
        if self.good:
            self.last_loss = loss
            self.last_parts = rec.get("objectives")
        self._reset()
        return rec


def objectives_text(values: dict[str, float], weights: dict[str, float] | None) -> str:
    """'ce 3.2100 + 0.5 x dlm 8.1000': each objective's value as it enters the weighted total."""
    terms = []
    for name, value in values.items():
        w = (weights or {}).get(name, 1.0)
        terms.append(f"{'' if w == 1 else f'{w:g} x '}{name} {value:.4f}")
    return " + ".join(terms)


def format_record(r: dict[str, Any], max_steps: int, weights: dict[str, float] | None = None) -> str:
    """One log line; with several objectives the loss is followed by its terms: 'loss 7.1 = ce 3.2 + ...'."""
    line = f"step {r['step']:>6}/{max_steps} | loss {r['loss']:.4f}"
    if "objectives" in r:
        line += f" = {objectives_text(r['objectives'], weights)}"
    line += (f" | lr {r['lr']:.2e} | grad norm {r['grad_norm']:.3f} | {r['tokens_per_s']:,.0f} tok/s | "
             f"{r['tokens']:,} tokens")
    if "mfu" in r:
        line += f" | MFU {100 * r['mfu']:.1f}%"
    return line


def format_summary(s: dict[str, Any]) -> str:
    minutes, seconds = divmod(s["seconds"], 60)
    lines = [f"bitk.train: {'stopped by ' + s['stopped'] if s['stopped'] else 'done'} after {s['steps']} steps, "
             f"{s['tokens']:,} tokens, {int(minutes)}m{seconds:04.1f}s"]
    if s["train_loss"] is not None:
        terms = s.get("train_objectives") if s.get("objective_weights") else None
        lines.append(f"  train loss        {s['train_loss']:.4f}"
                     + (f" = {objectives_text(terms, s['objective_weights'])}" if terms else ""))
    if s["eval_loss"] is not None:
        what = "held-out CE      " if s.get("objective_weights") else "held-out loss    "
        lines.append(f"  {what} {s['eval_loss']:.4f} (perplexity {s['eval_perplexity']:.2f})")
    if s["skipped_steps"]:
        lines.append(f"  skipped steps     {s['skipped_steps']} (non-finite loss)")
    lines.append(f"  checkpoint        {s['checkpoint']}")
    lines.append(f"  metrics           {s['metrics']}")
    if s["loss_curve"]:
        lines.append(f"  loss curve        {s['loss_curve']}")
    if s["gguf"]:
        lines.append(f"  GGUF              {s['gguf']}")
    return "\n".join(lines)


class StopSignal:
    """SIGTERM / SIGINT set ``requested`` (the signal's name); the loop saves and stops after the step.

    A second signal of the same kind acts as it would without the trainer (SIGINT raises
    KeyboardInterrupt, SIGTERM kills): the checkpoint save is atomic, so that is safe.
    """

    def __init__(self) -> None:
        self.requested: str | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signals reach the main thread only
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = signal.Signals(signum).name
        signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))
        print(f"\n{self.requested} received: saving a checkpoint after this step, then stopping "
              "(send it again to stop at once)", flush=True)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            with contextlib.suppress(ValueError, TypeError):
                signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self._previous.clear()
