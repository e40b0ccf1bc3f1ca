"""Chat prompts: a tokenizer's chat template rendered with jinja2, as transformers' apply_chat_template.

The template is tokenizer_config.json's ``chat_template`` (a string, or a list of named templates,
of which "default" is used), else the file chat_template.jinja of the tokenizer folder. It is
rendered in a sandboxed jinja2 environment with trim_blocks and lstrip_blocks, the variables
``messages``, ``add_generation_prompt``, ``bos_token`` and ``eos_token``, and transformers'
helpers ``raise_exception`` and ``strftime_now``.
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path
from typing import Any

from bitk.data.tokenizer import read_tokenizer_config

__all__ = ["END_OF_TURN_TOKENS", "chat_template", "end_of_turn_ids", "render_chat"]

END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|end_of_turn|>", "<|eom_id|>")
"""Special tokens that close an assistant turn in common chat templates (ChatML, Llama 3, Phi, Gemma)."""


def _content(entry: Any) -> str | None:
    entry = entry.get("content") if isinstance(entry, dict) else entry
    return entry if isinstance(entry, str) else None


def chat_template(tokenizer_dir: str | os.PathLike | None) -> str | None:
    """The chat template of the tokenizer in ``tokenizer_dir``, or None when it has none."""
    if tokenizer_dir is None:
        return None
    template = read_tokenizer_config(tokenizer_dir).get("chat_template")
    if isinstance(template, list):  # transformers' named templates: [{"name": ..., "template": ...}]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    if isinstance(template, str) and template:
        return template
    path = Path(tokenizer_dir) / "chat_template.jinja"
    if path.is_file():
        return path.read_text(encoding="utf-8")
    return None


def render_chat(template: str, messages: list[dict[str, str]], tokenizer_dir: str | os.PathLike | None = None) -> str:
    """The prompt text of ``messages`` with the assistant's turn opened (add_generation_prompt)."""
    from jinja2 import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise TemplateError(message)

    config = read_tokenizer_config(tokenizer_dir)
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(template).render(
            messages=messages,
            add_generation_prompt=True,
            bos_token=_content(config.get("bos_token")) or "",
            eos_token=_content(config.get("eos_token")) or "",
        )
    except TemplateError as exc:
        raise ValueError(f"the chat template of {tokenizer_dir} cannot be rendered: {exc}") from None


def end_of_turn_ids(template: str, tokenizer: Any) -> set[int]:
    """Ids of the `END_OF_TURN_TOKENS` the template writes that the tokenizer has as tokens."""
    return {
        tokenizer.token_to_id(t) for t in END_OF_TURN_TOKENS if t in template and tokenizer.token_to_id(t) is not None
    }
