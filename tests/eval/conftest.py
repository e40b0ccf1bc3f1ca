"""Shared fixtures of the bitk.eval tests: a small saved checkpoint (fresh caches come from tests/conftest.py)."""

from __future__ import annotations

import pytest

from bitk.models import ModelConfig

# A narrow model on bitk's 4096-token vocabulary: saves, loads and evaluates in well under a second.
SMALL = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "max_position_embeddings": 128,
}


@pytest.fixture(scope="session")
def small_model(bitk_cache_dir):
    import torch

    from bitk.models import CausalLM

    torch.manual_seed(0)
    return CausalLM(ModelConfig(**SMALL))


@pytest.fixture(scope="session")
def checkpoint(small_model, tmp_path_factory):
    """The small model saved with bitk's tokenizer: what `python -m bitk.eval` reads."""
    from bitk.data import default_tokenizer

    return small_model.save(tmp_path_factory.mktemp("ckpt") / "small", tokenizer=default_tokenizer())


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """`bitk.eval.cli.main(["--threads", ...])` sets torch's global thread count: undo it after each test."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
