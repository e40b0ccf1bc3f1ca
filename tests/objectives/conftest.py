"""Tiny models for the objective tests (imported as `bitk_objectives_testing`).

Two-layer decoders of width 64 in float32 on CPU. Weights are redrawn at a scale that gives O(1)
activations (the std-0.02 init makes every block nearly the identity, which would hide a loss that
ignores a layer).
"""

from __future__ import annotations

import sys

import torch

from bitk.models import CausalLM, ModelConfig
from bitk_testing import scramble

sys.modules["bitk_objectives_testing"] = sys.modules[__name__]

TINY = ModelConfig(
    vocab_size=64,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
    bos_token_id=0,
    eos_token_id=0,
    pad_token_id=1,
)


def tiny_model(seed: int = 0, **changes) -> CausalLM:
    """A scrambled CausalLM of the TINY config with ``changes`` applied (ternary by default)."""
    return scramble(CausalLM(TINY.replace(**changes)), seed)


def full_precision_twin(model: CausalLM) -> CausalLM:
    """The same weights in nn.Linear projections: the model's full-precision teacher."""
    twin = CausalLM(model.config.replace(ternary=False))
    twin.load_state_dict(model.state_dict())
    return twin


def random_ids(batch: int, length: int, seed: int = 0, low: int = 3, high: int = 64) -> torch.Tensor:
    """Token ids in [low, high) (by default no EOS, pad or mask token)."""
    return torch.randint(low, high, (batch, length), generator=torch.Generator().manual_seed(seed))
