"""Training speed (pytest-benchmark): one optimizer step, the loop's own overhead, and a GPU suite.

- CPU: one training step of the tiny preset (8 sequences x 256 tokens: forward, loss, backward,
  AdamW step) in tokens/s; and the overhead of `bitk.train`'s loop, the share of a step spent
  outside forward, backward and optimizer step (data, clipping, the loss sync, logging), measured
  by instrumenting the real `train()`; the target is <= 5%.
- GPU (skipped without CUDA): SmolLM2-135M training tokens/s with ternary BitLinear projections
  against the same model with bf16 nn.Linear (ternary=False), both under bf16 autocast; the target
  is >= 0.9x (stretch 1.1x).
`make_train_step`, `measure_train_step` and `measure_loop_overhead` are plain functions the gate
(bench/gate.py) and scripts can call. Run: `python -m pytest bench/bench_train.py`.
"""

from __future__ import annotations

import contextlib
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

import pytest
import torch

CPU_STEP = {"preset": "tiny", "block": 256, "micro_batch": 8}
GPU_STEP = {"preset": "smollm2_135m", "block": 2048, "micro_batch": 8, "device": "cuda", "precision": "bf16"}


# --------------------------------------------------------------------------- measuring functions


def make_train_step(
    preset: str = "tiny",
    *,
    ternary: bool = True,
    block: int = 256,
    micro_batch: int = 8,
    device: str = "cpu",
    precision: str = "fp32",
    optimizer: str = "adamw",
    overrides: dict[str, Any] | None = None,
    seed: int = 0,
) -> tuple[Callable[[], float], int]:
    """A zero-argument call running one training step, and the tokens it processes.

    The step is what `bitk.train` does per micro-batch with no accumulation: forward, the trainer's
    next-token loss, backward, optimizer step (`bitk.train.optim.build_optimizer`: AdamW, fused on
    CUDA, foreach on CPU), zero_grad, on a fixed random batch of ``micro_batch`` x ``block`` tokens.
    ``precision``: "fp32", or "bf16" (autocast; weights and optimizer state stay float32).
    On CUDA the call ends with a synchronize, so it times finished work. Returns the loss.
    """
    from bitk.models import CausalLM
    from bitk.models import preset as model_preset
    from bitk.objectives import next_token_ce
    from bitk.train.config import TrainingConfig
    from bitk.train.optim import build_optimizer

    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be fp32 or bf16, got {precision!r}")
    dev = torch.device(device)
    config = model_preset(preset, ternary=ternary, **(overrides or {}))
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CausalLM(config).to(dev).train()
    opt = build_optimizer(
        model, TrainingConfig(optimizer=optimizer, micro_batch_size=micro_batch, global_batch_size=micro_batch)
    )
    ids = torch.randint(0, config.vocab_size, (micro_batch, block), generator=generator).to(dev)
    positions = torch.arange(block, device=dev).expand(micro_batch, block)
    autocast = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=precision == "bf16")

    def step() -> float:
        with autocast:
            loss = next_token_ce(model(ids, position_ids=positions).logits, ids)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        return loss.item()

    return step, micro_batch * block


def measure_train_step(preset: str = "tiny", *, rounds: int = 5, warmup: int = 1, **kwargs: Any) -> dict[str, Any]:
    """Time `make_train_step` (same arguments): tokens/s at the median and at the fastest step."""
    step, tokens = make_train_step(preset, **kwargs)
    for _ in range(warmup):
        step()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    median, fastest = statistics.median(times), min(times)
    return {
        "preset": preset,
        **kwargs,
        "tokens_per_step": tokens,
        "seconds_median": median,
        "seconds_min": fastest,
        "tokens_per_s": tokens / median,
        "tokens_per_s_best": tokens / fastest,
        "rounds": rounds,
    }


class _Timer:
    """Sums of the time spent in forward (model + loss), backward and optimizer step, per step."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.parts: dict[str, float] = {"forward": 0.0, "backward": 0.0, "optimizer": 0.0}
        self.steps: list[tuple[float, dict[str, float]]] = []  # (time at the end of each optimizer step, parts)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextlib.contextmanager
    def part(self, name: str):
        self.sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            self.sync()
            self.parts[name] += time.perf_counter() - start

    def end_step(self) -> None:
        self.steps.append((time.perf_counter(), dict(self.parts)))
        self.parts = dict.fromkeys(self.parts, 0.0)


def measure_loop_overhead(args: list[str] | None = None, *, steps: int = 8, skip: int = 2) -> dict[str, Any]:
    """Run the real `bitk.train.loop.train` and split each step's wall time into its parts.

    ``args``: `key=value` overrides on top of a short CPU run of the tiny preset (8 x 256 tokens per
    step, log every step, no evaluation or checkpoint until the end, no GGUF). The forward with the loss
    (`bitk.objectives.compute_loss`), ``Tensor.backward`` and ``optimizer.step`` are timed through
    wrappers; a step's
    period is the time between the ends of two consecutive optimizer steps, so it holds everything
    the loop does per step. The first ``skip`` steps (warm-up) are left out. On CUDA every part is
    synchronized, which adds syncs the real loop does not have. Returns the overhead fraction
    (1 - parts / period over the measured steps), the median step and the mean of each part.
    """
    from bitk.train import loop, parse_args

    with tempfile.TemporaryDirectory() as out:
        base = [
            "data.block_size=256",
            "data.max_eval_tokens=256",
            "training.global_batch_size=8",
            "training.micro_batch_size=8",
            f"training.max_steps={steps}",
            "training.warmup_steps=1",
            "logging.log_every=1",
            "training.eval_every=0",
            "checkpoint.save_every=0",
            "export_gguf=none",
            "logging.progress=false",
            f"output_dir={out}/run",
        ]
        cfg = parse_args([*base, *(args or [])])
        auto = "cuda" if torch.cuda.is_available() else "cpu"
        device = torch.device(auto if cfg.device == "auto" else cfg.device)
        timer = _Timer(device)
        originals = (loop.compute_loss, loop.build_optimizer, torch.Tensor.backward)

        def compute_loss(*a, **k):
            with timer.part("forward"):
                return originals[0](*a, **k)

        def build_optimizer(model, t):
            opt = originals[1](model, t)
            step = opt.step

            def timed_step(*a, **k):
                with timer.part("optimizer"):
                    result = step(*a, **k)
                timer.end_step()
                return result

            opt.step = timed_step
            return opt

        def backward(self, *a, **k):
            with timer.part("backward"):
                return originals[2](self, *a, **k)

        loop.compute_loss, loop.build_optimizer = compute_loss, build_optimizer
        torch.Tensor.backward = backward
        try:
            loop.train(cfg)
        finally:
            loop.compute_loss, loop.build_optimizer = originals[:2]
            torch.Tensor.backward = originals[2]

    ends = timer.steps
    if len(ends) < skip + 2:
        raise ValueError(f"measure_loop_overhead: only {len(ends)} optimizer steps ran; ask for more than {skip + 1}")
    periods, inside = [], []
    parts_sum = dict.fromkeys(ends[0][1], 0.0)
    for (t0, _), (t1, parts) in zip(ends[skip:], ends[skip + 1 :]):
        periods.append(t1 - t0)
        inside.append(sum(parts.values()))
        for k, v in parts.items():
            parts_sum[k] += v
    n = len(periods)
    total = sum(periods)
    tokens = cfg.training.global_batch_size * cfg.data.block_size
    return {
        "overhead_fraction": 1.0 - sum(inside) / total,
        "steps_measured": n,
        "step_seconds_median": statistics.median(periods),
        "tokens_per_s": tokens * n / total,
        **{f"{k}_seconds": v / n for k, v in parts_sum.items()},
        "overhead_seconds": (total - sum(inside)) / n,
    }


# --------------------------------------------------------------------------- CPU suite


@pytest.mark.parametrize("ternary", [True, False], ids=["ternary", "float_linear"])
def bench_train_step_tiny_cpu(benchmark, ternary):
    step, tokens = make_train_step(**CPU_STEP, ternary=ternary)
    benchmark.group = "Training step, tiny preset (CPU, 8 x 256 tokens, AdamW)"
    benchmark.extra_info["tokens_per_step"] = tokens
    loss = benchmark.pedantic(step, rounds=5, iterations=1, warmup_rounds=1)
    assert torch.isfinite(torch.tensor(loss))
    benchmark.extra_info["tokens_per_s_best"] = tokens / benchmark.stats.stats.min


def bench_loop_overhead_cpu(benchmark):
    """The loop's own share of a step (target <= 5%): recorded in extra_info, judged by the gate."""
    benchmark.group = "Training loop overhead (CPU, tiny, 8 x 256 tokens per step)"
    result = benchmark.pedantic(measure_loop_overhead, rounds=1, iterations=1)
    benchmark.extra_info.update(result)
    assert 0.0 <= result["overhead_fraction"] < 1.0


# --------------------------------------------------------------------------- GPU suite

cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="GPU training benchmarks need CUDA")


@cuda_only
@pytest.mark.parametrize("ternary", [True, False], ids=["ternary", "bf16_linear"])
def bench_train_step_smollm2_gpu(benchmark, ternary):
    step, tokens = make_train_step(**GPU_STEP, ternary=ternary)
    benchmark.group = "Training step, SmolLM2-135M (GPU, bf16 autocast, 8 x 2048 tokens)"
    benchmark.extra_info["tokens_per_step"] = tokens
    benchmark.pedantic(step, rounds=10, iterations=1, warmup_rounds=3)
    benchmark.extra_info["tokens_per_s_best"] = tokens / benchmark.stats.stats.min


@cuda_only
def bench_train_ternary_vs_bf16_linear_gpu(benchmark):
    """tokens/s of ternary over bf16 nn.Linear, timed alternately (target >= 0.9x, stretch 1.1x)."""
    ternary, tokens = make_train_step(**GPU_STEP, ternary=True)
    linear, _ = make_train_step(**GPU_STEP, ternary=False)
    for _ in range(3):
        ternary(), linear()
    ratios = []

    def rounds() -> None:
        for _ in range(10):
            start = time.perf_counter()
            ternary()
            t_ternary = time.perf_counter() - start
            start = time.perf_counter()
            linear()
            ratios.append((time.perf_counter() - start) / t_ternary)

    benchmark.group = "Training step, SmolLM2-135M ternary vs bf16 nn.Linear (GPU)"
    benchmark.pedantic(rounds, rounds=1, iterations=1)
    benchmark.extra_info["speed_ratio_median"] = statistics.median(ratios)
    benchmark.extra_info["tokens_per_step"] = tokens
