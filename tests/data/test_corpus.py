"""The embedded corpus: Python's help() topics, split deterministically into disjoint train / held-out."""

from __future__ import annotations

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
    assert not {id(d) for d in train} & {id(d) for d in heldout}
    assert not set(train) & set(heldout)


def test_sizes_are_about_five_percent_held_out():
    train, heldout = default_corpus("train"), default_corpus("heldout")
    assert sum(map(len, train)) + sum(map(len, heldout)) > 300_000  # a real corpus, not a stub
    assert 0.03 <= len(heldout) / (len(train) + len(heldout)) <= 0.07
    assert all(isinstance(d, str) and d for d in train + heldout)


def test_deterministic():
    assert default_corpus("train") == default_corpus("train")
    assert default_corpus() == default_corpus("train")
    assert corpus_fingerprint("train") == corpus_fingerprint("train")
    assert corpus_fingerprint("train") != corpus_fingerprint("heldout")
    assert len(corpus_fingerprint()) == 64


def test_callers_cannot_change_the_corpus():
    docs = default_corpus("heldout")
    docs.clear()
    assert default_corpus("heldout")


def test_unknown_split():
    with pytest.raises(ValueError, match=r"unknown split 'test'.*train, heldout"):
        default_corpus("test")
