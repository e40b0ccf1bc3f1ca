"""bitk.generate: the KV-cached loop, sampling, EOS and stop strings, streaming, chat prompts."""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import pytest
import torch

import bitk.generate
from bitk.generate import Generation, Sampler, default_eos_ids, generate, generate_ids
from bitk.generate.chat import end_of_turn_ids
from bitk.models import ModelConfig

PROMPT = "The quick brown fox jumps over"


@pytest.fixture
def numerics(model, request):
    """Set the shared model's numerics for one test, then back to "train"."""
    model.set_numerics(request.param)
    yield request.param
    model.set_numerics("train")


@pytest.mark.parametrize("numerics", ["train", "i2s"], indirect=True)
def test_greedy_with_the_cache_equals_recomputing_the_prefix(model, tokenizer, numerics):
    cached = generate(model, tokenizer, PROMPT, max_new_tokens=12, greedy=True, eos_token_ids=())
    again = generate(model, tokenizer, PROMPT, max_new_tokens=12, greedy=True, eos_token_ids=(), use_cache=False)
    assert len(cached.ids) == 12 and cached.ids == again.ids and cached.text == again.text
    assert cached.finish_reason == "length" and cached.seed is None
    assert cached.prefill_seconds > 0 and cached.decode_seconds > 0
    ids = list(generate_ids(model, cached.prompt_ids, max_new_tokens=12))
    assert ids == cached.ids  # the bare loop, argmax by default


def test_the_module_is_callable_and_a_prompt_string_is_framed_as_documents(model, tokenizer):
    out = bitk.generate(model, tokenizer, PROMPT, max_new_tokens=3, greedy=True)
    assert isinstance(out, Generation)
    assert out.prompt_ids == tokenizer.encode(PROMPT, add_special_tokens=False).ids  # bitk's tokenizer adds no BOS
    same = generate(model, tokenizer, out.prompt_ids, max_new_tokens=3, greedy=True)
    assert same.ids == out.ids and same.prompt_ids == out.prompt_ids


def test_temperature_zero_is_greedy(model, tokenizer):
    a = generate(model, tokenizer, PROMPT, max_new_tokens=5, greedy=True, eos_token_ids=())
    b = generate(model, tokenizer, PROMPT, max_new_tokens=5, temperature=0, seed=3, eos_token_ids=())
    assert a.ids == b.ids and b.seed is None


def test_sampling_is_reproducible_with_a_seed_and_differs_across_seeds(model, tokenizer):
    def run(seed):
        return generate(model, tokenizer, PROMPT, max_new_tokens=10, temperature=1.5, top_k=None, top_p=None,
                        seed=seed, eos_token_ids=())  # fmt: skip

    a, b, c = run(7), run(7), run(8)
    assert a.ids == b.ids and a.seed == 7
    assert a.ids != c.ids
    unseeded = generate(model, tokenizer, PROMPT, max_new_tokens=2, eos_token_ids=())
    assert isinstance(unseeded.seed, int)
    assert (
        generate(model, tokenizer, PROMPT, max_new_tokens=2, seed=unseeded.seed, eos_token_ids=()).ids == unseeded.ids
    )


def test_top_k_one_and_a_tiny_top_p_are_greedy(model, tokenizer):
    greedy = generate(model, tokenizer, PROMPT, max_new_tokens=8, greedy=True, eos_token_ids=()).ids
    top_k = generate(model, tokenizer, PROMPT, max_new_tokens=8, temperature=2.0, top_k=1, top_p=None, seed=1,
                     eos_token_ids=())  # fmt: skip
    top_p = generate(model, tokenizer, PROMPT, max_new_tokens=8, temperature=2.0, top_k=None, top_p=1e-6, seed=1,
                     eos_token_ids=())  # fmt: skip
    assert top_k.ids == greedy and top_p.ids == greedy


def test_sampler_filters():
    logits = torch.tensor([0.0, 3.0, 1.0, 3.0, -1.0])
    assert Sampler()(logits) == 1  # argmax ties: the lowest id
    gen = Sampler(temperature=1.0, top_k=2, seed=0)
    assert {gen(logits) for _ in range(50)} == {1, 3}
    nucleus = Sampler(temperature=1.0, top_p=0.5, seed=0)  # 1 and 3 each hold ~0.42 of the mass
    assert {nucleus(logits) for _ in range(50)} == {1, 3}
    assert Sampler(temperature=1.0, top_p=1e-9, seed=5)(logits) == 1
    assert Sampler(vocab_limit=3)(torch.tensor([0.0, 1.0, 2.0, 9.0])) == 2
    for bad in ({"temperature": -0.1}, {"top_k": 0}, {"top_p": 0.0}, {"top_p": 1.5}):
        with pytest.raises(ValueError):
            Sampler(**{"temperature": 1.0, **bad})


def test_eos_ends_generation_and_is_not_in_the_ids(model, tokenizer):
    greedy = generate(model, tokenizer, PROMPT, max_new_tokens=12, greedy=True, eos_token_ids=()).ids
    k = next(i for i in range(1, len(greedy)) if greedy[i] not in greedy[:i])
    out = generate(model, tokenizer, PROMPT, max_new_tokens=12, greedy=True, eos_token_ids={greedy[k]})
    assert out.ids == greedy[:k] and out.finish_reason == "eos"
    assert out.text == tokenizer.decode(greedy[:k])


def test_a_model_whose_argmax_is_its_eos_stops_at_once(model, tokenizer):
    eos = model.config.eos_token_id
    assert eos in default_eos_ids(model, tokenizer, model.tokenizer_dir)
    head = model.lm_head
    biased = torch.nn.Linear(head.in_features, head.out_features, bias=True)
    biased.weight = head.weight
    with torch.no_grad():
        biased.bias.zero_()
        biased.bias[eos] = 1e4  # far above any other logit
    model.lm_head = biased
    try:
        out = generate(model, tokenizer, PROMPT, max_new_tokens=5, greedy=True)
    finally:
        model.lm_head = head
    assert out.ids == [] and out.text == "" and out.finish_reason == "eos"


class Scripted(torch.nn.Module):
    """A stand-in for a CausalLM that emits a fixed list of tokens (one per forward)."""

    def __init__(self, script: list[int], vocab_size: int = 4096) -> None:
        super().__init__()
        self.config = ModelConfig(vocab_size=vocab_size, max_position_embeddings=256, eos_token_id=0)
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # gives the device
        self.script, self.calls = script, 0
        self.tokenizer_dir = None

    def forward(self, input_ids, cache=None, logits=False):
        token = self.script[self.calls]
        self.calls += 1
        if cache is not None:
            cache.advance(input_ids.shape[1])

        def head(hidden):
            return 100.0 * torch.nn.functional.one_hot(torch.tensor(token), self.config.vocab_size).float()

        return SimpleNamespace(last_hidden=torch.zeros(1, input_ids.shape[1], 1), head=head)


def test_streamed_pieces_join_to_the_text_with_multibyte_characters_split_over_tokens(tokenizer):
    text = "naïve café: 日本語 🙂 done"
    ids = tokenizer.encode(text, add_special_tokens=False).ids
    # the test is only worth something if some prefix of the ids ends inside a character
    assert any(tokenizer.decode(ids[:n]).endswith("\ufffd") for n in range(1, len(ids)))
    pieces: list[str] = []
    out = generate(Scripted([*ids, 0]), tokenizer, [5, 6], max_new_tokens=64, greedy=True, stream=pieces.append)
    assert out.text == text and out.ids == ids and out.finish_reason == "eos"
    assert "".join(pieces) == text and not any("\ufffd" in p for p in pieces)
    assert len(pieces) > 3  # streamed as it went, not in one piece at the end


def test_stop_strings_cut_the_text_and_the_stream(tokenizer):
    text = "Hello there. STOP and more text"
    ids = tokenizer.encode(text, add_special_tokens=False).ids
    pieces: list[str] = []
    out = generate(Scripted(ids), tokenizer, [5], max_new_tokens=64, stop=["STOP", "zzz"], stream=pieces.append)
    assert out.text == "Hello there. " and out.finish_reason == "stop"
    assert "".join(pieces) == out.text
    assert tokenizer.decode(out.ids).startswith("Hello there. ST")  # the ids run to the token that completed it
    length = generate(Scripted(ids), tokenizer, [5], max_new_tokens=3, stop=["nowhere"], greedy=True)
    assert length.finish_reason == "length" and length.ids == ids[:3]


def test_new_tokens_are_capped_by_the_context_and_a_full_prompt_is_refused(model, tokenizer):
    context = model.config.max_position_embeddings
    out = generate(model, tokenizer, list(range(10, 8 + context)), max_new_tokens=50, greedy=True, eos_token_ids=())
    assert len(out.ids) == 2 and out.finish_reason == "length"
    with pytest.raises(ValueError, match=f"has {context} tokens; .* is {context}"):
        generate(model, tokenizer, list(range(10, 10 + context)), greedy=True)
    with pytest.raises(ValueError, match=r"exceed the model's context \(max_position_embeddings 64\)"):
        list(generate_ids(model, [1] * 60, max_new_tokens=5))
    with pytest.raises(ValueError, match="empty"):
        generate(model, tokenizer, "")
    with pytest.raises(ValueError, match="no tokens"):
        generate(model, tokenizer, [])
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(model, tokenizer, PROMPT, max_new_tokens=0)
    with pytest.raises(ValueError, match="top_p"):
        generate(model, tokenizer, PROMPT, top_p=2.0)


def test_chat_renders_the_template(model, tokenizer, chat_checkpoint):
    out = generate(model, None, "Hi there", chat=True, tokenizer_dir=chat_checkpoint, max_new_tokens=2, greedy=True)
    rendered = "<|endoftext|>user: Hi there\nassistant:"
    assert out.prompt_ids == tokenizer.encode(rendered, add_special_tokens=False).ids
    assert out.prompt_ids[0] == 0  # the template's bos_token, a special token


def test_chat_template_from_a_jinja_file_and_named_templates(model, tokenizer, checkpoint, tmp_path):
    folder = tmp_path / "tok"
    shutil.copytree(checkpoint, folder)
    (folder / "chat_template.jinja").write_text("[{{ messages[0]['content'] }}]")
    out = generate(model, tokenizer, "x", chat=True, tokenizer_dir=folder, max_new_tokens=1, greedy=True)
    assert out.prompt_ids == tokenizer.encode("[x]").ids
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["chat_template"] = [{"name": "default", "template": "<{{ messages[0]['content'] }}>"}]
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    out = generate(model, tokenizer, "x", chat=True, tokenizer_dir=folder, max_new_tokens=1, greedy=True)
    assert out.prompt_ids == tokenizer.encode("<x>").ids


def test_chat_without_a_template_is_refused(model, tokenizer, checkpoint):
    with pytest.raises(ValueError, match="has no chat template"):
        generate(model, tokenizer, "Hi", chat=True, tokenizer_dir=checkpoint)
    with pytest.raises(ValueError, match="as text"):
        generate(model, tokenizer, [1, 2], chat=True, tokenizer_dir=checkpoint)


def test_the_end_of_turn_token_of_a_chat_template_ends_generation(tokenizer):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(tokenizer.to_str())
    tok.add_special_tokens(["<|im_end|>"])
    template = "{% for m in messages %}<|im_start|>{{ m['content'] }}<|im_end|>{% endfor %}"
    end = tok.token_to_id("<|im_end|>")
    assert end_of_turn_ids(template, tok) == {end}
    model = Scripted([], vocab_size=tok.get_vocab_size())
    assert default_eos_ids(model, tok, None, template) == {0, end}
    assert default_eos_ids(model, tok, None) == {0}
