"""The trainer's last output: the final checkpoint packed as a GGUF file (`bitk.gguf.pack`).

Training is done when this runs, so a refusal (a model no GGUF type expresses) or a failure to
write the file (disk full, a folder in the way) is reported with the checkpoint and the command
that retries it, never raised: the run still ends with exit status 0. The pack's notes (padding, fallbacks, the runtime
that reads the file) are printed as `bitk-pack` prints them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["export_gguf", "runtime_of"]


def runtime_of(arch: str, qtype: str) -> str:
    """The runtime that runs a file of `arch` with projections of ggml type `qtype`."""
    from bitk.gguf.constants import ACTIVATION_BY_ARCH

    if qtype == "I2_S":
        return "bitnet.cpp"
    if ACTIVATION_BY_ARCH.get(arch) == "relu2":  # upstream llama.cpp has no ReLU^2 graph
        return "bitnet.cpp's llama.cpp"
    return "llama.cpp"


def export_gguf(checkpoint: Path, path: Path, qtype: str, say: Any) -> tuple[Any, str | None]:
    """Pack the final checkpoint: (PackResult, None), or (None, why) when refused or the file cannot
    be written (reported, not raised)."""
    from bitk.gguf import pack

    try:
        result = pack(checkpoint, path, qtype)
    except ValueError as e:
        say(
            f"GGUF export skipped: {e}\n(retry with: bitk-pack pack {checkpoint} -o {path} --type {qtype} and the "
            "options the message names)",
            flush=True,
        )
        return None, str(e)
    except OSError as e:
        why = f"cannot write {e.filename or path}: {_reason(e)}"
        say(
            f"GGUF export failed: {why}; training finished and its checkpoint {checkpoint} is intact\n"
            f"(retry with: bitk-pack pack {checkpoint} -o {path} --type {qtype})",
            flush=True,
        )
        return None, why
    say(f"wrote {path} (arch {result.arch}, {result.qtype}, {result.file_bytes / 2**20:,.1f} MiB)", flush=True)
    for line in [*(f"note: {n}" for n in result.notes), *(f"changed: {c}" for c in result.changes)]:
        say(line, flush=True)
    return result, None


def _reason(e: OSError) -> str:
    text = e.strerror or str(e)
    return text[:1].lower() + text[1:]
