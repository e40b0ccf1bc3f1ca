"""TrainData: deterministic weighted mixture, rank sharding, epochs, held-out split, exact resume, streaming."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch

from bitk.data import EOS_ID, DataConfig, TrainData, default_corpus, default_tokenizer, encode_documents, pack_tokens


@pytest.fixture(scope="module")
def tok():
    return default_tokenizer()


def cfg(**changes):
    base = {
        "sources": ["default"],
        "weights": None,
        "text_field": "text",
        "block_size": 64,
        "streaming": False,
        "heldout_fraction": 0.05,
        "max_eval_tokens": 2048,
    }
    base.update(changes)
    return DataConfig(**base)


def write_jsonl(path, docs):
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    return str(path)


def numbered_docs(n, words=30):
    return [f"Document {i} " + " ".join(f"w{i}x{j}" for j in range(words)) for i in range(n)]


@pytest.fixture
def small(tmp_path):
    """A local source of 12 documents (about 20 blocks of 64 tokens)."""
    return write_jsonl(tmp_path / "small.jsonl", numbered_docs(12))


def batches(data, n, m):
    return [data.next_batch(m) for _ in range(n)]


def same(a, b):
    return len(a) == len(b) and all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(a, b))


def test_shapes_and_determinism(tok):
    a = TrainData(cfg(), tok, seed=0)
    assert a.tokens_per_block == 64
    first = batches(a, 3, 4)
    ids, pos = first[0]
    assert ids.shape == pos.shape == (4, 64) and ids.dtype == pos.dtype == torch.int64
    assert same(first, batches(TrainData(cfg(), tok, seed=0), 3, 4))
    assert not torch.equal(first[0][0], TrainData(cfg(), tok, seed=1).next_batch(4)[0])
    assert a.tokens_seen == 12 * 64


def test_position_ids_restart_at_documents(tok, small):
    data = TrainData(cfg(sources=["default", small]), tok, seed=0)
    for ids, pos in batches(data, 5, 8):
        assert (pos[:, 0] == 0).all()
        starts = pos[:, 1:] == 0
        # a document starts at its EOS; inside a document the positions count up by one
        assert torch.equal(starts, ids[:, 1:] == EOS_ID)
        assert torch.equal(pos[:, 1:][~starts], pos[:, :-1][~starts] + 1)


@pytest.mark.parametrize("world", [2, 3])
def test_rank_shards_union_is_the_single_process_batch(tok, small, world):
    c = cfg(sources=["default", small], weights=[2.0, 1.0])
    single = TrainData(c, tok, seed=5)
    ranks = [TrainData(c, tok, seed=5, rank=r, world_size=world) for r in range(world)]
    for m in (3, 1, 2):
        ids, pos = single.next_batch(m * world)
        for r, data in enumerate(ranks):
            rid, rpos = data.next_batch(m)
            assert torch.equal(rid, ids[r::world]) and torch.equal(rpos, pos[r::world])
    assert all(d.state_dict() == single.state_dict() for d in ranks)  # one position for every rank
    # the held-out blocks are the same everywhere
    assert all(torch.equal(d.heldout()[0], single.heldout()[0]) for d in ranks)


def test_single_process_micro_steps_see_the_same_blocks_per_step(tok):
    """One step of 8 sequences: as 4 micro-batches of 2, or as 2 ranks x 2 micro-batches of 2."""
    one = TrainData(cfg(), tok, seed=0)
    acc = torch.cat([one.next_batch(2)[0] for _ in range(4)])
    ranks = [TrainData(cfg(), tok, seed=0, rank=r, world_size=2) for r in range(2)]
    dist = torch.cat([d.next_batch(2)[0] for _ in range(2) for d in ranks])

    def key(t):
        return sorted(map(tuple, t.tolist()))

    assert key(acc) == key(dist)


def test_epochs_cover_every_block_and_reshuffle(tok, small):
    data = TrainData(cfg(sources=[small], heldout_fraction=0.0), tok, seed=0)
    with open(small) as f:
        docs = [json.loads(line)["text"] for line in f]
    rows, _ = pack_tokens(encode_documents(docs, tok), 64, EOS_ID)
    n = rows.shape[0]
    assert n >= 15
    first = torch.cat([data.next_batch(1)[0] for _ in range(n)])
    second = torch.cat([data.next_batch(1)[0] for _ in range(n)])

    def key(t):
        return sorted(map(tuple, t.tolist()))

    assert key(first) == key(rows) == key(second)
    assert not torch.equal(first, second) and not torch.equal(first, rows)
    assert data.epochs() == [2.0]


def test_mixture_proportions(tok, small):
    data = TrainData(cfg(sources=["default", small], weights=[3.0, 1.0]), tok, seed=0)
    for _ in range(500):
        data.next_batch(4)
    taken = [s.taken for s in data._sources]
    assert sum(taken) == 2000
    assert taken[0] / 2000 == pytest.approx(0.75, abs=0.04)  # 4 standard deviations


@pytest.mark.parametrize("sources", [["default"], ["default", "SMALL"]])
def test_resume_gives_identical_next_batches(tok, small, sources):
    c = cfg(sources=[small if s == "SMALL" else s for s in sources], weights=[1.0, 2.0][: len(sources)])
    ref = TrainData(c, tok, seed=3)
    batches(ref, 7, 4)  # the small source wraps into its second epoch around here
    state = json.loads(json.dumps(ref.state_dict()))  # plain JSON: ints, strings, floats
    expected = batches(ref, 6, 4)
    resumed = TrainData(c, tok, seed=3, rank=0)
    resumed.load_state_dict(state)
    assert same(batches(resumed, 6, 4), expected)


def test_resume_rejects_other_settings(tok, small):
    state = TrainData(cfg(), tok, seed=0).state_dict()
    with pytest.raises(ValueError, match="seed"):
        TrainData(cfg(), tok, seed=1).load_state_dict(state)
    with pytest.raises(ValueError, match="names"):
        TrainData(cfg(sources=["default", small]), tok, seed=0).load_state_dict(state)
    with pytest.raises(ValueError, match="block_size"):
        TrainData(cfg(block_size=32), tok, seed=0).load_state_dict(state)


def test_default_heldout_is_the_embedded_split(tok):
    data = TrainData(cfg(max_eval_tokens=1000), tok, seed=0)
    ids, pos = data.heldout()
    expected_ids, expected_pos = pack_tokens(encode_documents(default_corpus("heldout"), tok), 64, EOS_ID)
    assert ids.shape == (1000 // 64, 64)
    assert torch.equal(ids, expected_ids[: ids.shape[0]]) and torch.equal(pos, expected_pos[: ids.shape[0]])
    train = {tuple(r) for r in data._sources[0].ids.tolist()}
    assert not train & {tuple(r) for r in ids.tolist()}


def test_heldout_documents_are_the_last_fraction(tok, tmp_path):
    path = write_jsonl(tmp_path / "docs.jsonl", numbered_docs(20))
    data = TrainData(cfg(sources=[path], heldout_fraction=0.1), tok, seed=0)
    held = tok.decode(data.heldout()[0].flatten().tolist())
    train = tok.decode(data._sources[0].ids.flatten().tolist())
    assert "Document 18 " in held and "Document 19 " in held
    assert "Document 17 " not in held
    assert "Document 18 " not in train and "Document 19 " not in train and "Document 17 " in train


def test_one_document_source_holds_out_its_last_blocks(tok, tmp_path):
    path = tmp_path / "book.txt"
    path.write_text(" ".join(numbered_docs(1, words=600)))  # one .txt file = one document
    rows, _ = pack_tokens(encode_documents([path.read_text()], tok), 64, EOS_ID)
    data = TrainData(cfg(sources=[str(path)], heldout_fraction=0.1), tok, seed=0)
    n_held = math.ceil(0.1 * rows.shape[0])
    assert torch.equal(data.heldout()[0], rows[rows.shape[0] - n_held :])
    assert data._sources[0].num_blocks == rows.shape[0] - n_held
    # no held-out at all
    none = TrainData(cfg(sources=[str(path)], heldout_fraction=0.0), tok, seed=0)
    assert none.heldout()[0].shape == (0, 64)


def stream_rows(tok, docs, block=64):
    return pack_tokens(encode_documents(docs, tok), block, EOS_ID)


def test_streaming_packs_like_pack_tokens_and_cycles(tok, tmp_path):
    docs = numbered_docs(150, words=12)  # more than one tokenizing chunk of documents
    path = write_jsonl(tmp_path / "s.jsonl", docs)
    data = TrainData(cfg(sources=[path], streaming=True, heldout_fraction=0.0), tok, seed=0)
    ids, pos = stream_rows(tok, docs)
    n = ids.shape[0]
    got = [data.next_batch(1) for _ in range(n + 2)]
    assert torch.equal(torch.cat([g[0] for g in got[:n]]), ids)
    assert torch.equal(torch.cat([g[1] for g in got[:n]]), pos)
    # the next epoch starts again at the first document (the tail is dropped)
    assert torch.equal(got[n][0][0], ids[0]) and torch.equal(got[n + 1][0][0], ids[1])
    assert data.epochs() == [1.0]


def test_streaming_resume_mid_document(tok, tmp_path):
    docs = numbered_docs(6, words=70) + [""] + numbered_docs(3, words=5)  # long documents, an empty one
    path = write_jsonl(tmp_path / "s.jsonl", docs)
    c = cfg(sources=[path, "default"], weights=[3.0, 1.0], streaming=True, heldout_fraction=0.0)
    ref = TrainData(c, tok, seed=0)
    for k in (3, 9, 11):  # stop at several places, across the epoch end of the stream
        state = json.loads(json.dumps(ref.state_dict()))
        expected = batches(ref, k, 2)
        resumed = TrainData(c, tok, seed=0)
        resumed.load_state_dict(state)
        assert same(batches(resumed, k, 2), expected), k
    assert ref.epochs()[0] >= 1.0  # the stream went round


def doc_numbers(tok, ids):
    return [int(n) for n in re.findall(r"Document (\d+) ", tok.decode(ids.flatten().tolist()))]


def test_streaming_heldout_honours_the_fraction(tok, tmp_path):
    """A stream holds out heldout_fraction of its documents, spread evenly; training never sees them."""
    docs = numbered_docs(40)
    path = write_jsonl(tmp_path / "s.jsonl", docs)
    data = TrainData(cfg(sources=[path], streaming=True, heldout_fraction=0.25, max_eval_tokens=100_000), tok, seed=0)
    held = doc_numbers(tok, data.heldout()[0])
    assert held == list(range(3, 40, 4))  # every 4th document, all of them (they fit max_eval_tokens)
    blocks = []
    while data.epochs()[0] < 1.0:  # one pass over the training stream, decoded as one text
        blocks.append(data.next_batch(1)[0])
    train = doc_numbers(tok, torch.cat(blocks[:-1]))  # the last one starts the next pass
    assert set(train) == set(range(40)) - set(held)  # disjoint, and nothing else is left out
    # max_eval_tokens caps what is evaluated, not what is held out
    capped = TrainData(cfg(sources=[path], streaming=True, heldout_fraction=0.25, max_eval_tokens=300), tok, seed=0)
    ids, _ = capped.heldout()
    assert ids.shape == (300 // 64, 64) and doc_numbers(tok, ids)[0] == 3
    assert doc_numbers(tok, capped.next_batch(1)[0])[0] == 0  # training starts at the first document
    # a state saved with another split is refused, not silently misread
    state = json.loads(json.dumps(capped.state_dict()))
    other = TrainData(cfg(sources=[path], streaming=True, heldout_fraction=0.1, max_eval_tokens=300), tok, seed=0)
    with pytest.raises(ValueError, match="same data.heldout_fraction"):
        other.load_state_dict(state)


def test_bad_settings(tok, small, tmp_path):
    with pytest.raises(ValueError, match="2 sources"):
        TrainData(cfg(sources=["default", small], weights=[1.0]), tok, seed=0)
    with pytest.raises(ValueError, match=r"data.weights must be in \(0.0, inf\], got 0.0"):
        TrainData(cfg(sources=["default", small], weights=[1.0, 0.0]), tok, seed=0)
    with pytest.raises(ValueError, match="rank"):
        TrainData(cfg(), tok, seed=0, rank=2, world_size=2)
    with pytest.raises(ValueError, match="empty"):
        TrainData(cfg(sources=[]), tok, seed=0)
    tiny = write_jsonl(tmp_path / "tiny.jsonl", ["just a few words"])
    with pytest.raises(ValueError, match="fewer than block_size"):
        TrainData(cfg(sources=[tiny], heldout_fraction=0.0), tok, seed=0)
    with pytest.raises(ValueError, match="fewer than 64"):
        TrainData(cfg(sources=[tiny], streaming=True, heldout_fraction=0.0), tok, seed=0).next_batch(1)


def test_sources_are_counted_and_named(tok, small):
    data = TrainData(cfg(sources=["default", {"path": small, "name": "numbers", "weight": 1.0}]), tok, seed=0)
    assert data.names == ["default", "numbers"] and data.paths == ["default", small]
    rows = []
    for _ in range(20):
        data.next_batch(3)
        rows += data.last_sources.tolist()
    assert len(rows) == 60 and set(rows) == {0, 1}
    counts = data.source_tokens()
    assert counts == {"default": rows.count(0) * 64, "numbers": rows.count(1) * 64}
    assert sum(counts.values()) == data.tokens_seen
    assert f"numbers ({small}): {data._sources[1].num_blocks} blocks x 64 tokens, weight 0.500" in data.summary()


def test_changed_weights_take_over_and_resume_exactly(tok, small):
    c = cfg(sources=["default", small])
    ref = TrainData(c, tok, seed=3)
    batches(ref, 5, 4)
    ref.set_weights([0.05, 0.95])
    assert ref.weights.tolist() == [0.05, 0.95]
    batches(ref, 3, 4)
    state = json.loads(json.dumps(ref.state_dict()))
    assert state["weights"] == [0.05, 0.95] and state["mixture_version"] == 1 and state["mixture_start"] == 20
    expected = batches(ref, 40, 4)
    resumed = TrainData(c, tok, seed=3)
    resumed.load_state_dict(state)
    assert same(batches(resumed, 40, 4), expected)
    # the new weights rule from the change on: about 95% of the later blocks come from the small source
    later = TrainData(c, tok, seed=3)
    batches(later, 5, 4)
    before = later.source_tokens()[later.names[1]]
    later.set_weights([1.0, 19.0])
    batches(later, 100, 4)
    share = (later.source_tokens()[later.names[1]] - before) / (400 * 64)
    assert share == pytest.approx(0.95, abs=0.05)
    with pytest.raises(ValueError, match="2 non-negative numbers"):
        later.set_weights([1.0, -1.0])


def test_state_of_an_earlier_format_loads(tok, small):
    """A checkpoint of an earlier bitk (format 1: sources named by path, fixed weights) resumes."""
    c = cfg(sources=["default", small], weights=[1.0, 3.0])
    ref = TrainData(c, tok, seed=1)
    batches(ref, 4, 2)
    state = ref.state_dict()
    old = {k: state[k] for k in ("position", "seed", "block_size", "sources")}
    old.update(format=1, names=["default", small], weights=state["initial_weights"])
    expected = batches(ref, 5, 2)
    resumed = TrainData(c, tok, seed=1)
    resumed.load_state_dict(old)
    assert same(batches(resumed, 5, 2), expected)
    with pytest.raises(ValueError, match="weights"):
        TrainData(cfg(sources=["default", small], weights=[1.0, 1.0]), tok, seed=1).load_state_dict(old)


def test_a_source_that_runs_dry_is_told_once_per_pass(tok, small):
    data = TrainData(cfg(sources=[small], heldout_fraction=0.0), tok, seed=0)
    assert data.new_passes() == []
    for _ in range(data._sources[0].num_blocks):
        data.next_batch(1)
    assert data.new_passes() == []
    data.next_batch(1)
    lines = data.new_passes()
    assert len(lines) == 1 and re.search(r"'small' ran dry after \d+ blocks: pass 2", lines[0])
    assert data.new_passes() == []


def test_probe_is_the_fixed_padded_batch(tok, tmp_path):
    data = TrainData(cfg(probe="default", probe_tokens=300), tok, seed=0)
    ids, pos, labels = data.probe()
    expected, expected_pos = pack_tokens(encode_documents(default_corpus("heldout"), tok), 64, EOS_ID)
    assert ids.shape == (5, 64) and torch.equal(ids, expected[:5]) and torch.equal(pos, expected_pos[:5])
    assert int((labels >= 0).sum()) == 300 and torch.equal(labels.flatten()[:300], ids.flatten()[:300])
    assert (labels.flatten()[300:] == -100).all()
    # a short probe file: padded, the padding no target
    short = write_jsonl(tmp_path / "target.jsonl", ["a few words of the target domain"])
    ids, pos, labels = TrainData(cfg(probe=short), tok, seed=0).probe()
    n = len(tok.encode("a few words of the target domain").ids) + 2  # EOS doc EOS
    assert ids.shape == (1, 64) and int((labels >= 0).sum()) == n
    assert TrainData(cfg(), tok, seed=0).probe() is None


def test_probe_without_text_is_refused(tok, tmp_path):
    empty = write_jsonl(tmp_path / "empty.jsonl", ["", " \n "])
    with pytest.raises(ValueError, match="data.probe .*empty.jsonl has no text"):
        TrainData(cfg(probe=empty), tok, seed=0)
    with pytest.raises(ValueError, match="data.probe: no such file or folder: nowhere/x.jsonl"):
        TrainData(cfg(probe="nowhere/x.jsonl"), tok, seed=0)
