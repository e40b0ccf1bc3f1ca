"""The trainer's last output: the final checkpoint packed as a GGUF file (`bitk.gguf.pack`).

Training is done when this runs, so a refusal (a model no GGUF type expresses) is reported with
the command that retries it, never raised.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["export_gguf"]


def export_gguf(checkpoint: Path, path: Path, qtype: str, say: Any) -> tuple[Path | None, str | None]:
    """Pack the final checkpoint with bitk.gguf.pack; a refusal is reported, not raised (training is done)."""
    from bitk.gguf import pack

    try:
        pack(checkpoint, path, qtype)
    except ValueError as e:
        say(
            f"GGUF export skipped: {e}\n(retry with: bitk-pack pack {checkpoint} -o {path} --type {qtype} and the "
            "options the message names)",
            flush=True,
        )
        return None, str(e)
    say(f"wrote {path}", flush=True)
    return path, None
