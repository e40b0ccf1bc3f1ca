"""What a run trains: the student model and its tokenizer, the teacher, the LRC factors.

`build_model` resolves the model group (`bitk.train.config.ModelGroup`): a resumed checkpoint, a
preset or repo architecture from scratch, or the pretrained model of a preset, hub id or folder
converted by `bitk.models.load_model`; then, for the DLM objective, the mask token. `load_teacher`
loads the frozen full-precision teacher when an objective needs one and checks it against the
student. Hub repos are resolved by the main process first (it downloads), then by the others.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from bitk.data import document_tokens, load_tokenizer, save_tokenizer
from bitk.models import CausalLM, ModelLocation, load_checkpoint, load_model, resolve_model
from bitk.models.checkpoint import WEIGHTS_FILE, read_checkpoint_meta, write_tokenizer
from bitk.objectives import init_mask_embedding, prepare_lrc
from bitk.objectives import load_teacher as load_frozen_teacher

from .config import Config, config_to_dict, migrate_config_dict
from .distributed import DistInfo, barrier

__all__ = ["build_model", "load_teacher", "prepare_lrc_student"]

TOKENIZER_DIR = "tokenizer"
"""output_dir/tokenizer: the tokenizer a run writes (bitk's own, or one that gained the mask token)."""


def build_model(cfg: Config, resume_from: Path | None, out: Path, info: DistInfo, say: Any) -> tuple[CausalLM, Any]:
    """The model to train and its `tokenizers.Tokenizer` (``model.source`` says where it came from).

    Resuming: the checkpoint's model and tokenizer, as saved (nothing is downloaded). Otherwise a
    preset or repo architecture from scratch (`build_from_scratch`), or the pretrained model,
    converted (`bitk.models.load_model`); then, for the DLM objective, the mask token
    (`prepare_mask_token`). The model always ends with a tokenizer folder (``tokenizer_dir``),
    which every checkpoint copies.
    """
    if resume_from is not None:
        check_same_model(read_checkpoint_meta(resume_from), cfg, resume_from)
        try:
            model = load_checkpoint(resume_from)
        except (ValueError, OSError):
            raise
        except Exception as e:  # safetensors' SafetensorError on a truncated or overwritten file
            from .state import corrupt_checkpoint

            raise corrupt_checkpoint(resume_from / WEIGHTS_FILE, e) from e
        model.source = f"{cfg.model.name} (resumed)"
        folder = out / TOKENIZER_DIR  # a copy that outlives the checkpoint (keep_last deletes old ones)
        if info.is_main:
            folder.mkdir(parents=True, exist_ok=True)
            write_tokenizer(resume_from, folder)
        barrier(info)
        model.tokenizer_dir = folder
        return model, load_tokenizer(folder)
    m = cfg.model
    if m.from_scratch():
        model, tokenizer = build_from_scratch(cfg, info, say)
    else:
        location = resolve_on_main_first(m.source(), m.revision, info)
        overrides = m.overrides()
        model = load_model(location.path, ternary=m.ternary, subln=overrides.pop("subln", None))
        model.source = location.describe()
        if model.tokenizer_dir is None:
            raise ValueError(
                f"model={m.name} has no tokenizer.json next to its weights: the trainer tokenizes "
                "the data with the model's own tokenizer"
            )
        if overrides:
            model.config = model.config.replace(**overrides)
        tokenizer = load_tokenizer(model.tokenizer_dir)
    if model.tokenizer_dir is None:  # bitk's own tokenizer: written out once, so checkpoints carry its roles
        folder = out / TOKENIZER_DIR
        if info.is_main:
            save_tokenizer(folder, tokenizer)
        barrier(info)
        model.tokenizer_dir = folder
    if "dlm" in cfg.objectives.curriculum().objectives():
        tokenizer = prepare_mask_token(model, tokenizer, cfg, out, info, say)
    return model, tokenizer


def build_from_scratch(cfg: Config, info: DistInfo, say: Any) -> tuple[CausalLM, Any]:
    """A randomly initialised model of a preset's (or a repo's) architecture, and the tokenizer it reads.

    The tokenizer is the model's own when at hand (a repo's, or a preset's cached hub repo);
    otherwise bitk's embedded tokenizer, with the vocabulary sized to it (said in one note).
    """
    from bitk.data import EOS_ID, PAD_ID, VOCAB_SIZE, default_tokenizer
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
            say(
                f"note: {why}; using bitk's embedded {VOCAB_SIZE}-token tokenizer (vocab_size "
                f"{config.vocab_size} -> {VOCAB_SIZE})",
                flush=True,
            )
            config = config.replace(
                vocab_size=VOCAB_SIZE, bos_token_id=EOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID
            )
    else:
        tokenizer = load_tokenizer(folder)
        if tokenizer.get_vocab_size() > config.vocab_size:
            raise ValueError(
                f"the tokenizer of {m.name} ({folder}) has {tokenizer.get_vocab_size()} tokens, more "
                f"than the model's vocab_size {config.vocab_size}"
            )
    model = CausalLM(config)
    model.tokenizer_dir = folder
    model.source = source
    return model, tokenizer


def resolve_on_main_first(source: str, revision: str | None, info: DistInfo, what: str = "model") -> ModelLocation:
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
    as the mean embedding, as does the existing token of a pretrained model, which has never seen
    it. The token may not be one that frames the packed documents (EOS or BOS).
    """
    from bitk.data.tokenizer import add_special_token

    token = cfg.objectives.dlm_mask_token
    mask_id = tokenizer.token_to_id(token)
    added = mask_id is None
    if added:
        folder = out / TOKENIZER_DIR
        if info.is_main:
            add_special_token(model.tokenizer_dir, folder, token, "mask_token")
        barrier(info)
        tokenizer = load_tokenizer(folder)
        mask_id = tokenizer.token_to_id(token)
        model.tokenizer_dir = folder
        grew = mask_id >= model.config.vocab_size
        if grew:
            model.resize_token_embeddings(mask_id + 1)
        say(
            f"DLM: the tokenizer has no {token}; added it as id {mask_id} (written to {folder})"
            + (f", the vocabulary grows to {model.config.vocab_size} rows" if grew else ""),
            flush=True,
        )
    framing = document_tokens(tokenizer, model.tokenizer_dir, model.config.eos_token_id)
    if mask_id in (framing.eos, framing.bos):
        raise ValueError(
            f"objectives.dlm_mask_token={token!r} is the token that frames the packed documents (EOS "
            "or BOS): choose another token"
        )
    if not added and cfg.model.from_scratch():
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
        raise ValueError(
            f"cannot resume from {path}: it was trained from another model ({changes}); use the same "
            "model settings, or resume=none with another output_dir"
        )


def prepare_lrc_student(raw: CausalLM, cfg: Config, say: Any) -> None:
    """LRC calibration: low-rank factors on every projection, everything else frozen (`prepare_lrc`)."""
    o = cfg.objectives
    ratio = raw.config.lrc_rank_ratio or o.lrc_rank_ratio  # a model that has LRC already keeps its rank
    if raw.config.lrc_rank_ratio and raw.config.lrc_rank_ratio != o.lrc_rank_ratio:
        say(
            f"LRC: the model already has low-rank factors of rank ratio {raw.config.lrc_rank_ratio}; "
            f"objectives.lrc_rank_ratio={o.lrc_rank_ratio} is not used",
            flush=True,
        )
    trainable = prepare_lrc(raw, rank_ratio=ratio, init=o.lrc_init)
    raw.config = raw.config.replace(lrc_rank_ratio=ratio)
    frozen = sum(p.numel() for p in raw.parameters()) - sum(p.numel() for p in trainable)
    say(
        f"LRC: rank ratio {ratio} ({o.lrc_init} init): {sum(p.numel() for p in trainable):,} trainable parameters, "
        f"{frozen:,} frozen (ternary weights, embeddings, norms)",
        flush=True,
    )


def load_teacher(cfg: Config, raw: CausalLM, info: DistInfo, say: Any) -> torch.nn.Module | None:
    """The frozen full-precision teacher when an objective needs one (else None); checked against the student."""
    source = cfg.teacher_source()
    if source is None:
        return None
    o = cfg.objectives
    bf16 = o.teacher_dtype == "bf16" or (o.teacher_dtype == "auto" and info.device.type == "cuda")
    location = resolve_on_main_first(source, cfg.teacher_revision(), info, what="objectives.teacher")
    teacher = load_frozen_teacher(location.path, dtype=torch.bfloat16 if bf16 else torch.float32, device=info.device)
    teacher.source = location.describe()
    s, c = raw.config, teacher.config
    if c.vocab_size != s.vocab_size:
        raise ValueError(
            f"teacher {teacher.source} has a {c.vocab_size}-token vocabulary, the student "
            f"{s.vocab_size}: distillation compares logits token by token, so both need the same "
            "tokenizer"
        )
    objectives = o.curriculum().objectives()
    if "attention_relation" in objectives:
        r = o.relation_split_heads
        for who, config in (("student", s), ("teacher", c)):
            for what, size in (("q", config.q_size), ("k/v", config.kv_size)):
                if size % r:
                    raise ValueError(
                        f"objectives.relation_split_heads={r} must divide the {who}'s {what} width "
                        f"{size}; choose a common divisor of {s.q_size}, {s.kv_size}, {c.q_size} "
                        f"and {c.kv_size}"
                    )
    if objectives & {"layerwise", "lrc"} and (c.num_hidden_layers, c.hidden_size) != (
        s.num_hidden_layers,
        s.hidden_size,
    ):
        raise ValueError(
            f"layerwise / lrc compare hidden states layer by layer: the teacher {teacher.source} has "
            f"{c.num_hidden_layers} layers of width {c.hidden_size}, the student "
            f"{s.num_hidden_layers} of width {s.hidden_size}"
        )
    say(
        f"teacher: {teacher.source} ({'bf16' if bf16 else 'float32'}, frozen, {teacher.num_parameters():,} parameters)",
        flush=True,
    )
    return teacher
