"""Where a model comes from: a preset name, a Hugging Face hub id or a local folder, resolved to a folder.

    resolve_model("smollm2_135m")                 # the preset's hub repo, HuggingFaceTB/SmolLM2-135M
    resolve_model("Qwen/Qwen3-0.6B", revision="c1899de289a04d12100db370d81485cdf75e47ca")
    resolve_model("runs/tiny/checkpoints/latest") # a local bitk checkpoint or Hugging Face folder

Hub repos come through `huggingface_hub.snapshot_download` (its cache, HF_HOME, HF_TOKEN,
HF_HUB_OFFLINE all apply), fetching only what bitk reads: configs, safetensors weights and the
tokenizer files. A repo already in the cache is used without a download when the hub cannot be
reached. Every failure (not cached while offline, gated, unknown id or revision, no network) is a
`ValueError` with one message that names the repo, the cache folder and the ways out. Torch-free.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from .config import PRESET_REPOS, PRESETS

__all__ = ["ModelLocation", "hub_cache_dir", "is_hub_id", "cached_snapshot", "resolve_model", "download_command"]

# What bitk reads of a repo: weights, configs, tokenizer files (chat templates may live in a .jinja file).
ALLOW_PATTERNS = ["*.json", "*.safetensors", "tokenizer*", "*.jinja"]
TOKENIZER_PATTERNS = ["tokenizer*", "special_tokens_map.json", "*.jinja"]
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")


@dataclass(frozen=True)
class ModelLocation:
    """A resolved model source: the local folder, and the hub repo and commit it came from (if any)."""

    path: Path
    repo_id: str | None = None
    revision: str | None = None
    """The commit of the snapshot (the cache's folder name), for hub repos."""
    preset: str | None = None

    def describe(self) -> str:
        if self.repo_id is None:
            return str(self.path)
        commit = f"@{self.revision[:12]}" if self.revision else ""
        return f"{self.repo_id}{commit} ({self.path})"


def is_hub_id(text: str) -> bool:
    """True for what can be a hub repo id ("org/name"), not a path that merely does not exist."""
    return bool(_HUB_ID.fullmatch(text)) and ".." not in text and not text.endswith((".json", ".safetensors"))


def hub_cache_dir() -> Path:
    """The folder huggingface_hub caches repos in (HF_HUB_CACHE, else HF_HOME/hub)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def download_command(repo_id: str) -> str:
    """The shell command that puts ``repo_id`` into the cache (``hf`` since huggingface_hub 1.0)."""
    import huggingface_hub

    major = int(huggingface_hub.__version__.split(".")[0])
    return f"{'hf' if major >= 1 else 'huggingface-cli'} download {repo_id}"


def _offline() -> bool:
    from huggingface_hub import constants

    check = getattr(constants, "is_offline_mode", None)
    return bool(check()) if check is not None else bool(constants.HF_HUB_OFFLINE)


def cached_snapshot(repo_id: str, revision: str | None = None, patterns: list[str] | None = None) -> Path | None:
    """The cached snapshot folder of ``repo_id`` at ``revision`` (a branch, tag or commit), or None; no network."""
    from huggingface_hub import snapshot_download

    try:
        return Path(
            snapshot_download(
                repo_id, revision=revision, allow_patterns=patterns or ALLOW_PATTERNS, local_files_only=True
            )
        )
    except Exception:
        return None


def _hub_error(exc: Exception, repo_id: str, revision: str | None, what: str) -> ValueError:
    """One line that says what went wrong fetching ``repo_id`` and how to get past it."""
    from huggingface_hub import errors

    at = f" at revision {revision!r}" if revision else ""
    fixes = f"download it where the hub is reachable ({download_command(repo_id)}), or give a local folder: {what}=PATH"
    if isinstance(exc, errors.GatedRepoError):
        return ValueError(
            f"{repo_id} is a gated repository: accept its terms at https://huggingface.co/{repo_id} "
            "and log in (hf auth login) or set HF_TOKEN, or give a local folder: "
            f"{what}=PATH"
        )
    if isinstance(exc, errors.RevisionNotFoundError):
        return ValueError(
            f"{repo_id} has no revision {revision!r} (a branch, tag or commit of the repo); check {what}.revision"
        )
    if isinstance(exc, errors.RepositoryNotFoundError):
        return ValueError(
            f"{repo_id}: no such repository on the Hugging Face hub, or a private one your token "
            f"cannot read (set HF_TOKEN); or give a local folder: {what}=PATH"
        )
    if isinstance(exc, errors.LocalEntryNotFoundError) or (isinstance(exc, OSError) and _offline()):
        if _offline():
            reason = "offline mode is set (HF_HUB_OFFLINE)"
        else:
            cause = exc.__cause__ or exc.__context__
            reason = "the hub cannot be reached" + (f" ({_first_line(cause)})" if cause is not None else "")
        return ValueError(f"{repo_id}{at} is not in the Hugging Face cache ({hub_cache_dir()}) and {reason}: {fixes}")
    return ValueError(f"fetching {repo_id}{at} from the Hugging Face hub failed ({_first_line(exc)}); {fixes}")


def _first_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split("\n\n")[:1]).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _download(repo_id: str, revision: str | None, what: str) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=ALLOW_PATTERNS))
    except Exception as exc:
        raise _hub_error(exc, repo_id, revision, what) from exc


def _latest_checkpoint(path: Path) -> Path:
    """An output_dir of `bitk.train` stands for its latest checkpoint; any other path for itself."""
    pointer = path / "checkpoints" / "latest"
    if not (path / "bitk.json").is_file() and pointer.is_file():
        latest = path / "checkpoints" / pointer.read_text().strip()
        if (latest / "bitk.json").is_file():
            return latest
    return path


def resolve_model(source: str | os.PathLike, revision: str | None = None, *, what: str = "model") -> ModelLocation:
    """The folder of ``source``: a preset with a hub repo, a local folder, or a hub id (downloaded if needed).

    A local folder may be a model folder or the output_dir of a training run (its latest checkpoint).

    ``revision`` pins a branch, tag or commit of a hub repo (a local folder takes none). ``what``
    names the setting in messages (``model``, ``objectives.teacher``). ValueError for a name that is
    none of these, and for every hub failure (see `_hub_error`).
    """
    text = os.fspath(source)
    if not isinstance(text, str) or not text:
        raise ValueError(f"{what} must be a preset name, a Hugging Face hub id or a local path, got {source!r}")
    preset = None
    if text in PRESETS:
        if text not in PRESET_REPOS:
            scratch = f" (build it from scratch with {what}.pretrained=false)" if what == "model" else ""
            raise ValueError(
                f"{what}={text} is a preset without pretrained weights{scratch}; presets with a hub "
                f"repo: {', '.join(PRESET_REPOS)}"
            )
        preset, text = text, PRESET_REPOS[text]
    path = Path(text).expanduser()
    if preset is None and path.exists():
        if revision is not None:
            raise ValueError(f"{what}.revision={revision!r} applies to hub repos; {text} is a local folder")
        return ModelLocation(_latest_checkpoint(path))
    if not is_hub_id(text):
        presets = ", ".join(PRESETS)
        raise ValueError(
            f"{what}={text!r}: no such file or folder, and neither a preset ({presets}) nor a Hugging "
            "Face hub id (ORG/NAME)"
        )
    folder = _download(text, revision, what)
    return ModelLocation(folder, repo_id=text, revision=folder.name, preset=preset)
