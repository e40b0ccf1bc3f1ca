"""Shared fixtures of the bitk.generate tests: a tiny ternary model, its checkpoint and its I2_S GGUF file.

The model has I2_S-friendly widths (hidden 256, FFN 512, 4 heads / 2 KV heads of 64), two blocks,
bitk's 4096-token tokenizer and a 64-token context. Its weights are redrawn (`scramble`) and its
(tied) embedding scaled to rows of norm ~2, so that logits spread over a few units: greedy choices
have no near-ties, and sampling at temperature 1 still varies.
"""

from __future__ import annotations

import json
import shutil

import pytest

from bitk.models import ModelConfig

TINY = ModelConfig(
    vocab_size=4096,
    hidden_size=256,
    intermediate_size=512,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
    bos_token_id=0,
    eos_token_id=0,
    pad_token_id=1,
)
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


@pytest.fixture(scope="session")
def tokenizer(bitk_cache_dir):
    from bitk.data import default_tokenizer

    return default_tokenizer()


@pytest.fixture(scope="session")
def model(bitk_cache_dir):
    """The tiny ternary model, in eval mode (tests that change its numerics set them back)."""
    import torch

    from bitk.models import CausalLM
    from bitk_testing import scramble

    torch.manual_seed(0)
    model = scramble(CausalLM(TINY), 0).eval().requires_grad_(False)
    model.model.embed_tokens.weight.mul_(0.125)
    return model


@pytest.fixture(scope="session")
def checkpoint(model, tokenizer, tmp_path_factory):
    """The tiny model saved with bitk's tokenizer (no chat template)."""
    return model.save(tmp_path_factory.mktemp("ckpt") / "tiny", tokenizer=tokenizer)


@pytest.fixture(scope="session")
def chat_checkpoint(checkpoint, tmp_path_factory):
    """The same checkpoint with a chat template in its tokenizer_config.json."""
    folder = tmp_path_factory.mktemp("chat") / "tiny-chat"
    shutil.copytree(checkpoint, folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["chat_template"] = CHAT_TEMPLATE
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


@pytest.fixture(scope="session")
def full_precision_checkpoint(tokenizer, tmp_path_factory):
    import torch

    from bitk.models import CausalLM

    torch.manual_seed(1)
    model = CausalLM(TINY.replace(ternary=False, subln=False, hidden_act="silu"))
    return model.save(tmp_path_factory.mktemp("fp") / "fp", tokenizer=tokenizer)


@pytest.fixture(scope="session")
def gguf_file(model, tokenizer, tmp_path_factory):
    """The tiny model as an I2_S GGUF file with an F32 embedding (so its logits are the checkpoint's in i2s)."""
    from bitk.gguf import export

    path = tmp_path_factory.mktemp("gguf") / "tiny-i2_s.gguf"
    export(model, path, "i2_s", tokenizer=tokenizer, embedding_type="f32")
    return path


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """`main(["--threads", ...])` sets torch's global thread count: undo it after each test."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
