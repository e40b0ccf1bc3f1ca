"""Choosing the next token from logits: greedy (argmax) or temperature, top-k and top-p sampling.

The filters apply in that order, as in Hugging Face transformers' default sampling: logits are
divided by the temperature, then all but the k largest are dropped, then all but the smallest
set of most probable tokens whose probabilities sum to at least p (the most probable always
stays). The draw uses a `torch.Generator` seeded once per generation, so a seed reproduces it.
"""

from __future__ import annotations

import secrets

import torch

__all__ = ["Sampler", "check_sampling", "greedy_token", "new_seed", "sample_token"]


def greedy_token(logits: torch.Tensor) -> int:
    """The id of the largest logit (ties: the lowest id, as torch.argmax)."""
    return int(torch.argmax(logits))


def check_sampling(temperature: float, top_k: int | None, top_p: float | None) -> None:
    """ValueError for a negative temperature, top_k < 1 or top_p outside (0, 1]."""
    if not temperature >= 0:  # also NaN
        raise ValueError(f"temperature must be >= 0 (0: greedy), got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1 (or None: no top-k filter), got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1] (or None: no nucleus filter), got {top_p}")


def sample_token(
    logits: torch.Tensor, generator: torch.Generator, temperature: float, top_k: int | None, top_p: float | None
) -> int:
    """Draw an id from 1-D ``logits``: temperature, then top-k, then top-p (nucleus), then softmax."""
    scores = logits.float() / temperature
    if top_k is not None and top_k < scores.numel():
        kth = torch.topk(scores, top_k).values[-1]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if top_p is not None and top_p < 1:
        # stable: among equal scores the lowest id comes first, so a tiny top_p keeps argmax's token
        order = torch.sort(scores, descending=True, stable=True).indices
        probs = torch.softmax(scores[order], dim=-1)
        before = torch.cumsum(probs, dim=-1) - probs  # mass of the tokens ranked above each one
        drop = before >= top_p
        drop[0] = False
        scores = scores.index_fill(0, order[drop], float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))


def new_seed() -> int:
    """A fresh random seed (63 bits) for a generation that was given none."""
    return secrets.randbits(63)


class Sampler:
    """``sampler(logits) -> id``: greedy when ``temperature`` is 0, else seeded sampling.

    ``seed``: the generator's seed (None: `new_seed()`); ``sampler.seed`` is the one used, None
    when greedy. ``vocab_limit``: ids at and above it are never chosen (rows of a padded
    vocabulary that the tokenizer has no token for).
    """

    def __init__(
        self,
        temperature: float = 0.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        vocab_limit: int | None = None,
    ) -> None:
        check_sampling(temperature, top_k, top_p)
        self.temperature, self.top_k, self.top_p = temperature, top_k, top_p
        self.vocab_limit = vocab_limit
        self.greedy = temperature == 0
        self.seed = None if self.greedy else (new_seed() if seed is None else int(seed))
        self.generator = None
        if not self.greedy:
            self.generator = torch.Generator().manual_seed(self.seed)

    def __call__(self, logits: torch.Tensor) -> int:
        logits = logits.reshape(-1)
        if self.vocab_limit is not None:
            logits = logits[: self.vocab_limit]
        if self.greedy:
            return greedy_token(logits)
        return sample_token(logits.cpu(), self.generator, self.temperature, self.top_k, self.top_p)
