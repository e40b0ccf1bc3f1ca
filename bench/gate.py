"""Benchmark regression gate: same-run speed ratios against committed thresholds.

    python bench/gate.py                          # measure, print the table, save JSON, exit 1 on a regression
    python bench/gate.py --evaluate FILE.json     # re-judge saved measurements (no timing)
    python bench/gate.py --evaluate FILE.json --perf-md docs/perf.md   # regenerate docs/perf.md
        [--bench-json BENCH.json]   # add the full tables of `pytest bench --benchmark-json BENCH.json`

Timings on these shared machines vary several-fold from run to run, so the gate never compares
with another run's numbers. For each case of bench/cases.py it times bitk and its peer alternately
(bitk, peer, bitk, peer, ...), takes the median of the per-round ratios time(peer) / time(bitk) and
compares that with the case's minimum in bench/thresholds.toml. A failing case is measured once
more with twice the rounds before it counts, so one noisy burst does not fail CI.
Exit status: 0 all pass, 1 a regression, 2 bad usage or an inconsistent thresholds file.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import tomllib

HERE = Path(__file__).resolve().parent
THRESHOLDS = HERE / "thresholds.toml"
DEFAULT_JSON = HERE.parent / "bench-results" / "gate.json"
PERF_NOTES = HERE / "perf_notes.md"
"""Hand-measured runs (each with command, machine and date) that perf.md carries after the tables."""


class GateError(Exception):
    """Bad usage or an inconsistent thresholds file (exit status 2)."""


def load_thresholds(path: Path = THRESHOLDS) -> dict[str, dict]:
    try:
        table = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise GateError(f"cannot read thresholds {path}: {exc}") from exc
    for metric, entry in table.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("min_ratio"), (int, float)):
            raise GateError(f"{path.name}: [{metric}] needs a numeric min_ratio")
        if not str(entry.get("reason", "")).strip():
            raise GateError(f"{path.name}: [{metric}] needs a one-line reason")
    return table


def _time(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure_pair(bitk, peer, rounds: int) -> dict:
    """Alternate bitk and peer `rounds` times after one warm-up call each; ratios peer/bitk."""
    bitk(), peer()
    bitk_s, peer_s = [], []
    for _ in range(rounds):
        bitk_s.append(_time(bitk))
        peer_s.append(_time(peer))
    ratios = [p / b for b, p in zip(bitk_s, peer_s)]
    return {
        "ratio": statistics.median(ratios),
        "bitk_median_s": statistics.median(bitk_s),
        "peer_median_s": statistics.median(peer_s),
        "rounds": rounds,
    }


def measure(rounds: int, only: list[str] | None, retries: int, thresholds: dict[str, dict]) -> list[dict]:
    sys.path.insert(0, str(HERE))
    from cases import GATE_CASES, GROUPS, check_outputs

    check_coverage(thresholds, [c.metric for c in GATE_CASES])
    results = []
    for case in GATE_CASES:
        if only and case.metric not in only:
            continue
        group = GROUPS[case.group]
        impls = group.make()
        check_outputs(group, impls, [case.bitk, case.peer])  # a fast wrong codec must not pass
        threshold = thresholds[case.metric]["min_ratio"]
        m = measure_pair(impls[case.bitk], impls[case.peer], rounds)
        tries = 1
        while m["ratio"] < threshold and tries <= retries:
            m = measure_pair(impls[case.bitk], impls[case.peer], 2 * rounds)
            tries += 1
        results.append(
            {
                "metric": case.metric,
                "group": case.group,
                "bitk": case.bitk,
                "peer": case.peer,
                "params": group.params,
                "tries": tries,
                **m,
            }
        )
        print(f"  measured {case.metric}: {m['ratio']:.2f}x", file=sys.stderr, flush=True)
    return results


def check_coverage(thresholds: dict[str, dict], metrics: list[str]) -> None:
    missing = sorted(set(metrics) - set(thresholds))
    stale = sorted(set(thresholds) - set(metrics))
    if missing:
        raise GateError(f"no threshold in {THRESHOLDS.name} for: {', '.join(missing)}")
    if stale:
        raise GateError(f"{THRESHOLDS.name} has thresholds for unknown metrics: {', '.join(stale)}")


def judge(results: list[dict], thresholds: dict[str, dict]) -> list[dict]:
    judged = []
    for r in results:
        if r["metric"] not in thresholds:
            raise GateError(f"no threshold in {THRESHOLDS.name} for: {r['metric']}")
        t = thresholds[r["metric"]]
        judged.append({**r, "min_ratio": t["min_ratio"], "reason": t["reason"], "passed": r["ratio"] >= t["min_ratio"]})
    return judged


def table(judged: list[dict]) -> str:
    rows = [("metric", "measured", "threshold", "result", "reason")]
    for r in judged:
        rows.append(
            (
                r["metric"],
                f"{r['ratio']:.2f}x",
                f">= {r['min_ratio']:g}x",
                "pass" if r["passed"] else "FAIL",
                r["reason"],
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = []
    for k, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row[:4], widths)) + "  " + row[4])
        if k == 0:
            lines.append("  ".join("-" * w for w in widths) + "  " + "-" * len(row[4]))
    return "\n".join(lines)


def machine() -> dict:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    from bitk.nn import cpu as cpu_path

    flags = cpu_path.cpu_flags()
    wanted = {
        "AVX2": "avx2",
        "AVX-512": "avx512f",
        "AVX-512 VNNI": "avx512_vnni",
        "AVX-512 BF16": "avx512_bf16",
        "AVX-VNNI": "avx_vnni",
        "AMX": "amx_tile",
    }
    return {
        "cpu": cpu or "unknown",
        "cores": os.cpu_count(),
        "system": platform.platform(),
        "python": platform.python_version(),
        "flags": ", ".join(name for name, flag in wanted.items() if flag in flags) or "none of AVX2/AVX-512/AMX",
        "kernels": cpu_path.kernel_variant() or "no extension",
        "torch": torch.__version__,
    }


def benchmark_tables(bench: dict) -> list[str]:
    """Markdown tables of a pytest-benchmark JSON file, one per group, fastest first."""
    groups: dict[str, list[dict]] = {}
    for b in bench.get("benchmarks", []):
        groups.setdefault(b.get("group") or "ungrouped", []).append(b)
    info = bench.get("machine_info", {})
    lines = [
        "## Every implementation (pytest-benchmark)",
        "",
        f"Run: {bench.get('datetime', '?')[:16].replace('T', ' ')} UTC on {info.get('cpu', {}).get('brand_raw', '?')}, "
        "command `python -m pytest bench --benchmark-json bench-results/bench.json`. Each implementation",
        "is timed on its own, so caches stay warm: these are best cases.",
        "",
    ]
    for name, rows in sorted(groups.items()):
        rows.sort(key=lambda b: b["stats"]["min"])
        fastest = rows[0]["stats"]["min"]
        lines += [
            f"**{name}**",
            "",
            "| implementation | min | median | rounds | vs fastest | throughput (min) |",
            "|---|---|---|---|---|---|",
        ]
        for b in rows:
            st = b["stats"]
            impl = (b.get("param") or b["name"]).split("-")[-1]
            params = b.get("extra_info", {}).get("params")
            gps = f"{params / st['min'] / 1e9:.2f} G params/s" if params else ""
            lines.append(
                f"| {impl} | {st['min'] * 1e3:.2f} ms | {st['median'] * 1e3:.2f} ms | {st['rounds']} | "
                f"{st['min'] / fastest:.1f}x | {gps} |"
            )
        lines.append("")
    return lines


def perf_markdown(report: dict, bench: dict | None = None) -> str:
    m = report["machine"]
    lines = [
        "# Performance",
        "",
        "Generated by `python bench/gate.py --evaluate bench-results/gate.json --bench-json",
        "bench-results/bench.json --perf-md docs/perf.md` from the runs below and",
        "`bench/perf_notes.md` (runs measured by hand); do not edit by hand.",
        "",
        "## Regression gate",
        "",
        "Every ratio is time(peer) / time(bitk) measured alternately in the same run (median of the",
        "per-round ratios), so it carries across machines far better than the absolute times, which",
        "hold for this machine only.",
        "",
        f"- Date: {report['date']}",
        f"- Machine: {m['cpu']}, {m['cores']} cores, {m['system']}, Python {m['python']}",
        f"- CPU features: {m.get('flags', 'not recorded')}; bitk's C++ kernels: {m.get('kernels', 'not recorded')}; "
        f"torch {m.get('torch', 'not recorded')}",
        f"- Command: `{report['command']}`",
        f"- Result: {'all pass' if all(r['passed'] for r in report['results']) else 'REGRESSION'}",
        "",
        "| metric | bitk | peer | ratio | threshold | result | bitk median | bitk throughput |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        gps = r["params"] / r["bitk_median_s"] / 1e9
        lines.append(
            f"| {r['metric']} | {r['bitk']} | {r['peer']} | {r['ratio']:.2f}x | >= {r['min_ratio']:g}x | "
            f"{'pass' if r['passed'] else 'FAIL'} | {r['bitk_median_s'] * 1e3:.2f} ms | {gps:.2f} G params/s |"
        )
    lines += ["", "Thresholds and their reasons: `bench/thresholds.toml`.", ""]
    if bench is not None:
        lines += benchmark_tables(bench)
    if PERF_NOTES.is_file():
        lines += ["", PERF_NOTES.read_text().rstrip(), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python bench/gate.py", description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7, help="alternating rounds per case (default 7)")
    parser.add_argument("--retries", type=int, default=1, help="re-measurements of a failing case (default 1)")
    parser.add_argument("--only", nargs="+", metavar="METRIC", help="measure only these metrics")
    parser.add_argument(
        "--json", type=Path, default=DEFAULT_JSON, help=f"where to save results (default {DEFAULT_JSON})"
    )
    parser.add_argument("--evaluate", type=Path, metavar="FILE", help="judge saved measurements instead of timing")
    parser.add_argument("--perf-md", type=Path, metavar="FILE", help="also write the perf table as Markdown")
    parser.add_argument("--bench-json", type=Path, metavar="FILE", help="pytest-benchmark JSON to add to --perf-md")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.retries < 0:
        parser.error("--rounds must be >= 1 and --retries >= 0")
    try:
        thresholds = load_thresholds()
        if args.evaluate:
            try:
                report = json.loads(args.evaluate.read_text())
                results = report["results"]
            except (OSError, ValueError, KeyError) as exc:
                raise GateError(f"cannot read measurements {args.evaluate}: {exc}") from exc
            report["results"] = judge(results, thresholds)
            report["json"] = str(args.evaluate)
        else:
            judged = judge(measure(args.rounds, args.only, args.retries, thresholds), thresholds)
            report = {
                "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                "command": " ".join(["python bench/gate.py", *(argv if argv is not None else sys.argv[1:])]),
                "machine": machine(),
                "results": judged,
                "json": str(args.json),
            }
            args.json.parent.mkdir(parents=True, exist_ok=True)
            tmp = args.json.with_suffix(".tmp")
            tmp.write_text(json.dumps(report, indent=2) + "\n")
            tmp.replace(args.json)
    except GateError as exc:
        print(f"gate: {exc}", file=sys.stderr)
        return 2
    print(table(report["results"]))
    if args.perf_md:
        bench = None
        if args.bench_json:
            try:
                bench = json.loads(args.bench_json.read_text())
            except (OSError, ValueError) as exc:
                print(f"gate: cannot read benchmark results {args.bench_json}: {exc}", file=sys.stderr)
                return 2
        args.perf_md.write_text(perf_markdown(report, bench))
    failed = [r["metric"] for r in report["results"] if not r["passed"]]
    if failed:
        print(f"\ngate: REGRESSION in {', '.join(failed)}", file=sys.stderr)
        return 1
    print(f"\ngate: {len(report['results'])} ratios at or above their thresholds")
    return 0


if __name__ == "__main__":
    sys.exit(main())
