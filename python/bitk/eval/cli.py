"""`python -m bitk.eval CHECKPOINT`: perplexity and tokens/s of a checkpoint (or GGUF file) on a text set,
or, with --tasks, lm-evaluation-harness tasks.

Cheap checks first (the checkpoint's config, the sequence length, the data, the tokenizer; with
--tasks, lm_eval's presence and the task names), so a wrong argument costs seconds and prints one
line (exit status 2, like argparse); then the data is tokenized and packed (`bitk.data`), the
model loads (`bitk.models.load_model`, or `bitk.gguf.load` for a .gguf file, in the numerics its
runtime computes) and `bitk.eval.evaluate` runs with a progress bar. --numerics i2s / tq on a
checkpoint evaluate each projection as the GGUF file `bitk-pack` writes computes it
(`bitk.generate.loading.set_model_numerics`: zero-padded widths exact, F16 fallbacks in f16).
Results: a rich table (lm-eval's for tasks), and JSON (--json). Usage: docs/eval.md.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bitk._cli import add_debug_argument, check_output_file, run_cli
from bitk.generate.loading import check_source, is_gguf, resolve_tokenizer, set_model_numerics
from bitk.nn import NUMERICS

__all__ = ["build_parser", "main"]

DEFAULT_SEQ_LEN = 512


def _int_at_least(low: int, what: str):
    """An argparse type: an integer >= ``low`` (``what`` names it in the error)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
        return value

    return parse


_positive = _int_at_least(1, "a positive integer")
_non_negative = _int_at_least(0, "a non-negative integer")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bitk.eval",
        description="Perplexity and forward tokens/s of a bitk checkpoint, Hugging Face model folder or GGUF "
        "file, or its scores on lm-evaluation-harness tasks (--tasks).",
    )
    p.add_argument("checkpoint", help="bitk checkpoint folder, Hugging Face model folder, hub id or .gguf file")
    p.add_argument(
        "--tasks",
        default=None,
        help="comma-separated lm-evaluation-harness tasks (sst2,mnli,qnli,arc_easy, ...) instead of perplexity; "
        'needs pip install "bitk[eval]"',
    )
    p.add_argument("--include-path", default=None, help="with --tasks: a folder of task YAML files to add")
    p.add_argument("--limit", type=_positive, default=None, help="with --tasks: at most this many documents per task")
    p.add_argument(
        "--num-fewshot", type=_non_negative, default=None, help="with --tasks: few-shot examples (default the task's)"
    )
    p.add_argument(
        "--data",
        default=None,
        help="text to score: a .txt/.jsonl/.json/.parquet file or folder, a hub dataset name, or "
        "'default' (the embedded corpus's held-out split; the default)",
    )
    p.add_argument("--split", default=None, help="split of a hub dataset or of 'default' (train|heldout)")
    p.add_argument("--text-field", default="text", help="column holding the text in JSON/parquet/hub rows")
    p.add_argument(
        "--numerics",
        choices=NUMERICS,
        default=None,
        help="BitLinear numerics: train (as trained; the default for a checkpoint), i2s (as bitnet.cpp runs "
        "the I2_S GGUF bitk-pack writes), tq (as llama.cpp runs its TQ1_0/TQ2_0 GGUF), f16 (as the runtimes "
        "run F16 projections), float (dequantized ternary weights, float activations); a .gguf file is "
        "evaluated as its runtime computes it unless this is given",
    )
    p.add_argument(
        "--pad",
        choices=("auto", "none"),
        default="auto",
        help="with --numerics i2s/tq: the GGUF's padding, as bitk-pack --pad (auto: zero-padded widths "
        "are exact; none: projections whose width the type cannot hold run as F16, as in that file)",
    )
    p.add_argument(
        "--seq-len",
        type=_positive,
        default=None,
        help=f"tokens per row (default: min({DEFAULT_SEQ_LEN}, max_position_embeddings))",
    )
    p.add_argument(
        "--batch-size", type=_positive, default=1, help="rows (or task requests) per forward pass (default 1)"
    )
    p.add_argument("--max-tokens", type=_positive, default=None, help="read at most this many tokens of the data")
    p.add_argument(
        "--tokenizer",
        default=None,
        help="tokenizer.json or its folder, or 'default' (bitk's); default: the checkpoint's",
    )
    p.add_argument(
        "--full-precision",
        action="store_true",
        help="load without the ternary conversion (a full-precision model evaluates as it is)",
    )
    p.add_argument("--threads", type=_positive, default=None, help="torch CPU threads")
    p.add_argument("--json", metavar="PATH", default=None, help="also write the results as JSON to PATH ('-': stdout)")
    add_debug_argument(p)
    return p


@dataclass
class _Plan:
    """Everything the cheap checks resolved, before the model loads."""

    checkpoint: str
    data_name: str
    seq_len: int
    input_ids: Any
    position_ids: Any
    labels: Any
    model: Any = None


def _load_model(args: argparse.Namespace, tokenizer_dir: Path | None = None):
    """The model to evaluate: a checkpoint (converted by load_model) or a GGUF file in its runtime's numerics."""
    if is_gguf(args.checkpoint):
        from bitk.gguf import load

        if args.full_precision:
            raise ValueError("--full-precision applies to checkpoints; a GGUF file is evaluated as it is stored")
        return load(args.checkpoint, tokenizer_dir=tokenizer_dir)
    from bitk.models import load_model

    return load_model(args.checkpoint, ternary=not args.full_precision)


def _prepare(args: argparse.Namespace, tokenizer_dir: Path | None = None) -> _Plan:
    """Every check that needs no model weights, then the packed data; ValueError on bad input.

    A GGUF file loads here (its metadata is its config); its vocabulary goes to `tokenizer_dir`.
    """
    from bitk import data
    from bitk.models import open_source

    check_source(args.checkpoint)
    model = None
    local = Path(args.checkpoint).expanduser()
    if is_gguf(args.checkpoint):
        model = _load_model(args, None if args.tokenizer is not None else tokenizer_dir)
        config, tokenizer_dir = model.config, model.tokenizer_dir
    elif local.exists():
        source = open_source(local)
        config, tokenizer_dir = source.config, source.tokenizer_dir
    else:  # a hub id
        config = tokenizer_dir = None

    def check_seq_len(config) -> int:
        seq_len = args.seq_len if args.seq_len is not None else min(DEFAULT_SEQ_LEN, config.max_position_embeddings)
        if seq_len > config.max_position_embeddings:
            raise ValueError(
                f"--seq-len {seq_len} exceeds the model's max_position_embeddings ({config.max_position_embeddings})"
            )
        if seq_len < 2:
            raise ValueError("--seq-len must be at least 2 (a row's first token is never scored)")
        return seq_len

    if config is not None:
        check_seq_len(config)
    if args.data is None or args.data == "default":
        data_source, split = "default", args.split or "heldout"
        data_name = f"default:{split}"
    else:
        data_source, split, data_name = args.data, args.split, args.data
    texts = data.load_texts(data_source, split=split, text_field=args.text_field, streaming=args.max_tokens is not None)
    if config is None:  # a hub id: only the downloaded folder tells its config and tokenizer
        model = _load_model(args)
        config, tokenizer_dir = model.config, model.tokenizer_dir
    seq_len = check_seq_len(config)

    tokenizer, tokenizer_dir = resolve_tokenizer(args.tokenizer, tokenizer_dir, args.checkpoint, config.vocab_size)
    framing = data.document_tokens(tokenizer, tokenizer_dir, config.eos_token_id)
    frame = {"eos_id": framing.eos, "bos_id": framing.bos}

    docs = data.encode_documents(texts, tokenizer, max_tokens=args.max_tokens, **frame)
    length = data.packed_length(docs, **frame)
    if length == 0:
        raise ValueError(f"no text in {data_name}")
    pad_id = framing.eos  # any id: padded targets are masked out through labels
    input_ids, position_ids = data.pack_tokens(docs, seq_len, framing.eos, pad_id=pad_id, bos_id=framing.bos)
    labels = input_ids.clone()
    labels.view(-1)[length:] = -100
    if int((labels[:, 1:] != -100).sum()) == 0:
        raise ValueError(f"{data_name} is too short to score: it packs into {length} token(s)")
    return _Plan(args.checkpoint, data_name, seq_len, input_ids, position_ids, labels, model)


def _check_options(args: argparse.Namespace) -> None:
    """ValueError for options of one mode given in the other (perplexity vs --tasks)."""
    if args.json not in (None, "-"):
        check_output_file("--json", args.json)
    if args.tasks is None:
        for name in ("include_path", "limit", "num_fewshot"):
            if getattr(args, name) is not None:
                raise ValueError(f"--{name.replace('_', '-')} applies to --tasks")
        return
    for name in ("data", "split", "seq_len", "max_tokens"):
        if getattr(args, name) is not None:
            raise ValueError(f"--{name.replace('_', '-')} applies to perplexity; the tasks bring their own data")
    if args.include_path is not None and not Path(args.include_path).expanduser().is_dir():
        raise ValueError(f"--include-path {args.include_path}: no such folder")


def _run_tasks(args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    """lm-evaluation-harness on the checkpoint: (the JSON record, lm-eval's table)."""
    from bitk.eval import load_harness

    harness = load_harness("--tasks")
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if not tasks:
        raise ValueError("--tasks names no task")
    check_source(args.checkpoint)
    harness.check_tasks(tasks, args.include_path)  # before the weights load: a typo costs seconds
    lm = harness.BitkLM(
        pretrained=args.checkpoint,
        numerics=args.numerics,
        pad=args.pad,
        full_precision=args.full_precision,
        tokenizer=args.tokenizer,
        batch_size=args.batch_size,
    )
    results = harness.run_tasks(
        lm, tasks, include_path=args.include_path, limit=args.limit, num_fewshot=args.num_fewshot
    )
    from lm_eval.utils import make_table

    table = make_table(results)
    if results.get("groups"):
        table += "\n" + make_table(results, "groups")
    record = harness.results_record(
        results,
        model=args.checkpoint,
        numerics=args.numerics or ("file" if is_gguf(args.checkpoint) else "train"),
        numerics_detail=lm.numerics,
        limit=args.limit,
        num_fewshot=args.num_fewshot,
        date=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    return record, table


def _table(record: dict[str, Any]):
    from rich.table import Table

    table = Table(title=f"bitk.eval  {record['checkpoint']}", show_header=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    rows = [
        ("data", record["data"]),
        ("numerics", record["numerics_detail"]),
        ("tokens scored", f"{record['tokens']:,}"),
        ("loss (nats)", f"{record['loss']:.4f}"),
        ("perplexity", f"{record['perplexity']:.3f}" if math.isfinite(record["perplexity"]) else "inf"),
        ("tokens/s (forward)", f"{record['tokens_per_s']:,.0f}"),
        ("forward seconds", f"{record['seconds']:.2f}"),
        ("seq len x batch", f"{record['seq_len']} x {record['batch_size']}"),
        ("torch threads", str(record["torch_threads"])),
    ]
    for name, value in rows:
        table.add_row(name, value)
    return table


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns 0 when done, else exits like argparse (SystemExit): 2 for bad input or a
    file error (one line on stderr), 130 Ctrl-C, 143 SIGTERM. --debug (or BITK_DEBUG=1) shows the
    traceback instead."""
    status = run_cli(_main, build_parser().prog, argv, status=2)
    if status:
        raise SystemExit(status)  # as argparse exits on bad usage
    return 0


def _main(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    import torch
    from rich.console import Console

    from bitk.eval.perplexity import evaluate
    from bitk.nn import cpu

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    _check_options(args)
    cpu.check_environment()
    if args.tasks is not None:
        record, table = _run_tasks(args)
    else:
        with tempfile.TemporaryDirectory(prefix="bitk-eval-") as tmp:
            plan = _prepare(args, Path(tmp))
            model = plan.model if plan.model is not None else _load_model(args)
            described = set_model_numerics(model, args.numerics, gguf=is_gguf(args.checkpoint), pad=args.pad)
            result = evaluate(
                model, plan.input_ids, plan.position_ids, args.batch_size, labels=plan.labels, progress=True
            )
    if args.tasks is not None:
        # With JSON on stdout, the table goes to stderr so stdout stays parseable.
        print(table, file=sys.stderr if args.json == "-" else sys.stdout)
        return _write_json(record, args.json)
    record = {
        "checkpoint": plan.checkpoint,
        "data": plan.data_name,
        "numerics": args.numerics or ("file" if is_gguf(args.checkpoint) else "train"),
        "numerics_detail": described,
        "tokens": result.tokens,
        "loss": result.loss,
        "perplexity": result.perplexity,
        "tokens_per_s": result.tokens_per_s,
        "seconds": result.seconds,
        "seq_len": plan.seq_len,
        "batch_size": args.batch_size,
        "torch_threads": torch.get_num_threads(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    Console(stderr=args.json == "-").print(_table(record))
    return _write_json(record, args.json)


def _write_json(record: dict[str, Any], where: str | None) -> int:
    """The record as JSON to stdout ('-'), to a file, or nowhere (None); 0."""
    text = json.dumps(record, indent=2)
    if where == "-":
        print(text)
    elif where is not None:
        Path(where).expanduser().write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
