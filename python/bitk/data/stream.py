"""The training data stream: sources -> packed blocks -> a seeded, weighted, rank-sharded order.

Sources (``DataConfig.sources``, read with `bitk.data.load_texts`): "default" (the embedded corpus),
local .txt/.jsonl/.json/.parquet files or folders, hub dataset names. Every source is tokenized
with the model's tokenizer and packed like `bitk.data.pack_tokens` does: documents joined by EOS
(framed as BOS doc EOS when the tokenizer adds a BOS), cut into ``block_size`` rows, position ids
restarting at 0 at each document (and each row), the tail that does not fill a row dropped
(docs/data.md "Packing").

Held-out split (``heldout()``, the same blocks on every rank, at most ``max_eval_tokens`` tokens,
taken round-robin from the sources):
- "default": the embedded corpus's own heldout split;
- other in-memory sources: the last ``heldout_fraction`` of their documents; a source with too few
  documents for that (one .txt file is one document) holds out the last ``heldout_fraction`` of its
  packed blocks instead;
- streaming sources (their length is unknown): ``heldout_fraction`` of their documents, spread
  evenly through the stream (document i is held out when floor((i+1) f) > floor(i f), e.g. every
  20th for f = 0.05); the training stream skips them all and evaluation uses the first ones, up
  to ``max_eval_tokens`` tokens.
``heldout_fraction = 0`` holds nothing out (the embedded corpus keeps its split).

Order of the training blocks. Global block k (k = 0, 1, 2, ... over the whole run) comes from source
``choice[k]``, drawn with probabilities ``weights`` by a generator seeded with (seed, k // 1024);
after the c-th change of the weights (`set_weights`, the influence mixture), which took effect at
block s, by one seeded with (seed, (k - s) // 1024, c);
a source hands out its blocks in order of a permutation seeded with (seed, source, epoch), one new
permutation per pass over its blocks (epoch), so every epoch is reshuffled. Streaming sources hand
out their blocks in stream order (no shuffle: shuffle the data set beforehand) and restart at their
first training document after the last.

Rank sharding. Each ``next_batch(m)`` call takes the next ``m * world_size`` global blocks
``k0 .. k0 + m*world_size - 1`` and rank r gets ``k0 + r, k0 + r + world_size, ...`` (every
world_size-th block, m of them); every rank advances the same global position, so a run is
described by one state for all ranks. Hence for the same seed and data, one process calling
``next_batch(m * world_size)`` gets exactly the union of the ranks' ``next_batch(m)`` batches
(rank r's rows are its rows ``r::world_size``), and over a whole optimizer step (grad_accum calls)
the blocks seen are the same whether the batch is split over ranks or over micro-steps:
    single process, micro-batch m*W, accumulation A  ==  W ranks, micro-batch m, accumulation A
(the same blocks in each micro-step) and a single process with micro-batch m and accumulation A*W
sees the same set of blocks per optimizer step. Every rank computes the whole global order (cheap
for in-memory sources; a streaming source is read and tokenized in full by every rank, which keeps
only its own blocks).

Resume: ``state_dict()`` holds the global position, the current weights with their change count
and starting block, each source's position (blocks taken, and for streams the document and token
offset) and the settings it checks on load, all plain JSON values; ``load_state_dict`` continues with
exactly the blocks the interrupted run would have taken next. Streams resume by reopening the
source and skipping documents (read, not tokenized) up to the saved one.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from bitk.data.loading import document_piece, stream_end
from bitk.data.tokenizer import DocumentTokens, document_tokens

__all__ = ["TrainData"]

_CHOICE_CHUNK = 1024  # global blocks per seeded draw of source choices
_STATE_FORMAT = 2
_TOKENIZE_CHUNK = 64  # documents tokenized at a time by a stream


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([k % 2**63 for k in key]))


_DEFAULT_CACHE: dict[tuple[str, str], list[list[int]]] = {}


def _encode_default(split: str, tokenizer: Any) -> list[list[int]]:
    """Token ids of the embedded corpus's split, cached per tokenizer (the corpus never changes in a process)."""
    from bitk.data import default_corpus, encode_documents

    key = (split, hashlib.sha256(tokenizer.to_str().encode()).hexdigest())
    if key not in _DEFAULT_CACHE:
        _DEFAULT_CACHE[key] = encode_documents(default_corpus(split), tokenizer)
    return _DEFAULT_CACHE[key]


def heldout_document(i: int, fraction: float) -> bool:
    """Whether a stream's document ``i`` is held out: ``fraction`` of them, spread evenly."""
    return fraction > 0 and math.floor((i + 1) * fraction) > math.floor(i * fraction)


class _PackedSource:
    """A source held in memory as packed blocks, handed out by a per-epoch seeded permutation."""

    streaming = False

    def __init__(self, name: str, index: int, ids: torch.Tensor, pos: torch.Tensor, seed: int) -> None:
        self.name, self.index, self.seed = name, index, seed
        self.ids, self.pos = ids, pos
        self.num_blocks = ids.shape[0]
        self.taken = 0
        self._perm_epoch = -1
        self._perm: np.ndarray | None = None

    def _order(self, epoch: int) -> np.ndarray:
        if epoch != self._perm_epoch:
            self._perm = _rng(self.seed, 0, self.index, epoch).permutation(self.num_blocks)
            self._perm_epoch = epoch
        return self._perm

    def take(self) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, i = divmod(self.taken, self.num_blocks)
        row = int(self._order(epoch)[i])
        self.taken += 1
        return self.ids[row], self.pos[row]

    @property
    def epoch(self) -> float:
        return self.taken / self.num_blocks

    @property
    def pass_number(self) -> int:
        """The pass over the blocks that the last block taken belongs to (1 = the first; 0 before any)."""
        return -(-self.taken // self.num_blocks)

    def state_dict(self) -> dict[str, Any]:
        return {"taken": self.taken, "num_blocks": self.num_blocks}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("num_blocks") != self.num_blocks:
            raise ValueError(
                f"data source {self.name!r} now packs into {self.num_blocks} blocks, the saved state "
                f"had {state.get('num_blocks')}: the data or block_size changed since the checkpoint"
            )
        self.taken = int(state["taken"])


class _StreamSource:
    """A source read lazily: documents tokenized a few at a time and packed on the fly, in stream order.

    The position is (epoch, document index, token offset into that document's ``EOS + tokens``
    piece; the document index equal to the number of documents denotes the closing EOS).
    """

    streaming = True

    def __init__(
        self,
        name: str,
        index: int,
        open_texts: Callable[[], Iterator[str]],
        tokenizer: Any,
        block_size: int,
        framing: DocumentTokens,
        first_doc: int,
        split: float | None = None,
    ) -> None:
        self.name, self.index, self.split = name, index, split
        self._open_texts, self._tokenizer = open_texts, tokenizer
        self.block_size, self.framing, self.first_doc = block_size, framing, first_doc
        self.taken = 0
        self.epoch_count = 0
        self._seek(0, first_doc, 0)

    def _seek(self, epoch: int, doc: int, offset: int) -> None:
        """Position the stream at token ``offset`` of document ``doc`` of ``epoch``."""
        self.epoch_count = epoch
        self._texts = itertools.islice(self._open_texts(), doc, None)
        self._next_doc = doc  # index of the next document the iterator yields
        self._closed = False  # closing EOS appended
        self._pieces: deque[list] = deque()  # [doc index, np.int64 tokens of the framed doc, offset]
        self._buffered = 0
        self._fill()
        if offset:
            if not self._pieces or self._pieces[0][0] != doc:
                raise ValueError(
                    f"cannot resume the stream {self.name!r}: document {doc} no longer holds token "
                    f"{offset} (the data changed since the checkpoint)"
                )
            piece = self._pieces[0]
            if offset >= len(piece[1]):
                raise ValueError(
                    f"cannot resume the stream {self.name!r}: document {doc} is shorter than "
                    f"{offset + 1} tokens now (the data changed since the checkpoint)"
                )
            piece[2] = offset
            self._buffered -= offset

    def _fill(self) -> bool:
        """Read and tokenize the next few documents (or append the closing EOS); False at the epoch's end."""
        while True:
            if self._closed:
                return False
            batch = list(itertools.islice(self._texts, _TOKENIZE_CHUNK))
            if not batch:
                end = stream_end(self.framing.eos, self.framing.bos)
                if len(end):
                    self._pieces.append([self._next_doc, end, 0])
                    self._buffered += len(end)
                self._closed = True
                return bool(len(end))
            added = False
            for enc in self._tokenizer.encode_batch(batch, add_special_tokens=False):
                if enc.ids:  # empty documents are skipped, as pack_tokens does
                    piece = document_piece(enc.ids, self.framing.eos, self.framing.bos)
                    self._pieces.append([self._next_doc, piece, 0])
                    self._buffered += len(piece)
                    added = True
                self._next_doc += 1
            if added:
                return True

    def take(self) -> tuple[torch.Tensor, torch.Tensor]:
        B = self.block_size
        restarted = False
        while self._buffered < B:
            if not self._fill():  # the tail that does not fill a block is dropped; next epoch
                if restarted:
                    raise ValueError(f"data source {self.name!r} holds fewer than {B} training tokens")
                self._seek(self.epoch_count + 1, self.first_doc, 0)
                restarted = True
        ids = np.empty(B, dtype=np.int64)
        starts = np.zeros(B, dtype=bool)
        filled = 0
        while filled < B:
            piece = self._pieces[0]
            tokens, offset = piece[1], piece[2]
            n = min(B - filled, len(tokens) - offset)
            ids[filled : filled + n] = tokens[offset : offset + n]
            starts[filled] = offset == 0
            filled += n
            if offset + n == len(tokens):
                self._pieces.popleft()
            else:
                piece[2] = offset + n
        self._buffered -= B
        self.taken += 1
        starts[0] = True
        index = np.arange(B, dtype=np.int64)
        pos = index - np.maximum.accumulate(np.where(starts, index, 0))
        return torch.from_numpy(ids), torch.from_numpy(pos)

    @property
    def epoch(self) -> float:
        return float(self.epoch_count)

    @property
    def pass_number(self) -> int:
        """The pass over the stream that the last block taken belongs to (1 = the first; 0 before any)."""
        return self.epoch_count + 1 if self.taken else 0

    def state_dict(self) -> dict[str, Any]:
        if self._pieces:
            doc, offset = self._pieces[0][0], self._pieces[0][2]
        else:
            doc, offset = self._next_doc, 0
        return {"taken": self.taken, "epoch": self.epoch_count, "doc": doc, "offset": offset, "split": self.split}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("split") != self.split:  # document indices count the training documents only
            raise ValueError(
                f"cannot resume the stream {self.name!r}: its state was saved with a held-out split of "
                f"{state.get('split', 'its first documents (an earlier bitk)')}, this run holds out "
                f"{self.split}; an exact resume needs the same data.heldout_fraction"
            )
        self._seek(int(state["epoch"]), int(state["doc"]), int(state["offset"]))
        self.taken = int(state["taken"])


class TrainData:
    """The training blocks of a `DataConfig` for one rank, and the held-out blocks (module doc).

    Reads cfg.sources, weights, text_field, block_size, streaming, heldout_fraction, max_eval_tokens.
    ``framing``: the EOS (and BOS) around each document; default: what the tokenizer's config says
    (`bitk.data.document_tokens`, given the tokenizer folder ``tokenizer_dir``).
    """

    def __init__(
        self,
        cfg: Any,
        tokenizer: Any,
        *,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        framing: DocumentTokens | None = None,
        tokenizer_dir: Any = None,
    ) -> None:
        specs = cfg.specs()
        if not specs:
            raise ValueError("data.sources is empty: name at least one source ('default' is the embedded corpus)")
        weights = [s.weight for s in specs]
        if any(not math.isfinite(w) or w <= 0 for w in weights):
            raise ValueError(f"data.weights must be positive numbers, got {weights}")
        if not isinstance(world_size, int) or world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in range for world_size {world_size}")
        block = cfg.block_size
        if not isinstance(block, int) or block < 2:
            raise ValueError(f"data.block_size must be an integer >= 2, got {block!r}")
        self.cfg = cfg
        self.seed, self.rank, self.world_size = int(seed), rank, world_size
        self.tokens_per_block = block
        self.framing = document_tokens(tokenizer, tokenizer_dir) if framing is None else framing
        self.specs = specs
        self.names = [s.name for s in specs]
        self.paths = [s.path for s in specs]
        total = sum(weights)
        self.initial_weights = np.asarray([w / total for w in weights], dtype=np.float64)
        self.weights = self.initial_weights.copy()
        """The mixture now (normalised); `set_weights` changes it from the next block on."""
        self.position = 0  # global blocks handed out (over all ranks)
        self.mixture_version = 0  # weight changes so far
        self.mixture_start = 0  # the global position where the current weights took over
        self.last_sources = np.zeros(0, dtype=np.int64)
        """The source index of each row of this rank's last `next_batch`."""
        self._choices_chunk = -1
        self._choices: np.ndarray | None = None
        self._passes_told = [1] * len(specs)
        self._sources: list[_PackedSource | _StreamSource] = []
        heldout: list[tuple[torch.Tensor, torch.Tensor]] = []
        for i, spec in enumerate(specs):
            source, held = self._open(i, spec, tokenizer)
            self._sources.append(source)
            heldout.append(held)
        self._heldout = self._merge_heldout(heldout)
        self._probe = None if getattr(cfg, "probe", None) is None else self._load_probe(tokenizer)

    # -- building -------------------------------------------------------------------------------
    def _pack(self, docs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        from bitk.data import pack_tokens

        ids, pos = pack_tokens(docs, self.tokens_per_block, self.framing.eos, bos_id=self.framing.bos)
        return ids.to(torch.int32), pos.to(torch.int32)  # stored narrow, widened per batch

    def _encode(self, texts: Any, tokenizer: Any, max_tokens: int | None = None) -> list[list[int]]:
        from bitk.data import encode_documents

        return encode_documents(
            texts, tokenizer, max_tokens=max_tokens, eos_id=self.framing.eos, bos_id=self.framing.bos
        )

    def _open(self, index: int, spec: Any, tokenizer: Any):
        from bitk.data import load_texts

        cfg, B = self.cfg, self.tokens_per_block
        name, path = spec.name, spec.path
        read = {"text_field": spec.text_field, "split": spec.split, "subset": spec.subset}
        fraction, max_eval = float(cfg.heldout_fraction), int(cfg.max_eval_tokens)
        if not 0.0 <= fraction < 1.0:
            raise ValueError(f"data.heldout_fraction must be in [0, 1), got {fraction}")
        eval_cap = max(max_eval, B)
        empty = torch.zeros((0, B), dtype=torch.int32)
        if cfg.streaming:
            if path == "default":
                held_docs = _encode_default("heldout", tokenizer)
                first_doc = 0

                def open_texts() -> Iterator[str]:
                    return load_texts("default", "train", streaming=True)
            else:

                def open_texts() -> Iterator[str]:
                    texts = load_texts(path, streaming=True, **read)
                    return (t for i, t in enumerate(texts) if not heldout_document(i, fraction))

                held_docs, first_doc = [], 0
                if fraction > 0:
                    texts = load_texts(path, streaming=True, **read)
                    held_texts = (t for i, t in enumerate(texts) if heldout_document(i, fraction))
                    held_docs = self._encode(held_texts, tokenizer, max_tokens=eval_cap)
            held = self._pack(held_docs) if held_docs else (empty, empty)
            source = _StreamSource(
                name,
                index,
                open_texts,
                tokenizer,
                B,
                self.framing,
                first_doc,
                split=None if path == "default" else fraction,
            )
            return source, held
        if path == "default":
            train_ids = self._pack(_encode_default("train", tokenizer))
            held = self._pack(_encode_default("heldout", tokenizer))
        else:
            docs = load_texts(path, **read)
            n_held = math.floor(len(docs) * fraction)
            if n_held > 0:
                train_ids = self._pack(self._encode(docs[: len(docs) - n_held], tokenizer))
                held = self._pack(self._encode(docs[len(docs) - n_held :], tokenizer, max_tokens=eval_cap + 1))
            else:  # too few documents: hold out the last blocks instead
                ids, pos = self._pack(self._encode(docs, tokenizer))
                n_blocks = math.ceil(fraction * ids.shape[0]) if fraction > 0 and ids.shape[0] >= 2 else 0
                train_ids = (ids[: ids.shape[0] - n_blocks], pos[: ids.shape[0] - n_blocks])
                held = (ids[ids.shape[0] - n_blocks :], pos[ids.shape[0] - n_blocks :])
        if train_ids[0].shape[0] == 0:
            raise ValueError(f"data source {name!r} holds fewer than block_size={B} training tokens")
        return _PackedSource(name, index, *train_ids, self.seed), held

    def _merge_heldout(self, parts: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Round-robin over the sources' held-out blocks, at most max(1, max_eval_tokens // block_size) blocks."""
        limit = max(1, int(self.cfg.max_eval_tokens) // self.tokens_per_block)
        rows: list[tuple[torch.Tensor, torch.Tensor]] = []
        for j in itertools.count():
            if len(rows) >= limit or all(j >= ids.shape[0] for ids, _ in parts):
                break
            for ids, pos in parts:
                if j < ids.shape[0] and len(rows) < limit:
                    rows.append((ids[j], pos[j]))
        if not rows:
            empty = torch.zeros((0, self.tokens_per_block), dtype=torch.int64)
            return empty, empty.clone()
        return (torch.stack([r[0] for r in rows]).long(), torch.stack([r[1] for r in rows]).long())

    def _load_probe(self, tokenizer: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The fixed probe batch of data.probe: its first probe_tokens tokens, packed and padded."""
        from bitk.data import load_texts, pack_tokens, packed_length

        cfg, B = self.cfg, self.tokens_per_block
        spec = cfg.probe_spec()
        probe = spec.path
        if probe == "default":
            docs = _encode_default("heldout", tokenizer)
        else:
            try:
                texts = load_texts(
                    probe, text_field=spec.text_field, split=spec.split, subset=spec.subset, streaming=True
                )
            except ValueError as e:
                raise ValueError(f"data.probe: {e}") from None
            texts = (t for t in texts if t.strip())  # blank documents are no text
            docs = self._encode(texts, tokenizer, max_tokens=max(int(cfg.probe_tokens), 3))
        length = packed_length(docs, eos_id=self.framing.eos, bos_id=self.framing.bos)
        if length < 2:
            raise ValueError(f"data.probe {probe} has no text: its documents hold no tokens")
        length = min(length, int(cfg.probe_tokens))
        ids, pos = pack_tokens(docs, B, self.framing.eos, pad_id=self.framing.eos, bos_id=self.framing.bos)
        rows = math.ceil(length / B)
        ids, pos = ids[:rows], pos[:rows]
        labels = ids.masked_fill(torch.arange(rows * B).reshape(rows, B) >= length, -100)  # padding: no target
        return ids, pos, labels

    # -- the stream -----------------------------------------------------------------------------
    def _choice(self, k: int) -> int:
        if len(self._sources) == 1:
            return 0
        chunk, i = divmod(k - self.mixture_start, _CHOICE_CHUNK)
        if chunk != self._choices_chunk:
            key = (self.seed, 1, chunk) if self.mixture_version == 0 else (self.seed, 1, chunk, self.mixture_version)
            self._choices = _rng(*key).choice(len(self._sources), size=_CHOICE_CHUNK, p=self.weights)
            self._choices_chunk = chunk
        return int(self._choices[i])

    def set_weights(self, weights: Any) -> None:
        """Draw the blocks from the next one on with ``weights`` (one per source, normalised here).

        Every rank must set the same weights at the same position; the order after the change is
        seeded by (seed, the change's number), so a resumed run draws the same blocks.
        """
        w = np.asarray(weights, dtype=np.float64)
        if w.shape != self.weights.shape or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
            raise ValueError(
                f"mixture weights must be {len(self.names)} non-negative numbers, not all 0; got {weights}"
            )
        self.weights = w / w.sum()
        self.mixture_version += 1
        self.mixture_start = self.position
        self._choices_chunk = -1

    def next_batch(self, micro_batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's next ``(input_ids, position_ids)``, int64 [micro_batch_size, block_size] (module doc);
        ``last_sources`` then holds each row's source index."""
        m, W = micro_batch_size, self.world_size
        if not isinstance(m, int) or m < 1:
            raise ValueError(f"micro_batch_size must be a positive integer, got {m!r}")
        ids, pos, which = [], [], []
        for j in range(m * W):
            index = self._choice(self.position)
            block = self._sources[index].take()
            self.position += 1
            if j % W == self.rank:
                ids.append(block[0])
                pos.append(block[1])
                which.append(index)
        self.last_sources = np.asarray(which, dtype=np.int64)
        return torch.stack(ids).long(), torch.stack(pos).long()

    def heldout(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The held-out blocks (int64 [N, block_size], N * block_size <= max(max_eval_tokens, block_size);
        N may be 0), the same on every rank."""
        return self._heldout[0].clone(), self._heldout[1].clone()

    def probe(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """data.probe's fixed batch: ``(input_ids, position_ids, labels)``, int64 [N, block_size], the
        same on every rank; labels are the ids, -100 on the padding (no target). None without data.probe."""
        if self._probe is None:
            return None
        return tuple(x.clone() for x in self._probe)

    @property
    def tokens_seen(self) -> int:
        """Training tokens handed out so far, over all ranks."""
        return self.position * self.tokens_per_block

    def source_tokens(self) -> dict[str, int]:
        """Training tokens handed out so far by each source, over all ranks."""
        return {s.name: s.taken * self.tokens_per_block for s in self._sources}

    def epochs(self) -> list[float]:
        """Passes made over each source's training blocks (whole passes only for streams)."""
        return [s.epoch for s in self._sources]

    def new_passes(self) -> list[str]:
        """A line for each source that ran dry and started another pass over its blocks since the last call."""
        lines = []
        for i, s in enumerate(self._sources):
            current = s.pass_number
            if current > self._passes_told[i]:
                self._passes_told[i] = current
                lines.append(
                    f"data source {s.name!r} ran dry after {s.taken:,} blocks: pass {current} over its training "
                    "blocks begins (its blocks repeat)"
                )
        return lines

    def summary(self) -> str:
        """One line per source: kind, training blocks, weight, held-out blocks in total."""
        lines = []
        for s, path, w in zip(self._sources, self.paths, self.weights):
            size = "streaming" if s.streaming else f"{s.num_blocks} blocks x {self.tokens_per_block} tokens"
            where = "" if path == s.name else f" ({path})"
            lines.append(f"  {s.name}{where}: {size}, weight {w:.3f}")
        lines.append(f"  held out: {self._heldout[0].shape[0]} blocks")
        if self._probe is not None:
            lines.append(f"  probe: {self.cfg.probe_spec().path}, {int((self._probe[2] >= 0).sum()):,} tokens")
        return "\n".join(lines)

    # -- resume ---------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The exact position and mixture (plain JSON values), the same on every rank."""
        return {
            "format": _STATE_FORMAT,
            "position": self.position,
            "seed": self.seed,
            "names": list(self.names),
            "paths": list(self.paths),
            "block_size": self.tokens_per_block,
            "initial_weights": [float(w) for w in self.initial_weights],
            "weights": [float(w) for w in self.weights],
            "mixture_version": self.mixture_version,
            "mixture_start": self.mixture_start,
            "sources": [s.state_dict() for s in self._sources],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state`` (ValueError when the sources, weights, block size or seed differ).

        A state of an earlier bitk (format 1, sources named by their path, fixed weights) loads too.
        """
        fmt = state.get("format")
        if fmt not in (1, _STATE_FORMAT):
            raise ValueError(f"unknown data state format {fmt!r}")
        names = self.paths if fmt == 1 else self.names
        for key, mine in (("names", names), ("block_size", self.tokens_per_block), ("seed", self.seed)):
            if state[key] != mine:
                raise ValueError(
                    f"the data state was saved with {key}={state[key]!r}, this run has {mine!r}: "
                    "an exact resume needs the same data settings"
                )
        initial = state["weights"] if fmt == 1 else state["initial_weights"]
        if not np.allclose(initial, self.initial_weights, rtol=0, atol=1e-12):
            raise ValueError(
                f"the data state was saved with weights {initial}, this run has "
                f"{self.initial_weights.tolist()}: an exact resume needs the same data settings"
            )
        for source, s in zip(self._sources, state["sources"]):
            source.load_state_dict(s)
        self.position = int(state["position"])
        if fmt != 1:
            self.weights = np.asarray(state["weights"], dtype=np.float64)
            self.mixture_version = int(state["mixture_version"])
            self.mixture_start = int(state["mixture_start"])
        self._choices_chunk = -1
        self._passes_told = [max(1, s.pass_number) for s in self._sources]
