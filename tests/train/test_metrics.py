"""bitk.train.metrics: metrics.jsonl records, resume truncation, the loss curve, the progress bar."""

from __future__ import annotations

import json

from bitk.train.metrics import METRICS_FILE, Metrics, ProgressBar, plot_loss_curve, read_metrics


def test_records_round_trip_and_non_finite_values_are_strings(tmp_path):
    m = Metrics(tmp_path)
    m.log({"kind": "train", "step": 10, "loss": 2.5})
    m.log({"kind": "bad_step", "step": 11, "loss": float("nan"), "grad_norm": float("inf")})
    m.close()
    records = read_metrics(tmp_path / METRICS_FILE)
    assert records == [
        {"kind": "train", "step": 10, "loss": 2.5},
        {"kind": "bad_step", "step": 11, "loss": "nan", "grad_norm": "inf"},
    ]


def test_resume_drops_records_past_the_checkpoint_and_ignores_a_torn_line(tmp_path):
    path = tmp_path / METRICS_FILE
    lines = [json.dumps({"kind": "train", "step": s, "loss": 1.0}) for s in (10, 20, 30)]
    path.write_text("\n".join(lines) + '\n{"kind": "tra')  # a kill tore the last line
    Metrics(tmp_path, resume_step=20).close()
    assert [r["step"] for r in read_metrics(path)] == [10, 20]
    Metrics(tmp_path).close()  # a fresh run starts empty
    assert read_metrics(path) == []


def test_disabled_metrics_write_nothing(tmp_path):
    m = Metrics(tmp_path / "out", enabled=False)
    m.log({"kind": "train", "step": 1, "loss": 1.0})
    m.close()
    assert not (tmp_path / "out").exists()


def test_loss_curve_png(tmp_path):
    m = Metrics(tmp_path)
    for step in range(10, 60, 10):
        m.log({"kind": "train", "step": step, "loss": 5.0 / step})
    m.log({"kind": "eval", "step": 50, "loss": 0.2})
    m.close()
    png = plot_loss_curve(tmp_path / METRICS_FILE, tmp_path / "loss.png", title="t")
    assert png is not None and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot_loss_curve(tmp_path / "missing.jsonl", tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()


def test_progress_prints_lines_without_a_bar_and_nothing_when_quiet(capsys):
    with ProgressBar(5, enabled=False) as bar:
        bar.update(1, "x")
        bar.print("main process line")
    with ProgressBar(5, enabled=True, quiet=True) as bar:
        bar.update(1, "x")
        bar.print("other process line")
    out = capsys.readouterr()
    assert "main process line" in out.out
    assert "other process line" not in out.out + out.err
