"""bitk's data: the embedded corpus, the default tokenizer, and documents -> packed token blocks.

    docs = default_corpus("heldout")                  # Python's help() topics, ~5% held out
    tok = default_tokenizer()                         # byte-level BPE, 4096 tokens, EOS id 0
    ids = encode_documents(docs, tok)
    input_ids, position_ids = pack_tokens(ids, 512, EOS_ID, pad_id=PAD_ID)

`bitk.data.corpus` and `bitk.data.tokenizer` need no torch; `bitk.data.loading` (torch tensors,
`datasets`) loads on first use. Sources, licence and the packing layout: docs/data.md.
"""

from __future__ import annotations

import importlib
from typing import Any

from .corpus import HELDOUT_EVERY, SPLITS, corpus_fingerprint, default_corpus
from .tokenizer import (
    EOS_ID,
    DocumentTokens,
    document_tokens,
    EOS_TOKEN,
    MASK_ID,
    MASK_TOKEN,
    PAD_ID,
    PAD_TOKEN,
    SPECIAL_TOKENS,
    VOCAB_SIZE,
    cache_dir,
    default_tokenizer,
    load_tokenizer,
    save_tokenizer,
    train_tokenizer,
)

_LAZY = {name: "loading" for name in ("load_texts", "encode_documents", "packed_length", "pack_tokens", "EXTENSIONS")}

__all__ = [
    "DocumentTokens",
    "document_tokens",
    "SPLITS",
    "HELDOUT_EVERY",
    "default_corpus",
    "corpus_fingerprint",
    "VOCAB_SIZE",
    "EOS_TOKEN",
    "PAD_TOKEN",
    "MASK_TOKEN",
    "EOS_ID",
    "PAD_ID",
    "MASK_ID",
    "SPECIAL_TOKENS",
    "cache_dir",
    "train_tokenizer",
    "default_tokenizer",
    "save_tokenizer",
    "load_tokenizer",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"bitk.data.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'bitk.data' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
