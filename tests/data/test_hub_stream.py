"""Streaming a Hugging Face hub dataset by id (``load_texts("owner/name", streaming=True)`` and a
`TrainData` source), without the internet: the hub is `hub_server`, a stand-in on 127.0.0.1.

The reading runs in a fresh interpreter: huggingface_hub and datasets read HF_ENDPOINT, HF_HOME and
offline mode once, at import, and this test session is offline (tests/conftest.py). Its environment
points them at the server and at caches under tmp_path, and it refuses to resolve or connect to any
host but 127.0.0.1, reporting each attempt: the test fails if there was any.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

_spec = importlib.util.spec_from_file_location("bitk_hub_server", Path(__file__).with_name("hub_server.py"))
_module = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_module)
hub_server = _module.hub_server

REPO = "someowner/somedata"

# Before any other import: no name but the loopback resolves, no socket connects elsewhere.
_PRELUDE = """
import json, socket
blocked = []
_LOCAL = ("127.0.0.1", "::1", "localhost")
_getaddrinfo, _connect = socket.getaddrinfo, socket.socket.connect

def _getaddrinfo_local(host, *args, **kwargs):
    if (host.decode() if isinstance(host, bytes) else host) not in _LOCAL:
        blocked.append(f"resolve {host}")
        raise OSError(f"no network in tests: {host}")
    return _getaddrinfo(host, *args, **kwargs)

def _connect_local(self, address):
    if isinstance(address, tuple) and address[0] not in _LOCAL:
        blocked.append(f"connect {address}")
        raise OSError(f"no network in tests: {address}")
    return _connect(self, address)

socket.getaddrinfo, socket.socket.connect = _getaddrinfo_local, _connect_local

import datasets
# Else datasets asks "datasets-server." + the endpoint's host for a parquet export of the repo.
datasets.config.USE_PARQUET_EXPORT = False
"""


def _run(code: str, endpoint: str, tmp_path: Path) -> dict:
    """Run ``code`` (after the prelude) against the hub at ``endpoint``; the JSON it prints last, plus "blocked"."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("HF_", "HUGGINGFACE_", "TRANSFORMERS_")) and "proxy" not in key.lower()
    }
    env.update(
        HF_ENDPOINT=endpoint,
        HF_HOME=str(tmp_path / "hf-home"),
        HF_DATASETS_CACHE=str(tmp_path / "hf-datasets"),
        HF_UPDATE_DOWNLOAD_COUNTS="0",  # else datasets pings s3.amazonaws.com on each load
        HF_HUB_DISABLE_TELEMETRY="1",
        NO_PROXY="127.0.0.1,localhost",
    )
    script = _PRELUDE + textwrap.dedent(code) + "\nresult['blocked'] = blocked\nprint(json.dumps(result))\n"
    proc = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-6000:]}"
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["blocked"] == [], f"tried to reach the network: {result['blocked']}"
    return result


def _jsonl(texts: list[str]) -> bytes:
    return "".join(json.dumps({"text": t, "n": i}) + "\n" for i, t in enumerate(texts)).encode()


def _parquet(texts: list[str]) -> bytes:
    out = io.BytesIO()
    pq.write_table(pa.table({"text": texts, "n": list(range(len(texts)))}), out, row_group_size=4)
    return out.getvalue()


def test_load_texts_streams_a_hub_dataset_by_id(tmp_path):
    shard0 = ["first row", "second row, ünïcödé ✓", "a document\nof two lines"]
    shard1 = ["", "fifth row", "  spaces kept  "]
    files = {
        "data/train-00000-of-00002.jsonl": _jsonl(shard0),
        "data/train-00001-of-00002.jsonl": _jsonl(shard1),
        "data/test-00000-of-00001.jsonl": _jsonl(["a test row"]),
    }
    with hub_server(REPO, files) as hub:
        result = _run(
            f"""
            from collections.abc import Iterator
            from bitk.data import load_texts
            texts = load_texts({REPO!r}, split="train", streaming=True)
            result = {{"lazy": isinstance(texts, Iterator) and not isinstance(texts, list), "texts": list(texts)}}
            """,
            hub.url,
            tmp_path,
        )
    assert result["lazy"]
    assert result["texts"] == shard0 + shard1
    fetched = [r for r in hub.requests if "/resolve/" in r and r.startswith("GET")]
    assert fetched and all("/data/train-0000" in r for r in fetched), hub.requests


def test_train_data_mixes_a_hub_stream_with_a_local_file(tmp_path):
    from bitk.data import DataConfig, default_tokenizer, document_tokens, encode_documents, pack_tokens

    hub_texts = [f"hub row {i}: the quick brown fox jumps over the lazy dog" for i in range(10)]
    local_texts = [f"local line {i}: lorem ipsum dolor sit amet, consectetur" for i in range(10)]
    local = tmp_path / "local.jsonl"
    local.write_bytes(_jsonl(local_texts))
    cfg = DataConfig(sources=[REPO, str(local)], streaming=True, block_size=16, heldout_fraction=0.0)
    steps, batch = 6, 2
    with hub_server(REPO, {"data/train-00000-of-00001.parquet": _parquet(hub_texts)}) as hub:
        result = _run(
            f"""
            from bitk.data import DataConfig, TrainData, default_tokenizer
            cfg = DataConfig(sources={cfg.sources!r}, streaming=True, block_size=16, heldout_fraction=0.0)
            data = TrainData(cfg, default_tokenizer(), seed=0)
            result = {{"batches": [data.next_batch({batch})[0].tolist() for _ in range({steps})]}}
            """,
            hub.url,
            tmp_path,
        )
    assert any("parquet" in r for r in hub.requests), hub.requests

    # Each source's blocks: its documents packed as TrainData packs them, handed out in order (cycling).
    tok = default_tokenizer()
    framing = document_tokens(tok)
    packs = [
        pack_tokens(encode_documents(texts, tok), cfg.block_size, framing.eos, bos_id=framing.bos)[0].tolist()
        for texts in (hub_texts, local_texts)
    ]
    taken = [0, 0]
    blocks = [block for ids in result["batches"] for block in ids]
    assert len(blocks) == steps * batch and all(len(b) == cfg.block_size for b in blocks)
    for k, block in enumerate(blocks):
        owners = [s for s, pack in enumerate(packs) if block in pack]
        assert len(owners) == 1, f"block {k} {block} is not a block of exactly one source"
        s = owners[0]
        assert block == packs[s][taken[s] % len(packs[s])], f"block {k} is out of {cfg.sources[s]}'s order"
        taken[s] += 1
    assert all(taken), f"blocks per source: {taken}"


# -- a repo with two configurations, read by subset ------------------------------------------------
# One server and one subprocess serve both tests below (module fixture `two_configs`); each part of
# the script records its own result or traceback, so each test reports its own failure.

_CONFIGS_README = b"""---
configs:
- config_name: en
  data_files:
  - split: train
    path: en/train-*.jsonl
- config_name: fr
  data_files:
  - split: train
    path: fr/train-*.jsonl
---
# Two configurations: en and fr
"""
# Each row has a short "text" and a longer "body": the TrainData source reads "body" (its text_field).
FR_ROWS = [
    {"text": f"titre {i}", "body": f"corps {i} : le vif renard brun saute par-dessus le chien paresseux"}
    for i in range(40)
]
EN_ROWS = [{"text": f"english row {i}", "body": f"english body {i}: never read"} for i in range(5)]
LOCAL_TEXTS = [f"local line {i}: lorem ipsum dolor sit amet, consectetur adipiscing" for i in range(20)]
MIX_STEPS, MIX_BATCH, MIX_BLOCK = 24, 8, 16  # 192 blocks drawn 3:1 (hub:local)


def _rows(rows: list[dict]) -> bytes:
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


@pytest.fixture(scope="module")
def two_configs(tmp_path_factory):
    """The results of one subprocess (parts "subset" and "mix") against a hub repo with configs en
    and fr, and the requests the server saw."""
    tmp_path = tmp_path_factory.mktemp("hub-configs")
    local = tmp_path / "local.jsonl"
    local.write_bytes(_jsonl(LOCAL_TEXTS))
    files = {
        "README.md": _CONFIGS_README,
        "en/train-00000-of-00001.jsonl": _rows(EN_ROWS),
        "fr/train-00000-of-00001.jsonl": _rows(FR_ROWS),
    }
    sources = [
        {"path": REPO, "name": "hubtext", "weight": 3, "subset": "fr", "split": "train", "text_field": "body"},
        {"path": str(local), "name": "local"},
    ]
    with hub_server(REPO, files) as hub:
        result = _run(
            f"""
            import traceback
            from collections.abc import Iterator
            from bitk.data import DataConfig, TrainData, default_tokenizer, load_texts
            result = {{}}

            def part(name, fn):
                try:
                    result[name] = fn()
                except Exception:
                    result[name] = {{"error": traceback.format_exc()}}

            def subset():
                fr = load_texts({REPO!r}, split="train", streaming=True, subset="fr")
                out = {{"lazy": isinstance(fr, Iterator), "fr": list(fr), "missing": None}}
                try:  # datasets raises at the call: load_dataset builds the builder eagerly
                    load_texts({REPO!r}, split="train", streaming=True)
                except Exception as e:
                    out["missing"] = [type(e).__name__, str(e)]
                return out

            def mix():
                cfg = DataConfig(
                    sources={sources!r}, streaming=True, block_size={MIX_BLOCK}, heldout_fraction=0.0
                )
                data = TrainData(cfg, default_tokenizer(), seed=0)
                batches, rows_from = [], []
                for _ in range({MIX_STEPS}):
                    batches.append(data.next_batch({MIX_BATCH})[0].tolist())
                    rows_from.append(data.last_sources.tolist())
                return {{
                    "names": data.names,
                    "batches": batches,
                    "rows_from": rows_from,
                    "source_tokens": data.source_tokens(),
                }}

            part("subset", subset)
            part("mix", mix)
            """,
            hub.url,
            tmp_path,
        )
    result["requests"] = list(hub.requests)
    return result


def _part(result: dict, name: str) -> dict:
    part = result[name]
    assert "error" not in part, f"the {name!r} part raised:\n{part['error']}"
    return part


def _fetched(requests: list[str]) -> list[str]:
    return [r for r in requests if "/resolve/" in r and r.startswith("GET") and r.split()[1].endswith(".jsonl")]


def test_load_texts_reads_one_configuration_of_a_hub_dataset(two_configs):
    part = _part(two_configs, "subset")
    assert part["lazy"]
    assert part["fr"] == [row["text"] for row in FR_ROWS]
    # No subset on a repo with several configurations: one line, raised by the call itself (not at
    # the first row), naming the configurations to pick from in bitk's terms.
    assert part["missing"] is not None, "load_texts without a subset raised nothing on a two-config repo"
    kind, message = part["missing"]
    assert kind == "ValueError", part["missing"]
    assert message == (
        f"{REPO} has the subsets (configurations) en, fr and no subset is given: choose one, e.g. "
        f"data.sources=[{{path: {REPO}, subset: en}}]"
    ), message
    fetched = _fetched(two_configs["requests"])
    assert fetched and all("/fr/train-" in r for r in fetched), two_configs["requests"]


def test_train_data_mixes_a_hub_configuration_with_a_local_file(two_configs):
    from bitk.data import default_tokenizer, document_tokens, encode_documents, pack_tokens

    part = _part(two_configs, "mix")
    assert part["names"] == ["hubtext", "local"]
    # Each source's blocks, packed as TrainData packs them and handed out in order (cycling): the
    # hub source reads its "body" column of the fr rows, the local one its "text".
    tok = default_tokenizer()
    framing = document_tokens(tok)
    packs = [
        pack_tokens(encode_documents(texts, tok), MIX_BLOCK, framing.eos, bos_id=framing.bos)[0].tolist()
        for texts in ([row["body"] for row in FR_ROWS], LOCAL_TEXTS)
    ]
    blocks = [block for ids in part["batches"] for block in ids]
    rows_from = [s for sources in part["rows_from"] for s in sources]
    assert len(blocks) == MIX_STEPS * MIX_BATCH and all(len(b) == MIX_BLOCK for b in blocks)
    taken = [0, 0]
    for k, block in enumerate(blocks):
        owners = [s for s, pack in enumerate(packs) if block in pack]
        assert len(owners) == 1, f"block {k} {block} is not a block of exactly one source"
        s = owners[0]
        assert rows_from[k] == s, f"block {k} is from {part['names'][s]}, last_sources says {rows_from[k]}"
        assert block == packs[s][taken[s] % len(packs[s])], f"block {k} is out of {part['names'][s]}'s order"
        taken[s] += 1
    # Both sources wrap around at least once here: the hub stream is reopened with its subset and column.
    assert taken[0] > len(packs[0]) and taken[1] > len(packs[1]), (taken, [len(p) for p in packs])
    assert part["source_tokens"] == {"hubtext": taken[0] * MIX_BLOCK, "local": taken[1] * MIX_BLOCK}
    assert list(part["source_tokens"]) == ["hubtext", "local"]
    share = taken[0] / len(blocks)  # weight 3 against 1: 0.75, binomial sd 0.03 over 192 blocks
    assert 0.65 <= share <= 0.85, f"hubtext drew {taken[0]} of {len(blocks)} blocks"
    fetched = _fetched(two_configs["requests"])
    assert not [r for r in fetched if "/en/" in r], two_configs["requests"]
