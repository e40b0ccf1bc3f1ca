"""bitk's default tokenizer: a byte-level BPE of 4096 tokens trained on the embedded corpus.

GPT-2's scheme (ByteLevel pre-tokenizer with GPT-2's split regex, no prefix space, ByteLevel
decoder), so any text round-trips and a GGUF export names it plainly `gpt2` / pre `gpt-2`. Three
special tokens come first: `<|endoftext|>` = 0 (BOS and EOS: documents are joined with it),
`<|pad|>` = 1, `<|mask|>` = 2 (the DLM objective's mask, docs/numerics.md "Objectives"). The vocab size
is the `tiny` preset's. Training takes well under a second and is deterministic (same corpus and
settings -> same tokenizer.json bytes, whatever the thread count); the result is cached under
`cache_dir()` keyed by a hash of the corpus, the settings and the tokenizers version.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from bitk.data.corpus import corpus_fingerprint, default_corpus
from bitk.models.config import PRESETS

__all__ = [
    "DocumentTokens",
    "EOS_ID",
    "EOS_TOKEN",
    "MASK_ID",
    "MASK_TOKEN",
    "PAD_ID",
    "PAD_TOKEN",
    "SPECIAL_TOKENS",
    "VOCAB_SIZE",
    "add_special_token",
    "cache_dir",
    "default_tokenizer",
    "document_tokens",
    "load_tokenizer",
    "read_tokenizer_config",
    "save_tokenizer",
    "train_tokenizer",
]

VOCAB_SIZE = PRESETS["tiny"].vocab_size
EOS_TOKEN, PAD_TOKEN, MASK_TOKEN = "<|endoftext|>", "<|pad|>", "<|mask|>"
SPECIAL_TOKENS = (EOS_TOKEN, PAD_TOKEN, MASK_TOKEN)
EOS_ID, PAD_ID, MASK_ID = 0, 1, 2
# Pairs seen once are not merged; the embedded corpus still fills all 4096 entries.
MIN_FREQUENCY = 2
# transformers' names of the special-token roles -> bitk's tokens (BOS and EOS are the same token).
ROLES = {"bos_token": EOS_TOKEN, "eos_token": EOS_TOKEN, "pad_token": PAD_TOKEN, "mask_token": MASK_TOKEN}


def cache_dir() -> Path:
    """Where bitk caches derived files: $BITK_CACHE_DIR, else $XDG_CACHE_HOME/bitk, else ~/.cache/bitk."""
    if os.environ.get("BITK_CACHE_DIR"):
        return Path(os.environ["BITK_CACHE_DIR"])
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "bitk"


def train_tokenizer(texts: list[str], vocab_size: int = VOCAB_SIZE) -> Tokenizer:
    """Train the byte-level BPE on ``texts``; ValueError when they cannot fill ``vocab_size`` entries."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=MIN_FREQUENCY,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer, length=len(texts))
    if tokenizer.get_vocab_size() != vocab_size:
        raise ValueError(
            f"the training text fills only {tokenizer.get_vocab_size()} of {vocab_size} vocab entries; give more text"
        )
    for i, token in enumerate(SPECIAL_TOKENS):
        assert tokenizer.token_to_id(token) == i, (token, tokenizer.token_to_id(token))
    return tokenizer


def _cache_key() -> str:
    import tokenizers

    settings = {
        "corpus": corpus_fingerprint("train"),
        "vocab_size": VOCAB_SIZE,
        "special_tokens": SPECIAL_TOKENS,
        "min_frequency": MIN_FREQUENCY,
        "scheme": "byte-level-bpe/gpt2-regex/no-prefix-space",
        "tokenizers": tokenizers.__version__,
    }
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def _write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file next to ``path``, then rename: readers never see a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; these are ordinary shareable files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read_cached(path: Path) -> Tokenizer | None:
    """The cached tokenizer, or None when there is none or it cannot be read (then it is trained again)."""
    if not path.is_file():
        return None
    try:
        return Tokenizer.from_file(str(path))
    except Exception:
        return None


def default_tokenizer() -> Tokenizer:
    """bitk's tokenizer (a fresh object each call), trained on the corpus's train split once and cached."""
    path = cache_dir() / f"tokenizer-{_cache_key()}.json"
    cached = _read_cached(path)
    if cached is not None:
        return cached
    tokenizer = train_tokenizer(default_corpus("train"))
    _write_atomic(path, tokenizer.to_str())
    return tokenizer


def save_tokenizer(
    directory: str | os.PathLike, tokenizer: Tokenizer | None = None, model_max_length: int | None = None
) -> Path:
    """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json into ``directory``.

    ``tokenizer`` defaults to `default_tokenizer()`. transformers then loads the folder offline
    (`AutoTokenizer.from_pretrained(directory)`) with bos/eos `<|endoftext|>`, pad `<|pad|>` and
    mask `<|mask|>`; roles whose token the tokenizer lacks are left out. Returns the folder.
    """
    directory = Path(directory)
    tokenizer = default_tokenizer() if tokenizer is None else tokenizer
    roles = {role: token for role, token in ROLES.items() if tokenizer.token_to_id(token) is not None}
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **roles,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": model_max_length if model_max_length is not None else int(1e30),
    }
    _write_atomic(directory / "tokenizer.json", tokenizer.to_str())
    _write_atomic(directory / "tokenizer_config.json", json.dumps(config, indent=2) + "\n")
    _write_atomic(directory / "special_tokens_map.json", json.dumps(roles, indent=2) + "\n")
    return directory


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """A `tokenizers.Tokenizer` from a tokenizer.json file or a folder holding one."""
    path = Path(path)
    file = path / "tokenizer.json" if path.is_dir() else path
    if not file.is_file():
        raise ValueError(f"no tokenizer at {path}: expected a tokenizer.json file or a folder holding one")
    try:
        return Tokenizer.from_file(str(file))
    except Exception as exc:  # tokenizers raises plain Exception for malformed files
        raise ValueError(f"cannot read the tokenizer {file}: {exc}") from exc


# --------------------------------------------------------------------------- a model's own tokenizer

# Tokens that end a document in common tokenizers, tried when neither the tokenizer config nor the
# model config names one.
EOS_FALLBACKS = ("<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


@dataclass(frozen=True)
class DocumentTokens:
    """The special tokens that frame a document when text is packed for training or scoring."""

    eos: int
    """Ends every document (and joins documents)."""
    bos: int | None = None
    """Starts every document when the tokenizer adds a BOS of its own (Llama 3); None otherwise."""


def read_tokenizer_config(folder: str | os.PathLike | None) -> dict[str, Any]:
    """tokenizer_config.json of ``folder`` as a dict ({} when there is none or it is unreadable)."""
    if folder is None:
        return {}
    path = Path(folder) / "tokenizer_config.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _content(entry: Any) -> str | None:
    entry = entry.get("content") if isinstance(entry, dict) else entry
    return entry if isinstance(entry, str) else None


def _template_prepends(tokenizer: Tokenizer) -> str | None:
    """The special token the tokenizer's post-processor puts before every single sequence, if any."""
    try:
        post = json.loads(tokenizer.to_str()).get("post_processor") or {}
    except ValueError:
        return None
    procs = post.get("processors", [post]) if post.get("type") == "Sequence" else [post]
    for proc in procs:
        if proc.get("type") == "TemplateProcessing":
            single = proc.get("single") or []
            if len(single) > 1 and "SpecialToken" in single[0]:
                return single[0]["SpecialToken"].get("id")
    return None


def document_tokens(
    tokenizer: Tokenizer, tokenizer_dir: str | os.PathLike | None = None, eos_token_id: int | None = None
) -> DocumentTokens:
    """The EOS (and BOS, when the tokenizer adds one) that frame documents, as the tokenizer's config says.

    EOS: tokenizer_config.json's ``eos_token``, else the model's ``eos_token_id``, else the first of
    `EOS_FALLBACKS` in the vocabulary. BOS: ``bos_token`` when ``add_bos_token`` is true or the
    post-processor prepends it (Llama 3), else None. ValueError when no EOS can be found.
    """
    config = read_tokenizer_config(tokenizer_dir)
    eos = None
    token = _content(config.get("eos_token"))
    if token is not None:
        eos = tokenizer.token_to_id(token)
        if eos is None:
            raise ValueError(
                f"{Path(tokenizer_dir) / 'tokenizer_config.json'}: eos_token {token!r} is not in the "
                "tokenizer's vocabulary"
            )
    if eos is None:
        eos = eos_token_id
    if eos is None:
        eos = next((tokenizer.token_to_id(t) for t in EOS_FALLBACKS if tokenizer.token_to_id(t) is not None), None)
    if eos is None:
        raise ValueError(
            "cannot tell which token ends a document: the tokenizer config names no eos_token, the "
            f"model config no eos_token_id, and the vocabulary has none of {', '.join(EOS_FALLBACKS)}"
        )
    bos_token = _content(config.get("bos_token"))
    adds_bos = config.get("add_bos_token") is True or (
        bos_token is not None and _template_prepends(tokenizer) == bos_token
    )
    bos = tokenizer.token_to_id(bos_token) if bos_token is not None and adds_bos else None
    return DocumentTokens(eos=int(eos), bos=None if bos is None else int(bos))


def add_special_token(src: str | os.PathLike, dest: str | os.PathLike, content: str, role: str) -> int:
    """Copy the tokenizer files of ``src`` into ``dest`` with one more special token; returns its id.

    The token is appended after every existing id (base vocabulary and added tokens) in
    tokenizer.json, and tokenizer_config.json names it under ``role`` (e.g. "mask_token") with an
    ``added_tokens_decoder`` entry, so transformers' AutoTokenizer and bitk's GGUF export both see
    it. Files are written atomically; ``dest`` may equal ``src``. ValueError if it exists already.
    """
    src, dest = Path(src), Path(dest)
    tokenizer = load_tokenizer(src)
    if tokenizer.token_to_id(content) is not None:
        raise ValueError(f"{src}: the tokenizer already has {content!r} (id {tokenizer.token_to_id(content)})")
    from tokenizers import AddedToken

    tokenizer.add_special_tokens([AddedToken(content, special=True, normalized=False)])
    token_id = tokenizer.token_to_id(content)
    assert token_id == tokenizer.get_vocab_size(with_added_tokens=True) - 1, (token_id, content)
    config = read_tokenizer_config(src)
    config[role] = content
    decoder = config.get("added_tokens_decoder")
    if isinstance(decoder, dict):
        decoder[str(token_id)] = {
            "content": content,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
    dest.mkdir(parents=True, exist_ok=True)
    if dest.resolve() != src.resolve():
        for name in TOKENIZER_FILES[2:]:
            if (src / name).is_file():
                shutil.copyfile(src / name, dest / name)
    special_map = dest / "special_tokens_map.json"
    if special_map.is_file():
        try:
            roles = json.loads(special_map.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            roles = {}
        if isinstance(roles, dict):
            roles[role] = content
            _write_atomic(special_map, json.dumps(roles, indent=2) + "\n")
    _write_atomic(dest / "tokenizer.json", tokenizer.to_str())
    _write_atomic(dest / "tokenizer_config.json", json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    return token_id
