"""The exception contract of bitk's command lines, in one place (torch-free).

Library calls raise `ValueError` for bad content and `OSError` for files; a CLI's `main` runs
under `run_cli`, which turns either into one line on stderr (`PROG: error: WHAT`) and an exit
status, Ctrl-C into 130 and SIGTERM into 143, with no traceback. `--debug` on the command line
(see `add_debug_argument`) or `BITK_DEBUG=1` in the environment shows the traceback instead.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any

__all__ = [
    "DEBUG_ENV",
    "Terminated",
    "add_debug_argument",
    "check_output_file",
    "debug_requested",
    "error_line",
    "run_cli",
]

DEBUG_ENV = "BITK_DEBUG"


class Terminated(BaseException):
    """Raised in the main thread on SIGTERM while `run_cli` runs, so `finally` blocks clean up.

    A BaseException, like KeyboardInterrupt: `except Exception` does not swallow it.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(f"terminated by signal {signum}")
        self.signum = signum


def add_debug_argument(parser: Any, *, suppress_default: bool = False) -> None:
    """Add `--debug` (show tracebacks) to an argparse parser.

    `suppress_default=True` for a subcommand's parser, so its absence does not reset a `--debug`
    given before the subcommand.
    """
    import argparse

    parser.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS if suppress_default else False,
        help=f"show the traceback of an error instead of one line (also: {DEBUG_ENV}=1)",
    )


def debug_requested(argv: Sequence[str] | None = None) -> bool:
    """True when `--debug` is among the options of `argv` (before any `--`) or BITK_DEBUG is set (not 0)."""
    if os.environ.get(DEBUG_ENV, "").strip() not in ("", "0"):
        return True
    args = sys.argv[1:] if argv is None else list(argv)
    for arg in args:
        if arg == "--":
            return False
        if arg == "--debug":
            return True
    return False


def error_line(exc: BaseException) -> str:
    """The one-line message of a ValueError or OSError: an OSError as `FILE: what` (both files if two)."""
    if isinstance(exc, OSError) and exc.strerror:
        what = exc.strerror[:1].lower() + exc.strerror[1:]
        if exc.filename is not None and exc.filename2 is not None:
            text = f"{exc.filename} -> {exc.filename2}: {what}"
        elif exc.filename is not None:
            text = f"{exc.filename}: {what}"
        else:
            text = what
    else:
        text = str(exc) or type(exc).__name__
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


def _on_sigterm(signum: int, frame: Any) -> None:
    raise Terminated(signum)


def run_cli(
    main: Callable[[list[str]], int | None],
    prog: str,
    argv: Sequence[str] | None = None,
    *,
    status: int = 1,
    debug: bool | None = None,
    on_error: Callable[[], None] | None = None,
    stopped_note: str | Callable[[], str] = "",
) -> int:
    """Run `main(argv)` under the CLI exception contract; returns the exit status.

    - `main` returns its status (None counts as 0); argparse's SystemExit passes through.
    - ValueError / OSError: `PROG: error: MESSAGE` on one line of stderr, returns `status`
      (1 by default; 2 for CLIs whose bad input exits like argparse).
    - KeyboardInterrupt: `PROG: interrupted`, 130. SIGTERM (handled while `main` runs, from the
      main thread only; a handler `main` installs itself wins): `PROG: terminated`, 143. Both
      unwind the stack first, so temporary files are removed by their `finally` blocks.
    - `debug` (None: `debug_requested(argv)`, i.e. `--debug` or BITK_DEBUG=1): the exception
      propagates with its traceback instead.
    - `on_error()` runs before the message is printed (e.g. to end a half-written line).
    - `stopped_note` (or its value when callable) ends the interrupted/terminated line, e.g.
      "; no output was written".

    Other exceptions are bugs and propagate with their traceback.
    """
    args = sys.argv[1:] if argv is None else list(argv)
    if debug is None:
        debug = debug_requested(args)
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        result = main(args)
        return 0 if result is None else int(result)
    except (ValueError, OSError, KeyboardInterrupt, Terminated) as exc:
        if debug:
            raise
        if on_error is not None:
            on_error()
        if isinstance(exc, (KeyboardInterrupt, Terminated)):
            note = stopped_note() if callable(stopped_note) else stopped_note
            if isinstance(exc, KeyboardInterrupt):
                print(f"{prog}: interrupted{note}", file=sys.stderr)
                return 130
            print(f"{prog}: terminated{note}", file=sys.stderr)
            return 128 + exc.signum
        print(f"{prog}: error: {error_line(exc)}", file=sys.stderr)
        return status
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def check_output_file(option: str, path: str | os.PathLike[str]) -> None:
    """ValueError unless `path` can be written as a file: its folder exists and is writable, and it is
    not itself a folder. Checked before the work whose result goes there."""
    from pathlib import Path

    target = Path(path).expanduser()
    folder = target.parent
    if target.is_dir():
        raise ValueError(f"{option} {path}: is a folder; give a file name")
    if not folder.is_dir():
        raise ValueError(f"{option} {path}: no such folder {folder}")
    if not os.access(folder, os.W_OK | os.X_OK) or (target.exists() and not os.access(target, os.W_OK)):
        raise ValueError(f"{option} {path}: permission denied (cannot write {target if target.exists() else folder})")
