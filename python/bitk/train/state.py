"""Full-state training checkpoints: atomic folders, a `latest` pointer, keep-last-K, resume.

    output_dir/checkpoints/
      step-000300/              a bitk checkpoint (bitk-pack and bitk.models.load_model read it)
        bitk.json               + "train_config" (the resolved Config), "step", "tokens", "eval"
        model.safetensors
        tokenizer.json ...
        trainer_state.pt        optimizer, clipping, data position, RNG states, bad-step counters
      latest                    "step-000300": the newest complete checkpoint

A checkpoint is written into a hidden temporary folder that is renamed into place only once every
file is written (bitk.models.checkpoint.atomic_directory), then `latest` is replaced atomically
(written aside, then os.replace). A kill at any moment therefore leaves the previous checkpoint and
`latest` as they were, plus at most a hidden temporary folder that the next save removes.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bitk.models.checkpoint import (
    META_FILE,
    WEIGHTS_FILE,
    assign_tensors,
    atomic_directory,
    is_checkpoint,
    read_checkpoint_meta,
    save_checkpoint,
)

__all__ = [
    "seed_everything",
    "CHECKPOINTS_DIR",
    "LATEST_FILE",
    "STATE_FILE",
    "checkpoint_name",
    "checkpoint_step",
    "is_complete",
    "list_checkpoints",
    "latest_checkpoint",
    "set_latest",
    "find_checkpoint",
    "save_state",
    "load_state",
    "remove_checkpoint",
    "rng_state",
    "set_rng_state",
]

CHECKPOINTS_DIR = "checkpoints"
LATEST_FILE = "latest"
STATE_FILE = "trainer_state.pt"
STATE_VERSION = 1
_NAME = re.compile(r"step-(\d{6,})")


def checkpoint_name(step: int) -> str:
    return f"step-{step:06d}"


def checkpoint_step(path: str | Path) -> int | None:
    """The step of a folder named step-NNNNNN, else None."""
    m = _NAME.fullmatch(Path(path).name)
    return int(m.group(1)) if m else None


def is_complete(path: str | Path) -> bool:
    """A training checkpoint with every file in place (bitk.json, weights, trainer state)."""
    path = Path(path)
    return all((path / name).is_file() for name in (META_FILE, WEIGHTS_FILE, STATE_FILE))


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints in output_dir/checkpoints, oldest first."""
    root = Path(output_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    found = [(checkpoint_step(p), p) for p in root.iterdir() if p.is_dir() and checkpoint_step(p) is not None]
    return [p for _, p in sorted(found) if is_complete(p)]


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The checkpoint `latest` names if complete, else the newest complete one, else None."""
    root = Path(output_dir) / CHECKPOINTS_DIR
    pointer = root / LATEST_FILE
    if pointer.is_file():
        name = pointer.read_text().strip()
        if _NAME.fullmatch(name) and is_complete(root / name):
            return root / name
    found = list_checkpoints(output_dir)
    return found[-1] if found else None


def set_latest(output_dir: str | Path, name: str) -> None:
    """Point output_dir's `latest` at checkpoint ``name`` (atomically)."""
    _write_latest(Path(output_dir) / CHECKPOINTS_DIR, name)


def find_checkpoint(resume: str, output_dir: str | Path) -> Path | None:
    """What `Config.resume` points at: "none" -> None, "auto" -> `latest_checkpoint` (or None), a path -> it.

    A path must be a complete training checkpoint (ValueError otherwise); a bitk model checkpoint
    without trainer state is a starting model (model=PATH), not a run to resume.
    """
    if resume == "none":
        return None
    if resume == "auto":
        return latest_checkpoint(output_dir)
    path = Path(resume).expanduser()
    if path.is_dir() and not is_complete(path) and (path / CHECKPOINTS_DIR).is_dir():
        found = latest_checkpoint(path)  # an output_dir was given: its latest checkpoint
        if found is not None:
            return found
    if not is_complete(path):
        what = "a bitk model checkpoint" if is_checkpoint(path) else "not a training checkpoint"
        raise ValueError(
            f"resume={resume}: {path} is {what} (it needs {META_FILE}, {WEIGHTS_FILE} and "
            f"{STATE_FILE}); to start from a model's weights use model={resume} resume=none"
        )
    return path


# --------------------------------------------------------------------------- RNG


def rng_state() -> dict[str, Any]:
    """The RNG states of python, numpy, torch (CPU) and CUDA, as plain values and tensors."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {
            "name": name,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state(
        (n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        states = state["cuda"]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)


# --------------------------------------------------------------------------- save / load


def save_state(
    output_dir: str | Path,
    step: int,
    model: torch.nn.Module,
    model_sd: dict[str, torch.Tensor],
    trainer_state: dict[str, Any],
    *,
    tokenizer: Any = None,
    meta: dict[str, Any] | None = None,
    keep_last: int = 0,
) -> Path:
    """Write checkpoint step-NNNNNN atomically, point `latest` at it, keep the newest ``keep_last``.

    ``model``: the bitk CausalLM being trained (its config; its tensors unless sharded);
    ``model_sd``: its full, unsharded state dict (`distributed.state_dict_for_save`), which is what
    is written. ``trainer_state``: everything else needed to resume (torch.save-able with
    weights_only loading: tensors, numbers, strings, lists, dicts). ``meta``: extra bitk.json keys.
    Returns the checkpoint folder.
    """
    root = Path(output_dir) / CHECKPOINTS_DIR
    root.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(root)
    path = root / checkpoint_name(step)
    to_save = _model_from_state_dict(model, model_sd)
    state = {"version": STATE_VERSION, **trainer_state}
    with atomic_directory(path, owned=is_checkpoint, what="training checkpoint") as tmp:
        save_checkpoint(to_save, tmp, tokenizer=tokenizer, extra=meta)
        torch.save(state, tmp / STATE_FILE)
        _fsync_files(tmp)
    _fsync_dir(root)
    _write_latest(root, path.name)
    if keep_last > 0:
        for old in list_checkpoints(output_dir)[:-keep_last]:
            if old != path:
                remove_checkpoint(old)
    return path


def remove_checkpoint(path: str | Path) -> None:
    """Delete a checkpoint folder so that no kill leaves a half-deleted ``step-N`` behind: it is
    renamed to a hidden ``.step-N.deleting-*`` name first (one atomic rename), then removed; the
    next save sweeps away what a kill left of it."""
    path = Path(path)
    doomed = path.with_name(f".{path.name}.deleting-{uuid.uuid4().hex[:8]}")
    try:
        os.rename(path, doomed)
    except FileNotFoundError:
        return
    shutil.rmtree(doomed, ignore_errors=True)


def load_state(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, Any]]:
    """(bitk.json meta, full model state dict, trainer state) of a complete checkpoint, on CPU."""
    from safetensors.torch import load_file

    path = Path(path)
    if not is_complete(path):
        raise ValueError(f"{path} is not a complete training checkpoint")
    meta = read_checkpoint_meta(path)
    try:
        model_sd = load_file(str(path / WEIGHTS_FILE))
    except Exception as e:  # safetensors' own error type: a truncated or overwritten file
        raise corrupt_checkpoint(path / WEIGHTS_FILE, e) from e
    if meta["model"].get("tie_word_embeddings") and "lm_head.weight" not in model_sd:
        model_sd["lm_head.weight"] = model_sd["model.embed_tokens.weight"]
    try:
        state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError, torch's zip reader's RuntimeError, EOFError ...
        raise corrupt_checkpoint(path / STATE_FILE, e) from e
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
        version = state.get("version") if isinstance(state, dict) else None
        raise ValueError(f"{path / STATE_FILE}: trainer state version {version!r}, this bitk reads {STATE_VERSION}")
    return meta, model_sd, state


def corrupt_checkpoint(file: Path, e: BaseException) -> ValueError:
    """The one-line error of a checkpoint file that cannot be read back."""
    if isinstance(e, OSError) and not isinstance(e, FileNotFoundError) and e.strerror:
        detail = e.strerror
    else:
        lines = str(e).strip().splitlines()
        detail = f"{type(e).__name__}: {lines[0] if lines else 'unreadable'}"
    folder = file.parent
    return ValueError(
        f"{file} is corrupt or unreadable ({detail}); resume from an earlier checkpoint with "
        f"resume={folder.parent}/step-NNNNNN, or move {folder.name} aside"
    )


def _model_from_state_dict(model: torch.nn.Module, model_sd: dict[str, torch.Tensor]) -> torch.nn.Module:
    """A CausalLM (sharing ``model_sd``'s tensors, no copy) with ``model``'s config and tokenizer folder."""
    from bitk.models import CausalLM

    with torch.device("meta"):
        out = CausalLM(model.config)
    tensors = {k: v for k, v in model_sd.items() if not (k == "lm_head.weight" and model.config.tie_word_embeddings)}
    assign_tensors(out, tensors)
    out.tokenizer_dir = getattr(model, "tokenizer_dir", None)
    return out


def _write_latest(root: Path, name: str) -> None:
    tmp = root / f".{LATEST_FILE}.tmp-{uuid.uuid4().hex[:8]}"
    with open(tmp, "w") as f:
        f.write(name + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, root / LATEST_FILE)
    _fsync_dir(root)


def _remove_leftovers(root: Path) -> None:
    """Hidden temporary folders and files of saves that were killed (names start with '.step-' or '.latest')."""
    for p in root.iterdir():
        if p.name.startswith((".step-", f".{LATEST_FILE}.tmp-")):
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)


def _fsync_files(folder: Path) -> None:
    """Flush the files to disk before the rename makes them the checkpoint (a power cut, not just a kill)."""
    for p in folder.iterdir():
        if p.is_file():
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on directories
    finally:
        os.close(fd)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # every device
