"""data.mixture=influence: re-weighting the data sources by their influence on the probe's loss.

Every ``data.mixture_every`` steps, before the step trains, `InfluenceMixer.update` takes the rows
the step has drawn, groups them by source, and estimates each source's first-order influence on
the probe loss (DoGE, Fan et al. 2024; gradient-similarity selection as in LESS, Xia et al. 2024):
the alignment ``<g_i, g_p> / |g_p|^2`` of the gradient g_i of the source's next-token loss with the
gradient g_p of the probe batch's, both on the last ``data.mixture_layers`` decoder layers and the
final norm, clipped to [-1, 1]. It is the probe-loss decrease a step along g_i buys, relative to a
step along g_p itself; unlike a cosine, it does not shrink with the noise of a gradient estimated
from few rows, so a source the mixture draws rarely is not judged worse for it.

Each gradient comes from a backward through the training model (in one process it stops at the
compared parameters; under DDP it is averaged over the ranks, under FSDP2 sharded), on the rows
the loop drew anyway; a source the step did not draw is not measured. The dot products are summed
over the shards (FSDP2) or averaged over the replicas (DDP) in one all-reduce, so every rank
computes the same new weights (`bitk.data.mixture.influence_step`) and sets them on its
`TrainData` at the same block. The gradients are cleared afterwards: the step itself is
unchanged. Cost: a forward and backward over the step's rows and over the probe batch.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from bitk.data import TrainData
from bitk.data.mixture import influence_step
from bitk.objectives.ce import IGNORE_INDEX
from bitk.objectives.chunked import chunked_next_token_ce

from .distributed import DistInfo, is_fsdp, no_sync

__all__ = ["InfluenceMixer", "mixture_record"]


def mixture_record(
    data: TrainData, step: int, tokens: int, scores: list[float] | None = None, **extra: Any
) -> dict[str, Any]:
    """A "mixture" metrics record: each source's weight (mixture/NAME) and, after a re-weighting, its
    alignment with the probe (alignment/NAME; null for a source the step did not draw)."""
    record: dict[str, Any] = {"kind": "mixture", "step": step, "tokens": tokens}
    record.update({f"mixture/{n}": float(w) for n, w in zip(data.names, data.weights)})
    if scores is not None:
        record.update({f"alignment/{n}": (s if math.isfinite(s) else None) for n, s in zip(data.names, scores)})
    record.update(extra)
    return record


class InfluenceMixer:
    """The influence re-weighting of one run (module doc); every rank holds one and calls `update` together."""

    def __init__(
        self,
        model: torch.nn.Module,
        raw: torch.nn.Module,
        data: TrainData,
        info: DistInfo,
        micro_batch_size: int,
        autocast: Callable[[], Any],
    ) -> None:
        cfg = data.cfg
        # one process or FSDP2: the bare module (uncompiled: the passes' row counts vary); DDP: its wrapper
        self.model = raw if not info.enabled or is_fsdp(raw) else getattr(model, "_orig_mod", model)
        self.data, self.info = data, info
        self.every, self.temperature, self.floor = cfg.mixture_every, cfg.mixture_temperature, cfg.mixture_floor
        self.micro_batch_size, self.autocast = micro_batch_size, autocast
        probe = data.probe()
        if probe is None:
            raise ValueError("data.mixture=influence needs data.probe")
        ids, pos, labels = probe
        # each rank computes the probe's gradient on its share of the probe rows; DDP / FSDP average
        self.probe = (ids[info.rank :: info.world_size], pos[info.rank :: info.world_size])
        self.probe_labels = labels[info.rank :: info.world_size]
        self.probe_targets = int((labels[:, 1:] != IGNORE_INDEX).sum())
        self.probe_rows = ids.shape[0]
        layers = list(raw.model.layers)[-cfg.mixture_layers :]
        self.params = [p for m in (*layers, raw.model.norm) for p in m.parameters() if p.requires_grad]
        self.sharded = is_fsdp(raw)
        self.seconds = 0.0

    def due(self, step: int) -> bool:
        """Whether the step after ``step`` completed steps re-weights first."""
        return step > 0 and step % self.every == 0

    # -- gradients --------------------------------------------------------------------------------
    def _local_gradient(self) -> torch.Tensor:
        """This rank's part of the compared parameters' gradient, flattened (float32)."""
        parts = []
        for p in self.params:
            g = p.grad
            local = p.to_local() if hasattr(p, "to_local") else p
            if g is None:
                parts.append(torch.zeros(local.numel(), device=local.device))
            else:
                g = g.to_local() if hasattr(g, "to_local") else g
                parts.append(g.detach().reshape(-1).float())
        return torch.cat(parts)

    def _loss_sum(self, ids: torch.Tensor, pos: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """Summed next-token CE of the rows (float32; the logits made a chunk of tokens at a time, as in training)."""
        labels = ids if labels is None else labels
        with self.autocast():
            out = self.model(ids, pos, logits=False)
        targets = (labels[:, 1:] != IGNORE_INDEX).sum()
        return chunked_next_token_ce(out.last_hidden, out.head, labels) * targets

    def _gradient(self, chunks: list[tuple], n_chunks: int, scale: float) -> torch.Tensor:
        """The averaged gradient of ``scale`` x the summed loss of this rank's ``chunks`` (rows, labels);
        ``n_chunks`` (the most any rank has) backward passes, padded with zero-weight ones."""
        self.model.zero_grad(set_to_none=True)
        # one process: the backward stops at the compared parameters (the layers below them, the
        # embedding and the head get no gradient). DDP / FSDP2 wait for every parameter's gradient.
        inputs = None if self.info.enabled else self.params
        for c in range(n_chunks):
            if c < len(chunks):
                ids, pos, labels = chunks[c]
                weight = scale
            else:  # this rank has no more rows: a pass that adds nothing keeps the collectives in step
                ids, pos, labels = self.probe[0][:1], self.probe[1][:1], None
                weight = 0.0
            device = self.info.device
            ids, pos = ids.to(device), pos.to(device)
            labels = None if labels is None else labels.to(device)
            with no_sync(self.model, self.info, last_micro_step=c == n_chunks - 1):
                (self._loss_sum(ids, pos, labels) * weight).backward(inputs=inputs)
        grad = self._local_gradient()
        self.model.zero_grad(set_to_none=True)
        return grad

    # -- the update -----------------------------------------------------------------------------
    def update(
        self, batches: list[tuple[torch.Tensor, torch.Tensor, np.ndarray]], step: int, tokens: int
    ) -> dict[str, Any]:
        """Re-weight from the step's micro-batches ``(input_ids, position_ids, source of each row)`` on
        this rank after ``step`` steps and ``tokens`` trained tokens; sets the new weights on the data
        and returns the "mixture" record. Collective."""
        started = time.perf_counter()
        info, data, m = self.info, self.data, self.micro_batch_size
        n = len(data.names)
        ids = torch.cat([b[0] for b in batches])
        pos = torch.cat([b[1] for b in batches])
        which = np.concatenate([b[2] for b in batches])
        rows = [np.flatnonzero(which == i) for i in range(n)]
        counts = torch.tensor([len(r) for r in rows], dtype=torch.float64)
        chunk_counts = torch.tensor([math.ceil(len(r) / m) for r in rows], dtype=torch.float64)
        if info.enabled:
            total = torch.cat([counts, chunk_counts]).to(info.device)
            dist.all_reduce(total[:n], op=dist.ReduceOp.SUM)
            dist.all_reduce(total[n:], op=dist.ReduceOp.MAX)
            counts, chunk_counts = total[:n].cpu(), total[n:].cpu()
        targets_per_row = ids.shape[1] - 1
        world = info.world_size
        grads: list[torch.Tensor | None] = []
        self.model.train()
        for i in range(n):
            if counts[i] == 0:
                grads.append(None)
                continue
            index = torch.from_numpy(rows[i])
            chunks = [(ids[index[j : j + m]], pos[index[j : j + m]], None) for j in range(0, len(index), m)]
            # each rank's sum x world / (global targets): DDP's / FSDP's average is the global mean
            grads.append(self._gradient(chunks, int(chunk_counts[i]), world / (float(counts[i]) * targets_per_row)))
        p_ids, p_pos = self.probe
        probe_chunks = [
            (p_ids[j : j + m], p_pos[j : j + m], self.probe_labels[j : j + m]) for j in range(0, p_ids.shape[0], m)
        ]
        probe_passes = math.ceil(math.ceil(self.probe_rows / world) / m)
        g_probe = self._gradient(probe_chunks, probe_passes, world / self.probe_targets)
        p64 = g_probe.double()
        sums = [p64.dot(p64)] + [
            torch.zeros((), device=p64.device, dtype=p64.dtype) if g is None else g.double().dot(p64) for g in grads
        ]
        sums = torch.stack(sums)
        if info.enabled:  # shards add up (FSDP2); replicas are averaged, which makes them bit-identical (DDP)
            dist.all_reduce(sums, op=dist.ReduceOp.SUM)
            if not self.sharded:
                sums = sums / world
        pp, *dots = sums.tolist()
        scores = [math.nan if g is None or pp <= 0 else max(-1.0, min(1.0, dot / pp)) for g, dot in zip(grads, dots)]
        data.set_weights(influence_step(data.weights, scores, self.temperature, self.floor))
        seconds = time.perf_counter() - started
        self.seconds += seconds
        return mixture_record(data, step, tokens, scores, seconds=seconds)
