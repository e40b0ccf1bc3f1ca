"""Loading documents from files / folders / the embedded corpus, tokenizing them, packing them into rows."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from bitk.data import default_corpus, default_tokenizer, encode_documents, load_texts, pack_tokens, packed_length

DOCS = ["first document\nwith two lines\n", "second one", "", "third: ünïcode 🙂"]


# --------------------------------------------------------------------------- load_texts


def test_default_is_the_embedded_corpus():
    assert load_texts("default") == default_corpus("train")
    assert load_texts("default", split="heldout") == default_corpus("heldout")
    assert list(load_texts("default", split="heldout", streaming=True)) == default_corpus("heldout")
    with pytest.raises(ValueError, match="unknown split 'validation'"):
        load_texts("default", split="validation")


def test_txt_file_is_one_document(tmp_path):
    (tmp_path / "a.txt").write_text(DOCS[0] + "\n" + DOCS[1])
    assert load_texts(tmp_path / "a.txt") == [DOCS[0] + "\n" + DOCS[1]]  # newlines kept, no line split


@pytest.mark.parametrize("kind", ["jsonl", "json", "parquet"])
def test_rows_are_documents(tmp_path, kind):
    import datasets

    rows = [{"text": d, "id": i} for i, d in enumerate(DOCS)]
    file = tmp_path / f"data.{kind}"
    if kind == "jsonl":
        file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif kind == "json":
        file.write_text(json.dumps(rows))
    else:
        datasets.Dataset.from_list(rows).to_parquet(str(file))
    assert load_texts(file) == DOCS
    assert load_texts(str(file), split="train") == DOCS
    assert list(load_texts(file, streaming=True)) == DOCS


def test_text_field_and_missing_column(tmp_path):
    file = tmp_path / "d.jsonl"
    file.write_text('{"body": "x", "text": "y"}\n{"body": "z", "text": null}\n')
    assert load_texts(file, text_field="body") == ["x", "z"]
    assert load_texts(file) == ["y", ""]  # null text is an empty document
    with pytest.raises(ValueError, match="no column 'content'; its columns: body, text"):
        load_texts(file, text_field="content")
    with pytest.raises(ValueError, match="no column 'content'"):
        list(load_texts(file, text_field="content", streaming=True))


@pytest.mark.parametrize("streaming", [False, True], ids=["list", "streaming"])
@pytest.mark.parametrize(
    "row, message",
    [
        ('{"text": 5}', r"d.jsonl line 3: 'text' holds a number \(5\), not a string"),
        ('{"text": ["a", "b"]}', r"d.jsonl line 3: 'text' holds a list \(\['a', 'b'\]\), not a string"),
        ('{"text": {"en": "x"}}', r"d.jsonl line 3: 'text' holds a object"),
        ('{"body": "x"}', r"d.jsonl line 3 has no column 'text'; its columns: body"),
        ('{"text": "unterminated', r"d.jsonl line 3: not valid JSON \(Unterminated string"),
        ("[1, 2]", r"d.jsonl line 3: a JSON list, not an object with a 'text' field"),
    ],
    ids=["number", "list", "object", "missing", "invalid", "not-an-object"],
)
def test_bad_jsonl_rows_name_the_file_and_line(tmp_path, row, message, streaming):
    file = tmp_path / "d.jsonl"
    file.write_text('{"text": "fine"}\n\n' + row + '\n{"text": "also fine"}\n')  # line 2 is blank
    with pytest.raises(ValueError, match=message):
        list(load_texts(file, streaming=streaming))


def test_a_source_without_usable_text_is_refused(tmp_path):
    file = tmp_path / "blank.jsonl"
    file.write_text('{"text": ""}\n{"text": "   "}\n{"text": null}\n')
    with pytest.raises(
        ValueError, match=r"blank.jsonl has no usable text: its 3 document\(s\) in 'text' are all empty"
    ):
        load_texts(file)
    (tmp_path / "blank.txt").write_text("\n \n")
    with pytest.raises(ValueError, match="blank.txt has no usable text"):
        load_texts(tmp_path / "blank.txt")
    (tmp_path / "latin1.jsonl").write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(ValueError, match=r"latin1.jsonl line 2: not UTF-8 text"):
        load_texts(tmp_path / "latin1.jsonl")


def test_folder_reads_its_files_in_sorted_order(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "b.txt").write_text("bee")
    (tmp_path / "sub" / "c.txt").write_text("sea")
    (tmp_path / "a.txt").write_text("ay")
    (tmp_path / "notes.md").write_text("ignored: not a data file")
    assert load_texts(tmp_path) == ["ay", "bee", "sea"]
    (tmp_path / "d.jsonl").write_text('{"text": "dee"}\n')
    with pytest.raises(ValueError, match="mixes file types"):
        load_texts(tmp_path)


def test_bad_sources(tmp_path):
    with pytest.raises(ValueError, match="no such file or folder"):
        load_texts(tmp_path / "missing.txt")
    with pytest.raises(ValueError, match="no such file or folder"):
        load_texts("./missing_folder")
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match=r"cannot read .*x.csv: supported files are \.txt"):
        load_texts(tmp_path / "x.csv")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no .* files in the folder"):
        load_texts(tmp_path / "empty")
    for name in ("e.txt", "e.jsonl"):
        (tmp_path / name).write_text("")
        with pytest.raises(ValueError, match="is empty"):
            load_texts(tmp_path / name)
    with pytest.raises(ValueError, match="single split 'train'"):
        load_texts(tmp_path / "x.csv", split="test")


def test_hub_name_without_hub_access_fails_fast(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(ValueError, match="'someone/some_data' is not a local path; no hub access"):
        load_texts("someone/some_data")


# --------------------------------------------------------------------------- encode_documents


def test_encode_documents_matches_the_tokenizer():
    tok = default_tokenizer()
    ids = encode_documents(DOCS, tok, chunk=3)
    assert ids == [tok.encode(d, add_special_tokens=False).ids for d in DOCS]


@pytest.mark.parametrize("bos", [None, 1], ids=["eos-joined", "bos-doc-eos"])
@pytest.mark.parametrize("cap", [3, 5, 17, 40])
def test_max_tokens_caps_the_packed_stream(cap, bos):
    tok = default_tokenizer()
    frame = {"eos_id": 0, "bos_id": bos}
    full = encode_documents(DOCS, tok, **frame)
    capped = encode_documents(DOCS, tok, max_tokens=cap, **frame)
    assert packed_length(capped, **frame) <= cap
    if packed_length(full, **frame) >= cap + 2:
        assert packed_length(capped, **frame) >= cap - 2  # filled, not stopped early (an empty last doc is skipped)

    def flat(docs):
        return [t for d in docs for t in d]

    assert flat(capped) == flat(full)[: len(flat(capped))]  # a prefix of the data, in order


def test_max_tokens_stops_reading_endless_data():
    docs = encode_documents(itertools.repeat("endless text"), default_tokenizer(), max_tokens=50, chunk=4)
    assert 49 <= packed_length(docs) <= 50  # a last document cut to nothing is skipped
    with pytest.raises(ValueError, match="at least 3"):
        encode_documents(["x"], default_tokenizer(), max_tokens=2)


# --------------------------------------------------------------------------- pack_tokens


def reference_pack(docs, block, eos, pad, bos=None):
    """Token by token: the stream, its segment starts, then rows, padding and position ids."""
    stream, starts = [], []
    framed = bos is not None and bos != eos  # BOS doc EOS, else EOS doc ... closing EOS
    for doc in docs:
        if doc:
            piece = [bos, *doc, eos] if framed else [eos, *doc]
            stream += piece
            starts += [True] + [False] * (len(piece) - 1)
    if not stream:
        return [], []
    if not framed:
        stream.append(eos)
        starts.append(True)
    if len(stream) % block and pad is not None:
        fill = block - len(stream) % block
        stream += [pad] * fill
        starts += [True] + [False] * (fill - 1)
    rows = len(stream) // block
    ids, pos = [], []
    for r in range(rows):
        row_ids, row_pos, p = [], [], 0
        for i in range(r * block, (r + 1) * block):
            p = 0 if (starts[i] or i == r * block) else p + 1
            row_ids.append(stream[i])
            row_pos.append(p)
        ids.append(row_ids)
        pos.append(row_pos)
    return ids, pos


def test_pack_example():
    ids, pos = pack_tokens([[5, 6, 7], [8], [], [9, 10]], 4, eos_id=0, pad_id=1)
    assert ids.tolist() == [[0, 5, 6, 7], [0, 8, 0, 9], [10, 0, 1, 1]]
    assert pos.tolist() == [[0, 1, 2, 3], [0, 1, 0, 1], [0, 0, 0, 1]]
    assert ids.dtype == pos.dtype == torch.int64
    ids, pos = pack_tokens([[5, 6, 7], [8], [], [9, 10]], 4, eos_id=0)  # no pad: the tail is dropped
    assert ids.tolist() == [[0, 5, 6, 7], [0, 8, 0, 9]]
    assert pos.tolist() == [[0, 1, 2, 3], [0, 1, 0, 1]]
    assert packed_length([[5, 6, 7], [8], [], [9, 10]]) == 10
    # a tokenizer with its own BOS (Llama 3): each document is BOS doc EOS, no closing token
    ids, pos = pack_tokens([[5, 6, 7], [8], [], [9, 10]], 4, eos_id=0, pad_id=1, bos_id=2)
    assert ids.tolist() == [[2, 5, 6, 7], [0, 2, 8, 0], [2, 9, 10, 0]]
    assert pos.tolist() == [[0, 1, 2, 3], [0, 0, 1, 2], [0, 1, 2, 3]]
    assert packed_length([[5, 6, 7], [8], [], [9, 10]], eos_id=0, bos_id=2) == 12
    # a BOS equal to the EOS (SmolLM2, bitk's tokenizer) is the plain EOS-joined stream
    assert pack_tokens([[5, 6, 7], [8]], 4, eos_id=0, bos_id=0)[0].tolist() == [[0, 5, 6, 7]]


@given(
    docs=st.lists(st.lists(st.integers(3, 99), max_size=12), max_size=8),
    block=st.integers(1, 9),
    pad=st.sampled_from([None, 1]),
    bos=st.sampled_from([None, 0, 2]),
)
def test_pack_matches_the_reference(docs, block, pad, bos):
    ids, pos = pack_tokens(docs, block, eos_id=0, pad_id=pad, bos_id=bos)
    ref_ids, ref_pos = reference_pack(docs, block, 0, pad, bos)
    length = packed_length(docs, eos_id=0, bos_id=bos)
    assert ids.shape == pos.shape == (len(ref_ids), block)
    assert ids.shape[0] == (-(-length // block) if pad is not None else length // block)
    assert ids.tolist() == ref_ids and pos.tolist() == ref_pos
    # the rows are the framed stream, cut (no pad) or padded at its end
    if bos == 2:
        stream = [t for d in docs if d for t in (2, *d, 0)]
    else:
        stream = [t for d in docs if d for t in (0, *d)] + [0] if length else []
    assert len(stream) == length
    flat = ids.flatten().tolist()
    if pad is None:
        assert flat == stream[: len(flat)]
    else:
        assert flat == stream + [pad] * (len(flat) - length)
    assert (pos >= 0).all() and (pos < block).all()


def test_position_ids_restart_at_every_document():
    docs = [list(range(10, 10 + n)) for n in (3, 1, 6, 2)]
    ids, pos = pack_tokens(docs, 32, eos_id=0, pad_id=1)
    row, p = ids[0].tolist(), pos[0].tolist()
    starts = [i for i, x in enumerate(p) if x == 0]
    assert [row[i] for i in starts[:4]] == [0, 0, 0, 0]  # each document begins with its EOS at 0
    assert p[: len(row)] == [*range(4), *range(2), *range(7), *range(3), 0, *range(32 - 17)]


def test_pack_empty_and_bad_block():
    ids, pos = pack_tokens([[], []], 8, eos_id=0)
    assert ids.shape == pos.shape == (0, 8)
    with pytest.raises(ValueError, match="block_size must be a positive integer"):
        pack_tokens([[1]], 0, eos_id=0)
    with pytest.raises(ValueError, match="block_size"):
        pack_tokens([[1]], np.int64(4).item() + 0.5, eos_id=0)
