"""bitk's data: the embedded corpus, the default tokenizer, and documents -> packed token blocks.

    docs = default_corpus("heldout")                  # Python's help() topics, ~5% held out
    tok = default_tokenizer()                         # byte-level BPE, 4096 tokens, EOS id 0
    ids = encode_documents(docs, tok)
    input_ids, position_ids = pack_tokens(ids, 512, EOS_ID, pad_id=PAD_ID)

`bitk.data.corpus`, `bitk.data.tokenizer` and `bitk.data.config` (`DataConfig`, the trainer's data
group) need no torch; `bitk.data.loading` (torch tensors, `datasets`) and `bitk.data.stream`
(`TrainData`: the training blocks of a run) load on first use. Sources, licence and the packing
layout: docs/data.md.
"""

from __future__ import annotations

from bitk._lazy import lazy_exports

from .config import DataConfig
from .corpus import HELDOUT_EVERY, SPLITS, corpus_fingerprint, default_corpus
from .tokenizer import (
    EOS_ID,
    EOS_TOKEN,
    MASK_ID,
    MASK_TOKEN,
    PAD_ID,
    PAD_TOKEN,
    SPECIAL_TOKENS,
    VOCAB_SIZE,
    DocumentTokens,
    cache_dir,
    default_tokenizer,
    document_tokens,
    load_tokenizer,
    save_tokenizer,
    train_tokenizer,
)

_LAZY = {
    **{name: "loading" for name in ("load_texts", "encode_documents", "packed_length", "pack_tokens", "EXTENSIONS")},
    "TrainData": "stream",
}

__all__ = [
    "DataConfig",
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
]
__all__ += list(_LAZY)

__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
