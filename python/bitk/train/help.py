"""The text of ``python -m bitk.train --help`` and of docs/train.md's field table, from the docstrings.

Every field of every group in `bitk.train.config.Config` carries a docstring (the string literal
under it); these functions read them with `ast`, so the help never drifts from the code.
"""

from __future__ import annotations

import dataclasses
import shutil
import textwrap
from dataclasses import fields
from typing import Any

from bitk.models import PRESET_REPOS, PRESETS

from . import config as _config
from .config import Config, field_docs, resolve_type, type_name

__all__ = ["field_docs", "fields_markdown", "format_help", "iter_fields"]


def iter_fields(cls: type = Config, prefix: str = "", defaults: Any = None):
    """(key, type name, default, doc) of every leaf field, groups flattened (``training.lr``)."""
    defaults = cls() if defaults is None else defaults
    docs = field_docs(cls)
    for f in fields(cls):
        value = getattr(defaults, f.name)
        if dataclasses.is_dataclass(value):
            yield from iter_fields(type(value), f"{prefix}{f.name}.", value)
        else:
            yield f"{prefix}{f.name}", type_name(resolve_type(cls, f.name)), value, docs.get(f.name, "")


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
    columns = min(shutil.get_terminal_size((100, 24)).columns, 100) if columns is None else columns
    lines = [
        "usage: python -m bitk.train [--debug] [key=value ...]",
        "",
        "Train a bitk model: a thin PyTorch loop (docs/train.md). With no arguments it trains the tiny",
        "preset on bitk's embedded corpus on CPU, then writes a checkpoint, metrics.jsonl, loss.png and",
        "an I2_S GGUF into output_dir. Under torchrun the same command runs DDP or FSDP2.",
        "",
        "exit status: 0 done (a failed GGUF export is a warning: the checkpoint is there), or stopped by",
        "SIGTERM after a checkpoint; 130 stopped by SIGINT; 1 stopped on a fault (the message names the",
        "last good checkpoint); 2 refused before training (bad settings or data, output_dir unusable or",
        "in use by another run). Errors are one line; --debug (or BITK_DEBUG=1) shows the traceback.",
        "",
        "examples:",
        "  python -m bitk.train",
        "  python -m bitk.train model=smollm2_135m training=unified output_dir=runs/smollm2",
        "  python -m bitk.train model=ORG/NAME training=base training.auto_batch_size=true data.sources=[my.jsonl]",
        "  torchrun --nproc_per_node 8 -m bitk.train model=PATH distributed=fsdp",
        "",
        "model presets (model=NAME; or model=ORG/NAME of the Hugging Face hub, or model=PATH of a folder):",
    ]
    names = max(len(name) for name in [*PRESETS, *_config.TRAINING_PRESETS])
    for name, mc in PRESETS.items():
        source = (
            f"pretrained {PRESET_REPOS[name]}"
            if name in PRESET_REPOS
            else f"from scratch, {mc.num_hidden_layers} layers, hidden {mc.hidden_size}, bitk's tokenizer"
        )
        lines.append(f"  {name:<{names}} {source}")
    lines += ["", "training presets (training=NAME, then training.FIELD=VALUE on top):"]
    for name in _config.TRAINING_PRESETS:
        lines += textwrap.wrap(
            _config.TRAINING_PRESET_DOCS.get(name, ""),
            width=columns,
            initial_indent=f"  {name:<{names}} ",
            subsequent_indent=" " * (names + 3),
        )
    lines += ["", "fields (key=value; lists as [a,b]; null for none):"]
    for key, tp, default, doc in iter_fields():
        lines.append(f"  {key} ({tp}, default {_format_default(default)})")
        lines += textwrap.wrap(doc, width=columns, initial_indent="      ", subsequent_indent="      ")
    return "\n".join(lines) + "\n"


def fields_markdown() -> str:
    """The fields table of docs/train.md (key, type, default, doc), generated from the docstrings."""
    rows = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for key, tp, default, doc in iter_fields():
        rows.append(
            f"| `{key}` | {tp.replace('|', 'or')} | `{_format_default(default)}` | {doc.replace('|', chr(92) + '|')} |"
        )
    return "\n".join(rows) + "\n"
