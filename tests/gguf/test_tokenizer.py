"""HF tokenizer files -> GGUF vocabulary: pre-type detection, ids, token types, specials, and back."""

from __future__ import annotations

import json

import pytest
from tokenizers import Regex, Tokenizer, pre_tokenizers

from bitk.gguf.constants import REGEX_LLAMA3, REGEX_QWEN2
from bitk.gguf.tokenizer import detect_pre, read_vocab, to_hf_tokenizer
from bitk_gguf_testing import VOCAB, sample_texts, save_tokenizer, tokenizer, train_tokenizer

CONTROL, USER_DEFINED, UNUSED, NORMAL, BYTE, UNKNOWN = 3, 4, 5, 1, 6, 2
TEXT = "def f(x):\n    return x ** 2 + 12345  # it's <|endoftext|> done\n\tTabs  and  spaces"


def write(folder, tok: Tokenizer, config: dict | None = None, edit=None):
    folder.mkdir(parents=True, exist_ok=True)
    data = json.loads(tok.to_str())
    if edit is not None:
        edit(data)
    (folder / "tokenizer.json").write_text(json.dumps(data))
    if config is not None:
        (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


def llama3_like() -> Tokenizer:
    """Llama-3's shape: Split(regex) + ByteLevel(no regex), specials only in added_tokens, BOS template."""
    from tokenizers import processors

    tok = train_tokenizer(vocab_size=300)
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(REGEX_LLAMA3), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.add_special_tokens(["<|begin_of_text|>", "<|end_of_text|>"])
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", bos)]),
        ]
    )
    return tok


def test_gpt2_vocabulary(tmp_path):
    save_tokenizer(tmp_path, "gpt2")
    v = read_vocab(tmp_path, VOCAB)
    assert v.model == "gpt2" and v.pre == "gpt-2" and v.scores is None
    assert v.tokens[:2] == ["<|endoftext|>", "<|pad|>"] and v.token_types[:2] == [CONTROL, CONTROL]
    assert set(v.token_types[2:]) == {NORMAL}
    assert v.merges and all(len(m.split(" ")) == 2 for m in v.merges)
    assert v.special_ids == {"bos": 0, "eos": 0, "pad": 1}
    assert v.add_bos is False and v.add_eos is False and not v.notes


def test_smollm_pre_is_digits_plus_bytelevel(tmp_path):
    save_tokenizer(tmp_path, "smollm")
    assert read_vocab(tmp_path, VOCAB).pre == "smollm"


def test_llama3_specials_outside_the_bpe_vocab_land_at_their_ids(tmp_path):
    tok = llama3_like()
    n = tok.get_vocab_size()
    folder = write(
        tmp_path,
        tok,
        {"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>"},
        edit=lambda d: d["model"].update(ignore_merges=True),
    )
    v = read_vocab(folder, 320)
    assert v.pre == "llama-bpe"
    bos, eos = n - 2, n - 1
    assert v.tokens[bos] == "<|begin_of_text|>" and v.token_types[bos] == CONTROL
    assert v.special_ids["bos"] == bos and v.special_ids["eos"] == eos
    assert v.add_bos is True and v.add_eos is False  # from the post-processor's template
    assert v.tokens[n] == f"[PAD{n}]" and v.token_types[n] == UNUSED and len(v.tokens) == 320


def test_add_bos_from_template_without_tokenizer_config(tmp_path):
    folder = write(tmp_path, llama3_like())
    v = read_vocab(folder, 320)
    assert v.add_bos is True and v.special_ids["bos"] == v.tokens.index("<|begin_of_text|>")


def test_qwen2_regex_with_nfc(tmp_path):
    from tokenizers import normalizers

    tok = train_tokenizer(vocab_size=300)
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(REGEX_QWEN2), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    assert read_vocab(write(tmp_path, tok), 300).pre == "qwen2"


@pytest.mark.parametrize("case", ["whitespace", "prefix space", "lowercase", "ignore_merges"])
def test_unrecognised_pre_tokenizers_are_refused_naming_the_option(tmp_path, case):
    from tokenizers import normalizers

    tok = train_tokenizer(vocab_size=300)
    edit = None
    if case == "whitespace":
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
    elif case == "prefix space":
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    elif case == "lowercase":
        tok.normalizer = normalizers.Lowercase()
    else:

        def edit(d):
            d["model"]["ignore_merges"] = True

    folder = write(tmp_path, tok, edit=edit)
    with pytest.raises(ValueError, match="--pre NAME"):
        read_vocab(folder, 300)
    v = read_vocab(folder, 300, pre="gpt-2")  # the user's explicit choice is taken, and said
    assert v.pre == "gpt-2" and any("--pre" in n for n in v.notes)
    with pytest.raises(ValueError, match="not a llama.cpp pre type"):
        read_vocab(folder, 300, pre="gpt2-typo")


def test_user_defined_added_token(tmp_path):
    tok = train_tokenizer(vocab_size=300)
    tok.add_tokens(["<think>"])
    v = read_vocab(write(tmp_path, tok), 320)
    i = v.tokens.index("<think>")
    assert i == 300 and v.token_types[i] == USER_DEFINED


def test_sentencepiece_style_tokenizer_becomes_a_llama_vocabulary(tmp_path):
    save_tokenizer(tmp_path, "spm")
    n = tokenizer("spm").get_vocab_size()
    v = read_vocab(tmp_path, n)
    assert v.model == "llama" and v.pre is None and v.merges is None and v.add_space_prefix is True
    assert sum(t == BYTE for t in v.token_types) == 256
    assert v.token_types[v.tokens.index("<0x41>")] == BYTE
    assert v.token_types[0] == UNKNOWN and v.special_ids["unk"] == 0
    assert v.special_ids["bos"] == 1 and v.special_ids["eos"] == 2 and v.add_bos is True
    # scores rank merges: a token made by an earlier merge scores higher
    merges = json.loads((tmp_path / "tokenizer.json").read_text())["model"]["merges"]
    first, later = ("".join(merges[0]), "".join(merges[-1]))
    assert v.scores[v.tokens.index(first)] == 0.0 > v.scores[v.tokens.index(later)] == -(len(merges) - 1)


def test_sentencepiece_without_all_byte_tokens_is_refused(tmp_path):
    def drop_byte(d):
        d["model"]["vocab"].pop("<0x41>")
        d["added_tokens"] = [t for t in d["added_tokens"] if t["content"] != "<0x41>"]

    with pytest.raises(ValueError, match="256 byte tokens.*<0x41>"):
        read_vocab(write(tmp_path, tokenizer("spm"), edit=drop_byte), 640)


def test_missing_and_unsupported_tokenizers(tmp_path):
    (tmp_path / "tokenizer.model").write_bytes(b"\x00")
    with pytest.raises(ValueError, match="no tokenizer.json.*tokenizer.model alone"):
        read_vocab(tmp_path, 300)
    from tokenizers import models

    wp = Tokenizer(models.WordPiece({"[UNK]": 0, "a": 1}, unk_token="[UNK]"))
    with pytest.raises(ValueError, match="WordPiece tokenizer cannot be written"):
        read_vocab(write(tmp_path / "wp", wp), 300)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "tokenizer.json").write_text("{not json")
    with pytest.raises(ValueError, match="cannot read tokenizer.json"):
        read_vocab(tmp_path / "broken", 300)


def test_special_token_not_in_vocab_is_refused(tmp_path):
    folder = write(tmp_path, tokenizer("gpt2"), {"bos_token": "<s>"})
    with pytest.raises(ValueError, match="bos_token '<s>' is not in the vocabulary"):
        read_vocab(folder, VOCAB)


def test_detect_pre_on_plain_dicts():
    bl = {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}
    assert detect_pre({"pre_tokenizer": bl}) == "gpt-2"
    seq = {
        "type": "Sequence",
        "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": REGEX_LLAMA3}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "use_regex": False},
        ],
    }
    assert detect_pre({"pre_tokenizer": seq}) == "llama-bpe"
    seq["pretokenizers"][0]["pattern"]["Regex"] = REGEX_LLAMA3.replace("{1,3}", "{1,2}")
    with pytest.raises(ValueError, match="Split \\+ ByteLevel"):
        detect_pre({"pre_tokenizer": seq})


@pytest.mark.parametrize("kind", ["gpt2", "smollm", "llama3"])
def test_rebuilt_tokenizer_encodes_like_the_original(tmp_path, kind):
    if kind == "llama3":
        folder = write(
            tmp_path,
            llama3_like(),
            {"bos_token": "<|begin_of_text|>"},
            edit=lambda d: d["model"].update(ignore_merges=True),
        )
        original = Tokenizer.from_file(str(folder / "tokenizer.json"))
        size = 320
    else:
        save_tokenizer(tmp_path, kind)
        original, size = tokenizer(kind), VOCAB
        folder = tmp_path
    v = read_vocab(folder, size)
    rebuilt = to_hf_tokenizer(v.tokens, v.token_types, v.merges, v.pre, v.special_ids.get("bos"), v.add_bos)
    for text in [TEXT, *sample_texts(3000)[:3]]:
        assert rebuilt.encode(text).ids == original.encode(text).ids
        assert rebuilt.decode(rebuilt.encode(text).ids) == original.decode(original.encode(text).ids)


@pytest.mark.parametrize(
    "repo, rows, pre, bos, eos, add_bos",
    [
        ("HuggingFaceTB/SmolLM2-135M", 400, "smollm", "<|endoftext|>", "<|endoftext|>", False),
        ("Qwen/Qwen3-0.6B", 512, "qwen2", None, "<|im_end|>", False),
        ("microsoft/bitnet-b1.58-2B-4T-bf16", 400, "llama-bpe", "<|begin_of_text|>", "<|end_of_text|>", True),
    ],
)
def test_the_presets_tokenizer_configurations(hub_cache, repo, rows, pre, bos, eos, add_bos):
    """SmolLM2's (Digits + ByteLevel), Qwen3's (NFC, Split + ByteLevel, no BOS) and BitNet's Llama 3 shapes."""
    folder = hub_cache[repo]
    vocab = read_vocab(folder, rows)
    assert vocab.pre == pre and len(vocab.tokens) == rows
    assert (vocab.special_ids.get("bos") is not None) == (bos is not None)
    if bos is not None:
        assert vocab.tokens[vocab.special_ids["bos"]] == bos
    assert vocab.tokens[vocab.special_ids["eos"]] == eos and vocab.add_bos is add_bos
    assert all(
        vocab.token_types[vocab.tokens.index(t)] == CONTROL for t in ("<|im_start|>", "<|im_end|>") if t in vocab.tokens
    )
    if rows > 400:  # Qwen3's embedding has more rows than its tokenizer has tokens
        assert vocab.tokens[400:] == [f"[PAD{i}]" for i in range(400, rows)]
        assert set(vocab.token_types[400:]) == {UNUSED}
        assert vocab.chat_template and "<|im_start|>" in vocab.chat_template
