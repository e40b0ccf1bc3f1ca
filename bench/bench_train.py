"""Training speed (pytest-benchmark): one optimizer step, the loop's own overhead, the influence
mixture's overhead, and a GPU suite.

- CPU: one training step of the tiny preset (8 sequences x 256 tokens: forward, loss, backward,
  AdamW step) in tokens/s; and the overhead of `bitk.train`'s loop, the share of a step spent
  outside forward, backward and optimizer step (data, clipping, the loss sync, logging), measured
  by instrumenting the real `train()`; the target is <= 5%.
- CPU: the cost of `data.mixture=influence` (the README's run, the tiny preset at 4 x 256 tokens per
  step, with three local sources and `data.probe=default`, the default `data.mixture_every` and
  `data.probe_tokens`) against the same run with `data.mixture=fixed`, the two stepped alternately
  in one process: training throughput over windows of `mixture_every` steps that each hold one
  re-weighting (`measure_mixture_overhead`).
- GPU (skipped without CUDA): SmolLM2-135M training tokens/s with ternary BitLinear projections
  against the same model with bf16 nn.Linear (ternary=False), both under bf16 autocast; the target
  is >= 0.9x (stretch 1.1x).
- CPU, against transformers: tokens/s of the ternary and float models against a transformers
  LlamaForCausalLM of the same shape (`llama_config`: the preset's block without SubLN), randomly
  initialised, float32, SDPA, trained with the same AdamW on the same batch, the three stepped
  alternately in one process (`vs_llama_steps`, `measure_vs_llama`; not in the pytest suite, run it
  with ``--vs-llama``); the goal is >= 1.2x for the tiny and smollm2_135m presets.
`make_train_step`, `measure_train_step`, `measure_loop_overhead`, `mixture_runs`,
`measure_mixture_overhead`, `mixture_due_step` (the gate's pair) and `vs_llama_steps` (a group's
three calls: "ternary", "float", "llama") are plain functions the gate (bench/gate.py) and scripts
can call. Run: `python -m pytest bench/bench_train.py`; `python bench/bench_train.py --mixture`
prints the mixture's overhead as JSON; `python bench/bench_train.py --vs-llama [--preset
tiny|smollm2_135m] [--rounds N]` the speed against transformers' Llama.
"""

from __future__ import annotations

import contextlib
import io
import json
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

CPU_STEP = {"preset": "tiny", "block": 256, "micro_batch": 8}
GPU_STEP = {"preset": "smollm2_135m", "block": 2048, "micro_batch": 8, "device": "cuda", "precision": "bf16"}


# --------------------------------------------------------------------------- measuring functions


def train_batch(vocab_size: int, micro_batch: int, block: int, seed: int = 0) -> torch.Tensor:
    """The fixed random token ids [micro_batch, block] a benchmark step trains on (`make_train_step`)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (micro_batch, block), generator=generator)


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
    next-token loss (`bitk.objectives.chunked_next_token_ce` on the final hidden states and the
    head, by chunks, its gradients computed in the forward; one chunk for the tiny preset), backward, optimizer step (`bitk.train.optim.build_optimizer`: AdamW,
    fused on CUDA, foreach on CPU), zero_grad, on a fixed random batch of ``micro_batch`` x ``block`` tokens.
    ``precision``: "fp32", or "bf16" (autocast; weights and optimizer state stay float32).
    On CUDA the call ends with a synchronize, so it times finished work. Returns the loss.
    """
    from bitk.models import CausalLM
    from bitk.models import preset as model_preset
    from bitk.objectives.chunked import chunked_next_token_ce
    from bitk.train.config import TrainingConfig
    from bitk.train.optim import build_optimizer

    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be fp32 or bf16, got {precision!r}")
    dev = torch.device(device)
    config = model_preset(preset, ternary=ternary, **(overrides or {}))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CausalLM(config).to(dev).train()
    opt = build_optimizer(
        model, TrainingConfig(optimizer=optimizer, micro_batch_size=micro_batch, global_batch_size=micro_batch)
    )
    ids = train_batch(config.vocab_size, micro_batch, block, seed).to(dev)
    positions = torch.arange(block, device=dev).expand(micro_batch, block)
    autocast = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=precision == "bf16")

    def step() -> float:
        with autocast:
            out = model(ids, position_ids=positions, logits=False)
            loss = chunked_next_token_ce(out.last_hidden, out.head, ids)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        return loss.item()

    step.model = model  # for checks (parameter count, config)
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


# --------------------------------------------------------------------------- the influence mixture

MIXTURE_SOURCES = ("corpus_a", "corpus_b", "noise")
MIXTURE_BASE = (
    # the README's run (tiny preset, 4 x 256 tokens per step, CPU) with three sources and the default
    # probe; data.mixture_every (20) and data.probe_tokens (2048) keep their defaults
    "data.probe=default",
    "training.eval_every=0",
    "checkpoint.save_every=0",
    "export_gguf=none",
    "logging.progress=false",
)


def write_mixture_sources(folder: Path) -> list[Path]:
    """Three jsonl sources ({"text": ...} a line) in ``folder``: the two halves of the embedded corpus's
    train split and random characters (as many documents as the first half, of the same lengths)."""
    import numpy as np

    from bitk.data import default_corpus

    docs = default_corpus("train")
    half = len(docs) // 2
    rng = np.random.default_rng(0)
    alphabet = np.array(list("abcdefghijklmnopqrstuvwxyz0123456789      .,;\n"))
    noise = ["".join(rng.choice(alphabet, size=len(d))) for d in docs[:half]]
    paths = []
    for name, texts in zip(MIXTURE_SOURCES, (docs[:half], docs[half:], noise)):
        path = folder / f"{name}.jsonl"
        path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
        paths.append(path)
    return paths


@contextlib.contextmanager
def mixture_runs(
    args: list[str] | None = None, mixtures: tuple[str, ...] = ("influence", "fixed")
) -> Iterator[dict[str, Any]]:
    """`bitk.train.loop.Run` objects of the same run, one per ``data.mixture`` in ``mixtures``, started
    (quietly, Ctrl-C left alone) in one process and closed on exit: the README's run with the three
    sources of `write_mixture_sources` and `MIXTURE_BASE`, plus ``args`` (`key=value`). Drive them
    with `quiet_step`."""
    from bitk.train import parse_args
    from bitk.train.loop import Run

    with tempfile.TemporaryDirectory(prefix="bitk-bench-mixture-") as tmp:
        sources = ",".join(str(p) for p in write_mixture_sources(Path(tmp)))
        runs: dict[str, Any] = {}
        try:
            for mixture in mixtures:
                cfg = parse_args(
                    [
                        f"data.sources=[{sources}]",
                        f"data.mixture={mixture}",
                        *MIXTURE_BASE,
                        f"output_dir={tmp}/{mixture}",
                        *(args or []),
                    ]
                )
                cfg.validate()
                with contextlib.redirect_stdout(io.StringIO()):
                    run = Run.start(cfg)
                run.stop.restore()  # a benchmark keeps Ctrl-C
                runs[mixture] = run
            yield runs
        finally:
            for run in runs.values():
                run.close()


def quiet_step(run: Any) -> Callable[[], int]:
    """A zero-argument call running the run's next `Run.train_step` (its lines go nowhere); returns the
    steps done."""

    def step() -> int:
        with contextlib.redirect_stdout(io.StringIO()):
            run.train_step()
        return run.step

    return step


def measure_mixture_overhead(args: list[str] | None = None, *, windows: int = 3) -> dict[str, Any]:
    """The share of training time `data.mixture=influence` costs, against the same run with fixed weights.

    Both runs (`mixture_runs`) take their steps alternately (influence, fixed, influence, ...) in one
    process, so a busy machine slows both alike. The first ``mixture_every`` steps warm up; then
    ``windows`` windows of ``mixture_every`` steps each begin with a re-weighting step (the mixer is
    due after every ``mixture_every`` completed steps). Per window, the throughput ratio is
    time(fixed) / time(influence) (= influence tokens/s over fixed tokens/s); the overhead is
    1 - that ratio, the share of the influence run's training time it spends beyond the fixed
    run's. Also: the re-weighting's own seconds (`InfluenceMixer.update`) and their share of the
    influence run's time, the median plain step of each run, and the share the median re-weighting
    takes of a window of median fixed steps, remix / (mixture_every x step + remix)
    ("amortised_overhead_fraction": the figure that a burst of load on a shared machine moves least).
    """
    with mixture_runs(args) as runs:
        influence, fixed = runs["influence"], runs["fixed"]
        mixer = influence.mixer
        every = mixer.every
        step_inf, step_fix = quiet_step(influence), quiet_step(fixed)
        t_inf, t_fix, remix = [], [], []
        for _ in range(every * (windows + 1)):
            before = mixer.seconds
            start = time.perf_counter()
            step_inf()
            t_inf.append(time.perf_counter() - start)
            remix.append(mixer.seconds - before)
            start = time.perf_counter()
            step_fix()
            t_fix.append(time.perf_counter() - start)
        tokens = influence.tokens_per_step
    due = [s for s, r in enumerate(remix) if r > 0]
    if due != [every * (k + 1) for k in range(windows)]:
        raise RuntimeError(f"measure_mixture_overhead: re-weightings at steps {due}, expected one per window")
    spans = [range(every * (k + 1), every * (k + 2)) for k in range(windows)]
    ratios = [sum(t_fix[i] for i in w) / sum(t_inf[i] for i in w) for w in spans]
    measured = range(every, every * (windows + 1))
    total_inf = sum(t_inf[i] for i in measured)
    plain_inf = [t_inf[i] for i in measured if i not in due]
    all_fix = [t_fix[i] for i in measured]
    ratio = statistics.median(ratios)
    remix_median, step_fixed = statistics.median(remix[i] for i in due), statistics.median(all_fix)
    return {
        "mixture_every": every,
        "probe_tokens": influence.cfg.data.probe_tokens,
        "tokens_per_step": tokens,
        "windows": windows,
        "throughput_ratio": ratio,
        "throughput_ratios": ratios,
        "overhead_fraction": 1.0 - ratio,
        "remix_seconds": [remix[i] for i in due],
        "remix_fraction": sum(remix) / total_inf,
        "step_seconds_influence": statistics.median(plain_inf),
        "step_seconds_fixed": step_fixed,
        "remix_steps": remix_median / step_fixed,
        "amortised_overhead_fraction": remix_median / (every * step_fixed + remix_median),
        "tokens_per_s_influence": tokens * len(measured) / total_inf,
        "tokens_per_s_fixed": tokens * len(measured) / sum(all_fix),
        "weights": dict(zip(influence.data.names, influence.data.weights.tolist())),
    }


def mixture_due_step(args: list[str] | None = None) -> dict[str, Callable[[], object]]:
    """The gate's pair: a training step that re-weights first (``data.mixture_every=1``; the weights are
    set back to the start before each, so every re-weighting sees the same mixture) and a plain step
    of the same run with ``data.mixture=fixed``. time(fixed) / time(influence) = 1 / (1 + x), x the
    re-weighting's cost in plain steps; at mixture_every=N the influence run's throughput is
    N / (N + x) of the fixed run's. ``args``: more `key=value` overrides of both runs. The runs stay
    open until the process exits."""
    import atexit

    stack = contextlib.ExitStack()
    runs = stack.enter_context(mixture_runs(["data.mixture_every=1", *(args or [])]))
    atexit.register(stack.close)
    influence, fixed = runs["influence"], runs["fixed"]
    step_inf, step_fix = quiet_step(influence), quiet_step(fixed)

    def due() -> int:
        influence.data.set_weights(influence.data.initial_weights)
        return step_inf()

    def plain() -> int:
        fixed.data.set_weights(fixed.data.initial_weights)  # the same cost on both sides
        return step_fix()

    return {"influence": due, "fixed": plain}


# --------------------------------------------------------------------------- against transformers' Llama

VS_LLAMA_TOKENS = {"tiny": (8, 256), "smollm2_135m": (2, 256)}
"""(sequences, tokens per sequence) of a `vs_llama_steps` step by preset: the tiny preset at CPU_STEP's
8 x 256; SmolLM2-135M (49152-token vocabulary, 30 layers) at 2 x 256, a few seconds a step on 2 cores."""


def llama_config(preset: str, **overrides: Any) -> Any:
    """A transformers LlamaConfig of the same shape as bitk's ``preset`` (fields changed by ``overrides``).

    Hidden size, layers, heads, KV heads, head_dim, intermediate size, vocabulary, activation (relu2 or
    SiLU), RoPE theta, RMSNorm eps, tied embeddings, init std and special ids as the preset has them;
    SDPA attention. A Llama block has no SubLN, so the Llama is bitk's block with ``subln=False``
    (`llama_parameter_gap`). ValueError for a preset with per-head q/k norm (Qwen3), which Llama lacks.
    """
    import dataclasses

    from transformers import LlamaConfig

    from bitk.models import preset as model_preset
    from bitk.models.hf import hf_config

    c = model_preset(preset, **overrides)
    if c.qk_norm:
        raise ValueError(f"preset {preset!r} has per-head q/k RMSNorm (Qwen3); LlamaForCausalLM has none")
    # the config.json bitk exports for the full-precision block without SubLN: a LlamaForCausalLM
    return LlamaConfig(**hf_config(dataclasses.replace(c, ternary=False, subln=False)), attn_implementation="sdpa")


def llama_parameter_gap(preset: str, **overrides: Any) -> int:
    """Parameters bitk's model of ``preset`` has beyond the `llama_config` Llama: the SubLN gains
    (q_size + intermediate_size per layer) when the preset has SubLN, else 0."""
    from bitk.models import preset as model_preset

    c = model_preset(preset, **overrides)
    return c.num_hidden_layers * (c.q_size + c.intermediate_size) if c.subln else 0


def make_llama_step(
    preset: str = "tiny", *, block: int = 256, micro_batch: int = 8, seed: int = 0, overrides: dict | None = None
) -> tuple[Callable[[], float], int]:
    """`make_train_step` for a transformers LlamaForCausalLM of the preset's shape (`llama_config`).

    Randomly initialised (seed ``seed``), float32, SDPA attention, trained as `make_train_step` trains
    bitk's model: the same token ids (`train_batch`) and position ids, the same loss value computed
    as a transformers user computes it (`bitk.objectives.next_token_ce` on the whole logits; bitk's
    trainer takes it by chunks where the logits exceed one), the same optimizer (`build_optimizer`:
    AdamW with the trainer's default lr, betas, eps and weight decay, and the same groups, since the Llama's
    parameters carry the same names), zero_grad(set_to_none=True). CPU only. Returns (step, tokens).
    """
    from transformers import LlamaForCausalLM

    from bitk.objectives import next_token_ce
    from bitk.train.config import TrainingConfig
    from bitk.train.optim import build_optimizer

    config = llama_config(preset, **(overrides or {}))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config).float().train()
    opt = build_optimizer(
        model, TrainingConfig(optimizer="adamw", micro_batch_size=micro_batch, global_batch_size=micro_batch)
    )
    ids = train_batch(config.vocab_size, micro_batch, block, seed)
    positions = torch.arange(block).expand(micro_batch, block)

    def step() -> float:
        loss = next_token_ce(model(input_ids=ids, position_ids=positions, use_cache=False).logits, ids)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    step.model = model  # for checks (parameter count, config)
    return step, micro_batch * block


VS_LLAMA_MODELS = ("ternary", "float", "llama")


def vs_llama_steps(
    preset: str = "tiny",
    tokens: tuple[int, int] | None = None,
    *,
    overrides: dict | None = None,
    models: tuple[str, ...] = VS_LLAMA_MODELS,
) -> dict[str, Callable[[], object]]:
    """One-optimizer-step calls {"ternary", "float", "llama"} on the same batch, each returning its loss.

    "ternary" and "float" are `make_train_step` of bitk's ``preset`` with ``ternary`` True and False
    (the preset's SubLN kept); "llama" is `make_llama_step`, a transformers LlamaForCausalLM of the
    same shape. ``tokens``: (sequences, tokens per sequence), default `VS_LLAMA_TOKENS`; ``overrides``:
    ModelConfig fields changed in all three; ``models``: which of the three to build (each holds its
    weights, gradients and AdamW state). Float32 on the CPU, at torch's current thread count.
    Each call's ``tokens`` attribute is the tokens it trains on per step.
    """
    unknown = sorted(set(models) - set(VS_LLAMA_MODELS))
    if unknown:
        raise ValueError(f"unknown models {unknown}: choose from {list(VS_LLAMA_MODELS)}")
    micro_batch, block = tokens or VS_LLAMA_TOKENS.get(preset, VS_LLAMA_TOKENS["tiny"])
    shape = {"block": block, "micro_batch": micro_batch, "overrides": overrides}
    steps: dict[str, Callable[[], object]] = {
        name: make_train_step(preset, ternary=name == "ternary", **shape)[0]
        for name in ("ternary", "float")
        if name in models
    }
    if "llama" in models:
        steps["llama"] = make_llama_step(preset, **shape)[0]
    for step in steps.values():
        step.tokens = micro_batch * block
    return steps


def measure_vs_llama(
    preset: str = "tiny", tokens: tuple[int, int] | None = None, *, rounds: int = 5, warmup: int = 2
) -> dict[str, Any]:
    """tokens/s of bitk's ternary and float models against transformers' Llama (`vs_llama_steps`).

    After ``warmup`` steps of each, ``rounds`` rounds step all three once, alternately in one process
    (the order rotates each round, so none always runs first), so a busy machine slows them alike.
    Per round the speed ratio of X over the Llama is time(llama) / time(X) (= X's tokens/s over the
    Llama's); the result holds the median of those per-round ratios ("ternary_vs_llama_median",
    "float_vs_llama_median"), each model's tokens/s at its median step and at its fastest
    ("tokens_per_s_best_*", the figure a burst of load on a shared machine moves least), and the
    seconds of every step.
    """
    steps = vs_llama_steps(preset, tokens)
    names = list(steps)
    n_tokens = steps["llama"].tokens
    for _ in range(warmup):
        for name in names:
            steps[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    losses: dict[str, float] = {}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            start = time.perf_counter()
            losses[name] = steps[name]()
            times[name].append(time.perf_counter() - start)
    ratios = {
        f"{name}_vs_llama": [t_llama / t for t, t_llama in zip(times[name], times["llama"])]
        for name in ("ternary", "float")
    }
    micro_batch, block = tokens or VS_LLAMA_TOKENS.get(preset, VS_LLAMA_TOKENS["tiny"])
    return {
        "preset": preset,
        "micro_batch": micro_batch,
        "block": block,
        "tokens_per_step": n_tokens,
        "threads": torch.get_num_threads(),
        "rounds": rounds,
        "warmup": warmup,
        **{f"tokens_per_s_{name}": n_tokens / statistics.median(times[name]) for name in names},
        **{f"tokens_per_s_best_{name}": n_tokens / min(times[name]) for name in names},
        **{f"{key}_median": statistics.median(values) for key, values in ratios.items()},
        **ratios,
        "step_seconds": times,
        "last_loss": losses,
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


def bench_mixture_overhead_cpu(benchmark):
    """data.mixture=influence against fixed weights, stepped alternately (the share is in extra_info)."""
    benchmark.group = "Influence mixture overhead (CPU, tiny, 4 x 256 tokens per step, every 20 steps)"
    result = benchmark.pedantic(measure_mixture_overhead, rounds=1, iterations=1)
    benchmark.extra_info.update(result)
    assert result["throughput_ratio"] > 0.0 and len(result["remix_seconds"]) == result["windows"]


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


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(
        prog="python bench/bench_train.py",
        description="Print the influence mixture's overhead (--mixture) or the speed against transformers' "
        "Llama (--vs-llama) as JSON.",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--mixture", action="store_true", help="measure_mixture_overhead")
    mode.add_argument(
        "--vs-llama", action="store_true", help="measure_vs_llama: bitk ternary and float vs LlamaForCausalLM"
    )
    parser.add_argument("--windows", type=int, default=3, help="--mixture: windows of mixture_every steps (default 3)")
    parser.add_argument("--preset", default="tiny", help="--vs-llama: tiny (default) or smollm2_135m")
    parser.add_argument("--rounds", type=int, default=5, help="--vs-llama: measured rounds (default 5)")
    parser.add_argument("--warmup", type=int, default=2, help="--vs-llama: warm-up steps of each (default 2)")
    parser.add_argument(
        "--tokens", default=None, help="--vs-llama: SEQUENCESxLENGTH per step (default: 8x256 tiny, 2x256 smollm2)"
    )
    parser.add_argument("overrides", nargs="*", help="--mixture: key=value overrides of the run")
    ns = parser.parse_args()
    if ns.vs_llama:
        try:
            shape = tuple(int(v) for v in ns.tokens.lower().split("x")) if ns.tokens else None
        except ValueError:
            shape = ()
        if shape is not None and (len(shape) != 2 or min(shape) < 1):
            parser.error(f"--tokens must be SEQUENCESxLENGTH (two positive integers), got {ns.tokens!r}")
        result = measure_vs_llama(ns.preset, shape, rounds=ns.rounds, warmup=ns.warmup)
        print(json.dumps(result, indent=2))
    elif ns.mixture:
        print(json.dumps(measure_mixture_overhead(ns.overrides, windows=ns.windows), indent=2))
    else:
        parser.error("name a measurement: --mixture or --vs-llama")
