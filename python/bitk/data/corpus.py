"""bitk's embedded corpus: the topics of Python's own help(), split into train and held-out.

Source: `pydoc_data.topics.topics`, the text `help("assert")` and friends print, generated from the
Python documentation (about 465k characters of English prose and code in 3.11). It ships with every
CPython (PSF licence, https://docs.python.org/3/license.html), so bitk has a real, licence-clean
corpus offline. One topic is one document. The split is fixed by position in sorted key order:
every 20th topic (indices 0, 20, 40, ...) is held out, about 5% of the documents. The text, and so
the tokenizer trained on it, differ a little between Python versions; a checkpoint carries its own
tokenizer files, so this never changes how a saved model reads text.
"""

from __future__ import annotations

import hashlib

__all__ = ["HELDOUT_EVERY", "SPLITS", "corpus_fingerprint", "default_corpus"]

SPLITS = ("train", "heldout")
HELDOUT_EVERY = 20
"""Every HELDOUT_EVERY-th topic in sorted key order (starting with the first) is held out."""


def _topics() -> dict[str, str]:
    from pydoc_data.topics import topics

    return topics


def default_corpus(split: str = "train") -> list[str]:
    """The documents of one split of the embedded corpus, in sorted topic order.

    The two splits are disjoint and together hold every topic; the result is the same on every
    call and machine with the same Python version.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r} of the embedded corpus; splits: {', '.join(SPLITS)}")
    topics = _topics()
    heldout = split == "heldout"
    return [topics[key] for i, key in enumerate(sorted(topics)) if (i % HELDOUT_EVERY == 0) == heldout]


def corpus_fingerprint(split: str = "train") -> str:
    """sha256 (hex) of one split's documents, each length-prefixed: a cache key for what is derived from them."""
    h = hashlib.sha256()
    for doc in default_corpus(split):
        data = doc.encode("utf-8")
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()
