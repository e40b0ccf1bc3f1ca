"""bitk's default tokenizer: a byte-level BPE of 4096 tokens trained on the embedded corpus.

GPT-2's scheme (ByteLevel pre-tokenizer with GPT-2's split regex, no prefix space, ByteLevel
decoder), so any text round-trips and a GGUF export names it plainly `gpt2` / pre `gpt-2`. Three
special tokens come first: `<|endoftext|>` = 0 (BOS and EOS: documents are joined with it),
`<|pad|>` = 1, `<|mask|>` = 2 (the DLM objective's mask, numerics.md "Objectives"). The vocab size
is the `tiny` preset's. Training takes well under a second and is deterministic (same corpus and
settings -> same tokenizer.json bytes, whatever the thread count); the result is cached under
`cache_dir()` keyed by a hash of the corpus, the settings and the tokenizers version.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from bitk.data.corpus import corpus_fingerprint, default_corpus
from bitk.models.config import PRESETS

__all__ = [
    "EOS_ID",
    "EOS_TOKEN",
    "MASK_ID",
    "MASK_TOKEN",
    "PAD_ID",
    "PAD_TOKEN",
    "SPECIAL_TOKENS",
    "VOCAB_SIZE",
    "cache_dir",
    "default_tokenizer",
    "load_tokenizer",
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
    except Exception:  # noqa: BLE001 -- tokenizers raises plain Exception for malformed files
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


def save_tokenizer(directory: str | os.PathLike, tokenizer: Tokenizer | None = None,
                   model_max_length: int | None = None) -> Path:
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
