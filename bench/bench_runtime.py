"""Prompt throughput of bitk next to bitnet.cpp's, on the same I2_S GGUF file and thread count.

    python bench/bench_runtime.py                                   # tiny preset, 256 tokens, 2 threads
    python bench/bench_runtime.py --preset smollm2_135m --threads 1,2 --rounds 3 --json out.json
    python bench/bench_runtime.py --gguf model.gguf --tokens 512 --runtime DIR

The file: `--gguf FILE`, or a random-init ternary model of `--preset` (`tiny`, or
`smollm2_135m`: SmolLM2-135M's shape with random weights, nothing downloaded) exported to I2_S
with `bitk.gguf.export` and bitk's own tokenizer (`bitk.data.default_tokenizer`; the vocabulary is
padded with [PAD] tokens to the preset's vocab_size). SmolLM2's widths are zero-padded in the file
(hidden 576 -> 768, heads 9/3 -> 12/4, FFN 1536 -> 2048, `bitk-pack --pad auto`), and both sides
compute with the padded widths.

What is timed, at each thread count T of `--threads` (a comma list), on a prompt of P tokens
(`--tokens`, default 256): prompt processing (prefill), tokens/s = P / seconds.

- bitk: the model of `bitk.gguf.load(FILE)` (each projection in the runtime's numerics: "i2s"),
  and the same model with `bitk.nn.set_numerics(model, "float")` for reference, under
  `torch.set_num_threads(T)` and `torch.inference_mode`. One prefill is what `bitk.generate` runs:
  the P tokens (BOS, then seeded random ids) through the model into an empty `KVCache`, then the
  head on the last position only. One warm-up, then `--repeats` timed runs; median.
- bitnet.cpp (folder `--runtime`, default ~/.cache/bitk-runtimes/oracle; the binaries are looked
  for in it, its bin/ and build/bin/, and in any bin/ folder up to three levels down), each tool
  found unless `--tool` names one:
    * `llama-bench -m FILE -p P -n 0 -t T -r R -o json`: its own warm-up run, then R prompt runs
      of P tokens (logits of the last token only, as bitk's prefill); median of its
      `samples_ns`. A standard build of the bitnet.cpp fork does not necessarily build
      llama-bench; it compiles against that build in seconds (command below).
    * `llama-perplexity -m FILE -f TEXT -c P -b P -t T --chunks R`: R chunks of P tokens of the
      embedded corpus text (bitk.data's train split, repeated until it tokenizes to well over
      max(2P, R*P) tokens: the tool refuses text shorter than 2 contexts). `-b P` keeps one
      sequence per batch (the default -b 2048 would batch 2048/P chunks into one decode).
      Rate: the "prompt eval time = X ms / N tokens" line of llama_perf_context_print, the mean
      over the R chunks, the first included (the tool's warm-up run is excluded). It computes
      the logits of the last P/2 positions of each chunk (bitk's prefill: one position), so with
      a large vocabulary it reads lower than llama-bench.
  The output is checked: llama-bench must report a pp{P} test, and llama-perplexity R chunks of
  n_ctx=P with n_seq=1, else the row says why it failed (exit status 1).

`--rounds N` repeats the whole set of measurements (runtime tools, then bitk) N times; the table
gives the median over rounds, and the ratio bitk i2s / tool is the median of the per-round ratios
(timings on a shared machine drift between minutes; a ratio of one round compares measurements
seconds apart). Output: a markdown table, the CPU's flags of interest (avx2, avx512f,
avx512_vnni, avx_vnni, avx512_bf16, amx_int8 from /proc/cpuinfo), thread counts and load average;
`--json FILE` writes the same data, with every sample and the exact runtime command lines.

Exit status: 0; 1 when a runtime tool failed; 2 bad usage, or no runtime binaries found (one line
on stderr, no traceback).

llama-bench against an existing build of the fork (any folder outside the build works):

    S=~/.cache/bitk-runtimes/src/BitNet/3rdparty/llama.cpp B=~/.cache/bitk-runtimes/oracle/build
    mkdir -p /tmp/llama-bench-rt/bin && clang++ -std=c++17 -O3 -DNDEBUG -DGGML_SHARED -DLLAMA_SHARED \\
      -I$S/common -I$S/include -I$S/ggml/include $S/examples/llama-bench/llama-bench.cpp \\
      -o /tmp/llama-bench-rt/bin/llama-bench $B/3rdparty/llama.cpp/common/libcommon.a \\
      -L$B/3rdparty/llama.cpp/src -L$B/3rdparty/llama.cpp/ggml/src -lllama -lggml \\
      -Wl,-rpath,$B/3rdparty/llama.cpp/src:$B/3rdparty/llama.cpp/ggml/src -pthread
    python bench/bench_runtime.py --runtime ~/.cache/bitk-runtimes/oracle --runtime /tmp/llama-bench-rt
    # both tools: --runtime repeats, and the first folder holding a tool supplies it
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

DEFAULT_RUNTIME = Path("~/.cache/bitk-runtimes/oracle")
TOOLS = ("llama-bench", "llama-perplexity")
PRESETS = ("tiny", "smollm2_135m")
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8")
BITK_NUMERICS = ("i2s", "float")


class UsageError(Exception):
    """Bad usage, or nothing to compare with (exit status 2, one line)."""


class RuntimeToolError(Exception):
    """A runtime tool failed or printed something this script does not understand."""


# --- machine


def cpu_info(cpuinfo: str | None = None) -> dict:
    """CPU model, which of CPU_FLAGS the CPU has, logical cores and the load average."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    model, flags = platform.processor() or "unknown", set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and model in ("unknown", platform.processor()):
            model = value.strip()
        elif key == "flags" and not flags:
            flags = set(value.split())
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = []
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "flags": {f: f in flags for f in CPU_FLAGS},
        "loadavg": load,
        "system": platform.platform(),
    }


# --- runtime binaries


def search_folders(runtime: Path) -> list[Path]:
    """runtime, runtime/bin, runtime/build/bin, then every bin/ folder up to three levels below runtime."""
    runtime = runtime.expanduser()
    folders = [runtime, runtime / "bin", runtime / "build" / "bin"]
    if runtime.is_dir():
        for depth in ("*/bin", "*/*/bin", "*/*/*/bin"):
            folders.extend(f for f in sorted(runtime.glob(depth)) if f not in folders)
    return folders


def find_binaries(runtimes: list[Path]) -> dict[str, Path]:
    """Tool name -> executable, for each of TOOLS: the first found in the `search_folders` of each
    runtime folder, in order."""
    folders = [f for runtime in runtimes for f in search_folders(runtime)]
    found: dict[str, Path] = {}
    for tool in TOOLS:
        for folder in folders:
            exe = folder / tool
            if exe.is_file() and os.access(exe, os.X_OK):
                found[tool] = exe
                break
    return found


# --- llama-bench


def parse_llama_bench_json(text: str, tokens: int) -> dict:
    """The pp{tokens} test of `llama-bench -o json` output: tokens/s (median of the samples) and samples."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RuntimeToolError(f"llama-bench printed no JSON ({exc})") from None
    rows = data if isinstance(data, list) else [data]
    for row in rows:
        if isinstance(row, dict) and row.get("n_prompt") == tokens and row.get("n_gen", 0) == 0:
            samples_ns = [float(x) for x in row.get("samples_ns") or []]
            if samples_ns:
                samples = [tokens * 1e9 / ns for ns in samples_ns]
            elif "avg_ts" in row:
                samples = [float(row["avg_ts"])]
            else:
                raise RuntimeToolError("llama-bench's JSON has neither samples_ns nor avg_ts")
            return {
                "tokens_per_s": statistics.median(samples),
                "samples": samples,
                "stat": f"median of {len(samples)}",
                "threads": row.get("n_threads"),
                "model_type": row.get("model_type"),
            }
    raise RuntimeToolError(f"llama-bench reported no pp{tokens} test (n_prompt={tokens}, n_gen=0)")


_MD_RATE = re.compile(r"([0-9][0-9.,]*)\s*±\s*([0-9][0-9.,]*)")


def parse_llama_bench_markdown(text: str, tokens: int) -> dict:
    """The pp{tokens} row of llama-bench's markdown table: mean tokens/s (± is its standard deviation)."""
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if f"pp{tokens}" not in cells:
            continue
        m = _MD_RATE.search(cells[-1])
        if m:
            threads = cells[cells.index(f"pp{tokens}") - 1]
            return {
                "tokens_per_s": float(m.group(1).replace(",", "")),
                "samples": [],
                "stat": "mean",
                "stddev": float(m.group(2).replace(",", "")),
                "threads": int(threads) if threads.isdigit() else None,
            }
    raise RuntimeToolError(f"llama-bench's table has no pp{tokens} row")


def llama_bench_command(exe: Path, gguf: Path, tokens: int, threads: int, repeats: int) -> list[str]:
    return [
        str(exe),
        "-m",
        str(gguf),
        "-p",
        str(tokens),
        "-n",
        "0",
        "-t",
        str(threads),
        "-r",
        str(repeats),
        "-o",
        "json",
    ]


# --- llama-perplexity

_PROMPT_EVAL = re.compile(
    r"prompt eval time\s*=\s*([0-9.]+)\s*ms\s*/\s*([0-9]+)\s*tokens"
    r"(?:\s*\(\s*[0-9.]+\s*ms per token,\s*([0-9.]+)\s*tokens per second\))?"
)
_CHUNKS = re.compile(r"calculating perplexity over (\d+) chunks, n_ctx=(\d+), batch_size=(\d+), n_seq=(\d+)")
_PPL = re.compile(r"Final estimate: PPL = ([0-9.]+|nan|inf)")
_TOO_SHORT = re.compile(r"you need at least \d+ tokens[^\n]*|the data file you provided tokenizes to only \d+ tokens")


def parse_llama_perplexity(text: str, tokens: int | None = None, chunks: int | None = None) -> dict:
    """Prompt tokens/s of llama-perplexity's output (its "prompt eval time" line: all chunks, mean).

    With tokens / chunks: RuntimeToolError unless it ran that many chunks of n_ctx=tokens, one
    sequence per batch.
    """
    short = [m.group(0).strip() for m in _TOO_SHORT.finditer(text)]
    if short:  # the tool exits 0 then
        raise RuntimeToolError("llama-perplexity: the text is too short: " + "; ".join(short))
    m = _CHUNKS.search(text)
    if not m:
        raise RuntimeToolError("llama-perplexity printed no 'calculating perplexity over N chunks' line")
    n_chunks, n_ctx, n_batch, n_seq = (int(g) for g in m.groups())
    if tokens is not None and (n_ctx != tokens or n_seq != 1):
        raise RuntimeToolError(f"llama-perplexity ran n_ctx={n_ctx}, n_seq={n_seq}; expected n_ctx={tokens}, n_seq=1")
    if chunks is not None and n_chunks != chunks:
        raise RuntimeToolError(f"llama-perplexity ran {n_chunks} chunks, expected {chunks}")
    evals = _PROMPT_EVAL.findall(text)
    if not evals:
        raise RuntimeToolError("llama-perplexity printed no 'prompt eval time = X ms / N tokens' line")
    ms, n, rate = float(evals[-1][0]), int(evals[-1][1]), evals[-1][2]
    if n != n_chunks * n_ctx or ms <= 0:
        raise RuntimeToolError(f"llama-perplexity timed {n} tokens in {ms} ms; expected {n_chunks} x {n_ctx} tokens")
    ppl = _PPL.search(text)
    return {
        # the tool's own rate (from unrounded times), else from its rounded milliseconds
        "tokens_per_s": float(rate) if rate else n * 1000.0 / ms,
        "samples": [],
        "stat": f"mean of {n_chunks} chunks",
        "prompt_eval_ms": ms,
        "prompt_eval_tokens": n,
        "chunks": n_chunks,
        "n_ctx": n_ctx,
        "n_batch": n_batch,
        "perplexity": float(ppl.group(1)) if ppl else None,
    }


def llama_perplexity_command(
    exe: Path, gguf: Path, text_file: Path, tokens: int, threads: int, chunks: int
) -> list[str]:
    return [
        str(exe),
        "-m",
        str(gguf),
        "-f",
        str(text_file),
        "-c",
        str(tokens),
        "-b",
        str(tokens),
        "-t",
        str(threads),
        "--chunks",
        str(chunks),
    ]


def write_text(path: Path, tokens: int, chunks: int) -> Path:
    """The embedded corpus's train split, repeated to >= 8 characters per needed token (no
    tokenizer spends more than that on English prose); llama-perplexity needs max(2, chunks) contexts."""
    from bitk.data import default_corpus

    text = "\n\n".join(default_corpus("train"))
    need = 8 * tokens * (max(2, chunks) + 1)
    path.write_text("\n\n".join([text] * max(1, math.ceil(need / len(text)))), encoding="utf-8")
    return path


def run_tool(command: list[str], timeout: float) -> tuple[str, str]:
    """(stdout, stderr) of a tool run; RuntimeToolError on a non-zero exit or a timeout."""
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise RuntimeToolError(f"{Path(command[0]).name} ran past {timeout:.0f} s") from None
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or proc.stdout.strip().splitlines() or ["(no output)"])[-1]
        raise RuntimeToolError(f"{Path(command[0]).name} exited {proc.returncode}: {tail}")
    return proc.stdout, proc.stderr


# --- bitk


def export_preset(name: str, path: Path, seed: int = 0) -> Path:
    """A random-init ternary model of preset `name` as an I2_S GGUF (bitk's own tokenizer)."""
    import torch

    from bitk.data import default_tokenizer
    from bitk.gguf import export
    from bitk.models import CausalLM, preset

    torch.manual_seed(seed)
    model = CausalLM(preset(name, ternary=True)).eval()
    export(model, path, "i2_s", tokenizer=default_tokenizer(), name=f"bitk-bench-{name}")
    return path


class BitkModel:
    """A GGUF file loaded with `bitk.gguf.load`, timed as `bitk.generate`'s prefill."""

    def __init__(self, gguf: Path, tokens: int, seed: int = 0) -> None:
        import torch

        import bitk.gguf

        self.model = bitk.gguf.load(gguf).eval()
        config = self.model.config
        if tokens > config.max_position_embeddings:
            raise UsageError(f"--tokens {tokens} exceeds the model's context ({config.max_position_embeddings})")
        self.file_numerics = sorted({m.numerics for m in self.model.modules() if hasattr(m, "numerics")})
        if self.file_numerics != ["i2s"]:
            raise UsageError(
                f"{gguf}: not every projection is I2_S (bitk.gguf.load gives numerics {', '.join(self.file_numerics)}); "
                "this benchmark compares the I2_S path"
            )
        g = torch.Generator().manual_seed(seed)
        ids = torch.randint(0, config.vocab_size, (1, tokens), generator=g)
        if config.bos_token_id is not None:
            ids[0, 0] = config.bos_token_id
        self.ids = ids

    def prefill(self):
        """The prefill; returns the last position's logits."""
        import torch

        from bitk.models import KVCache

        with torch.inference_mode():
            cache = KVCache.for_model(self.model, max_length=self.ids.shape[1])
            out = self.model(self.ids, cache=cache, logits=False)
            return out.head(out.last_hidden[0, -1])

    def measure(self, numerics: str, threads: int, repeats: int) -> dict:
        import torch

        from bitk.nn import set_numerics

        torch.set_num_threads(threads)
        set_numerics(self.model, numerics)
        self.prefill()  # warm-up: fills weight caches
        seconds = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            self.prefill()
            seconds.append(time.perf_counter() - t0)
        samples = [self.ids.shape[1] / s for s in seconds]
        return {"tokens_per_s": statistics.median(samples), "samples": samples, "stat": f"median of {repeats}"}


# --- the run


@dataclass
class Row:
    engine: str  # "bitk" or "bitnet.cpp"
    how: str  # "i2s", "float", "llama-bench", "llama-perplexity"
    threads: int
    tokens_per_s: float | None = None  # median over rounds
    rounds: list[dict] = field(default_factory=list)
    ratio: float | None = None  # bitk i2s / this row, median of per-round ratios
    error: str | None = None
    command: list[str] | None = None


def _median_or_none(values: list[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def run(args: argparse.Namespace, binaries: dict[str, Path], gguf: Path, workdir: Path) -> dict:
    import torch

    import bitk

    machine = cpu_info()  # the load average before the measurements
    text_file = None
    if "llama-perplexity" in binaries:
        text_file = write_text(workdir / "text.txt", args.tokens, args.repeats)
    bitk_model = BitkModel(gguf, args.tokens)
    numerics = ["i2s"] + ([] if args.no_float else ["float"])
    rows: dict[tuple[str, int], Row] = {}
    for t in args.threads:
        for n in numerics:
            rows[(n, t)] = Row("bitk", n, t)
        for tool in binaries:
            rows[(tool, t)] = Row("bitnet.cpp", tool, t)
    for r in range(args.rounds):
        for t in args.threads:
            for tool, exe in binaries.items():
                row = rows[(tool, t)]
                if tool == "llama-bench":
                    cmd = llama_bench_command(exe, gguf, args.tokens, t, args.repeats)
                else:
                    cmd = llama_perplexity_command(exe, gguf, text_file, args.tokens, t, args.repeats)
                row.command = cmd
                if row.error:
                    continue
                try:
                    out, err = run_tool(cmd, args.timeout)
                    if tool == "llama-bench":
                        res = parse_llama_bench_json(out, args.tokens)
                    else:
                        res = parse_llama_perplexity(out + "\n" + err, args.tokens, args.repeats)
                    row.rounds.append(res)
                except RuntimeToolError as exc:
                    row.error = str(exc)
                _progress(args, f"round {r + 1}: {row.engine} {tool} t={t}", row)
            for n in numerics:
                row = rows[(n, t)]
                row.rounds.append(bitk_model.measure(n, t, args.repeats))
                _progress(args, f"round {r + 1}: bitk {n} t={t}", row)
    for (_, t), row in rows.items():
        row.tokens_per_s = _median_or_none([x["tokens_per_s"] for x in row.rounds])
        base = rows[("i2s", t)].rounds
        if row.rounds and len(row.rounds) == len(base):
            row.ratio = statistics.median(b["tokens_per_s"] / x["tokens_per_s"] for b, x in zip(base, row.rounds))
    info = bitk_model.model.config
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "model": {
            "preset": None if args.gguf else args.preset,
            "gguf": str(gguf),
            "gguf_bytes": gguf.stat().st_size,
            "file_numerics": bitk_model.file_numerics,
            "hidden_size": info.hidden_size,
            "intermediate_size": info.intermediate_size,
            "layers": info.num_hidden_layers,
            "heads": [info.num_attention_heads, info.num_key_value_heads],
            "vocab_size": info.vocab_size,
        },
        "tokens": args.tokens,
        "repeats": args.repeats,
        "rounds": args.rounds,
        "threads": args.threads,
        "runtime": {tool: str(exe) for tool, exe in binaries.items()},
        "machine": {
            **machine,
            "loadavg_end": cpu_info()["loadavg"],
            "torch": torch.__version__,
            "bitk": getattr(bitk, "__version__", "?"),
        },
        "results": [asdict(row) for row in rows.values()],
    }


def _progress(args: argparse.Namespace, what: str, row: Row) -> None:
    if args.quiet:
        return
    last = row.rounds[-1]["tokens_per_s"] if row.rounds else None
    print(f"  {what}: " + (f"{last:,.0f} tokens/s" if last else f"failed: {row.error}"), file=sys.stderr, flush=True)


def markdown(report: dict) -> str:
    m, mach = report["model"], report["machine"]
    name = m["preset"] or Path(m["gguf"]).name
    flags = mach["flags"]
    have = " ".join(f for f, v in flags.items() if v) or "none"
    lacks = " ".join(f for f, v in flags.items() if not v)
    load = mach["loadavg"][:1]
    warning = []
    if load and load[0] > 0.5:
        warning = [
            "",
            f"warning: the 1-minute load average was {load[0]} on {mach['cores']} logical cores before the run: "
            "other processes competed for the CPU, and multi-threaded timings suffer most",
        ]
    lines = [
        f"## Prompt processing: {name} (I2_S GGUF, {m['gguf_bytes'] / 2**20:.1f} MiB; hidden {m['hidden_size']}, "
        f"FFN {m['intermediate_size']}, {m['layers']} layers, vocab {m['vocab_size']}), {report['tokens']} tokens",
        "",
        f"{report['date']}; CPU {mach['cpu']}, {mach['cores']} logical cores; flags: {have}"
        + (f" (not: {lacks})" if lacks else "")
        + f"; load average {'/'.join(str(x) for x in mach['loadavg'])} before, "
        f"{'/'.join(str(x) for x in mach.get('loadavg_end', []))} after; torch {mach['torch']}; "
        f"{report['repeats']} repeats x {report['rounds']} round(s)",
        *warning,
        "",
        "| threads | engine | how | tokens/s | min-max | bitk i2s / this |",
        "|---:|---|---|---:|---:|---:|",
    ]
    for row in report["results"]:
        how = {"i2s": "i2s numerics", "float": "float numerics"}.get(row["how"], row["how"])
        stat = row["rounds"][0]["stat"] if row["rounds"] else ""
        if stat:
            how += f" ({stat}" + (f", median of {len(row['rounds'])} rounds)" if len(row["rounds"]) > 1 else ")")
        rate = f"{row['tokens_per_s']:,.0f}" if row["tokens_per_s"] else f"failed: {row['error']}"
        ratio = f"{row['ratio']:.2f}" if row["ratio"] else ""
        # every timed run, or each round's figure where the tool gives no per-run times
        seen = [x for r in row["rounds"] for x in (r["samples"] or [r["tokens_per_s"]])]
        spread = f"{min(seen):,.0f}-{max(seen):,.0f}" if len(seen) > 1 else ""
        lines.append(f"| {row['threads']} | {row['engine']} | {how} | {rate} | {spread} | {ratio} |")
    cmds = [r["command"] for r in report["results"] if r["command"]]
    if cmds:
        lines.append("")
        lines.extend(f"    {' '.join(cmd)}" for cmd in cmds)
    return "\n".join(lines)


def _threads(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"threads must be positive integers separated by commas, got {text!r}"
        ) from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"threads must be positive integers separated by commas, got {text!r}")
    return values


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench_runtime.py",
        description="bitk's prompt throughput next to bitnet.cpp's on one I2_S GGUF file (see the module doc).",
    )
    p.add_argument("--preset", choices=PRESETS, default="tiny", help="random-init model to export (default tiny)")
    p.add_argument("--gguf", type=Path, help="an existing I2_S GGUF file instead of a preset")
    p.add_argument("--save-gguf", type=Path, help="keep the exported file there")
    p.add_argument("--tokens", type=_positive, default=256, help="prompt tokens P (default 256)")
    p.add_argument("--threads", type=_threads, default=[2], help="thread counts, comma-separated (default 2)")
    p.add_argument("--repeats", type=_positive, default=5, help="timed runs per measurement (default 5)")
    p.add_argument("--rounds", type=_positive, default=1, help="repeat all measurements N times (default 1)")
    p.add_argument(
        "--runtime",
        type=Path,
        action="append",
        help=f"bitnet.cpp folder; repeat to combine folders, the first holding a tool wins (default {DEFAULT_RUNTIME})",
    )
    p.add_argument("--tool", choices=("all", *TOOLS), default="all", help="runtime tool(s) to run (default: all found)")
    p.add_argument("--no-float", action="store_true", help="skip bitk's float numerics")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per runtime tool run (default 900)")
    p.add_argument("--json", type=Path, help="also write the report as JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        runtimes = [r.expanduser() for r in args.runtime or [DEFAULT_RUNTIME]]
        binaries = find_binaries(runtimes)
        if args.tool != "all":
            binaries = {k: v for k, v in binaries.items() if k == args.tool}
        if not binaries:
            wanted = " or ".join(TOOLS) if args.tool == "all" else args.tool
            raise UsageError(
                f"no bitnet.cpp binaries ({wanted}) in {', '.join(map(str, runtimes))} (searched there, in bin/, "
                "build/bin/ and bin/ folders below): build bitnet.cpp (github.com/microsoft/BitNet) or pass --runtime DIR"
            )
        if args.gguf is not None and not args.gguf.is_file():
            raise UsageError(f"--gguf {args.gguf}: no such file")
        with tempfile.TemporaryDirectory(prefix="bitk-bench-runtime-") as tmp:
            workdir = Path(tmp)
            if args.gguf is not None:
                gguf = args.gguf.resolve()
            else:
                gguf = (args.save_gguf or workdir / f"{args.preset}.gguf").resolve()
                if not args.quiet:
                    print(f"  exporting a random-init {args.preset} model to {gguf}", file=sys.stderr, flush=True)
                export_preset(args.preset, gguf)
            report = run(args, binaries, gguf, workdir)
    except UsageError as exc:
        print(f"bench_runtime: {exc}", file=sys.stderr)
        return 2
    print(markdown(report))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 1 if any(r["error"] for r in report["results"]) else 0


if __name__ == "__main__":
    sys.exit(main())
