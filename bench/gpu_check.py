"""The first minutes on a GPU: bitk's kernel tests on CUDA, then the figures its GPU targets are stated in.

    python bench/gpu_check.py --json bench-results/gpu_check.json   # one CUDA GPU, under 8 minutes
    python bench/gpu_check.py --device cpu --quick                  # dry run of this script on CPU

Needs torch, triton and bitk (`pip install -e .`), and pytest and hypothesis for the tests; no
network. Four sections, each with a time budget: one that would not fit in what is left of the
total is skipped with a note, one that runs long stops early (a note says so).

1. kernel tests: `pytest tests/triton_kernels tests/nn -q -x` in a subprocess, the kernels compiled
   for CUDA (the tests pick CUDA when there is a GPU; 8 workers if pytest-xdist is installed); counts.
2. BitLinear forward and forward+backward against nn.Linear on 4096 tokens at BitNet b1.58 2B4T and
   SmolLM2-135M widths, as bench_kernels.py times them: forward of bf16 input against a bf16
   nn.Linear, forward+backward under bf16 autocast (float32 weights for both).
3. fused SubLN + int8 activation quantization (rms_norm_quant) against a copy of its input: GB/s.
4. 50 training steps (after 5 untimed) of the smollm2_135m preset from scratch (bench_train's
   make_train_step: bf16 autocast, AdamW, 8 x 2048 tokens), ternary against ternary=False:
   tokens/s and peak memory.

`--quick` runs small shapes, 3 training steps and of the tests only tests/nn/test_dispatch.py.
`--device cpu` runs the tests in Triton's interpreter (as CI does), the benchmarks through bitk's
CPU path, and skips the Triton pieces (section 3). Prints one table and, with `--json`, writes the
same figures. Exit status: 0 when the tests passed and every section ran or was skipped for time,
1 when the tests failed (or did not finish) or a section raised, 2 without CUDA unless `--device cpu`.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import importlib.util
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
TEST_PATHS = ("tests/triton_kernels", "tests/nn")
QUICK_TEST_PATHS = ("tests/nn/test_dispatch.py",)
# Compiling the kernels' autotune configs is most of the tests' time on a GPU: with pytest-xdist
# installed, workers compile in parallel.
XDIST_WORKERS = 8

# (in, out) of the projections: BitNet b1.58 2B4T's are bench_kernels.SHAPES; SmolLM2-135M's FFN and attention.
SMOLLM2_SHAPES = [(576, 1536), (1536, 576), (576, 576)]
QUICK_SHAPES = {"BitNet 2B4T / 8": [(320, 864), (864, 320), (320, 320)], "SmolLM2-135M / 8": [(72, 192), (192, 72)]}
SECTION_TITLES = {
    "kernel_tests": "kernel tests",
    "bitlinear": "BitLinear",
    "subln_quant": "SubLN+quant",
    "train": "training",
}
# Targets from bench_kernels.py and bench_train.py: the figure bitk should reach against its baseline.
TARGETS = {"forward": ">= 1.5x", "forward+backward": ">= 1.0x (stretch 1.3x)", "subln": ">= 0.8", "train": ">= 0.9x"}


@dataclass(frozen=True)
class Sizes:
    """What one run measures: the full check or the quick dry run."""

    total_s: float  # the whole run's time budget
    budgets_s: dict[str, float]  # per section: the most it may take
    tokens: int  # rows of the BitLinear and SubLN inputs
    subln_features: tuple[int, ...]
    train_steps: int
    train_warmup: int
    train: dict[str, Any]  # make_train_step arguments on top of bench_train.GPU_STEP
    do_bench_ms: tuple[int, int]  # triton.testing.do_bench warmup and rep


FULL = Sizes(
    total_s=450.0,
    budgets_s={"kernel_tests": 240.0, "bitlinear": 80.0, "subln_quant": 15.0, "train": 100.0},
    tokens=4096,
    subln_features=(6912, 2560),
    train_steps=50,
    train_warmup=5,
    train={},
    do_bench_ms=(25, 100),
)
QUICK = Sizes(
    total_s=240.0,
    budgets_s={"kernel_tests": 90.0, "bitlinear": 40.0, "subln_quant": 10.0, "train": 60.0},
    tokens=64,
    subln_features=(1024,),
    train_steps=3,
    train_warmup=1,
    train={"block": 64, "micro_batch": 2, "overrides": {"num_hidden_layers": 2, "vocab_size": 8192}},
    do_bench_ms=(5, 20),
)


class Clock:
    """Seconds since the start and what is left of the total budget."""

    def __init__(self, total_s: float) -> None:
        self.start = time.perf_counter()
        self.total_s = total_s

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return self.total_s - self.elapsed()


# --------------------------------------------------------------------------- 1. kernel tests

_SUMMARY_WORD = re.compile(r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed)\b")
_PROGRESS = re.compile(r"([.FEsxX]+)\s*(\[\s*\d+%\])?")
_PROGRESS_KIND = {".": "passed", "F": "failed", "E": "errors", "s": "skipped", "x": "xfailed", "X": "xpassed"}


def parse_pytest_counts(output: str) -> tuple[dict[str, int], bool]:
    """Counts per outcome from `pytest -q` output, and whether they come from its summary line.

    A run killed before its summary is counted from the progress characters (one per test).
    """
    counts = dict.fromkeys(("passed", "failed", "skipped", "errors", "xfailed", "xpassed"), 0)
    lines = output.splitlines()
    for line in reversed(lines):
        words = _SUMMARY_WORD.findall(line)
        if words and re.search(r" in \d+(\.\d+)?s\b", line):
            for n, word in words:
                counts["errors" if word.startswith("error") else word] += int(n)
            return counts, True
    for line in lines:
        m = _PROGRESS.fullmatch(line.strip())
        if m:
            for ch in m.group(1):
                counts[_PROGRESS_KIND[ch]] += 1
    return counts, False


def kernel_tests(device: str, quick: bool, allowance: float) -> dict[str, Any]:
    paths = QUICK_TEST_PATHS if quick else TEST_PATHS
    command = [sys.executable, "-m", "pytest", *paths, "-q", "-x"]
    if device == "cuda" and not quick and importlib.util.find_spec("xdist") is not None:
        command += ["-n", str(XDIST_WORKERS)]
    result: dict[str, Any] = {"command": " ".join(["python", *command[1:]]), "paths": paths, "device": device}
    missing = [m for m in ("pytest", "hypothesis") if importlib.util.find_spec(m) is None]
    if missing:
        return {**result, "status": "error", "note": f"not run: {' and '.join(missing)} missing (pip install them)"}
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if device == "cuda":
        env.pop("TRITON_INTERPRET", None)  # compiled kernels: the tests then build their tensors on CUDA
    else:
        env.update(CUDA_VISIBLE_DEVICES="", TRITON_INTERPRET="1")  # Triton's CPU interpreter, as CI runs them
    start = time.perf_counter()
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        output, _ = proc.communicate(timeout=allowance)
        timed_out = False
    except subprocess.TimeoutExpired:
        proc.kill()
        output, _ = proc.communicate()  # what it printed before the kill
        timed_out = True
    counts, summarized = parse_pytest_counts(output)
    if timed_out:
        status = "timed out"
    else:
        status = {0: "passed", 1: "failed"}.get(proc.returncode, "error")
    notes = [f"stopped at the {allowance:.0f} s cap: the counts so far"] if timed_out else []
    if quick:
        notes.append(f"--quick: only {' '.join(paths)}")
    tail = output.splitlines()[-60:]
    if status != "passed":
        print("\n".join(tail), file=sys.stderr, flush=True)
    return {
        **result,
        "status": status,
        "returncode": proc.returncode,
        **counts,
        "from_summary": summarized,
        "seconds": time.perf_counter() - start,
        "note": "; ".join(notes),
        "output_tail": tail,
    }


# --------------------------------------------------------------------------- timing


def time_ms(fn: Callable[[], object], device: str, sizes: Sizes) -> float:
    """Median milliseconds of ``fn``: triton.testing.do_bench (CUDA events) on CUDA, wall time on CPU."""
    if device == "cuda":
        from triton.testing import do_bench

        warmup, rep = sizes.do_bench_ms
        return float(do_bench(fn, warmup=warmup, rep=rep, return_mode="median"))
    fn()
    times = []
    end = time.perf_counter() + sizes.do_bench_ms[1] / 1e3
    while len(times) < 3 or (time.perf_counter() < end and len(times) < 100):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def _check_backend(device: str) -> str:
    """The bitk.nn implementation CUDA (or CPU) tensors get; a fallback would time the wrong code."""
    from bitk.nn import resolve

    impl = resolve(torch.device(device))
    want = "triton" if device == "cuda" else "cpu"
    if impl != want:
        raise RuntimeError(f"bitk.nn runs {device} tensors with the {impl!r} implementation, not {want!r}")
    return impl


# --------------------------------------------------------------------------- 2. BitLinear


def bitlinear_shapes(quick: bool) -> dict[str, list[tuple[int, int]]]:
    if quick:
        return QUICK_SHAPES
    from bench_kernels import SHAPES

    return {"BitNet 2B4T": SHAPES, "SmolLM2-135M": SMOLLM2_SHAPES}


def bitlinear_case(k_in: int, n_out: int, device: str, sizes: Sizes) -> dict[str, Any]:
    """One projection: forward and forward+backward of bitk's BitLinear and of nn.Linear (ms, ratios)."""
    from bitk.nn import BitLinear

    tokens = sizes.tokens
    torch.manual_seed(0)
    linear = torch.nn.Linear(k_in, n_out, bias=False, device=device)
    bit = BitLinear(k_in, n_out, bias=False, device=device)
    with torch.no_grad():
        bit.weight.copy_(linear.weight)
    linear_bf16 = torch.nn.Linear(k_in, n_out, bias=False, device=device, dtype=torch.bfloat16)
    with torch.no_grad():
        linear_bf16.weight.copy_(linear.weight)
    x16 = torch.randn(tokens, k_in, device=device, dtype=torch.bfloat16)
    x = torch.randn(tokens, k_in, device=device, requires_grad=True)
    dy = torch.randn(tokens, n_out, device=device, dtype=torch.bfloat16)

    def forward(layer: torch.nn.Module) -> Callable[[], object]:
        def run():
            with torch.no_grad():
                return layer(x16)

        return run

    def forward_backward(layer: torch.nn.Module) -> Callable[[], object]:
        def run():
            layer.weight.grad = None
            x.grad = None
            with torch.autocast(device, dtype=torch.bfloat16):
                y = layer(x)
            y.backward(dy)

        return run

    flops = 2 * tokens * k_in * n_out
    row: dict[str, Any] = {"tokens": tokens, "in": k_in, "out": n_out}
    for name, make, layers, work in (
        ("forward", forward, (bit, linear_bf16), flops),
        ("forward_backward", forward_backward, (bit, linear), 3 * flops),
    ):
        bitk_ms, linear_ms = (time_ms(make(layer), device, sizes) for layer in layers)
        row[f"{name}_bitk_ms"] = bitk_ms
        row[f"{name}_linear_ms"] = linear_ms
        row[f"{name}_speedup"] = linear_ms / bitk_ms
        row[f"{name}_bitk_tflops"] = work / bitk_ms / 1e9
    return row


def bitlinear_section(device: str, quick: bool, sizes: Sizes, deadline: float) -> dict[str, Any]:
    backend = _check_backend(device)
    cases = [(model, k, n) for model, shapes in bitlinear_shapes(quick).items() for k, n in shapes]
    rows = []
    for model, k, n in cases:
        if time.perf_counter() > deadline:
            break
        rows.append({"model": model, **bitlinear_case(k, n, device, sizes)})
    done = len(rows) == len(cases)
    return {
        "status": "ok" if done else "partial",
        "backend": backend,
        "baseline": "nn.Linear: bf16 weights for the forward, float32 weights under bf16 autocast for forward+backward",
        "rows": rows,
        "note": "" if done else f"stopped at the time budget: {len(rows)} of {len(cases)} shapes",
    }


# --------------------------------------------------------------------------- 3. SubLN + quantization


def subln_quant_case(m: int, k: int, sizes: Sizes) -> dict[str, Any]:
    """rms_norm_quant of bf16 [m, k] against a copy of that input: ms, GB/s and their ratio."""
    from bitk.triton_kernels.rms_norm_quant import rms_norm_quant

    torch.manual_seed(0)
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    g = (1 + 0.2 * torch.randn(k, device="cuda")).to(torch.bfloat16)
    out = torch.empty_like(x)
    # Bytes moved: the kernel reads x and g and writes int8 codes and two float32 per row (scale,
    # rstd); the copy reads and writes x.
    kernel_bytes = x.numel() * x.element_size() + g.numel() * g.element_size() + x.numel() + 8 * m
    copy_bytes = 2 * x.numel() * x.element_size()
    kernel_ms = time_ms(lambda: rms_norm_quant(x, g), "cuda", sizes)
    copy_ms = time_ms(lambda: out.copy_(x), "cuda", sizes)
    kernel_gbs, copy_gbs = kernel_bytes / kernel_ms / 1e6, copy_bytes / copy_ms / 1e6
    return {
        "tokens": m,
        "features": k,
        "kernel_ms": kernel_ms,
        "kernel_gb_per_s": kernel_gbs,
        "copy_ms": copy_ms,
        "copy_gb_per_s": copy_gbs,
        "bandwidth_ratio": kernel_gbs / copy_gbs,
    }


def subln_quant_section(device: str, sizes: Sizes, deadline: float) -> dict[str, Any]:
    if device != "cuda":
        return {"status": "skipped", "rows": [], "note": "a Triton kernel: needs CUDA (interpreted it times nothing)"}
    rows = []
    for k in sizes.subln_features:
        if time.perf_counter() > deadline:
            break
        rows.append(subln_quant_case(sizes.tokens, k, sizes))
    done = len(rows) == len(sizes.subln_features)
    return {"status": "ok" if done else "partial", "rows": rows, "note": "" if done else "stopped at the time budget"}


# --------------------------------------------------------------------------- 4. training


def train_run(ternary: bool, device: str, sizes: Sizes, deadline: float) -> dict[str, Any]:
    """Warm-up steps, then up to ``sizes.train_steps`` timed steps (fewer if the deadline passes)."""
    from bench_train import GPU_STEP, make_train_step

    kwargs = {**GPU_STEP, **sizes.train, "device": device}
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    step, tokens = make_train_step(**kwargs, ternary=ternary)
    for _ in range(sizes.train_warmup):
        loss = step()
    times = []
    while len(times) < sizes.train_steps and time.perf_counter() < deadline:
        start = time.perf_counter()
        loss = step()
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None
    del step
    gc.collect()
    if not times:
        raise RuntimeError(f"no timed step of the ternary={ternary} model fit in the time budget")
    return {
        "ternary": ternary,
        "steps": len(times),
        "warmup_steps": sizes.train_warmup,
        "tokens_per_step": tokens,
        "tokens_per_s": tokens * len(times) / sum(times),
        "step_ms_median": statistics.median(times) * 1e3,
        "peak_memory_gib": peak,
        "last_loss": loss,
    }


def train_section(device: str, sizes: Sizes, start: float, deadline: float) -> dict[str, Any]:
    from bench_train import GPU_STEP

    _check_backend(device)
    setup = {**GPU_STEP, **sizes.train, "device": device}
    # The ternary run may stop at a bit over half the budget, so the float run gets its turn.
    ternary = train_run(True, device, sizes, start + 0.55 * (deadline - start))
    linear = train_run(False, device, sizes, deadline)
    done = ternary["steps"] == linear["steps"] == sizes.train_steps
    notes = [] if done else [f"stopped at the time budget: {ternary['steps']} / {linear['steps']} timed steps"]
    if device != "cuda":
        notes.append("peak memory is measured on CUDA only")
    return {
        "status": "ok" if done else "partial",
        "setup": setup,
        "rows": [ternary, linear],
        "speed_ratio": ternary["tokens_per_s"] / linear["tokens_per_s"],
        "memory_ratio": None if device != "cuda" else ternary["peak_memory_gib"] / linear["peak_memory_gib"],
        "note": "; ".join(notes),
    }


# --------------------------------------------------------------------------- report


def environment(device: str, argv: list[str]) -> dict[str, Any]:
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = None
    return {
        "device": device,
        "gpu": torch.cuda.get_device_name() if device == "cuda" else None,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": triton_version,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "git_commit": commit,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),  # the start
        "command": " ".join(["python bench/gpu_check.py", *argv]),
    }


def _ms(v: float) -> str:
    return f"{v:.3f} ms" if v < 10 else f"{v:.1f} ms"


def _tflops(v: float) -> str:
    return f"{v:.1f} TFLOP/s" if v >= 1 else f"{v:.2g} TFLOP/s"


def table_rows(report: dict[str, Any]) -> list[tuple[str, ...]]:
    """(section, case, bitk, baseline, bitk vs baseline, note) for every figure and note of the report."""
    sections = report["sections"]
    rows = []
    tests = sections["kernel_tests"]
    if "returncode" in tests:
        counts = ", ".join(
            f"{tests[k]} {k}" for k in ("passed", "failed", "skipped", "errors") if tests[k] or k == "passed"
        )
        where = f"{tests['seconds']:.0f} s on {tests['device']}"
        note = "; ".join(n for n in (where, tests["note"]) if n)
        rows.append(("kernel tests", " ".join(tests["paths"]), counts, "", tests["status"], note))
    for r in sections["bitlinear"].get("rows", []):
        case = f"{r['model']} {r['tokens']} x {r['in']}->{r['out']}"
        for key, label in (("forward", "forward"), ("forward_backward", "forward+backward")):
            rows.append(
                (
                    f"BitLinear {label}",
                    case,
                    f"{_ms(r[f'{key}_bitk_ms'])} ({_tflops(r[f'{key}_bitk_tflops'])})",
                    _ms(r[f"{key}_linear_ms"]),
                    f"{r[f'{key}_speedup']:.2f}x",
                    f"target {TARGETS[label]}",
                )
            )
    for r in sections["subln_quant"].get("rows", []):
        rows.append(
            (
                "SubLN+quant",
                f"{r['tokens']} x {r['features']} bf16",
                f"{r['kernel_gb_per_s']:.0f} GB/s ({_ms(r['kernel_ms'])})",
                f"copy {r['copy_gb_per_s']:.0f} GB/s",
                f"{r['bandwidth_ratio']:.2f}",
                f"target {TARGETS['subln']}",
            )
        )
    train = sections["train"]
    if train.get("rows"):
        ternary, linear = train["rows"]
        setup = train["setup"]

        def figure(r: dict[str, Any]) -> str:
            memory = f", {r['peak_memory_gib']:.2f} GiB peak" if r["peak_memory_gib"] is not None else ""
            return f"{r['tokens_per_s']:,.0f} tokens/s{memory}"

        memory = f"; memory {train['memory_ratio']:.2f}x" if train["memory_ratio"] is not None else ""
        rows.append(
            (
                "training",
                f"{setup['preset']} {setup['micro_batch']} x {setup['block']}, {ternary['steps']} steps",
                figure(ternary),
                f"ternary=false: {figure(linear)}",
                f"{train['speed_ratio']:.2f}x",
                f"target {TARGETS['train']}{memory}",
            )
        )
    for name, sec in sections.items():
        if sec["status"] not in ("ok", "passed") and sec.get("note") and "returncode" not in sec:
            rows.append((SECTION_TITLES[name], "", "", "", sec["status"], sec["note"]))
    return rows


def print_report(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    env = report["environment"]
    title = f"bitk GPU check on {env['gpu'] or env['device']}" + (" (--quick)" if report["quick"] else "")
    caption = (
        f"torch {env['torch']} (CUDA {env['cuda']}), triton {env['triton']}, bitk {env['git_commit']}, "
        f"{env['date']}; {report['total_seconds']:.0f} s in all"
    )
    table = Table(title=title, caption=caption)
    for column in ("section", "case", "bitk", "baseline", "bitk vs baseline", "note"):
        table.add_column(column)
    for row in table_rows(report):
        table.add_row(*row)
    Console(width=None if sys.stdout.isatty() else 180).print(table)


def _log(message: str) -> None:
    print(f"gpu_check: {message}", file=sys.stderr, flush=True)


def run_section(name: str, clock: Clock, sizes: Sizes, body: Callable[[float, float], dict[str, Any]]):
    """Run one section within its budget, or skip it when what is left of the total is too little."""
    allowance = min(sizes.budgets_s[name], clock.left())
    if allowance < 0.25 * sizes.budgets_s[name]:
        note = f"skipped: {max(clock.left(), 0):.0f} s left of the {clock.total_s:.0f} s total"
        _log(f"{name}: {note}")
        return {"status": "skipped", "note": note}
    _log(f"{name} (up to {allowance:.0f} s) at {clock.elapsed():.0f} s")
    start = time.perf_counter()
    try:
        result = body(start, start + allowance)
    except Exception as exc:  # one broken section must not cost the figures of the others
        traceback.print_exc()
        result = {"status": "error", "note": f"{type(exc).__name__}: {exc}"}
    result["seconds"] = time.perf_counter() - start
    return result


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python bench/gpu_check.py", description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the figures as JSON")
    parser.add_argument("--quick", action="store_true", help="small shapes and 3 training steps (the CPU dry run)")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="default cuda")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        _log("no CUDA device here (torch.cuda.is_available() is False); `--device cpu --quick` is the CPU dry run")
        return 2
    if args.device == "cuda":
        os.environ.pop("TRITON_INTERPRET", None)  # before bitk's kernels are imported: compiled, not interpreted
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_kernels, bench_train
    sizes = QUICK if args.quick else FULL
    clock = Clock(sizes.total_s)
    device = args.device
    env = environment(device, argv)  # first: a CUDA error in a section would break the device queries
    sections = {
        "kernel_tests": run_section(
            "kernel_tests", clock, sizes, lambda start, end: kernel_tests(device, args.quick, end - start)
        ),
        "bitlinear": run_section(
            "bitlinear", clock, sizes, lambda start, end: bitlinear_section(device, args.quick, sizes, end)
        ),
        "subln_quant": run_section(
            "subln_quant", clock, sizes, lambda start, end: subln_quant_section(device, sizes, end)
        ),
        "train": run_section("train", clock, sizes, lambda start, end: train_section(device, sizes, start, end)),
    }
    tests_passed = sections["kernel_tests"]["status"] == "passed"
    errors = [name for name, sec in sections.items() if sec["status"] == "error"]
    exit_code = 0 if tests_passed and not errors else 1
    report = {
        "environment": env,
        "quick": args.quick,
        "total_budget_s": sizes.total_s,
        "total_seconds": clock.elapsed(),
        "sections": sections,
        "exit_code": exit_code,
    }
    print_report(report)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.json.with_suffix(".tmp")
        tmp.write_text(json.dumps(report, indent=2) + "\n")
        tmp.replace(args.json)
    if exit_code:
        why = [] if tests_passed else [f"kernel tests {sections['kernel_tests']['status']}"]
        _log("; ".join(why + [f"{name} raised" for name in errors]))
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
