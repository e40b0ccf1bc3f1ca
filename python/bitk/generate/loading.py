"""A model and its tokenizer, ready to run: a bitk checkpoint, a Hugging Face folder or hub id, or a GGUF file.

    loaded = load_for_inference("runs/tiny/final", numerics="i2s")
    loaded.model, loaded.tokenizer, loaded.numerics

What `python -m bitk.generate`, `python -m bitk.eval` and the lm-evaluation-harness model class
share. A GGUF file computes as its runtime runs it unless ``numerics`` says otherwise; a checkpoint
computes as trained ("train"). ``numerics="i2s"`` / ``"tq"`` on a checkpoint set each projection
to what the file `bitk-pack --type i2_s|tq2_0` writes computes (F16 fallbacks included,
`bitk.gguf.runtime_numerics`). Numerics a model cannot honour (any but "train" on a
full-precision model) are refused with ValueError.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Loaded", "check_source", "is_gguf", "load_for_inference", "resolve_tokenizer", "set_model_numerics"]


@dataclass
class Loaded:
    """What `load_for_inference` returns."""

    model: Any
    """The `bitk.models.CausalLM`, in eval mode, without gradients."""
    tokenizer: Any
    """Its `tokenizers.Tokenizer`."""
    tokenizer_dir: Path | None
    """The folder holding the tokenizer's files (tokenizer_config.json: chat template, BOS/EOS), if any."""
    numerics: str
    """What the model computes, in words ("train", "i2s (as its I2_S GGUF runs)", "as the file runs (i2s)")."""
    source: str
    """The checkpoint, folder, hub id or file it was loaded from."""
    _workdir: Any = field(default=None, repr=False)
    """Keeps a GGUF's temporary vocabulary folder alive as long as this object."""


def is_gguf(source: str | Path) -> bool:
    """Whether ``source`` names a GGUF file (by its suffix)."""
    return str(source).lower().endswith(".gguf")


def check_source(source: str | Path) -> None:
    """ValueError when ``source`` names no GGUF file, checkpoint or folder (a hub id passes): the check
    a command line makes before anything loads."""
    from bitk.data.loading import looks_like_path

    local = Path(source).expanduser()
    if is_gguf(source) and not local.is_file():
        raise ValueError(f"no such GGUF file: {source}")
    if not local.exists() and looks_like_path(str(source)):
        raise ValueError(f"no such checkpoint: {source}")


def set_model_numerics(model: Any, numerics: str | None, *, gguf: bool = False, pad: str = "auto") -> str:
    """Set what every BitLinear of ``model`` computes; returns it in words. ValueError if it cannot.

    None: leave the model as it is (a GGUF file's runtime numerics, or "train" for a checkpoint).
    "i2s" / "tq" on a checkpoint: each projection as the I2_S / TQ2_0 file `bitk-pack` writes
    computes it (zero-padded widths exact, F16 fallbacks in f16).
    """
    from bitk.nn import NUMERICS

    if numerics is None:
        if gguf:
            modes = sorted({m.numerics for m in model.modules() if hasattr(m, "numerics")})
            return "as the file runs (" + ("+".join(modes) or "float") + ")"
        return "train"
    if numerics not in NUMERICS:
        raise ValueError(f"numerics must be one of {', '.join(NUMERICS)}; got {numerics!r}")
    if numerics != "train" and not model.config.ternary:
        raise ValueError(
            f"numerics {numerics!r} needs a ternary model; this one is full precision (its projections "
            "are plain linears): leave the numerics out, or load it converted to ternary"
        )
    if numerics in ("i2s", "tq") and not gguf:
        from bitk.gguf import runtime_numerics, set_runtime_numerics

        qtype = "i2_s" if numerics == "i2s" else "tq2_0"
        modes = runtime_numerics(model.config, qtype, pad=pad)
        set_runtime_numerics(model, modes)
        fallbacks = sum(1 for m in modes.values() if m == "f16")
        what = f"{numerics} (as its {qtype.upper()} GGUF runs"
        return what + (f"; {fallbacks} F16 fallback projection(s))" if fallbacks else ")")
    model.set_numerics(numerics)
    return numerics


def resolve_tokenizer(
    tokenizer: str | Path | None, tokenizer_dir: Path | None, source: str, vocab_size: int
) -> tuple[Any, Path | None]:
    """(the `tokenizers.Tokenizer`, the folder of its files) for a model from ``source``.

    ``tokenizer``: a tokenizer.json or its folder, "default" (bitk's), or None (the one in
    ``tokenizer_dir``, the source's). ValueError when there is none, or when it has more tokens
    than the model's ``vocab_size`` (another model's tokenizer).
    """
    from bitk import data

    if tokenizer == "default":
        tok, tokenizer_dir = data.default_tokenizer(), None
    elif tokenizer is not None:
        path = Path(tokenizer).expanduser()
        tok = data.load_tokenizer(path)
        tokenizer_dir = path if path.is_dir() else path.parent
    elif tokenizer_dir is not None:
        tok = data.load_tokenizer(tokenizer_dir)
    else:
        raise ValueError(
            f"{source} holds no tokenizer; pass --tokenizer (a tokenizer.json or folder, or 'default' for bitk's)"
        )
    if tok.get_vocab_size() > vocab_size:
        raise ValueError(
            f"the tokenizer has {tok.get_vocab_size()} tokens, more than the model's vocab_size "
            f"{vocab_size}: it is not this model's tokenizer"
        )
    return tok, tokenizer_dir


def load_for_inference(
    source: str | Path,
    *,
    numerics: str | None = None,
    pad: str = "auto",
    full_precision: bool = False,
    tokenizer: str | Path | None = None,
) -> Loaded:
    """Load ``source`` (checkpoint, Hugging Face folder or hub id, or .gguf file) and its tokenizer.

    ``tokenizer``: a tokenizer.json or its folder, or "default" (bitk's); default: the source's.
    ``full_precision``: a full-precision model stays full precision (no ternary conversion).
    ValueError for what cannot be loaded, a missing tokenizer, or numerics the model cannot honour.
    """

    source = str(source)
    workdir = None
    if is_gguf(source):
        from bitk.gguf import load

        if full_precision:
            raise ValueError("full precision applies to checkpoints; a GGUF file runs as it is stored")
        if not Path(source).expanduser().is_file():
            raise ValueError(f"no such GGUF file: {source}")
        vocab_dir = None
        if tokenizer is None:
            workdir = tempfile.TemporaryDirectory(prefix="bitk-gguf-vocab-")
            vocab_dir = Path(workdir.name)
        model = load(Path(source).expanduser(), tokenizer_dir=vocab_dir)
    else:
        from bitk.models import load_model

        model = load_model(source, ternary=not full_precision)
    described = set_model_numerics(model, numerics, gguf=is_gguf(source), pad=pad)

    tok, tokenizer_dir = resolve_tokenizer(tokenizer, model.tokenizer_dir, source, model.config.vocab_size)
    model.eval()
    model.requires_grad_(False)
    return Loaded(model, tok, tokenizer_dir, described, source, workdir)
