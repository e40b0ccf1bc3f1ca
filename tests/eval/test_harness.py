"""The lm-evaluation-harness model class `bitk.eval.harness.BitkLM` against direct computations on the model."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("lm_eval")

from bitk.data import default_tokenizer
from bitk.eval import harness
from bitk.generate import generate
from bitk.generate.loading import set_model_numerics

PAIRS = [
    ("def add(a, b):\n    return", " a + b"),
    ("The assert statement", " is a convenient way to insert debugging assertions"),
    ("x", " = 1"),
    ("A class definition defines a class object. ", "It is executed."),  # a trailing space moves over
    ("import sys\nprint(sys.", "argv)"),
    ("", "Hello world"),  # an empty context: conditioned on EOS (this tokenizer adds no BOS)
]


def requests(*args):
    return [SimpleNamespace(args=a) for a in args]


@pytest.fixture(scope="module")
def tok():
    return default_tokenizer()


@pytest.fixture(scope="module")
def model(small_model):
    """The small ternary model with O(1) activations, so that log-probabilities differ visibly."""
    from bitk_testing import scramble

    return scramble(copy.deepcopy(small_model), 1).eval()


def encode_pair(tok, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval's split, written out: trailing spaces join the continuation; encode the whole, cut after the context."""
    stripped = context.rstrip()
    continuation = context[len(stripped) :] + continuation
    if not stripped:
        return [0], tok.encode(continuation).ids  # bitk's tokenizer: EOS is id 0, no BOS
    whole = tok.encode(stripped + continuation).ids
    head = tok.encode(stripped).ids
    assert whole[: len(head)] == head
    return head, whole[len(head) :]


@torch.no_grad()
def direct_score(model, context: list[int], continuation: list[int]) -> tuple[float, bool]:
    ids = torch.tensor([context + continuation])
    logprobs = model(ids).logits[0, :-1].double().log_softmax(-1)[len(context) - 1 :]
    target = torch.tensor(continuation)
    return logprobs.gather(-1, target[:, None]).sum().item(), bool((logprobs.argmax(-1) == target).all())


def test_loglikelihood_is_the_sum_of_the_continuations_log_softmax(model, tok):
    lm1 = harness.BitkLM(model=model, tokenizer=tok, batch_size=1)
    lm4 = harness.BitkLM(model=model, tokenizer=tok, batch_size=4)
    got1 = lm1.loglikelihood(requests(*PAIRS), disable_tqdm=True)
    got4 = lm4.loglikelihood(requests(*PAIRS), disable_tqdm=True)
    for (context, continuation), (score1, greedy1), (score4, greedy4) in zip(PAIRS, got1, got4, strict=True):
        expected, greedy = direct_score(model, *encode_pair(tok, context, continuation))
        assert score1 == pytest.approx(expected, rel=1e-5, abs=1e-4), (context, continuation)
        assert score4 == pytest.approx(score1, rel=1e-5, abs=1e-4)  # padding in a batch changes nothing
        assert greedy1 == greedy4 == greedy
        assert score1 < 0


def test_is_greedy(model, tok):
    lm = harness.BitkLM(model=model, tokenizer=tok, batch_size=2)
    context = tok.encode("def f(x):\n    return x").ids
    chain = []
    with torch.no_grad():
        for _ in range(3):  # the greedy continuation, three tokens long
            chain.append(int(model(torch.tensor([context + chain])).logits[0, -1].argmax()))
    other = (chain[-1] + 1) % tok.get_vocab_size()
    got = lm._loglikelihood_tokens(
        [(None, context, chain), (None, context, chain[:-1] + [other]), (None, context, chain[:1])], disable_tqdm=True
    )
    assert [g for _, g in got] == [True, False, True]
    assert got[0][0] > got[1][0]


def test_a_pair_longer_than_max_length_loses_context_from_the_left(model, tok):
    lm = harness.BitkLM(model=model, tokenizer=tok, max_length=8)
    context, continuation = list(range(100, 120)), [7, 8, 9]
    ((score, _),) = lm._loglikelihood_tokens([(None, context, continuation)], disable_tqdm=True)
    kept = (context + continuation)[-9:]
    expected, _ = direct_score(model, kept[:-3], continuation)
    assert score == pytest.approx(expected, rel=1e-5)


def rolling_reference(model, tokens: list[int], window: int) -> float:
    """Each token scored once, in windows of at most ``window`` inputs over EOS + tokens (EOS: id 0)."""
    stream, total, done = [0, *tokens], 0.0, 0
    while done < len(tokens):
        end = min(done + window, len(tokens))
        with torch.no_grad():  # inputs stream[end - window : end] predict tokens[done:end] at their last positions
            logprobs = model(torch.tensor([stream[max(0, end - window) : end]])).logits[0].double().log_softmax(-1)
        total += logprobs[-(end - done) :].gather(-1, torch.tensor(tokens[done:end])[:, None]).sum().item()
        done = end
    return total


def test_loglikelihood_rolling_scores_every_token_once(model, tok):
    text = "The assert statement is a convenient way to insert debugging assertions into a program."
    tokens = tok.encode(text).ids
    assert 16 < len(tokens) < 128
    whole = harness.BitkLM(model=model, tokenizer=tok, batch_size=2)  # max_length 128: one window
    (score,) = whole.loglikelihood_rolling(requests((text,)), disable_tqdm=True)
    with torch.no_grad():
        logprobs = model(torch.tensor([[0] + tokens[:-1]])).logits[0].double().log_softmax(-1)
    assert score == pytest.approx(logprobs.gather(-1, torch.tensor(tokens)[:, None]).sum().item(), rel=1e-5)
    windows = harness.BitkLM(model=model, tokenizer=tok, batch_size=3, max_length=8)
    short, long = windows.loglikelihood_rolling(requests(("x = 1",), (text,)), disable_tqdm=True)
    assert long == pytest.approx(rolling_reference(model, tokens, 8), rel=1e-5)
    assert short == pytest.approx(rolling_reference(model, tok.encode("x = 1").ids, 8), rel=1e-5)
    assert long != pytest.approx(score, rel=1e-3)  # shorter contexts: another score


@pytest.mark.parametrize("numerics", ["i2s", "tq"])
def test_numerics_score_as_the_file_computes(model, tok, numerics):
    pairs = requests(*PAIRS[:3])
    train = harness.BitkLM(model=copy.deepcopy(model), tokenizer=tok).loglikelihood(pairs, disable_tqdm=True)
    lm = harness.BitkLM(model=copy.deepcopy(model), tokenizer=tok, numerics=numerics)
    assert lm.numerics.startswith(f"{numerics} (as its")
    got = lm.loglikelihood(pairs, disable_tqdm=True)
    reference = copy.deepcopy(model)
    set_model_numerics(reference, numerics)
    for (context, continuation), (score, _), (train_score, _) in zip(PAIRS, got, train):
        assert score == pytest.approx(direct_score(reference, *encode_pair(tok, context, continuation))[0], rel=1e-6)
        if numerics == "tq":  # int8 activations per block of 256, float16 weight scale: visibly another model
            assert abs(score - train_score) > 1e-3
        else:  # bitnet.cpp's activation scale formula, an int32 dot: the training forward up to float32 rounding
            assert score == pytest.approx(train_score, abs=1e-3)


def test_numerics_of_a_checkpoint(checkpoint, tok):
    pairs = requests(*PAIRS[:2])
    loaded = harness.BitkLM(pretrained=str(checkpoint), numerics="tq", batch_size=2)
    assert loaded.numerics == "tq (as its TQ2_0 GGUF runs)"
    reference = copy.deepcopy(loaded.model)
    got = loaded.loglikelihood(pairs, disable_tqdm=True)
    for (context, continuation), (score, _) in zip(PAIRS, got):
        assert score == pytest.approx(direct_score(reference, *encode_pair(tok, context, continuation))[0], rel=1e-6)
    set_model_numerics(reference, "train")
    assert got[0][0] != pytest.approx(direct_score(reference, *encode_pair(tok, *PAIRS[0]))[0], rel=1e-7)


def test_bad_arguments(small_model, tok):
    from bitk.models import CausalLM, ModelConfig

    full = CausalLM(small_model.config.replace(ternary=False))
    assert isinstance(full.config, ModelConfig)
    with pytest.raises(ValueError, match="needs a ternary model"):
        harness.BitkLM(model=full, tokenizer=tok, numerics="i2s")
    with pytest.raises(ValueError, match="exceeds the model's max_position_embeddings"):
        harness.BitkLM(model=small_model, tokenizer=tok, max_length=129)
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        harness.BitkLM(model=small_model, tokenizer=tok, batch_size="auto")
    with pytest.raises(ValueError, match="either pretrained"):
        harness.BitkLM(tokenizer=tok)
    with pytest.raises(ValueError, match="needs the model's tokenizers.Tokenizer"):
        harness.BitkLM(model=small_model)


def test_generate_until_is_greedy_generation_cut_at_until(model, tok):
    lm = harness.BitkLM(model=model, tokenizer=tok)
    context = "def f(x):\n    return"
    free = generate(model, tok, tok.encode(context).ids, max_new_tokens=12, greedy=True, eos_token_ids=[0])
    assert len(free.ids) == 12 and free.text  # random weights: no EOS within 12 tokens
    stop = free.text[len(free.text) // 2 :][:2]  # a string the free generation contains
    cut, capped, plain = lm.generate_until(
        requests(
            (context, {"until": [stop], "max_gen_toks": 12}),
            (context, {"until": [], "max_gen_toks": 5}),
            (context, {"max_gen_toks": 12, "do_sample": False}),
        ),
        disable_tqdm=True,
    )
    assert cut == free.text[: free.text.index(stop)]
    five = generate(model, tok, tok.encode(context).ids, max_new_tokens=5, greedy=True, eos_token_ids=[0])
    assert capped == five.text and capped == tok.decode(free.ids[:5])
    assert plain == free.text


@pytest.mark.slow  # indexes lm-eval's own ~14,000 task files: 10 s and more
def test_task_names_are_checked_with_suggestions(task_dir):
    manager = harness.check_tasks(["sentiment_tiny", "arc_easy"], task_dir)
    assert {"sentiment_tiny", "copy_tiny", "rolling_tiny", "sst2"} <= set(manager.all_tasks)
    with pytest.raises(ValueError, match=r"unknown tasks: sentiment_tinyy \(did you mean sentiment_tiny.*arc_esy"):
        harness.check_tasks(["sentiment_tinyy", "arc_esy"], task_dir)
    with pytest.raises(ValueError, match="no such folder"):
        harness.check_tasks(["sst2"], task_dir / "missing")


def test_run_tasks_on_local_tasks(model, tok, task_dir, local_tasks_only):
    lm = harness.BitkLM(model=model, tokenizer=tok, batch_size=4)
    results = harness.run_tasks(
        lm, ["sentiment_tiny", "copy_tiny", "rolling_tiny"], include_path=task_dir, limit=4, bootstrap_iters=0
    )
    scores = harness.task_scores(results)
    assert 0 <= scores["tasks/sentiment_tiny/acc"] <= 1
    assert scores["tasks/copy_tiny/exact_match"] == 0  # random weights do not copy a word
    assert scores["tasks/rolling_tiny/byte_perplexity"] > 1
    assert not any("stderr" in k or "sample_len" in k for k in scores)
    record = harness.results_record(results, model="m")
    assert (
        record["model"] == "m" and record["results"]["sentiment_tiny"]["acc,none"] == scores["tasks/sentiment_tiny/acc"]
    )
    assert record["n-shot"]["sentiment_tiny"] == 0
