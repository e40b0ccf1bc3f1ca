"""`bitk-pack` (= `python -m bitk.gguf`): pack, inspect and verify BitNet GGUF files.

    bitk-pack pack SRC -o OUT.gguf --type i2_s     # bitk checkpoint or HF folder -> GGUF
    bitk-pack inspect OUT.gguf                     # metadata + tensor table (I2_S included)
    bitk-pack verify OUT.gguf --against SRC        # decode everything, compare with the source

No torch is imported on these paths (numpy, safetensors, gguf, tokenizers, rich and bitk's
codecs only), so the packer starts fast and runs where the training stack is not installed.
Bad input ends with `bitk-pack: error: ...` and a non-zero status, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from bitk._cli import add_debug_argument, run_cli
from bitk.formats.constants import I2S_DEFAULT_LAYOUT, I2S_LAYOUTS
from bitk.gguf.constants import ARCH_CHOICES, EMBEDDING_TYPE_CHOICES, QTYPE_CHOICES
from bitk.gguf.plan import PAD_CHOICES

PROG = "bitk-pack"
# a progress bar only where a pack takes a while
PROGRESS_MIN_TENSORS = 16
PROGRESS_MIN_PARAMS = 50_000_000


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Pack ternary (BitNet b1.58) models into GGUF files for "
        "bitnet.cpp and llama.cpp, and inspect or verify GGUF files.",
    )
    add_debug_argument(p)
    sub = p.add_subparsers(dest="command", required=True, metavar="{pack,inspect,verify}")

    pk = sub.add_parser("pack", help="pack a bitk checkpoint or Hugging Face BitNet folder into a GGUF file")
    pk.add_argument("src", metavar="SRC", help="bitk checkpoint folder (bitk.json) or Hugging Face model folder")
    pk.add_argument("-o", "--output", required=True, metavar="OUT.gguf", help="output file (written atomically)")
    pk.add_argument(
        "--type",
        dest="qtype",
        default="i2_s",
        type=str.lower,
        choices=list(QTYPE_CHOICES),
        help="type of the seven projections (default i2_s: bitnet.cpp; tq1_0/tq2_0: upstream llama.cpp)",
    )
    pk.add_argument(
        "--arch",
        default="auto",
        choices=list(ARCH_CHOICES) + ["bitnet-25"],
        help="GGUF architecture; auto picks it by the model (BitNet: relu2 -> bitnet-b1.58, silu -> bitnet; "
        "Qwen3 without sub-norms -> qwen3)",
    )
    pk.add_argument(
        "--pad",
        default="auto",
        choices=list(PAD_CHOICES),
        help="auto (default): zero-pad widths the type's blocks do not divide (SmolLM2's 576) when that makes "
        "every projection ternary, with the same logits; none: those projections are written as F16",
    )
    pk.add_argument(
        "--i2s-layout",
        default=I2S_DEFAULT_LAYOUT,
        choices=list(I2S_LAYOUTS),
        help="I2_S byte layout of the target bitnet.cpp build (default x86: the released builds)",
    )
    pk.add_argument(
        "--embedding-type",
        default="f16",
        type=str.lower,
        choices=list(EMBEDDING_TYPE_CHOICES),
        help="type of token_embd (default f16)",
    )
    pk.add_argument("--tokenizer", metavar="DIR", help="folder with tokenizer.json to use instead of SRC's")
    pk.add_argument(
        "--pre",
        "--tokenizer-pre",
        dest="tokenizer_pre",
        metavar="NAME",
        help="llama.cpp pre-tokenizer type (gpt-2, llama-bpe, smollm, qwen2, ...) instead of detecting it",
    )
    pk.add_argument(
        "--allow-untied-head",
        action="store_true",
        help="drop an lm_head that differs from the embedding (the GGUF uses the embedding as head)",
    )
    pk.add_argument("--allow-drop-bias", action="store_true", help="drop attention biases")
    pk.add_argument("--name", help="general.name (default: the source folder's name)")
    pk.add_argument("-q", "--quiet", action="store_true", help="no progress bar and no summary table")
    add_debug_argument(pk, suppress_default=True)

    ins = sub.add_parser("inspect", help="print the metadata and tensor table of any GGUF file")
    ins.add_argument("file", metavar="FILE")
    add_debug_argument(ins, suppress_default=True)

    ver = sub.add_parser("verify", help="decode and check every tensor (and compare with the source)")
    ver.add_argument("file", metavar="FILE")
    ver.add_argument("--against", metavar="SRC", help="the model folder the file was packed from")
    ver.add_argument("-q", "--quiet", action="store_true", help="list failures only")
    add_debug_argument(ver, suppress_default=True)
    return p


class _Progress:
    """A rich progress bar over the tensors, shown only on models big enough to wait for."""

    def __init__(self, enabled: bool, what: str) -> None:
        self.enabled = enabled
        self.what = what
        self.bar: Any = None
        self.task: Any = None

    def start(self, n_tensors: int, n_params: int) -> None:
        if not self.enabled or (n_tensors <= PROGRESS_MIN_TENSORS and n_params <= PROGRESS_MIN_PARAMS):
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        from bitk.gguf.report import console

        con = console(stderr=True)
        if not con.is_terminal:  # a log file gets the summary, not bar redraws
            return
        self.bar = Progress(
            TextColumn(self.what),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.description}"),
            console=con,
            transient=True,
        )
        self.bar.start()
        self.task = self.bar.add_task("", total=n_tensors)

    def step(self, name: str) -> None:
        if self.bar is not None:
            from rich.markup import escape

            self.bar.update(self.task, advance=1, description=escape(name))  # TextColumn parses markup

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


def _pack(args: argparse.Namespace) -> int:
    from bitk.gguf.report import console, print_pack
    from bitk.gguf.writer import pack

    progress = _Progress(not args.quiet, "packing")
    try:
        res = pack(
            args.src,
            args.output,
            args.qtype,
            arch=args.arch,
            i2s_layout=args.i2s_layout,
            embedding_type=args.embedding_type,
            tokenizer=args.tokenizer,
            tokenizer_pre=args.tokenizer_pre,
            allow_untied_head=args.allow_untied_head,
            pad=args.pad,
            allow_drop_bias=args.allow_drop_bias,
            name=args.name,
            on_plan=lambda plan: progress.start(len(plan.tensors), plan.n_params),
            on_tensor=lambda i, n, row: progress.step(row.name),
        )
    finally:
        progress.stop()
    con = console()
    if args.quiet:
        con.print(f"wrote {res.path}", soft_wrap=True)
        for line in [*(f"note: {n}" for n in res.notes), *(f"changed: {c}" for c in res.changes)]:
            con.print(line, soft_wrap=True)
    else:
        print_pack(res, con)
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from bitk.gguf.inspect import describe
    from bitk.gguf.report import console, print_inspect

    print_inspect(describe(args.file), console())
    return 0


def _verify(args: argparse.Namespace) -> int:
    from bitk.gguf.report import console, print_verify
    from bitk.gguf.verifier import verify

    progress = _Progress(not args.quiet, "verifying")
    started = False

    def step(i: int, n: int, check: Any) -> None:
        nonlocal started
        if not started:
            progress.start(n, 0)
            started = True
        progress.step(check.what)

    try:
        report = verify(args.file, against=args.against, on_tensor=step)
    finally:
        progress.stop()
    print_verify(report, console(), failures_only=args.quiet)
    return 0 if report.ok else 1


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 ok, 1 error or failed verification, 2 usage, 130 Ctrl-C,
    143 SIGTERM). Errors are one line on stderr; --debug (or BITK_DEBUG=1) shows the traceback."""
    command: list[str] = []

    def run(args_list: list[str]) -> int:
        args = _parser().parse_args(args_list)
        command.append(args.command)
        return {"pack": _pack, "inspect": _inspect, "verify": _verify}[args.command](args)

    return run_cli(
        run,
        PROG,
        argv,
        status=1,
        stopped_note=lambda: "; no output was written" if command == ["pack"] else "",
    )


if __name__ == "__main__":
    sys.exit(main())
