"""`generate`: text from a prompt, token by token, with a KV cache; `generate_ids` is its loop over ids.

The prompt runs through the model once (prefill) and fills a `bitk.models.KVCache`; each new
token then runs alone, attending to the cache (decode), so a step costs one token's forward
instead of the whole prefix's. Only the last position's logits are computed (the head runs on
one hidden state). ``use_cache=False`` runs the whole prefix again at every step instead: the
same tokens, for tests and the benchmark. Details: docs/generate.md.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from bitk.data.tokenizer import EOS_FALLBACKS, document_tokens, read_tokenizer_config
from bitk.models.cache import KVCache

from .chat import chat_template, end_of_turn_ids, render_chat
from .sampling import Sampler, greedy_token

__all__ = ["Generation", "default_eos_ids", "generate", "generate_ids", "prompt_token_ids"]

REPLACEMENT = "\ufffd"
"""What a decoder writes for bytes that do not (yet) form a UTF-8 character."""


@dataclass
class Generation:
    """What `generate` returns."""

    prompt_ids: list[int]
    """The prompt's token ids as fed to the model (BOS included when the tokenizer adds one)."""
    ids: list[int]
    """The generated ids only; an EOS that ended generation is not included."""
    text: str
    """The decoded generated text, cut before the first stop string if one matched."""
    finish_reason: str
    """"eos" (an end-of-sequence token), "length" (max_new_tokens or the context) or "stop" (a stop string)."""
    prefill_seconds: float
    """Wall time of the prompt's forward and the first token's choice."""
    decode_seconds: float
    """Wall time of every later step (one forward and one choice each); 0 when one token was generated."""
    seed: int | None
    """The seed the sampler's generator was seeded with (None when greedy)."""


def generate_ids(
    model: Any,
    prompt_ids: Sequence[int],
    *,
    max_new_tokens: int,
    sample: Callable[[torch.Tensor], int] | None = None,
    eos_token_ids: Collection[int] = (),
    use_cache: bool = True,
) -> Iterator[int]:
    """Yield the ids a `CausalLM` generates after ``prompt_ids``, one per forward, lazily.

    ``sample(logits) -> id`` chooses each token from the last position's logits [vocab_size]
    (default: argmax). Stops after ``max_new_tokens`` ids, or after yielding an id of
    ``eos_token_ids``. Each forward runs under torch.inference_mode on the model's device.
    ValueError for an empty prompt or one that leaves no room in ``max_position_embeddings``.
    """
    prompt = [int(i) for i in prompt_ids]
    if not prompt:
        raise ValueError("the prompt has no tokens")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be positive, got {max_new_tokens}")
    context = model.config.max_position_embeddings
    if len(prompt) + max_new_tokens > context:
        raise ValueError(
            f"a prompt of {len(prompt)} tokens and {max_new_tokens} new tokens exceed the model's context "
            f"(max_position_embeddings {context})"
        )
    return _generate_ids(model, prompt, max_new_tokens, sample or greedy_token, frozenset(eos_token_ids), use_cache)


def _generate_ids(
    model: Any, prompt: list[int], max_new_tokens: int, sample: Callable, eos: frozenset[int], use_cache: bool
) -> Iterator[int]:
    device = next(model.parameters()).device
    # the last token needs no forward: the cache holds at most prompt + max_new_tokens - 1 tokens
    cache = KVCache.for_model(model, max_length=len(prompt) + max_new_tokens - 1) if use_cache else None
    step = torch.tensor([prompt], device=device)
    for _ in range(max_new_tokens):
        # entered per step, not around the loop: the mode must not leak into the caller between yields
        with torch.inference_mode():
            out = model(step, cache=cache, logits=False)
            token = int(sample(out.head(out.last_hidden[0, -1])))
        yield token
        if token in eos:
            return
        new = torch.tensor([[token]], device=device)
        step = new if use_cache else torch.cat([step, new], dim=1)


def default_eos_ids(model: Any, tokenizer: Any, tokenizer_dir: Any = None, template: str | None = None) -> set[int]:
    """The ids that end generation: the tokenizer config's eos_token, the model config's eos_token_id
    (else the first of `bitk.data.tokenizer.EOS_FALLBACKS` in the vocabulary) and, with a chat
    ``template``, its end-of-turn token (`bitk.generate.chat.END_OF_TURN_TOKENS`)."""
    ids: set[int] = set()
    token = read_tokenizer_config(tokenizer_dir).get("eos_token")
    token = token.get("content") if isinstance(token, dict) else token
    if isinstance(token, str) and tokenizer.token_to_id(token) is not None:
        ids.add(tokenizer.token_to_id(token))
    if model.config.eos_token_id is not None:
        ids.add(int(model.config.eos_token_id))
    if not ids:
        found = [tokenizer.token_to_id(t) for t in EOS_FALLBACKS if tokenizer.token_to_id(t) is not None]
        ids.update(found[:1])
    if template is not None:
        ids |= end_of_turn_ids(template, tokenizer)
    return ids


def prompt_token_ids(
    model: Any, tokenizer: Any, prompt: str | Iterable[int], *, chat: bool = False, tokenizer_dir: Any = None
) -> tuple[list[int], str | None]:
    """(the ids the model is fed, the chat template used or None) for ``prompt``.

    A string gets the BOS the tokenizer adds (`bitk.data.document_tokens`); with ``chat`` it is
    the user's message, rendered with the tokenizer's chat template first (the template writes
    any BOS itself). A list of ids is used as given.
    """
    if not isinstance(prompt, str):
        if chat:
            raise ValueError("chat=True takes the prompt as text (the user's message), not as token ids")
        return [int(i) for i in prompt], None
    if chat:
        template = chat_template(tokenizer_dir)
        if template is None:
            where = "the tokenizer" if tokenizer_dir is None else f"the tokenizer in {tokenizer_dir}"
            raise ValueError(
                f"{where} has no chat template (tokenizer_config.json chat_template or chat_template.jinja)"
            )
        text = render_chat(template, [{"role": "user", "content": prompt}], tokenizer_dir)
        return tokenizer.encode(text, add_special_tokens=False).ids, template
    ids = tokenizer.encode(prompt, add_special_tokens=False).ids
    try:
        bos = document_tokens(tokenizer, tokenizer_dir, model.config.eos_token_id).bos
    except ValueError:  # no EOS can be named: the BOS question is moot for a plain prompt
        bos = None
    return ([bos] if bos is not None else []) + ids, None


def _stable_end(text: str, holdback: int) -> int:
    """How much of the running ``text`` cannot change any more: not a trailing partial character
    (U+FFFD), nor the last ``holdback`` characters (they may start a stop string)."""
    end = len(text.rstrip(REPLACEMENT))
    return max(0, end - holdback)


def generate(
    model: Any,
    tokenizer: Any,
    prompt: str | list[int],
    *,
    max_new_tokens: int = 128,
    greedy: bool = False,
    temperature: float = 0.8,
    top_k: int | None = 40,
    top_p: float | None = 0.95,
    seed: int | None = None,
    stop: Sequence[str] = (),
    chat: bool = False,
    tokenizer_dir: str | os.PathLike | None = None,
    eos_token_ids: Collection[int] | None = None,
    stream: Callable[[str], None] | None = None,
    use_cache: bool = True,
) -> Generation:
    """Generate text after ``prompt`` with a `bitk.models.CausalLM` (docs/generate.md).

    ``tokenizer``: a `tokenizers.Tokenizer` (None: the one in ``model.tokenizer_dir``).
    ``prompt``: text (BOS added when the tokenizer adds one; with ``chat`` the user's message in
    the chat template) or token ids used as given. ``greedy`` or ``temperature`` 0: argmax;
    otherwise temperature, top-k, top-p sampling seeded with ``seed`` (random when None; the
    result records it). Generation ends at an EOS id (``eos_token_ids``, default
    `default_eos_ids`), when the text contains a ``stop`` string (cut before it), or after
    ``max_new_tokens`` (capped at what the context leaves). ``stream`` receives each piece of
    text once it is final; the pieces join to ``text``. ValueError for bad arguments, an empty
    prompt or one that fills the context, and ``chat`` without a chat template.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be positive, got {max_new_tokens}")
    if isinstance(stop, str):
        stop = (stop,)
    if any(not isinstance(s, str) or not s for s in stop):
        raise ValueError(f"stop strings must be non-empty strings, got {list(stop)!r}")
    greedy = greedy or temperature == 0
    sampler = Sampler(0.0 if greedy else temperature, None if greedy else top_k, None if greedy else top_p, seed)
    if tokenizer_dir is None:
        tokenizer_dir = getattr(model, "tokenizer_dir", None)
    if tokenizer is None:
        if tokenizer_dir is None:
            raise ValueError("no tokenizer given and the model was loaded without one (model.tokenizer_dir is None)")
        from bitk.data import load_tokenizer

        tokenizer = load_tokenizer(tokenizer_dir)
    if isinstance(prompt, str) and not prompt:
        raise ValueError("the prompt is empty")
    prompt_ids, template = prompt_token_ids(model, tokenizer, prompt, chat=chat, tokenizer_dir=tokenizer_dir)
    if not prompt_ids:
        raise ValueError("the prompt has no tokens")
    context = model.config.max_position_embeddings
    if len(prompt_ids) >= context:
        raise ValueError(
            f"the prompt has {len(prompt_ids)} tokens; the model's context (max_position_embeddings) is "
            f"{context}, which leaves no room for a new token"
        )
    budget = min(max_new_tokens, context - len(prompt_ids))
    eos = set(default_eos_ids(model, tokenizer, tokenizer_dir, template) if eos_token_ids is None else eos_token_ids)
    vocab = tokenizer.get_vocab_size()
    sampler.vocab_limit = vocab if vocab < model.config.vocab_size else None

    ids: list[int] = []
    text, finish, emitted = "", "length", 0
    holdback = max((len(s) for s in stop), default=1) - 1
    steps = generate_ids(
        model, prompt_ids, max_new_tokens=budget, sample=sampler, eos_token_ids=eos, use_cache=use_cache
    )
    times: list[float] = []  # of each step: the first is the prefill
    try:
        while True:
            start = time.perf_counter()
            token = next(steps, None)
            times.append(time.perf_counter() - start)
            if token is None:
                break
            if token in eos:
                finish = "eos"
                break
            ids.append(token)
            text = tokenizer.decode(ids)
            hits = [i for i in (text.find(s) for s in stop) if i >= 0]
            if hits:
                text, finish = text[: min(hits)], "stop"
                break
            if stream is not None:
                end = _stable_end(text, holdback)
                if end > emitted:
                    stream(text[emitted:end])
                    emitted = end
    finally:
        steps.close()
    if stream is not None and len(text) > emitted:
        stream(text[emitted:])
    return Generation(prompt_ids, ids, text, finish, times[0], sum(times[1:]), sampler.seed)
