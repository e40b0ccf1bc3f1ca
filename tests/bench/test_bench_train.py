"""bench/bench_train.py's influence-mixture measurements, on a small model: one re-weighting per
window at the interval the run sets, sane figures, and the gate's pair of calls (a step that
re-weights, a plain step). Nothing here judges a speed; the gate (bench/gate.py) does that."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch

from bitk.models import CausalLM, preset

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


def test_vs_llama_steps_train_three_models_of_one_shape():
    """bitk's ternary and float models and transformers' Llama of the same shape each take one step.

    The Llama has bitk's block without SubLN: bitk's float model has exactly the SubLN gains more
    parameters (q_size + intermediate_size per layer), and the Llama's weights load into bitk's
    float model without SubLN, which then computes the Llama's logits."""
    steps = bench_train.vs_llama_steps("tiny", (1, 16))
    assert set(steps) == {"ternary", "float", "llama"}
    assert all(step.tokens == 16 for step in steps.values())
    losses = {name: step() for name, step in steps.items()}
    assert all(math.isfinite(loss) for loss in losses.values()), losses
    assert all(abs(loss - math.log(4096)) < 1.0 for loss in losses.values()), losses  # random init: ~ln(vocab)

    llama, bitk_float = steps["llama"].model, steps["float"].model
    config = preset("tiny")
    gap = bench_train.llama_parameter_gap("tiny")
    assert gap == config.num_hidden_layers * (config.q_size + config.intermediate_size) == 4096
    n_llama = sum(p.numel() for p in llama.parameters())  # the tied head counted once, as bitk counts it
    assert n_llama == bitk_float.num_parameters() - gap
    assert steps["ternary"].model.num_parameters() == bitk_float.num_parameters()
    assert llama.config._attn_implementation == "sdpa" and llama.config.tie_word_embeddings
    assert all(p.dtype == torch.float32 for p in llama.parameters())

    plain = CausalLM(preset("tiny", ternary=False, subln=False)).eval()
    plain.load_state_dict(llama.state_dict())
    assert plain.num_parameters() == n_llama
    ids = torch.randint(0, 4096, (1, 16), generator=torch.Generator().manual_seed(1))
    llama.eval()
    with torch.no_grad():
        torch.testing.assert_close(plain(ids).logits, llama(input_ids=ids).logits, rtol=1e-4, atol=1e-4)


def test_vs_llama_steps_builds_only_the_models_asked_for():
    steps = bench_train.vs_llama_steps("tiny", (1, 16), models=("ternary", "llama"))
    assert set(steps) == {"ternary", "llama"}
    assert all(math.isfinite(step()) for step in steps.values())
    with pytest.raises(ValueError, match="unknown models \\['bf16'\\]"):
        bench_train.vs_llama_steps("tiny", (1, 16), models=("ternary", "bf16"))


def test_measure_vs_llama_reports_paired_ratios():
    result = bench_train.measure_vs_llama("tiny", (1, 16), rounds=2, warmup=1)
    assert result["tokens_per_step"] == 16 and result["rounds"] == 2
    assert all(result[f"tokens_per_s_{name}"] > 0 for name in ("ternary", "float", "llama"))
    assert len(result["ternary_vs_llama"]) == 2 and result["ternary_vs_llama_median"] > 0
    assert len(result["float_vs_llama"]) == 2 and result["float_vs_llama_median"] > 0
