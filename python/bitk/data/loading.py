"""Text in, token blocks out: reading documents, tokenizing them and packing them into fixed-length rows.

Sources (`load_texts`): "default" (the embedded corpus), local .txt / .jsonl / .json / .parquet files
or folders of them (read with `datasets`: a .txt file is one document, a JSON/parquet row is one),
or a Hugging Face hub dataset name when the hub is reachable.

Packing (`pack_tokens`): every document becomes `EOS doc` (the EOS of the previous document
doubling as this one's start), the documents follow each other in one stream closed by one more
EOS, and the stream is cut into rows of `block_size`. A tokenizer with a BOS of its own (Llama 3)
frames each document as `BOS doc EOS` instead. Position ids count from 0 at each document's first
token (its leading EOS or BOS) and at each row start, so a model that starts a new attention
segment wherever the position id is 0 never lets a token see another document, and the
prediction of each EOS (a document's end) still sees its document.
"""

from __future__ import annotations

import ast
import json
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bitk.data.corpus import SPLITS, default_corpus

__all__ = [
    "EXTENSIONS",
    "document_piece",
    "encode_documents",
    "load_texts",
    "pack_tokens",
    "packed_length",
    "stream_end",
]

# file extension -> the `datasets` builder that reads it
EXTENSIONS = {".txt": "text", ".text": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}


def _local_files(path: Path) -> tuple[str, list[str]]:
    """The `datasets` builder and the sorted files of a local file or folder; ValueError when unusable."""
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in EXTENSIONS)
        if not files:
            raise ValueError(f"no {'/'.join(EXTENSIONS)} files in the folder {path}")
    else:
        files = [path]
    builders = {EXTENSIONS.get(p.suffix.lower()) for p in files}
    if None in builders:
        raise ValueError(f"cannot read {path}: supported files are {', '.join(EXTENSIONS)}")
    if len(builders) > 1:
        raise ValueError(f"the folder {path} mixes file types ({', '.join(sorted(builders))}); use one kind")
    return builders.pop(), [str(p) for p in files]


def looks_like_path(source: str) -> bool:
    """True for what cannot be a hub name ("name" or "owner/name"): so a mistyped path is not sent to the hub."""
    return (
        source.startswith(("/", ".", "~"))
        or source.count("/") > 1
        or (os.sep != "/" and os.sep in source)
        or Path(source).suffix.lower() in EXTENSIONS
    )


def _check_hub(source: str) -> None:
    """Fail fast (instead of `datasets`' minute of retries) when the hub cannot be reached."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    message = f"{source!r} is not a local path; no hub access"
    if constants.HF_HUB_OFFLINE or os.environ.get("HF_DATASETS_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE"):
        raise ValueError(f"{message} (offline mode is set)")
    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or (80 if url.scheme == "http" else 443)), timeout=5).close()
    except OSError as exc:
        raise ValueError(f"{message} ({url.hostname}: {exc})") from exc


def load_texts(
    source: str | os.PathLike,
    split: str | None = None,
    text_field: str = "text",
    streaming: bool = False,
    subset: str | None = None,
) -> list[str] | Iterator[str]:
    """The documents of ``source``: a list of strings, or a lazy iterator of them when ``streaming``.

    ``source`` is "default" (the embedded corpus; ``split`` "train" (default) or "heldout"), a
    local file or folder (``split`` must be None or "train", the one split `datasets` makes of
    local files), or a hub dataset name (``split`` picks the split; None works when there is one).
    ``text_field`` names the column holding the text of JSON / parquet / hub rows; ``subset`` a hub
    dataset's configuration (``datasets.load_dataset(source, name=subset)``).
    """
    if str(source) == "default":
        if split is not None and split not in SPLITS:
            raise ValueError(f"unknown split {split!r} of the embedded corpus; splits: {', '.join(SPLITS)}")
        docs = default_corpus(split or "train")
        return iter(docs) if streaming else docs
    import datasets

    path = Path(source).expanduser()
    if subset is not None and path.exists():
        raise ValueError(f"{source} is a local path: a subset (configuration) applies to hub datasets only")
    if path.exists():
        if split not in (None, "train"):
            raise ValueError(f"local data has the single split 'train', not {split!r}")
        builder, files = _local_files(path)
        if all(os.path.getsize(f) == 0 for f in files):
            raise ValueError(f"{path} is empty")
        if all(Path(f).suffix.lower() == ".jsonl" for f in files):  # read here: errors name the file and line
            texts = _jsonl_texts(files, text_field)
            return texts if streaming else _usable(list(texts), path, text_field)
        # A .txt file is one document: splitting by lines would swap every newline for an EOS.
        extra = {"sample_by": "document"} if builder == "text" else {}
        try:
            data = datasets.load_dataset(builder, data_files=files, split="train", streaming=streaming, **extra)
        except (StopIteration, datasets.exceptions.DatasetGenerationError) as exc:
            raise ValueError(f"cannot read {path} as {builder}: {exc or type(exc).__name__}") from exc
    elif isinstance(source, os.PathLike) or looks_like_path(str(source)):
        raise ValueError(f"no such file or folder: {source}")
    else:
        _check_hub(str(source))
        try:
            data = datasets.load_dataset(str(source), name=subset, split=split, streaming=streaming)
        except ValueError as exc:  # datasets' own, over several lines: a missing subset, a bad split, ...
            raise ValueError(_hub_error(str(source), subset, exc)) from exc
        if isinstance(data, (datasets.DatasetDict, datasets.IterableDatasetDict)):
            if len(data) != 1:
                raise ValueError(f"{source} has the splits {', '.join(data)}; choose one")
            data = next(iter(data.values()))
    columns = data.column_names
    if columns is not None and text_field not in columns:
        raise ValueError(f"{source} has no column {text_field!r}; its columns: {', '.join(columns)}")
    if streaming:
        return _texts(data, text_field, source)
    texts = [_text_of(text, text_field, f"{source} row {i + 1}") for i, text in enumerate(data[text_field])]
    return _usable(texts, source, text_field)


def _hub_error(source: str, subset: str | None, exc: ValueError) -> str:
    """One line for `datasets`' ValueError about a hub dataset; a missing or unknown subset in bitk's terms."""
    message = " ".join(str(exc).split())
    listed = re.search(r"[Aa]vailable(?: configs)?: (\[[^\]]*\])", message)
    if listed and ("Config name is missing" in message or "BuilderConfig" in message):
        try:
            names = [str(n) for n in ast.literal_eval(listed[1])]
        except (ValueError, SyntaxError):
            names = []
        if names:
            what = "no subset is given" if subset is None else f"it has no subset {subset!r}"
            return (
                f"{source} has the subsets (configurations) {', '.join(names)} and {what}: choose one, e.g. "
                f"data.sources=[{{path: {source}, subset: {names[0]}}}]"
            )
    return f"cannot load the hub dataset {source}" + (f" (subset {subset})" if subset else "") + f": {message}"


def _texts(rows: Iterable[dict], text_field: str, source) -> Iterator[str]:
    for i, row in enumerate(rows):
        if text_field not in row:
            raise ValueError(f"{source} has no column {text_field!r}; its columns: {', '.join(row)}")
        yield _text_of(row[text_field], text_field, f"{source} row {i + 1}")


def _jsonl_texts(files: list[str], text_field: str) -> Iterator[str]:
    """The ``text_field`` of each row of JSON-lines files (blank lines skipped; null is an empty
    document); ValueError naming the file and line of a row that is not JSON, not an object,
    lacks the field or holds something other than a string there."""
    for file in files:
        with open(file, "rb") as f:
            for n, raw in enumerate(f, 1):
                where = f"{file} line {n}"
                try:
                    line = raw.decode("utf-8").rstrip("\r\n")
                except UnicodeDecodeError as e:
                    raise ValueError(f"{where}: not UTF-8 text ({e.reason} at byte {e.start})") from None
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{where}: not valid JSON ({e.msg}, column {e.colno})") from None
                if not isinstance(row, dict):
                    raise ValueError(f"{where}: a JSON {_json_type(row)}, not an object with a {text_field!r} field")
                if text_field not in row:
                    raise ValueError(
                        f"{where} has no column {text_field!r}; its columns: {', '.join(row) or '(none)'} "
                        "(data.text_field names the column)"
                    )
                yield _text_of(row[text_field], text_field, where)


def _text_of(value: Any, text_field: str, where: str) -> str:
    """A row's text: the string, "" for null; ValueError naming the row for anything else."""
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    shown = repr(value)
    shown = shown if len(shown) <= 40 else shown[:37] + "..."
    raise ValueError(f"{where}: {text_field!r} holds a {_json_type(value)} ({shown}), not a string")


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, (list, tuple)):
        return "list"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _usable(texts: list[str], source, text_field: str) -> list[str]:
    """``texts``, or ValueError when not one of them holds any text."""
    if not any(t.strip() for t in texts):
        raise ValueError(f"{source} has no usable text: its {len(texts)} document(s) in {text_field!r} are all empty")
    return texts


def document_piece(ids: Sequence[int], eos_id: int, bos_id: int | None = None) -> np.ndarray:
    """The tokens one document adds to a packed stream: ``EOS doc``, or ``BOS doc EOS`` with a distinct BOS."""
    if bos_id is None or bos_id == eos_id:
        piece = np.empty(len(ids) + 1, dtype=np.int64)
        piece[0] = eos_id
        piece[1:] = ids
        return piece
    piece = np.empty(len(ids) + 2, dtype=np.int64)
    piece[0], piece[-1] = bos_id, eos_id
    piece[1:-1] = ids
    return piece


def stream_end(eos_id: int, bos_id: int | None = None) -> np.ndarray:
    """The tokens that close a packed stream: the last document's EOS, unless its piece ends with one."""
    return np.asarray([eos_id] if bos_id is None or bos_id == eos_id else [], dtype=np.int64)


def _framing(eos_id: int, bos_id: int | None) -> tuple[int, int]:
    """(tokens a document adds besides its own, tokens that close the stream)."""
    return (1, 1) if bos_id is None or bos_id == eos_id else (2, 0)


def encode_documents(
    texts: Iterable[str],
    tokenizer,
    max_tokens: int | None = None,
    chunk: int = 256,
    *,
    eos_id: int = 0,
    bos_id: int | None = None,
) -> list[list[int]]:
    """Token ids of each document (no special tokens added), read in chunks of ``chunk`` documents.

    With ``max_tokens``, reading stops once the packed stream (`pack_tokens` with the same
    ``eos_id`` / ``bos_id`` framing) would hold that many tokens, so a cap on a large data set
    does not tokenize all of it; the last document is cut to fit.
    """
    per_doc, closing = _framing(eos_id, bos_id)
    if max_tokens is not None and max_tokens < per_doc + closing + 1:
        raise ValueError(
            f"max_tokens must be at least {per_doc + closing + 1} (a document's framing tokens, a "
            f"token and the stream's end), got {max_tokens}"
        )
    out: list[list[int]] = []
    total = 0  # tokens of the stream so far, without the closing tokens
    budget = None if max_tokens is None else max_tokens - closing
    it = iter(texts)
    while budget is None or total < budget:
        batch = [t for _, t in zip(range(chunk), it)]
        if not batch:
            break
        for enc in tokenizer.encode_batch(batch, add_special_tokens=False):
            ids = enc.ids
            if budget is not None:
                ids = ids[: max(0, budget - total - per_doc)]
            out.append(ids)
            total += len(ids) + per_doc
            if budget is not None and total >= budget:
                break
    return out


def packed_length(token_lists: Iterable[Sequence[int]], *, eos_id: int = 0, bos_id: int | None = None) -> int:
    """Length of the stream `pack_tokens` makes of ``token_lists`` (before cutting or padding)."""
    per_doc, closing = _framing(eos_id, bos_id)
    n = sum(len(doc) + per_doc for doc in token_lists if len(doc))
    return n + closing if n else 0


def pack_tokens(
    token_lists: Iterable[Sequence[int]],
    block_size: int,
    eos_id: int,
    pad_id: int | None = None,
    *,
    bos_id: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pack documents into ``(input_ids, position_ids)``, both int64 [N, block_size].

    The stream is `EOS d1 EOS d2 ... EOS dn EOS`, or `BOS d1 EOS BOS d2 EOS ...` when ``bos_id``
    is given and differs from ``eos_id`` (empty documents are skipped). A stream that does not fill
    the last row is cut there when ``pad_id`` is None (the tail's tokens are dropped) or padded with
    ``pad_id`` when given (the padding forms its own segment starting at position 0, so no real
    token's context changes; a scorer ignores the targets after the first
    `packed_length(token_lists)` positions, as the eval CLI does).
    """
    if not isinstance(block_size, int) or isinstance(block_size, bool) or block_size < 1:
        raise ValueError(f"block_size must be a positive integer, got {block_size!r}")
    pieces = [document_piece(doc, eos_id, bos_id) for doc in token_lists if len(doc)]
    if not pieces:
        empty = torch.zeros((0, block_size), dtype=torch.int64)
        return empty, empty.clone()
    lengths = [len(p) for p in pieces]
    stream = np.concatenate([*pieces, stream_end(eos_id, bos_id)])
    starts = np.zeros(len(stream), dtype=bool)
    starts[np.cumsum([0] + lengths[:-1])] = True  # each document's first token
    starts[sum(lengths) :] = True  # the closing EOS, if any, forms its own segment
    rows, tail = divmod(len(stream), block_size)
    if tail and pad_id is not None:
        fill = block_size - tail
        stream = np.concatenate([stream, np.full(fill, pad_id, dtype=np.int64)])
        starts = np.concatenate([starts, np.arange(fill) == 0])
        rows += 1
    stream = stream[: rows * block_size].reshape(rows, block_size)
    starts = starts[: rows * block_size].reshape(rows, block_size)
    starts[:, 0] = True
    index = np.broadcast_to(np.arange(block_size, dtype=np.int64), stream.shape)
    last_start = np.maximum.accumulate(np.where(starts, index, 0), axis=1)
    return torch.from_numpy(np.ascontiguousarray(stream)), torch.from_numpy(index - last_start)
