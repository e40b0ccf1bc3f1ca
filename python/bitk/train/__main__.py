"""``python -m bitk.train [--debug] [key=value ...]``: parse, train, exit (docs/train.md).

Exit status: 0 when done (a GGUF export that failed is a warning: training finished and the
checkpoint is there) or stopped by SIGTERM (after saving a checkpoint), 130 when stopped by SIGINT
(also after saving), 1 when the run stopped on a fault (repeated NaN/Inf losses, a failed save, a
full disk; the message names the last good checkpoint), 2 when refused before training (a bad
configuration or input, an output_dir that cannot be written or that another run holds).
Errors are one line on stderr (`bitk._cli.run_cli`); ``--debug`` or BITK_DEBUG=1 shows the traceback.
"""

from __future__ import annotations

import sys
import traceback

from bitk._cli import debug_requested, run_cli

from .config import parse_args
from .help import format_help

PROG = "bitk.train"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = debug_requested(argv)
    argv = [a for a in argv if a != "--debug"]
    # ValueError / OSError before training (config, data, output_dir): one line, exit 2
    return run_cli(lambda args: _main(args, debug), PROG, argv, status=2, debug=debug)


def _main(argv: list[str], debug: bool) -> int:
    if any(a in ("-h", "--help", "help") for a in argv):
        print(format_help(), end="")
        return 0
    try:
        cfg = parse_args(argv)
    except ValueError as e:
        if debug:
            raise
        print(f"{PROG}: error: {e}\n(python -m bitk.train --help lists every key)", file=sys.stderr)
        return 2
    from .loop import TrainingError, train  # torch loads only once the config is good

    try:
        summary = train(cfg)
    except TrainingError as e:  # training was under way: the message names the last good checkpoint
        if debug:
            raise
        cause = e.__cause__
        if cause is not None and not isinstance(cause, (ValueError, OSError)):  # a bug or kernel fault
            traceback.print_exception(cause)
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 1
    if summary.get("gguf_error") and summary.get("gguf") is None and summary["stopped"] is None:
        print(
            f"{PROG}: warning: training finished and its checkpoint {summary['checkpoint']} is complete, "
            f"but no GGUF was written: {' '.join(str(summary['gguf_error']).split())}",
            file=sys.stderr,
        )
    return 130 if summary["stopped"] == "SIGINT" else 0


if __name__ == "__main__":
    sys.exit(main())
