"""`python -m bitk.generate SOURCE --prompt TEXT`: text from a checkpoint, Hugging Face model or GGUF file.

Cheap checks first (the arguments, the --json folder, that the source exists), so a wrong
argument costs no model load and prints one line (exit status 2, as argparse); then the model
loads (`bitk.generate.loading.load_for_inference`, in the numerics asked for) and
`bitk.generate.generate` streams the text to stdout as it is produced. A summary line (tokens,
tokens/s, numerics) goes to stderr; --json writes the whole record. Usage: docs/generate.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bitk._cli import add_debug_argument, check_output_file, run_cli
from bitk.nn import NUMERICS

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bitk.generate",
        description="Generate text with a bitk checkpoint, a Hugging Face model or a GGUF file (KV-cached decoding).",
    )
    p.add_argument("source", help="bitk checkpoint folder, Hugging Face model folder or hub id, or .gguf file")
    p.add_argument("--prompt", required=True, help="the text to continue (with --chat: the user's message)")
    p.add_argument("--max-new-tokens", type=int, default=128, help="tokens to generate at most (default 128)")
    p.add_argument("--greedy", action="store_true", help="always take the most likely token (no sampling)")
    p.add_argument("--temperature", type=float, default=0.8, help="sampling temperature; 0 = greedy (default 0.8)")
    p.add_argument("--top-k", type=int, default=40, help="sample among the K most likely tokens; 0 = all (default 40)")
    p.add_argument(
        "--top-p", type=float, default=0.95, help="sample among the most likely tokens of total mass P (default 0.95)"
    )
    p.add_argument("--seed", type=int, default=None, help="sampling seed (default: a random one, reported)")
    p.add_argument(
        "--stop", nargs="+", action="extend", default=[], metavar="STR", help="stop when the text contains STR"
    )
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the tokenizer's chat template")
    p.add_argument(
        "--numerics",
        choices=NUMERICS,
        default=None,
        help="BitLinear numerics: train (as trained; the default for a checkpoint), i2s (as bitnet.cpp runs "
        "the I2_S GGUF bitk-pack writes), tq (as llama.cpp runs TQ1_0/TQ2_0), f16, float; a .gguf file runs "
        "as its runtime computes it unless this is given",
    )
    p.add_argument(
        "--pad",
        choices=("auto", "none"),
        default="auto",
        help="with --numerics i2s/tq: the GGUF's padding, as bitk-pack --pad (default auto)",
    )
    p.add_argument(
        "--tokenizer", default=None, help="tokenizer.json or its folder, or 'default' (bitk's); default: the source's"
    )
    p.add_argument(
        "--full-precision", action="store_true", help="load a full-precision model as it is (no ternary conversion)"
    )
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--no-cache", action="store_true", help="recompute the whole prefix at every step (slow)")
    p.add_argument("--json", metavar="PATH", default=None, help="write the record as JSON to PATH ('-': stdout)")
    add_debug_argument(p)
    return p


def check_args(args: argparse.Namespace) -> None:
    """ValueError for arguments that are wrong whatever the model: checked before anything loads."""
    from bitk.generate.loading import check_source

    if not args.prompt:
        raise ValueError("--prompt is empty")
    if args.max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be positive, got {args.max_new_tokens}")
    if not args.temperature >= 0:
        raise ValueError(f"--temperature must be >= 0 (0: greedy), got {args.temperature}")
    if args.top_k < 0:
        raise ValueError(f"--top-k must be >= 0 (0: no top-k filter), got {args.top_k}")
    if not 0 < args.top_p <= 1:
        raise ValueError(f"--top-p must be in (0, 1], got {args.top_p}")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be positive, got {args.threads}")
    if any(not s for s in args.stop):
        raise ValueError("--stop strings must not be empty")
    if args.json not in (None, "-"):
        check_output_file("--json", args.json)
    check_source(args.source)


def _rate(tokens: int, seconds: float) -> float | None:
    return tokens / seconds if seconds > 0 and tokens > 0 else None


def _record(args: argparse.Namespace, loaded: Any, out: Any, threads: int) -> dict[str, Any]:
    from bitk.generate.loading import is_gguf

    seconds = out.prefill_seconds + out.decode_seconds
    return {
        "source": args.source,
        "prompt_ids": out.prompt_ids,
        "ids": out.ids,
        "text": out.text,
        "finish_reason": out.finish_reason,
        "numerics": args.numerics or ("file" if is_gguf(args.source) else "train"),
        "numerics_detail": loaded.numerics,
        "greedy": args.greedy or args.temperature == 0,
        "temperature": args.temperature,
        "top_k": args.top_k or None,
        "top_p": args.top_p,
        "seed": out.seed,
        "chat": args.chat,
        "stop": args.stop,
        "max_new_tokens": args.max_new_tokens,
        "kv_cache": not args.no_cache,
        "prompt_tokens": len(out.prompt_ids),
        "tokens": len(out.ids),
        "prefill_seconds": out.prefill_seconds,
        "decode_seconds": out.decode_seconds,
        "tokens_per_s": _rate(len(out.ids), seconds),
        "prompt_tokens_per_s": _rate(len(out.prompt_ids), out.prefill_seconds),
        "decode_tokens_per_s": _rate(len(out.ids) - 1 + (out.finish_reason == "eos"), out.decode_seconds),
        "torch_threads": threads,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns 0 when done, else exits like argparse (SystemExit): 2 for bad input or a
    file error (one line on stderr), 130 Ctrl-C, 143 SIGTERM. --debug (or BITK_DEBUG=1) shows the
    traceback instead."""
    streamed: list[Any] = []  # the stream a line of text is open on

    def end_line() -> None:  # the error goes on its own line after streamed text
        for out in streamed:
            out.write("\n")

    status = run_cli(lambda args: _main(args, streamed), build_parser().prog, argv, status=2, on_error=end_line)
    if status:
        raise SystemExit(status)  # as argparse exits on bad usage
    return 0


def _main(argv: list[str], streamed_to: list[Any]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # With JSON on stdout, the streamed text goes to stderr so stdout stays parseable.
    text_out = sys.stderr if args.json == "-" else sys.stdout

    def stream(piece: str) -> None:
        if not streamed_to:
            streamed_to.append(text_out)
        text_out.write(piece)
        text_out.flush()

    check_args(args)
    import torch

    from bitk.generate.api import generate
    from bitk.generate.loading import load_for_inference
    from bitk.nn import cpu

    cpu.check_environment()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    loaded = load_for_inference(
        args.source,
        numerics=args.numerics,
        pad=args.pad,
        full_precision=args.full_precision,
        tokenizer=args.tokenizer,
    )
    context = loaded.model.config.max_position_embeddings
    out = generate(
        loaded.model,
        loaded.tokenizer,
        args.prompt,
        max_new_tokens=args.max_new_tokens,
        greedy=args.greedy,
        temperature=args.temperature,
        top_k=args.top_k or None,
        top_p=args.top_p,
        seed=args.seed,
        stop=args.stop,
        chat=args.chat,
        tokenizer_dir=loaded.tokenizer_dir,
        stream=stream,
        use_cache=not args.no_cache,
    )
    text_out.write("\n")
    text_out.flush()
    streamed_to.clear()
    record = _record(args, loaded, out, torch.get_num_threads())
    capped = len(out.prompt_ids) + args.max_new_tokens > context
    rate = record["tokens_per_s"]
    summary = (
        f"{len(out.ids)} tokens ({out.finish_reason}) in {out.prefill_seconds + out.decode_seconds:.2f} s, "
        f"{rate:.1f} tokens/s"
        if rate is not None
        else f"{len(out.ids)} tokens ({out.finish_reason})"
    )
    summary += f"; prompt {len(out.prompt_ids)} tokens; numerics {loaded.numerics}"
    if out.seed is not None:
        summary += f"; seed {out.seed}"
    if capped:
        summary += f"; new tokens capped at {context - len(out.prompt_ids)} by the context of {context}"
    print(summary, file=sys.stderr)
    if args.json == "-":
        print(json.dumps(record, indent=2, ensure_ascii=False))
    elif args.json is not None:
        Path(args.json).expanduser().write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
