"""``python -m bitk.train [key=value ...]``: parse, train, exit (docs/train.md).

Exit status: 0 when done or stopped by SIGTERM (after saving a checkpoint), 130 when stopped by
SIGINT (also after saving), 1 when the run stopped on a fault (repeated NaN/Inf losses, a failed
save; the message names the last good checkpoint), 2 for a bad
configuration or input (nothing was trained).
"""

from __future__ import annotations

import sys
import traceback

from .config import parse_args
from .help import format_help


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if any(a in ("-h", "--help", "help") for a in argv):
        print(format_help(), end="")
        return 0
    try:
        cfg = parse_args(argv)
    except ValueError as e:
        print(f"bitk.train: error: {e}\n(python -m bitk.train --help lists every key)", file=sys.stderr)
        return 2
    from .loop import TrainingError, train  # torch loads only once the config is good

    try:
        summary = train(cfg)
    except ValueError as e:
        print(f"bitk.train: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # a second Ctrl-C: stopped at once (the last checkpoint is intact)
        print("bitk.train: interrupted", file=sys.stderr)
        return 130
    except TrainingError as e:
        if e.__cause__ is not None:  # an unexpected fault: its traceback helps
            traceback.print_exception(e.__cause__)
        print(f"bitk.train: {e}", file=sys.stderr)
        return 1
    return 130 if summary["stopped"] == "SIGINT" else 0


if __name__ == "__main__":
    sys.exit(main())
