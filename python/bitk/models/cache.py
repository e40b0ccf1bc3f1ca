"""KVCache: the keys and values of the tokens a `CausalLM` has already run, for incremental decoding.

    cache = KVCache.for_model(model, max_length=len(prompt) + 64)
    model(prompt_ids, cache=cache)            # prefill: positions 0 .. L-1, appended to the cache
    model(next_ids, cache=cache)              # one token at position cache.length, attends to all before

Per layer, keys and values are kept as attention uses them: after the projections, the q/k norm and
RoPE, laid out [batch, kv_heads, tokens, head_dim] (grouped-query heads are not repeated). Buffers
are allocated on the first update, in the dtype and device of the keys; with ``max_length`` they
hold that many tokens from the start, without it they double in size whenever they are full.
"""

from __future__ import annotations

import torch

__all__ = ["KVCache"]


class KVCache:
    """Keys and values of ``length`` cached tokens for each of ``num_layers`` layers.

    ``batch_size``: the rows of every forward that uses this cache. ``max_length``: preallocate
    room for that many tokens and refuse more (None: grow as needed).
    """

    def __init__(self, num_layers: int, *, batch_size: int = 1, max_length: int | None = None) -> None:
        if num_layers < 1 or batch_size < 1:
            raise ValueError(f"a KVCache needs num_layers >= 1 and batch_size >= 1, got {num_layers}, {batch_size}")
        if max_length is not None and max_length < 1:
            raise ValueError(f"max_length must be positive (or None to grow), got {max_length}")
        self.num_layers = num_layers
        self.batch_size = batch_size
        self.max_length = max_length
        self.length = 0
        """Tokens cached (the same in every layer between forwards)."""
        self._keys: list[torch.Tensor | None] = [None] * num_layers
        self._values: list[torch.Tensor | None] = [None] * num_layers

    @classmethod
    def for_model(cls, model, batch_size: int = 1, max_length: int | None = None) -> KVCache:
        """An empty cache for ``model`` (a `CausalLM`): one slot per decoder layer."""
        return cls(model.config.num_hidden_layers, batch_size=batch_size, max_length=max_length)

    def reset(self) -> None:
        """Forget every cached token (the buffers are kept for reuse)."""
        self.length = 0

    def check_append(self, batch: int, tokens: int) -> None:
        """ValueError unless a forward of ``batch`` rows x ``tokens`` new tokens fits this cache."""
        if batch != self.batch_size:
            raise ValueError(f"this KVCache was built for batch size {self.batch_size}; the input has {batch} rows")
        if self.max_length is not None and self.length + tokens > self.max_length:
            raise ValueError(
                f"the KVCache holds at most {self.max_length} tokens: {self.length} cached + {tokens} new do not fit"
            )

    def update(self, layer: int, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store ``layer``'s keys and values [B, KV, L, D] of the new tokens at positions length .. length+L-1.

        Returns that layer's keys and values of all length + L tokens. `advance` moves ``length``
        on once every layer has been updated.
        """
        end = self.length + keys.shape[2]
        buf_k, buf_v = self._keys[layer], self._values[layer]
        if buf_k is None or buf_k.shape[2] < end or buf_k.dtype != keys.dtype or buf_k.device != keys.device:
            capacity = (
                self.max_length
                if self.max_length is not None
                else max(end, 2 * (0 if buf_k is None else buf_k.shape[2]))
            )
            shape = (keys.shape[0], keys.shape[1], capacity, keys.shape[3])
            new_k = keys.new_empty(shape)
            new_v = values.new_empty(shape)
            if buf_k is not None and self.length:
                new_k[:, :, : self.length] = buf_k[:, :, : self.length]
                new_v[:, :, : self.length] = buf_v[:, :, : self.length]
            self._keys[layer], self._values[layer] = buf_k, buf_v = new_k, new_v
        buf_k[:, :, self.length : end] = keys
        buf_v[:, :, self.length : end] = values
        return buf_k[:, :, :end], buf_v[:, :, :end]

    def advance(self, tokens: int) -> None:
        """Count ``tokens`` more cached tokens (after every layer's `update` of one forward)."""
        self.length += tokens

    def __repr__(self) -> str:
        room = "grows" if self.max_length is None else f"max_length={self.max_length}"
        return f"KVCache({self.num_layers} layers, batch_size={self.batch_size}, length={self.length}, {room})"
