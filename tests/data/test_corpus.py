"""The embedded corpus: Python's help() topics, split deterministically into disjoint train / held-out."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pydoc_data.topics import topics

import pytest

from bitk.data import HELDOUT_EVERY, corpus_fingerprint, default_corpus


def test_splits_are_disjoint_and_cover_every_topic():
    train, heldout = default_corpus("train"), default_corpus("heldout")
    ordered = [topics[k] for k in sorted(topics)]
    assert len(train) + len(heldout) == len(ordered)
    # sorted key order, every HELDOUT_EVERY-th held out, the rest train, nothing shared
    assert heldout == ordered[::HELDOUT_EVERY]
    assert train == [doc for i, doc in enumerate(ordered) if i % HELDOUT_EVERY]
    assert not set(train) & set(heldout)  # no document text in both (the topics hold no duplicates)


def test_sizes_are_about_five_percent_held_out():
    train, heldout = default_corpus("train"), default_corpus("heldout")
    assert sum(map(len, train)) + sum(map(len, heldout)) > 300_000  # a real corpus, not a stub
    assert 0.03 <= len(heldout) / (len(train) + len(heldout)) <= 0.07
    assert all(isinstance(d, str) and d for d in train + heldout)


def test_deterministic_across_processes():
    # A split or fingerprint that depended on set or dict-hash order would differ between hash seeds.
    code = "from bitk.data import corpus_fingerprint as f; print(f('train'), f('heldout'))"
    outs = {
        subprocess.run(
            [sys.executable, "-c", code],
            check=True,
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
        ).stdout
        for seed in ("0", "1", "12345")
    }
    assert len(outs) == 1, outs
    train_fp, heldout_fp = outs.pop().split()
    assert (train_fp, heldout_fp) == (corpus_fingerprint("train"), corpus_fingerprint("heldout"))
    assert train_fp != heldout_fp
    assert default_corpus() == default_corpus("train")


def test_fingerprint_is_sha256_of_the_length_prefixed_documents():
    # The fingerprint keys caches of what is derived from the corpus: its definition is pinned.
    h = hashlib.sha256()
    for doc in default_corpus("heldout"):
        data = doc.encode("utf-8")
        h.update(len(data).to_bytes(8, "little") + data)
    assert corpus_fingerprint("heldout") == h.hexdigest()
    assert corpus_fingerprint() == corpus_fingerprint("train")


def test_callers_cannot_change_the_corpus():
    docs = default_corpus("heldout")
    docs.clear()
    assert default_corpus("heldout")


def test_unknown_split():
    with pytest.raises(ValueError, match=r"unknown split 'test'.*train, heldout"):
        default_corpus("test")
