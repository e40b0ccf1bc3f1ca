"""bench/bench_train.py's influence-mixture measurements, on a small model: one re-weighting per
window at the interval the run sets, sane figures, and the gate's pair of calls (a step that
re-weights, a plain step). Nothing here judges a speed; the gate (bench/gate.py) does that."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"
SMALL = [
    "model.num_hidden_layers=2",
    "model.hidden_size=64",
    "model.intermediate_size=128",
    "data.block_size=32",
    "data.max_eval_tokens=32",
    "data.probe_tokens=64",
    "data.mixture_every=2",
]


def _load():
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location("bench_train_under_test", BENCH / "bench_train.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCH))


bench_train = _load()


def test_mixture_sources_are_three_jsonl_files_of_text(tmp_path):
    paths = bench_train.write_mixture_sources(tmp_path)
    assert [p.stem for p in paths] == list(bench_train.MIXTURE_SOURCES)
    rows = [[json.loads(line) for line in p.read_text().splitlines()] for p in paths]
    assert all(rows) and all(set(r) == {"text"} and r["text"] for part in rows for r in part)
    assert [len(r["text"]) for r in rows[2]] == [len(r["text"]) for r in rows[0]]  # noise: the first half's lengths


def test_mixture_overhead_times_one_reweighting_per_window():
    result = bench_train.measure_mixture_overhead(SMALL, windows=2)
    assert result["mixture_every"] == 2 and result["probe_tokens"] == 64
    assert len(result["remix_seconds"]) == 2 and all(s > 0 for s in result["remix_seconds"])
    assert len(result["throughput_ratios"]) == 2 and result["throughput_ratio"] > 0
    assert 0 < result["amortised_overhead_fraction"] < 1 and 0 < result["remix_fraction"] < 1
    assert set(result["weights"]) == set(bench_train.MIXTURE_SOURCES)
    assert abs(sum(result["weights"].values()) - 1) < 1e-9


def test_gate_pair_steps_both_runs():
    impls = bench_train.mixture_due_step(SMALL)
    assert set(impls) == {"influence", "fixed"}
    assert [impls["influence"]() for _ in range(3)] == [1, 2, 3]
    assert [impls["fixed"]() for _ in range(2)] == [1, 2]
