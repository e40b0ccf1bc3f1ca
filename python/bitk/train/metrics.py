"""Where the trainer's numbers go: metrics.jsonl, loss.png, TensorBoard / W&B, the progress bar.

metrics.jsonl holds one JSON object per line, each with "kind" and "step":
  {"kind": "train", "step": 10, "tokens": 40960, "loss": 6.91, "lr": 0.001, "grad_norm": 1.2,
   "tokens_per_s": 5123.4, "elapsed_s": 8.0, "skipped_steps": 0[, "mfu": 0.41]
   [, "objectives": {"ce": 6.1, "logits_kd": 0.03}]     (each objective's value, when not plain CE)
   , "tokens/web": 30720, "tokens/code": 10240}         (training tokens drawn from each source so far)
  {"kind": "eval", "step": 100, "tokens": ..., "loss": 4.2, "perplexity": 66.7, "eval_tokens": 16320
   [, "probe_loss": 4.0, "probe_perplexity": 54.6]}     (data.probe's loss)
  {"kind": "mixture", "step": 0, "tokens": 0, "mixture/web": 0.5, "mixture/code": 0.5}  (the start weights)
  {"kind": "mixture", "step": 20, ..., "mixture/web": 0.61, ..., "alignment/web": 0.42, ..., "seconds": 0.8}
      (data.mixture=influence: the weights after each re-weighting, each source's gradient alignment)
  {"kind": "eval_as_exported", "step": 100, ..., "numerics": "i2s", "runtime": "bitnet.cpp"}  (the GGUF's numerics)
  {"kind": "eval_tasks", "step": 100, "tokens": ..., "tasks/sst2/acc": 0.61, ...}  (training.eval_tasks)
  {"kind": "bad_step", "step": 41, "loss": "nan", "grad_norm": "nan", "consecutive": 1}
"loss" of a train record is the mean over the good steps since the previous record. Only the
main process writes. On resume, records past the resumed step (written after that checkpoint by
the interrupted run) are dropped, so the file describes the run that the checkpoints continue.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import torch

from .distributed import DistInfo, all_reduce_mean
from .flops import mfu

__all__ = [
    "METRICS_FILE",
    "LOSS_CURVE_FILE",
    "MIXTURE_CURVE_FILE",
    "Metrics",
    "ProgressBar",
    "Window",
    "format_record",
    "format_summary",
    "objectives_text",
    "plot_loss_curve",
    "plot_mixture",
    "read_metrics",
]

METRICS_FILE = "metrics.jsonl"
LOSS_CURVE_FILE = "loss.png"
MIXTURE_CURVE_FILE = "mixture.png"


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl file (a torn last line, from a kill, is ignored)."""
    records = []
    path = Path(path)
    if not path.is_file():
        return records
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


class Metrics:
    """Writes records to metrics.jsonl and, when asked, TensorBoard and W&B (main process only)."""

    def __init__(
        self,
        output_dir: str | Path,
        *,
        enabled: bool = True,
        resume_step: int | None = None,
        tensorboard: bool = False,
        wandb: bool = False,
        wandb_project: str = "bitk",
        config: dict[str, Any] | None = None,
    ) -> None:
        self.enabled = enabled
        self.path = Path(output_dir) / METRICS_FILE
        self._file = None
        self._tb = None
        self._wandb = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = [r for r in read_metrics(self.path) if r.get("step", 0) <= resume_step] if resume_step else []
        with open(self.path, "w") as f:  # rewritten: a fresh run starts empty, a resumed one keeps its past
            f.writelines(json.dumps(r) + "\n" for r in kept)
        # line-buffered: a kill loses at most the last line; open for the run, closed by close()
        self._file = open(self.path, "a", buffering=1)  # noqa: SIM115
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise ValueError(
                    "logging.tensorboard=true needs the tensorboard package: pip install tensorboard"
                ) from e
            self._tb = SummaryWriter(str(Path(output_dir) / "tensorboard"), purge_step=resume_step)
        if wandb:
            try:
                import wandb as wandb_module
            except ImportError as e:
                raise ValueError("logging.wandb=true needs the wandb package: pip install wandb") from e
            self._wandb = wandb_module.init(
                project=wandb_project, name=Path(output_dir).name, config=config, dir=str(output_dir), resume="allow"
            )

    def log(self, record: dict[str, Any]) -> None:
        """Append one record ("kind" and "step" required); numbers also go to TensorBoard / W&B."""
        if not self.enabled:
            return
        clean = {k: (v if not isinstance(v, float) or math.isfinite(v) else str(v)) for k, v in record.items()}
        try:
            self._file.write(json.dumps(clean) + "\n")
        except OSError as e:  # a full disk: name the file (write's error names none)
            if e.filename is None:
                e.filename = str(self.path)
            raise
        kind, step = record["kind"], record["step"]
        flat = {}
        for k, v in record.items():  # one level of nesting ("objectives": {"ce": ...}) becomes objectives/ce
            flat.update({f"{k}/{sub}": x for sub, x in v.items()} if isinstance(v, dict) else {k: v})
        scalars = {
            f"{kind}/{k}": v
            for k, v in flat.items()
            if k not in ("kind", "step")
            and isinstance(v, (int, float))
            and not isinstance(v, bool)
            and math.isfinite(v)
        }
        if self._tb is not None:
            for key, value in scalars.items():
                self._tb.add_scalar(key, value, step)
        if self._wandb is not None:
            self._wandb.log(scalars, step=step)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None


def plot_loss_curve(metrics_path: str | Path, png_path: str | Path, title: str = "") -> Path | None:
    """Plot train (and eval) loss against step into ``png_path`` (matplotlib, Agg); None if no records."""
    records = read_metrics(metrics_path)
    train = [(r["step"], r["loss"]) for r in records if r.get("kind") == "train" and isinstance(r.get("loss"), float)]
    evals = [(r["step"], r["loss"]) for r in records if r.get("kind") == "eval" and isinstance(r.get("loss"), float)]
    if not train and not evals:
        return None
    from matplotlib.figure import Figure  # without pyplot: rendered by Agg, no GUI backend, no global state

    fig = Figure(figsize=(7, 4.2), dpi=110)
    ax = fig.add_subplot(1, 1, 1)
    if train:
        ax.plot(*zip(*train), label="train loss", linewidth=1.2)
    if evals:
        ax.plot(*zip(*evals), "o-", label="held-out loss", linewidth=1.2, markersize=4)
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats / token)")
    ax.set_title(title or "bitk training")
    ax.grid(True, alpha=0.3)
    ax.legend()
    return _save_png(fig, png_path)


def _save_png(fig: Any, png_path: str | Path) -> Path:
    """Lay out ``fig`` and write it to ``png_path`` through a temporary file (never half a PNG)."""
    fig.tight_layout()
    png_path = Path(png_path)
    tmp = png_path.with_name(f".{png_path.name}.tmp")
    fig.savefig(tmp, format="png")
    tmp.replace(png_path)
    return png_path


def plot_mixture(metrics_path: str | Path, png_path: str | Path, title: str = "") -> Path | None:
    """Plot each source's mixture weight and its share of the tokens drawn against step into
    ``png_path`` (loss.png's companion); None without "mixture" records."""
    records = read_metrics(metrics_path)
    mixes = [r for r in records if r.get("kind") == "mixture"]
    if not mixes:
        return None
    names = [k.removeprefix("mixture/") for k in mixes[0] if k.startswith("mixture/")]
    trains = [r for r in records if r.get("kind") == "train" and any(f"tokens/{n}" in r for n in names)]
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 6.4 if trains else 4.2), dpi=110)
    axes = fig.subplots(2 if trains else 1, 1, sharex=True, squeeze=False)[:, 0]
    last = max([r["step"] for r in records if isinstance(r.get("step"), int)], default=0)
    for name in names:
        steps = [r["step"] for r in mixes] + [last]
        weights = [r.get(f"mixture/{name}") for r in mixes]
        axes[0].step(steps, [*weights, weights[-1]], where="post", label=name, linewidth=1.4)
    axes[0].set_ylabel("mixture weight")
    axes[0].set_ylim(bottom=0)
    axes[0].set_title(title or "bitk training: data mixture")
    if trains:
        steps = [r["step"] for r in trains]
        totals = [sum(r.get(f"tokens/{n}", 0) for n in names) or 1 for r in trains]
        for name in names:
            shares = [r.get(f"tokens/{name}", 0) / t for r, t in zip(trains, totals)]
            axes[1].plot(steps, shares, label=name, linewidth=1.2)
        axes[1].set_ylabel("share of tokens drawn so far")
        axes[1].set_ylim(bottom=0)
    axes[-1].set_xlabel("step")
    for ax in axes:
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    return _save_png(fig, png_path)


class ProgressBar:
    """One rich progress bar over the steps (on stderr), or plain lines when off.

    ``enabled=None`` shows the bar when stderr is a terminal. `print` writes a line above the bar
    (or to stdout without one). ``quiet`` (the non-main processes of a distributed run) shows and
    prints nothing.
    """

    def __init__(self, total: int, start: int = 0, enabled: bool | None = None, quiet: bool = False) -> None:
        self.total = total
        self.quiet = quiet
        if quiet:
            enabled = False
        if enabled is None:
            enabled = sys.stderr.isatty()
        self._progress = None
        if enabled:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._progress = Progress(
                TextColumn("training"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("steps"),
                TextColumn("{task.fields[info]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=Console(stderr=True),
            )
            self._task = self._progress.add_task("train", total=total, completed=start, info="")

    def __enter__(self) -> ProgressBar:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._progress is not None:
            self._progress.stop()

    def update(self, step: int, info: str | None = None) -> None:
        if self._progress is not None:
            fields = {} if info is None else {"info": info}
            self._progress.update(self._task, completed=step, **fields)

    def print(self, line: str) -> None:
        if self.quiet:
            return
        if self._progress is not None:
            self._progress.console.print(line, highlight=False, markup=False, soft_wrap=True)
        else:
            print(line, flush=True)


class Window:
    """Sums over the steps since the last log record (good steps only for loss and norm)."""

    def __init__(self) -> None:
        self.last_loss: float | None = None
        self.last_parts: dict[str, float] | None = None
        self._reset()

    def _reset(self) -> None:
        self.loss = self.norm = self.seconds = 0.0
        self.good = self.tokens = 0
        self.parts: dict[str, torch.Tensor] = {}
        self.part_steps: dict[str, int] = {}

    def add(self, loss: float, norm: float, parts: dict[str, torch.Tensor] | None = None) -> None:
        """A good step; ``parts`` (each objective's value, on the device) are summed without a host sync."""
        self.loss += loss
        self.norm += norm
        self.good += 1
        for name, value in (parts or {}).items():
            self.parts[name] = self.parts.get(name, 0.0) + value
            self.part_steps[name] = self.part_steps.get(name, 0) + 1

    def record(
        self,
        step: int,
        tokens: int,
        optimizer: Any,
        skipped: int,
        info: DistInfo,
        peak: float | None,
        model_flops: float,
    ) -> dict[str, Any]:
        tokens_per_s = self.tokens / self.seconds if self.seconds > 0 else 0.0
        loss = self.loss / self.good if self.good else math.nan
        rec = {
            "kind": "train",
            "step": step,
            "tokens": tokens,
            "loss": loss,
            "lr": optimizer.param_groups[-1]["lr"],
            "grad_norm": self.norm / self.good if self.good else math.nan,
            "tokens_per_s": tokens_per_s,
            "skipped_steps": skipped,
        }
        value = mfu(tokens_per_s / info.world_size, model_flops, peak)
        if value is not None:
            rec["mfu"] = value
        if self.parts:  # each objective's mean since the last record (one sync per record, not per step)
            names = sorted(self.parts)
            values = torch.stack(
                [torch.as_tensor(self.parts[n], dtype=torch.float32) / self.part_steps[n] for n in names]
            )
            rec["objectives"] = dict(zip(names, all_reduce_mean(values, info).tolist()))
        if self.good:
            self.last_loss = loss
            self.last_parts = rec.get("objectives")
        self._reset()
        return rec


def objectives_text(values: dict[str, float], weights: dict[str, float] | None) -> str:
    """'ce 3.2100 + 0.5 x dlm 8.1000': each objective's value as it enters the weighted total."""
    terms = []
    for name, value in values.items():
        w = (weights or {}).get(name, 1.0)
        terms.append(f"{'' if w == 1 else f'{w:g} x '}{name} {value:.4f}")
    return " + ".join(terms)


def format_record(r: dict[str, Any], max_steps: int, weights: dict[str, float] | None = None) -> str:
    """One log line; with several objectives the loss is followed by its terms: 'loss 7.1 = ce 3.2 + ...'."""
    line = f"step {r['step']:>6}/{max_steps} | loss {r['loss']:.4f}"
    if "objectives" in r:
        line += f" = {objectives_text(r['objectives'], weights)}"
    line += (
        f" | lr {r['lr']:.2e} | grad norm {r['grad_norm']:.3f} | {r['tokens_per_s']:,.0f} tok/s | "
        f"{r['tokens']:,} tokens"
    )
    if "mfu" in r:
        line += f" | MFU {100 * r['mfu']:.1f}%"
    return line


def format_summary(s: dict[str, Any]) -> str:
    minutes, seconds = divmod(s["seconds"], 60)
    lines = [
        f"bitk.train: {'stopped by ' + s['stopped'] if s['stopped'] else 'done'} after {s['steps']} steps, "
        f"{s['tokens']:,} tokens, {int(minutes)}m{seconds:04.1f}s"
    ]
    if s["train_loss"] is not None:
        terms = s.get("train_objectives") if s.get("objective_weights") else None
        lines.append(
            f"  train loss        {s['train_loss']:.4f}"
            + (f" = {objectives_text(terms, s['objective_weights'])}" if terms else "")
        )
    if s["eval_loss"] is not None:
        what = "held-out CE      " if s.get("objective_weights") else "held-out loss    "
        lines.append(f"  {what} {s['eval_loss']:.4f} (perplexity {s['eval_perplexity']:.2f})")
    if s.get("probe_loss") is not None:
        lines.append(f"  probe loss        {s['probe_loss']:.4f}")
    if s.get("mixture"):
        lines.append("  mixture           " + ", ".join(f"{n} {w:.3f}" for n, w in s["mixture"].items()))
    if s["skipped_steps"]:
        lines.append(f"  skipped steps     {s['skipped_steps']} (non-finite loss)")
    lines.append(f"  checkpoint        {s['checkpoint']}")
    lines.append(f"  metrics           {s['metrics']}")
    if s["loss_curve"]:
        lines.append(f"  loss curve        {s['loss_curve']}")
    if s.get("mixture_curve"):
        lines.append(f"  mixture curve     {s['mixture_curve']}")
    if s["gguf"]:
        lines.append(f"  GGUF              {s['gguf']}")
    if s.get("gguf_eval_loss") is not None:
        lines.append(
            f"  as the GGUF runs  {s['gguf_eval_loss']:.4f} (perplexity {s['gguf_eval_perplexity']:.2f}, "
            f"{s['gguf_runtime']})"
        )
    if s.get("remote"):
        newest = s.get("remote_checkpoint")
        missing = s.get("remote_missing")
        lines.append(
            f"  remote            {s['remote']}"
            + (f" (newest checkpoint uploaded: {newest})" if newest else "")
            + (f"; not uploaded: {', '.join(missing)}" if missing else "")
        )
    return "\n".join(lines)
