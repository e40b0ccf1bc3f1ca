"""Perplexity and forward throughput of a causal LM over packed token blocks.

Perplexity = exp(mean next-token cross-entropy) over every scored target: in each row of
`input_ids` the token at t+1 is predicted from the logits at t, so a row's first token is never
scored (it has no context in its row), and targets whose label is -100 (padding) are skipped.
Rows carry per-document position ids (`bitk.data.pack_tokens`), which the model turns into
attention that does not cross documents; the losses are the objectives' next-token cross-entropy
(`bitk.objectives.ce`). `numerics` picks how BitLinear computes (docs/numerics.md "Inference
numerics"): "i2s" gives the perplexity bitnet.cpp gets from the I2_S GGUF, "tq" the one llama.cpp
gets from a TQ1_0 / TQ2_0 GGUF, "f16" the one the runtimes get with F16 projections.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import torch

from bitk.models import CausalLM
from bitk.nn import NUMERICS, BitLinear, set_numerics
from bitk.objectives.ce import IGNORE_INDEX, next_token_losses
from bitk.objectives.chunked import chunked_next_token_losses

__all__ = ["IGNORE_INDEX", "NUMERICS", "EvalResult", "evaluate"]


@dataclass(frozen=True)
class EvalResult:
    """What one evaluation measured."""

    tokens: int
    """Scored next-token predictions."""
    loss: float
    """Mean cross-entropy of those predictions (nats)."""
    perplexity: float
    """exp(loss)."""
    seconds: float
    """Wall time of the forward passes and their per-token losses (no tokenizing, no data moves)."""
    tokens_per_s: float
    """Positions run through the model (padding included) per second of ``seconds``."""
    positions: int
    """Positions run through the model: rows x sequence length."""

    def to_dict(self) -> dict:
        return asdict(self)


@contextlib.contextmanager
def _numerics(model: torch.nn.Module, mode: str | None) -> Iterator[None]:
    """Set every BitLinear's numerics for the block, then give each the mode it had."""
    if mode is None:
        yield
        return
    before = [(m, m.numerics) for m in model.modules() if isinstance(m, BitLinear)]
    set_numerics(model, mode)
    try:
        yield
    finally:
        for module, previous in before:
            set_numerics(module, previous)


def _check(
    input_ids: torch.Tensor,
    position_ids: torch.Tensor | None,
    labels: torch.Tensor | None,
    batch_size: int,
    numerics: str | None,
) -> None:
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.dtype != torch.int64:
        raise ValueError(
            "input_ids must be an int64 tensor [rows, seq_len], got "
            f"{getattr(input_ids, 'dtype', type(input_ids))} {tuple(getattr(input_ids, 'shape', ()))}"
        )
    if input_ids.shape[0] < 1 or input_ids.shape[1] < 2:
        raise ValueError(f"input_ids {tuple(input_ids.shape)} holds nothing to score: need >= 1 row of >= 2 tokens")
    for name, other in (("position_ids", position_ids), ("labels", labels)):
        if other is not None and tuple(other.shape) != tuple(input_ids.shape):
            raise ValueError(f"{name} {tuple(other.shape)} must have the shape of input_ids {tuple(input_ids.shape)}")
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if numerics is not None and numerics not in NUMERICS:
        raise ValueError(f"unknown numerics {numerics!r}; choose one of {', '.join(NUMERICS)}")


def _progress_bar():
    """A rich bar over batches, on stderr so that stdout can carry JSON."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("evaluating"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("batches"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    )


def evaluate(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    position_ids: torch.Tensor | None = None,
    batch_size: int = 1,
    numerics: str | None = None,
    *,
    labels: torch.Tensor | None = None,
    progress: bool = False,
) -> EvalResult:
    """Perplexity of ``model`` on the rows of ``input_ids`` [N, L], ``batch_size`` rows per forward.

    ``model(ids, position_ids=...)`` must return an object with ``.logits`` [B, L, V]; a bitk
    CausalLM is asked for its head's input instead and scored a chunk of tokens at a time.
    ``labels`` (default ``input_ids``) are the targets, -100 where nothing is scored.
    ``numerics`` ("train", "i2s", "tq", "f16", "float"; None keeps the model's) is set on every BitLinear
    (`bitk.nn.set_numerics`) for the evaluation only, as is eval mode: the model is left as found.
    ``progress`` shows a rich bar over the batches (on stderr).
    """
    _check(input_ids, position_ids, labels, batch_size, numerics)
    labels = input_ids if labels is None else labels
    device = next(iter(model.parameters()), torch.empty(0)).device
    rows, seq_len = input_ids.shape
    starts = range(0, rows, batch_size)
    total_loss = 0.0  # float64 sum of per-token losses
    scored = 0
    seconds = 0.0
    was_training = model.training
    chunked = isinstance(model, CausalLM)
    bar = _progress_bar() if progress else contextlib.nullcontext()
    model.eval()
    try:
        with _numerics(model, numerics), torch.inference_mode(), bar:
            task = bar.add_task("eval", total=len(starts)) if progress else None
            for start in starts:
                ids = input_ids[start : start + batch_size].to(device)
                pos = None if position_ids is None else position_ids[start : start + batch_size].to(device)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                t0 = time.perf_counter()
                targets = labels[start : start + batch_size].to(device)
                if chunked:  # the logits of a chunk of tokens at a time (bitk.objectives.chunked)
                    out = model(ids, position_ids=pos, logits=False)
                    losses, counted = chunked_next_token_losses(out.last_hidden, out.head, targets)
                else:
                    losses, counted = next_token_losses(model(ids, position_ids=pos).logits, targets)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                seconds += time.perf_counter() - t0
                total_loss += losses.double().sum().item()
                scored += int(counted.sum().item())
                if progress:
                    bar.advance(task)
    finally:
        model.train(was_training)
    if scored == 0:
        raise ValueError("no target is scored: every label after a row's first token is -100")
    loss = total_loss / scored
    positions = rows * seq_len
    return EvalResult(
        tokens=scored,
        loss=loss,
        perplexity=math.exp(loss) if loss < 700 else math.inf,
        seconds=seconds,
        tokens_per_s=positions / seconds if seconds > 0 else math.inf,
        positions=positions,
    )
