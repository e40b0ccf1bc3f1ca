"""bitk checkpoints: one self-describing folder, written atomically, validated on load.

    path/
      bitk.json            {"format": "bitk", "format_version": 1, "model": {ModelConfig fields}, ...}
      model.safetensors    Hugging Face tensor names, float32 or bfloat16, no lm_head when tied
      tokenizer.json ...   the tokenizer files, when the model has a tokenizer

A folder is a bitk checkpoint iff it holds `bitk.json`; other top-level keys of bitk.json (the
trainer's state, say) are kept by writers and ignored by readers. Writes go to a temporary sibling
folder that then replaces `path`, so a failed save leaves an existing checkpoint intact and no
partial folder behind. This module is the format; `bitk.models.model.load_checkpoint` builds the
model from it. Layout and rationale: docs/models.md.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from .config import ModelConfig

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "META_FILE",
    "TOKENIZER_FILES",
    "WEIGHTS_FILE",
    "is_checkpoint",
    "read_checkpoint_meta",
    "save_checkpoint",
]

FORMAT = "bitk"
FORMAT_VERSION = 1
META_FILE = "bitk.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")
SAVE_DTYPES = (torch.float32, torch.bfloat16)
_RESERVED_KEYS = ("format", "format_version", "model")


def is_checkpoint(path: str | Path) -> bool:
    """True when ``path`` is a folder holding bitk.json."""
    return (Path(path) / META_FILE).is_file()


# --------------------------------------------------------------------------- shared writers


@contextlib.contextmanager
def atomic_directory(path: str | Path, *, owned: Callable[[Path], bool], what: str) -> Iterator[Path]:
    """Yield a fresh temporary sibling folder of ``path``; when the block succeeds it becomes ``path``.

    An existing ``path`` is replaced only if it is empty or ``owned(path)`` (a folder of the same
    kind): a save never deletes a user's unrelated folder. On any error the temporary folder is
    removed and ``path`` is left as it was. The swap is two renames on the same filesystem
    (existing folder aside, new folder in place), then the old folder is deleted.
    """
    path = Path(path).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ValueError(f"cannot write a {what} to {path}: it exists and is not a folder")
        if any(path.iterdir()) and not owned(path):
            raise ValueError(f"refusing to overwrite {path}: it is a non-empty folder that is not a {what}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes it owner-only; a checkpoint is an ordinary folder
    try:
        yield tmp
        old = None
        if path.exists():
            old = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(path, old)
        try:
            os.rename(tmp, path)
        except BaseException:
            if old is not None:
                os.rename(old, path)
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_tokenizer(tokenizer: Any, dest: Path, config: ModelConfig | None = None) -> bool:
    """Write tokenizer files into ``dest``; returns whether any were written.

    ``tokenizer``: a folder holding tokenizer.json (and tokenizer_config.json,
    special_tokens_map.json if present), a path to a tokenizer.json file, a
    `tokenizers.Tokenizer` (written as tokenizer.json plus a tokenizer_config.json that
    transformers' AutoTokenizer reads), a transformers tokenizer (its ``save_pretrained``), or
    None (nothing written).
    """
    if tokenizer is None:
        return False
    if isinstance(tokenizer, (str, os.PathLike)):
        src = Path(tokenizer).expanduser()
        if src.is_file() and src.name.endswith(".json"):
            shutil.copyfile(src, dest / "tokenizer.json")
            return True
        if not src.is_dir():
            raise ValueError(f"tokenizer {src} does not exist (give a folder holding tokenizer.json, or the file)")
        found = [name for name in TOKENIZER_FILES if (src / name).is_file()]
        if "tokenizer.json" not in found:
            raise ValueError(f"tokenizer folder {src} holds no tokenizer.json")
        for name in found:
            shutil.copyfile(src / name, dest / name)
        return True
    if callable(getattr(tokenizer, "save_pretrained", None)):
        tokenizer.save_pretrained(str(dest))
        return True
    save = getattr(tokenizer, "save", None)
    if type(tokenizer).__module__.startswith("tokenizers") and callable(save):
        save(str(dest / "tokenizer.json"))
        tok_config: dict[str, Any] = {"tokenizer_class": "PreTrainedTokenizerFast"}
        if config is not None:
            for key in ("bos", "eos", "pad"):
                token_id = getattr(config, f"{key}_token_id")
                token = tokenizer.id_to_token(token_id) if token_id is not None else None
                if token is not None:
                    tok_config[f"{key}_token"] = token
        (dest / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2) + "\n")
        return True
    raise ValueError(
        f"tokenizer must be a folder path, a tokenizer.json path, a tokenizers.Tokenizer, a transformers "
        f"tokenizer or None, "
        f"got {type(tokenizer).__name__}"
    )


def state_dict_to_save(model: torch.nn.Module, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """The model's tensors under their HF names, contiguous on CPU; lm_head left out when tied."""
    tensors = {}
    for name, t in model.state_dict().items():
        if name == "lm_head.weight" and model.config.tie_word_embeddings:
            continue
        t = t.detach()
        if dtype is not None:
            t = t.to(dtype)
        tensors[name] = t.to("cpu").contiguous()
    return tensors


def write_safetensors(tensors: dict[str, torch.Tensor], file: Path) -> None:
    from safetensors.torch import save_file

    save_file(tensors, str(file), metadata={"format": "pt"})
    os.chmod(file, 0o644)  # safetensors writes owner-only; a checkpoint is an ordinary shareable file


# --------------------------------------------------------------------------- save / load


def save_checkpoint(
    model: torch.nn.Module, path: str | Path, tokenizer: Any = None, extra: dict[str, Any] | None = None
) -> Path:
    """Write ``model`` as a bitk checkpoint folder at ``path`` (atomically); returns the path.

    ``tokenizer``: see `write_tokenizer`; None copies the tokenizer the model was loaded with
    (``model.tokenizer_dir``), if any. ``extra``: more JSON-serialisable top-level keys of
    bitk.json (not "format", "format_version" or "model"). Parameters must be float32 or bfloat16.
    """
    if not isinstance(getattr(model, "config", None), ModelConfig):
        raise ValueError(f"save_checkpoint takes a bitk CausalLM, got {type(model).__name__}")
    extra = dict(extra or {})
    clash = [k for k in _RESERVED_KEYS if k in extra]
    if clash:
        raise ValueError(f"extra must not set the reserved bitk.json key(s) {', '.join(clash)}")
    tensors = state_dict_to_save(model)
    bad = sorted({str(t.dtype) for t in tensors.values() if t.dtype not in SAVE_DTYPES})
    if bad:
        raise ValueError(
            f"a bitk checkpoint stores float32 or bfloat16 tensors, the model has {', '.join(bad)}: "
            "convert it first (model.float() or model.bfloat16())"
        )
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "model": model.config.to_dict(), **extra}
    try:
        meta_text = json.dumps(meta, indent=2) + "\n"
    except TypeError as e:
        raise ValueError(f"extra must be JSON-serialisable: {e}") from e
    if tokenizer is None:
        tokenizer = model.tokenizer_dir
    with atomic_directory(path, owned=is_checkpoint, what="bitk checkpoint") as tmp:
        write_safetensors(tensors, tmp / WEIGHTS_FILE)
        write_tokenizer(tokenizer, tmp, model.config)
        (tmp / META_FILE).write_text(meta_text)  # last: a folder with bitk.json is complete
    return Path(path).expanduser()


def read_checkpoint_meta(path: str | Path) -> dict[str, Any]:
    """The parsed bitk.json of a checkpoint, its format checked (ValueError if not a bitk checkpoint)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise ValueError(f"checkpoint {path} does not exist")
    file = path / META_FILE
    if not file.is_file():
        raise ValueError(f"{path} is not a bitk checkpoint: it has no {META_FILE}")
    try:
        meta = json.loads(file.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{file} is not valid JSON: {e}") from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(
            f"{file} does not describe a bitk checkpoint (format {meta.get('format')!r}, expected 'bitk')"
            if isinstance(meta, dict)
            else f"{file} must hold a JSON object"
        )
    version = meta.get("format_version")
    if not isinstance(version, int) or not 1 <= version <= FORMAT_VERSION:
        raise ValueError(
            f"{file}: format_version {version!r} is not one this bitk reads (1..{FORMAT_VERSION}); upgrade bitk"
        )
    if "model" not in meta:
        raise ValueError(f"{file} has no 'model' (the ModelConfig fields)")
    _check_against_weights(meta["model"], path, file)
    return meta


def _check_against_weights(model: Any, path: Path, file: Path) -> None:
    """The config of bitk.json is valid and its layer count is what model.safetensors holds.

    Read from the safetensors header (no tensor data) before anything builds the model, so a
    bitk.json claiming 10**9 layers is refused here instead of building them.
    """
    from .sources import check_layer_count, read_safetensors

    try:
        config = ModelConfig.from_dict(model)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{file}: 'model': {e}") from None
    weights = path / WEIGHTS_FILE
    if weights.is_file():
        check_layer_count(config, read_safetensors(weights), f"checkpoint {path}")


def check_tensors(expected: dict[str, tuple[int, ...]], found: dict[str, tuple[int, ...]], where: str) -> None:
    """ValueError naming every missing, unexpected and mis-shaped tensor of ``found``."""
    problems = []
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    shaped = sorted(n for n in set(expected) & set(found) if tuple(expected[n]) != tuple(found[n]))
    if missing:
        problems.append(f"missing tensor(s) {_names(missing)}")
    if unexpected:
        problems.append(f"unexpected tensor(s) {_names(unexpected)}")
    if shaped:
        problems.append(
            "mis-shaped tensor(s) " + _names([f"{n} {tuple(found[n])} (expected {tuple(expected[n])})" for n in shaped])
        )
    if problems:
        raise ValueError(f"{where}: " + "; ".join(problems))


def _names(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def expected_shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    """Names and shapes a checkpoint of ``model`` holds (lm_head left out when tied)."""
    return {
        name: tuple(t.shape)
        for name, t in model.state_dict().items()
        if not (name == "lm_head.weight" and model.config.tie_word_embeddings)
    }


def assign_tensors(model: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Make ``tensors`` (HF names, checked) the parameters of a meta-device ``model``; re-tie the head."""
    missing, unexpected = model.load_state_dict(tensors, strict=False, assign=True)
    missing = [n for n in missing if not (n == "lm_head.weight" and model.config.tie_word_embeddings)]
    assert not missing and not unexpected, (missing, unexpected)
    if model.config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    for name, p in model.named_parameters():
        assert p.device.type != "meta", name
