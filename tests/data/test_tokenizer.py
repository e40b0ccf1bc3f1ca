"""The default tokenizer: 4096-token byte-level BPE, deterministic, cached, readable by transformers."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bitk.data import (
    EOS_ID,
    MASK_ID,
    PAD_ID,
    VOCAB_SIZE,
    DocumentTokens,
    cache_dir,
    default_corpus,
    default_tokenizer,
    load_tokenizer,
    save_tokenizer,
    train_tokenizer,
)
from bitk.models import preset


@pytest.fixture(scope="module")
def tok():
    """Trained (or read) once, inside the test cache folder set by conftest."""
    return default_tokenizer()


def test_vocab_and_special_ids(tok):
    assert VOCAB_SIZE == preset("tiny").vocab_size == 4096
    assert tok.get_vocab_size() == 4096
    assert (EOS_ID, PAD_ID, MASK_ID) == (0, 1, 2)
    assert tok.token_to_id("<|endoftext|>") == EOS_ID
    assert tok.token_to_id("<|pad|>") == PAD_ID
    assert tok.token_to_id("<|mask|>") == MASK_ID
    specials = {t.content for t in tok.get_added_tokens_decoder().values() if t.special}
    assert specials == {"<|endoftext|>", "<|pad|>", "<|mask|>"}
    assert tok.encode("hello <|mask|> world").ids.count(MASK_ID) == 1


def test_gpt2_scheme(tok):
    """What makes the GGUF tokenizer a plain gpt2 / pre gpt-2 one."""
    spec = json.loads(tok.to_str())
    assert spec["model"]["type"] == "BPE"
    assert spec["pre_tokenizer"]["type"] == "ByteLevel"
    assert spec["pre_tokenizer"]["add_prefix_space"] is False and spec["pre_tokenizer"]["use_regex"] is True
    assert spec["decoder"]["type"] == "ByteLevel"
    assert spec["normalizer"] is None
    # byte-level: all 256 byte symbols are in the vocab, so no text is ever unknown
    from tokenizers.pre_tokenizers import ByteLevel

    assert set(ByteLevel.alphabet()) <= set(tok.get_vocab())


def test_training_is_deterministic_across_processes_and_threads(tok):
    """Same corpus -> the same tokenizer.json bytes, in another process and single-threaded."""
    here = train_tokenizer(default_corpus("train")).to_str()
    code = (
        "import sys; from bitk.data import train_tokenizer, default_corpus; "
        "sys.stdout.write(train_tokenizer(default_corpus('train')).to_str())"
    )
    env = {**os.environ, "RAYON_NUM_THREADS": "1", "PYTHONHASHSEED": "123"}
    there = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert here == there
    assert here == tok.to_str()


def test_cached_once_and_atomically(bitk_cache_dir, tok):
    assert cache_dir() == bitk_cache_dir
    files = sorted(bitk_cache_dir.iterdir())
    assert len(files) == 1 and files[0].name.startswith("tokenizer-") and files[0].suffix == ".json"
    assert files[0].read_text() == tok.to_str()
    assert files[0].stat().st_mode & 0o777 == 0o644
    mtime = files[0].stat().st_mtime_ns
    assert default_tokenizer().to_str() == tok.to_str()
    assert files[0].stat().st_mtime_ns == mtime  # read, not trained again
    # a damaged cache file is replaced by a fresh training
    files[0].write_text("{not json")
    assert default_tokenizer().to_str() == tok.to_str()
    assert files[0].read_text() == tok.to_str()
    assert sorted(bitk_cache_dir.iterdir()) == files  # no temporary files left behind


def test_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("BITK_CACHE_DIR", str(tmp_path / "a"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "a"
    monkeypatch.delenv("BITK_CACHE_DIR")
    assert cache_dir() == tmp_path / "xdg" / "bitk"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "bitk"


@pytest.mark.parametrize(
    "text",
    [
        "",
        " ",
        "\n\n\t  x",
        "def f(x):\n    return x ** 2  # square\n",
        "héllo wörld — ünïcode",
        "🙂🚀 漢字 العربية",
        "<|endoftext|>text<|pad|>",
        "a" * 3000,
    ],
)
def test_round_trip_examples(text, tok):
    ids = tok.encode(text).ids
    assert tok.decode(ids, skip_special_tokens=False) == text


@given(st.text(max_size=200))
def test_round_trip_any_text(tok, text):
    assert tok.decode(tok.encode(text).ids, skip_special_tokens=False) == text


def test_compresses_held_out_text(tok):
    """A trained BPE, not a byte fallback: held-out English packs into under a token per 3 characters."""
    text = "\n".join(default_corpus("heldout"))
    assert len(tok.encode(text).ids) < len(text) / 3


def test_save_and_load(tmp_path, tok):
    out = save_tokenizer(tmp_path / "tok")
    assert out == tmp_path / "tok"
    assert sorted(p.name for p in out.iterdir()) == [
        "special_tokens_map.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    config = json.loads((out / "tokenizer_config.json").read_text())
    assert config["eos_token"] == config["bos_token"] == "<|endoftext|>"
    assert config["pad_token"] == "<|pad|>" and config["mask_token"] == "<|mask|>"
    for path in (out, out / "tokenizer.json"):
        assert load_tokenizer(path).to_str() == tok.to_str()
    with pytest.raises(ValueError, match="no tokenizer at"):
        load_tokenizer(tmp_path / "missing")
    (tmp_path / "bad.json").write_text("[]")
    with pytest.raises(ValueError, match="cannot read the tokenizer"):
        load_tokenizer(tmp_path / "bad.json")


def test_save_leaves_out_missing_roles(tmp_path):
    from tokenizers import Tokenizer, models

    other = Tokenizer(models.WordLevel({"a": 0, "<|endoftext|>": 1}, unk_token="a"))
    out = save_tokenizer(tmp_path, other)
    assert json.loads((out / "special_tokens_map.json").read_text()) == {
        "bos_token": "<|endoftext|>",
        "eos_token": "<|endoftext|>",
    }
    assert load_tokenizer(out).to_str() == other.to_str()


def test_too_little_text_to_train():
    with pytest.raises(ValueError, match="fills only"):
        train_tokenizer(["tiny text"], vocab_size=600)


def test_transformers_loads_it_offline(tmp_path, tok):
    import transformers

    out = save_tokenizer(tmp_path)
    text = "def f(x):\n    return x  # héllo 🙂"
    expected = tok.encode(text).ids
    auto = transformers.AutoTokenizer.from_pretrained(out)
    fast = transformers.PreTrainedTokenizerFast.from_pretrained(out)
    for hf in (auto, fast):
        assert (hf.bos_token_id, hf.eos_token_id, hf.pad_token_id, hf.mask_token_id) == (0, 0, 1, 2)
        assert len(hf) == 4096
        assert hf(text)["input_ids"] == expected  # no BOS/EOS added
        assert hf.decode(expected) == text
    direct = transformers.PreTrainedTokenizerFast(tokenizer_file=str(out / "tokenizer.json"))
    assert direct(text)["input_ids"] == expected


# --------------------------------------------------------------------------- a model's own tokenizer


def test_document_tokens_follow_the_tokenizer_config(tmp_path, tok):
    from bitk.data import document_tokens

    assert document_tokens(tok) == DocumentTokens(eos=EOS_ID)  # bitk's: no config, <|endoftext|> joins
    save_tokenizer(tmp_path / "bitk", tok)
    assert document_tokens(tok, tmp_path / "bitk") == DocumentTokens(eos=EOS_ID)  # add_bos_token false
    folder = tmp_path / "cfg"
    save_tokenizer(folder, tok)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(
        json.dumps({**config, "eos_token": "<|pad|>", "bos_token": "<|mask|>", "add_bos_token": True})
    )
    assert document_tokens(tok, folder) == DocumentTokens(eos=PAD_ID, bos=MASK_ID)
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "eos_token": "<|nope|>"}))
    with pytest.raises(ValueError, match="eos_token '<|nope|>' is not in the tokenizer's vocabulary"):
        document_tokens(tok, folder)
    (folder / "tokenizer_config.json").write_text(json.dumps({}))
    assert document_tokens(tok, folder, eos_token_id=7).eos == 7  # then the model's eos_token_id


def test_add_special_token(tmp_path, tok):
    from transformers import AutoTokenizer

    from bitk.data.tokenizer import add_special_token

    src = save_tokenizer(tmp_path / "src", tok)
    before = {p.name: p.read_bytes() for p in src.iterdir()}
    token_id = add_special_token(src, tmp_path / "dst", "<|fill|>", "mask_token")
    assert token_id == VOCAB_SIZE and {p.name: p.read_bytes() for p in src.iterdir()} == before  # src untouched
    grown = load_tokenizer(tmp_path / "dst")
    assert grown.token_to_id("<|fill|>") == VOCAB_SIZE and grown.get_vocab_size() == VOCAB_SIZE + 1
    assert grown.encode("a <|fill|> b").ids == [*tok.encode("a ").ids, VOCAB_SIZE, *tok.encode(" b").ids]
    hf = AutoTokenizer.from_pretrained(tmp_path / "dst")
    assert hf.mask_token == "<|fill|>" and hf.mask_token_id == VOCAB_SIZE
    with pytest.raises(ValueError, match="already has '<|fill|>'"):
        add_special_token(tmp_path / "dst", tmp_path / "dst", "<|fill|>", "mask_token")
