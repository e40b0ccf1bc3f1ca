"""Hugging Face tokenizer files -> the GGUF vocabulary (tokenizer.ggml.*), and back.

What llama.cpp / bitnet.cpp need (docs/gguf.md "What is written", convert_hf_to_gguf's conventions):
- byte-level BPE -> model `gpt2`: tokens by id, token types, merges, and always a `pre` type that
  names the runtime's splitting regex. bitk derives `pre` from tokenizer.json's pre_tokenizer and
  refuses a shape it does not recognise (a wrong or missing `pre` tokenizes differently, silently).
- SentencePiece-style BPE (byte_fallback, `<0xXX>` byte tokens) -> model `llama`: tokens, scores
  (the negated merge rank of the merge that makes each token), token types.
- Added tokens (BOS/EOS like `<|begin_of_text|>` often live only there) are written at their ids:
  special ones as CONTROL, others USER_DEFINED; ids the tokenizer does not use up to the model's
  vocab_size become `[PAD{i}]` tokens of type UNUSED.
- bos/eos/unk/pad ids and add_bos/add_eos from tokenizer_config.json and the post-processor.
Reading is plain JSON (no `tokenizers` needed); `to_hf_tokenizer` rebuilds a `tokenizers.Tokenizer`
from a GGUF byte-level vocabulary.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bitk.gguf.constants import (
    BYTE_TOKEN,
    KNOWN_PRE_TYPES,
    PAD_TOKEN_FORMAT,
    PRE_GPT2,
    PRE_LLAMA3,
    PRE_QWEN2,
    PRE_SMOLLM,
    REGEX_LLAMA3,
    REGEX_QWEN2,
    TOKEN_BYTE,
    TOKEN_CONTROL,
    TOKEN_NORMAL,
    TOKEN_UNKNOWN,
    TOKEN_UNUSED,
    TOKEN_USER_DEFINED,
    TOKENIZER_GPT2,
    TOKENIZER_LLAMA,
)

__all__ = ["GGUFVocab", "read_vocab", "detect_pre", "to_hf_tokenizer"]

SPECIALS = ("bos", "eos", "unk", "pad")
_SPM_SPACE = "\u2581"  # SentencePiece's word-boundary mark


@dataclass
class GGUFVocab:
    """The tokenizer part of a GGUF file."""

    model: str
    """`gpt2` (byte-level BPE) or `llama` (SentencePiece)."""
    tokens: list[str]
    token_types: list[int]
    pre: str | None = None
    """llama.cpp pre-tokenizer type (gpt2 model only)."""
    merges: list[str] | None = None
    scores: list[float] | None = None
    special_ids: dict[str, int] = field(default_factory=dict)
    add_bos: bool | None = None
    add_eos: bool | None = None
    add_space_prefix: bool | None = None
    """llama model only: whether the runtime prepends a space (SentencePiece's add_dummy_prefix)."""
    chat_template: str | None = None
    notes: list[str] = field(default_factory=list)
    """What a reader should know (padding added, pre type overridden)."""


def _load_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: cannot read {what}: {exc}") from exc


def _pretokenizer_parts(pre: dict | None) -> list[dict]:
    if pre is None:
        return []
    if pre.get("type") == "Sequence":
        return [p for part in pre.get("pretokenizers", []) for p in _pretokenizer_parts(part)]
    return [pre]


def _is_bytelevel(part: dict, use_regex: bool) -> bool:
    return (
        part.get("type") == "ByteLevel"
        and not part.get("add_prefix_space", False)
        and bool(part.get("use_regex", True)) == use_regex
    )


def _split_regex(part: dict) -> str | None:
    if part.get("type") != "Split" or part.get("invert", False) or part.get("behavior") != "Isolated":
        return None
    return (part.get("pattern") or {}).get("Regex")


def detect_pre(tokenizer_json: dict) -> str:
    """llama.cpp's pre-tokenizer type for a byte-level BPE tokenizer.json; ValueError if unknown.

    Recognised shapes: ByteLevel (regex on) -> gpt-2; Digits(individual) + ByteLevel -> smollm
    (SmolLM2); Split(Llama-3 regex) + ByteLevel(regex off) -> llama-bpe; Split(Qwen2 regex) +
    ByteLevel(regex off) -> qwen2. A normalizer other than NFC is refused: llama.cpp's BPE
    tokenizers do not normalize.
    """
    normalizer = tokenizer_json.get("normalizer")
    if normalizer is not None and normalizer.get("type") != "NFC":
        raise ValueError(
            f"the tokenizer has a {normalizer.get('type')} normalizer, which llama.cpp's byte-level BPE does not "
            "apply; if you know the matching llama.cpp pre-tokenizer, name it with --pre NAME"
        )
    parts = _pretokenizer_parts(tokenizer_json.get("pre_tokenizer"))
    pre: str | None = None
    if len(parts) == 1 and _is_bytelevel(parts[0], use_regex=True):
        pre = PRE_GPT2
    elif (
        len(parts) == 2
        and parts[0].get("type") == "Digits"
        and parts[0].get("individual_digits")
        and _is_bytelevel(parts[1], use_regex=True)
    ):
        pre = PRE_SMOLLM
    elif len(parts) == 2 and _is_bytelevel(parts[1], use_regex=False):
        regex = _split_regex(parts[0])
        pre = {REGEX_LLAMA3: PRE_LLAMA3, REGEX_QWEN2: PRE_QWEN2}.get(regex or "")
    if pre is None:
        shape = " + ".join(p.get("type", "?") for p in parts) or "none"
        raise ValueError(
            f"bitk cannot tell which llama.cpp pre-tokenizer matches this tokenizer's pre_tokenizer ({shape}); "
            "a wrong pre type tokenizes differently without any error, so bitk does not guess. Name it with "
            f"--pre NAME (llama.cpp types: {', '.join(KNOWN_PRE_TYPES)})"
        )
    if tokenizer_json.get("model", {}).get("ignore_merges") and pre != PRE_LLAMA3:
        raise ValueError(
            f"the tokenizer sets ignore_merges, which llama.cpp applies only with the llama-bpe pre type, but its "
            f"pre_tokenizer looks like {pre}; name the pre type with --pre NAME if you are sure"
        )
    return pre


def _token_content(entry: Any) -> str | None:
    if isinstance(entry, str):
        return entry
    if isinstance(entry, dict) and isinstance(entry.get("content"), str):
        return entry["content"]
    return None


def _merges(model: dict, path: Path) -> list[str]:
    merges = model.get("merges") or []
    out = []
    for m in merges:
        if isinstance(m, str):
            out.append(m)
        elif isinstance(m, list) and len(m) == 2 and all(isinstance(s, str) for s in m):
            # the list form (transformers >= 4.45) allows spaces inside a part; the string form
            # llama.cpp reads cannot, so spaces are shifted to U+0120+ as gguf-py does
            out.append(" ".join("".join(chr(ord(c) + 256) if c == " " else c for c in part) for part in m))
        else:
            raise ValueError(f"{path}: unknown merges format (entry {m!r})")
    return out


def _template_specials(post: dict | None) -> tuple[str | None, str | None]:
    """(first, last) special token of the post-processor's single-sequence template, if any."""
    if post is None:
        return None, None
    procs = post.get("processors", [post]) if post.get("type") == "Sequence" else [post]
    for proc in procs:
        if proc.get("type") == "TemplateProcessing":
            single = proc.get("single") or []
            first = single[0].get("SpecialToken", {}).get("id") if single else None
            last = single[-1].get("SpecialToken", {}).get("id") if len(single) > 1 else None
            return first, last
        if proc.get("type") in ("RobertaProcessing", "BertProcessing"):
            return (proc.get("cls") or [None])[0], (proc.get("sep") or [None])[0]
    return None, None


def _spm_space_prefix(tj: dict, path: Path) -> bool:
    """Whether a SentencePiece-style tokenizer.json prepends a space (llama.cpp: add_space_prefix)."""
    norm = tj.get("normalizer")
    norm_parts = norm.get("normalizers", []) if norm and norm.get("type") == "Sequence" else [norm] if norm else []
    kinds = [p.get("type") for p in norm_parts]
    if any(p.get("type") == "Prepend" and p.get("prepend") == _SPM_SPACE for p in norm_parts):
        return True
    pre_parts = _pretokenizer_parts(tj.get("pre_tokenizer"))
    meta = [p for p in pre_parts if p.get("type") == "Metaspace"]
    if meta:
        return meta[0].get("prepend_scheme", "always") != "never" and meta[0].get("add_prefix_space", True)
    if "Replace" in kinds:
        return False
    raise ValueError(
        f"{path}: a SentencePiece-style (byte_fallback) tokenizer without the usual space handling "
        "(Prepend/Replace normalizer or Metaspace pre-tokenizer); bitk cannot express it as a llama vocabulary"
    )


def read_vocab(
    folder: str | Path, vocab_size: int, pre: str | None = None, fallback_ids: dict[str, int | None] | None = None
) -> GGUFVocab:
    """Read tokenizer.json (+ tokenizer_config.json) in `folder` as a GGUF vocabulary of `vocab_size` ids.

    `pre` overrides the detected pre-tokenizer type (--pre). `fallback_ids` (bos/eos/pad
    ids from the model config) fill special ids the tokenizer files do not name. ValueError for
    anything a GGUF vocabulary cannot express faithfully.
    """
    folder = Path(folder)
    tj_path = folder / "tokenizer.json"
    if not tj_path.is_file():
        extra = (
            " (a tokenizer.model alone is not supported: save the tokenizer with transformers' fast tokenizer "
            "to get tokenizer.json)"
            if (folder / "tokenizer.model").is_file()
            else ""
        )
        raise ValueError(f"{folder}: no tokenizer.json{extra}; bitnet.cpp needs the vocabulary in the GGUF file")
    tj = _load_json(tj_path, "tokenizer.json")
    cfg_path = folder / "tokenizer_config.json"
    tcfg = _load_json(cfg_path, "tokenizer_config.json") if cfg_path.is_file() else {}
    model = tj.get("model") or {}
    if model.get("type") != "BPE":
        raise ValueError(
            f"{tj_path}: a {model.get('type')} tokenizer cannot be written as a GGUF vocabulary by bitk "
            "(only BPE: byte-level -> gpt2, SentencePiece-style byte_fallback -> llama)"
        )
    spm = bool(model.get("byte_fallback"))
    notes: list[str] = []
    if spm:
        kind = TOKENIZER_LLAMA
        if pre is not None:
            notes.append(f"--pre {pre} ignored: a SentencePiece (llama) vocabulary has no pre type")
        pre = None
        add_space_prefix: bool | None = _spm_space_prefix(tj, tj_path)
    else:
        kind = TOKENIZER_GPT2
        add_space_prefix = None
        if pre is None:
            try:
                pre = detect_pre(tj)
            except ValueError as exc:
                raise ValueError(f"{tj_path}: {exc}") from None
        else:
            if pre not in KNOWN_PRE_TYPES:
                raise ValueError(f"--pre {pre!r} is not a llama.cpp pre type; known: {', '.join(KNOWN_PRE_TYPES)}")
            notes.append(f"tokenizer pre type {pre} given by --pre (not detected)")

    # id -> (token, type)
    base: dict[str, int] = model.get("vocab") or {}
    if not isinstance(base, dict):
        raise ValueError(f"{tj_path}: model.vocab is not a token -> id mapping")
    by_id: dict[int, tuple[str, int]] = {}
    unk = model.get("unk_token")
    for tok, i in base.items():
        if spm and BYTE_TOKEN.fullmatch(tok):
            ttype = TOKEN_BYTE
        elif spm and tok == unk:
            ttype = TOKEN_UNKNOWN
        else:
            ttype = TOKEN_NORMAL
        by_id[int(i)] = (tok, ttype)
    for added in tj.get("added_tokens") or []:
        i, content = int(added["id"]), added["content"]
        if spm and content == unk:
            ttype = TOKEN_UNKNOWN
        elif spm and BYTE_TOKEN.fullmatch(content):
            ttype = TOKEN_BYTE  # byte tokens registered as added tokens are still byte tokens
        else:
            ttype = TOKEN_CONTROL if added.get("special") else TOKEN_USER_DEFINED
        by_id[i] = (content, ttype)
    if not by_id:
        raise ValueError(f"{tj_path}: the tokenizer has an empty vocabulary")
    top = max(by_id)
    if top >= vocab_size:
        raise ValueError(
            f"{tj_path}: the tokenizer uses id {top}, but the model has only {vocab_size} embedding rows "
            "(vocab_size); the tokenizer does not belong to this model"
        )
    tokens, types = [], []
    holes = 0
    for i in range(vocab_size):
        if i in by_id:
            tok, ttype = by_id[i]
        else:
            tok, ttype = PAD_TOKEN_FORMAT.format(i), TOKEN_UNUSED
            holes += 1
        tokens.append(tok)
        types.append(ttype)
    if holes:
        notes.append(f"vocabulary padded with {holes} [PAD] tokens to the model's vocab_size {vocab_size}")
    if len(set(tokens)) != len(tokens):
        seen: set[str] = set()
        dup = next(t for t in tokens if t in seen or seen.add(t))  # type: ignore[func-returns-value]
        raise ValueError(f"{tj_path}: token {dup!r} appears at two ids; a GGUF vocabulary maps each string to one id")
    merges = _merges(model, tj_path)
    scores = None
    if spm:
        present = set(tokens)
        missing = [f"<0x{b:02X}>" for b in range(256) if f"<0x{b:02X}>" not in present]
        if missing:
            raise ValueError(
                f"{tj_path}: a SentencePiece (llama) vocabulary needs all 256 byte tokens; "
                f"missing {', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}"
            )
        # llama.cpp's SentencePiece tokenizer merges the adjacent pair whose result has the highest
        # score; scoring each token by its negated merge rank makes that the BPE merge order.
        rank: dict[str, int] = {}
        for r, m in enumerate(merges):
            a, _, b = m.partition(" ")
            rank.setdefault(a + b, r)
        scores = [-float(rank[t]) if t in rank else 0.0 for t in tokens]
        merges_out = None
    else:
        merges_out = merges

    index = {tok: i for i, tok in enumerate(tokens)}
    special_ids: dict[str, int] = {}
    for name in SPECIALS:
        content = _token_content(tcfg.get(f"{name}_token"))
        if content is not None:
            if content not in index:
                raise ValueError(f"{cfg_path}: {name}_token {content!r} is not in the vocabulary")
            special_ids[name] = index[content]
    if "unk" not in special_ids and unk is not None and unk in index:
        special_ids["unk"] = index[unk]
    first, last = _template_specials(tj.get("post_processor"))
    if "bos" not in special_ids and first in index:
        special_ids["bos"] = index[first]
    if "eos" not in special_ids and last in index:
        special_ids["eos"] = index[last]
    for name, value in (fallback_ids or {}).items():
        if name not in special_ids and value is not None:
            special_ids[name] = int(value)
    add_bos = tcfg.get("add_bos_token") if isinstance(tcfg.get("add_bos_token"), bool) else None
    add_eos = tcfg.get("add_eos_token") if isinstance(tcfg.get("add_eos_token"), bool) else None
    if add_bos is None:
        add_bos = first is not None and first in index and index[first] == special_ids.get("bos")
    if add_eos is None:
        add_eos = last is not None and last in index and index[last] == special_ids.get("eos")
    template = tcfg.get("chat_template")
    return GGUFVocab(
        model=kind,
        tokens=tokens,
        token_types=types,
        pre=pre,
        merges=merges_out,
        scores=scores,
        special_ids=special_ids,
        add_bos=add_bos,
        add_eos=add_eos,
        add_space_prefix=add_space_prefix,
        chat_template=template if isinstance(template, str) else None,
        notes=notes,
    )


def to_hf_tokenizer(
    tokens: list[str],
    token_types: list[int],
    merges: list[str],
    pre: str,
    bos_id: int | None = None,
    add_bos: bool = False,
) -> Any:
    """Rebuild a `tokenizers.Tokenizer` from a GGUF byte-level (gpt2) vocabulary.

    Supported pre types: gpt-2, smollm, llama-bpe, qwen2 (the ones `detect_pre` recognises);
    ValueError otherwise. CONTROL tokens become special added tokens, USER_DEFINED ones plain added tokens.
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

    bytelevel = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre == PRE_GPT2:
        pre_tok = bytelevel
    elif pre == PRE_SMOLLM:
        pre_tok = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), bytelevel])
    elif pre in (PRE_LLAMA3, PRE_QWEN2):
        regex = REGEX_LLAMA3 if pre == PRE_LLAMA3 else REGEX_QWEN2
        pre_tok = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(regex), behavior="isolated", invert=False),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    else:
        raise ValueError(f"bitk cannot rebuild a tokenizer with pre type {pre!r}")
    vocab = {}
    added = []
    for i, (tok, ttype) in enumerate(zip(tokens, token_types)):
        if ttype in (TOKEN_CONTROL, TOKEN_USER_DEFINED):
            added.append((i, tok, ttype == TOKEN_CONTROL))
        vocab[tok] = i
    # a space inside a merge part was written as U+0120 ("Ġ"), which is exactly how the byte-level
    # alphabet spells a space byte: the parts are vocabulary strings as they are
    pairs = [tuple(m.split(" ", 1)) for m in merges]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=pairs, ignore_merges=pre == PRE_LLAMA3))
    tok.pre_tokenizer = pre_tok
    tok.decoder = decoders.ByteLevel()
    for i, content, special in added:
        tok.add_tokens(
            [AddedToken(content, special=special, normalized=False)]
        ) if not special else tok.add_special_tokens([AddedToken(content, special=True, normalized=False)])
        assert tok.token_to_id(content) == i, (content, i, tok.token_to_id(content))
    if add_bos and bos_id is not None:
        bos = tokens[bos_id]
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, bos_id)]
        )
    return tok
