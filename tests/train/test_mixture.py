"""data.mixture=influence in the trainer: the noise source loses weight, exact resume, records, bad input."""

from __future__ import annotations

import importlib.util
import math
import re
from pathlib import Path

import pytest
import torch

from bitk.train import loop
from bitk.train.__main__ import main
from bitk.train.config import parse_args
from bitk.train.metrics import read_metrics
from bitk.train.state import latest_checkpoint, load_state
from bitk_train_testing import train_until_first_save


def _example():
    """docs/examples/mixture_evidence.py, whose sources this file trains on (a smaller version of its runs)."""
    path = Path(__file__).resolve().parents[2] / "docs" / "examples" / "mixture_evidence.py"
    spec = importlib.util.spec_from_file_location("mixture_evidence", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_sources(folder) -> list[str]:
    """Two halves of the embedded corpus's train split (the probe's distribution) and random characters."""
    return [str(p) for p in _example().write_sources(Path(folder))]


def mixture_records(out) -> list[dict]:
    return [r for r in read_metrics(out / "metrics.jsonl") if r["kind"] == "mixture"]


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """The same 60 steps of a small model on a, b and noise, with the influence mixture and with fixed
    equal weights (one torch thread, as the trainer tests' autouse fixture sets for each test)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("synthetic")
    a, b, noise = write_sources(root / "data")
    runs = {}
    for mixture in ("influence", "fixed"):
        out = root / mixture
        args = [
            "model.num_hidden_layers=2",
            "model.hidden_size=128",
            "model.intermediate_size=384",
            "model.num_attention_heads=2",
            "model.num_key_value_heads=1",
            f"data.sources=[{a},{b},{noise}]",
            f"data.mixture={mixture}",
            "data.probe=default",
            "data.probe_tokens=1024",
            "data.mixture_every=10",
            "data.block_size=64",
            "training.max_steps=60",
            "training.global_batch_size=16",
            "training.eval_every=0",
            "logging.log_every=10",
            "logging.progress=false",
            "export_gguf=none",
            "device=cpu",
            f"output_dir={out}",
        ]
        runs[mixture] = (loop.train(parse_args(args)), out)
    torch.set_num_threads(threads)
    return runs


def test_influence_starves_the_noise_and_serves_the_probe(synthetic):
    summary, out = synthetic["influence"]
    fixed, _ = synthetic["fixed"]
    records = mixture_records(out)
    assert [r["step"] for r in records] == [0, 10, 20, 30, 40, 50]
    start, end = records[0], records[-1]
    assert start["mixture/noise"] == pytest.approx(1 / 3)
    # the noise source falls well below its start and below both sources of the probe's distribution
    assert end["mixture/noise"] < 0.5 * start["mixture/noise"]
    assert end["mixture/noise"] < min(end["mixture/a"], end["mixture/b"])
    assert summary["mixture"] == {n: pytest.approx(end[f"mixture/{n}"]) for n in ("a", "b", "noise")}
    for r in records[1:]:
        assert math.isclose(sum(r[f"mixture/{n}"] for n in ("a", "b", "noise")), 1.0)
        assert min(r[f"mixture/{n}"] for n in ("a", "b", "noise")) >= 0.1 / 3 - 1e-12  # the floor
        assert r["seconds"] > 0 and all(f"alignment/{n}" in r for n in ("a", "b", "noise"))
    # and the probe's loss ends lower than with fixed equal weights, in the same steps
    assert summary["probe_loss"] < fixed["probe_loss"]
    assert fixed["mixture"] == {n: pytest.approx(1 / 3) for n in ("a", "b", "noise")}


def test_tokens_per_source_are_logged_and_plotted(synthetic):
    summary, out = synthetic["influence"]
    train = [r for r in read_metrics(out / "metrics.jsonl") if r["kind"] == "train"]
    assert [r["step"] for r in train] == [10, 20, 30, 40, 50, 60]
    for r in train:
        assert sum(r[f"tokens/{n}"] for n in ("a", "b", "noise")) == r["tokens"]
    assert summary["source_tokens"] == {n: train[-1][f"tokens/{n}"] for n in ("a", "b", "noise")}
    assert train[-1]["tokens/noise"] < train[-1]["tokens/a"]
    png = out / "mixture.png"
    assert summary["mixture_curve"] == str(png) and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    evals = [r for r in read_metrics(out / "metrics.jsonl") if r["kind"] == "eval"]
    assert evals[-1]["probe_loss"] == pytest.approx(summary["probe_loss"])
    state = load_state(latest_checkpoint(out))[2]["data"]
    assert state["weights"] == pytest.approx(list(summary["mixture"].values()))
    assert state["mixture_version"] == 5


def test_resume_reproduces_the_mixture_bit_for_bit(micro_config, tmp_path, monkeypatch):
    a, b, noise = write_sources(tmp_path / "data")
    steps = (
        f"data.sources=[{a},{b},{noise}]",
        "data.mixture=influence",
        "data.probe=default",
        "data.probe_tokens=128",
        "data.mixture_every=2",
        "training.max_steps=8",
        "training.eval_every=0",
    )
    straight = loop.train(micro_config(*steps, "checkpoint.save_every=0", output_dir=tmp_path / "straight"))
    half = tmp_path / "half"
    train_until_first_save(micro_config(*steps, "checkpoint.save_every=4", output_dir=half), monkeypatch)
    resumed = loop.train(micro_config(*steps, "checkpoint.save_every=0", output_dir=half))

    def logged(out):  # the timings differ
        records = [r for r in read_metrics(out / "metrics.jsonl") if r["kind"] in ("train", "mixture")]
        return [{k: v for k, v in r.items() if k not in ("seconds", "tokens_per_s")} for r in records]

    assert logged(half) == logged(tmp_path / "straight")
    assert [r["step"] for r in mixture_records(half)] == [0, 2, 4, 6]
    assert mixture_records(half)[-1]["mixture/noise"] != pytest.approx(1 / 3)  # the weights did move
    s1, s2 = (load_state(r["checkpoint"]) for r in (straight, resumed))
    assert s1[2]["data"] == s2[2]["data"]
    assert all(torch.equal(s1[1][k], s2[1][k]) for k in s1[1])


def test_one_source_keeps_fixed_weights_with_a_note(micro_argv, tmp_path, capsys):
    args = micro_argv("data.mixture=influence", "data.probe=default", "training.max_steps=2", "training.eval_every=0")
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "data.mixture=influence with one source: nothing to weigh against it, the mixture stays fixed" in out
    assert mixture_records(tmp_path / "run") == []


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("data.mixture=influence",), "data.mixture=influence needs data.probe: the text the mixture should serve"),
        (("data.mixture=influence", "data.probe=EMPTY"), r"data.probe .*empty.jsonl has no text"),
        (("data.mixture=influence", "data.probe=nowhere.jsonl"), "data.probe: no such file or folder: nowhere.jsonl"),
        (("data.sources=[default,{path: default, name: default}]",), "two data sources are named 'default'"),
    ],
)
def test_bad_mixture_input_is_one_line(micro_argv, tmp_path, capsys, extra, message):
    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"text": ""}\n{"text": "  "}\n')
    extra = [e.replace("EMPTY", str(empty)) for e in extra]
    args = micro_argv("data.sources=[default,{path: default, name: again}]", *extra, "training.max_steps=2")
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("bitk.train: error: ") and "Traceback" not in err
    assert re.search(message, err.splitlines()[0])
    assert not (tmp_path / "run" / "checkpoints").exists()
