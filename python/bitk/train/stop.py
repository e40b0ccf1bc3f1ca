"""SIGTERM / SIGINT during training: finish the step, save a checkpoint, stop.

The handler only records the request; the loop checks it once per step (through
`bitk.train.distributed.step_outcome`, so every process of a distributed run agrees) and saves
before stopping. A second signal of the same kind acts as it would without the trainer.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Any

__all__ = ["StopSignal"]


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
        print(
            f"\n{self.requested} received: saving a checkpoint after this step, then stopping "
            "(send it again to stop at once)",
            flush=True,
        )

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            with contextlib.suppress(ValueError, TypeError):
                signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self._previous.clear()
