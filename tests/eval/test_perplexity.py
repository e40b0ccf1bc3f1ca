"""bitk.eval.evaluate: exact perplexity of models with known logits, the numerics switch, bad inputs."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bitk.data import pack_tokens
from bitk.eval import EvalResult, evaluate
from bitk.models.model import CausalLMOutput
from bitk.nn import BitLinear


class Uniform(nn.Module):
    """Logits all zero: every token has probability 1/vocab, so the perplexity is exactly vocab."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.vocab = vocab
        self.dummy = nn.Parameter(torch.zeros(()))
        self.seen: list[torch.Tensor | None] = []

    def forward(self, input_ids, position_ids=None):
        self.seen.append(None if position_ids is None else position_ids.clone())
        return CausalLMOutput(logits=torch.zeros(*input_ids.shape, self.vocab))


class Bigram(nn.Module):
    """Logits of each position = a fixed row of a table, picked by the current token."""

    def __init__(self, vocab: int, seed: int = 0) -> None:
        super().__init__()
        self.table = nn.Parameter(torch.randn(vocab, vocab, generator=torch.Generator().manual_seed(seed)) * 3)

    def forward(self, input_ids, position_ids=None):
        return CausalLMOutput(logits=self.table[input_ids])


def bigram_loss64(model: Bigram, ids: torch.Tensor, labels: torch.Tensor) -> tuple[float, int]:
    """float64 mean CE of the scored targets, one by one."""
    logp = torch.log_softmax(model.table.detach().double(), dim=-1)
    total, n = 0.0, 0
    for r in range(ids.shape[0]):
        for t in range(ids.shape[1] - 1):
            if labels[r, t + 1] != -100:
                total -= logp[ids[r, t], labels[r, t + 1]].item()
                n += 1
    return total / n, n


@pytest.mark.parametrize("vocab", [7, 4096, 49152])
def test_uniform_logits_give_perplexity_vocab(vocab):
    ids = torch.randint(0, vocab, (5, 16))
    result = evaluate(Uniform(vocab), ids, batch_size=2)
    assert isinstance(result, EvalResult)
    assert result.tokens == 5 * 15  # a row's first token is never scored
    # log_softmax of equal logits in float32: within a few ulps of log(vocab)
    assert result.loss == pytest.approx(math.log(vocab), rel=4 * torch.finfo(torch.float32).eps)
    assert result.perplexity == pytest.approx(vocab, rel=8 * math.log(vocab) * torch.finfo(torch.float32).eps)
    assert result.positions == 80
    assert result.seconds > 0 and result.tokens_per_s == pytest.approx(80 / result.seconds)


@pytest.mark.parametrize("batch_size", [1, 3, 8])
def test_known_logits_exact_loss(batch_size):
    vocab = 11
    model = Bigram(vocab)
    ids = torch.randint(0, vocab, (7, 9), generator=torch.Generator().manual_seed(1))
    labels = ids.clone()
    labels[2, 4:] = -100  # padding: not scored
    labels[6, 1] = -100
    expected, n = bigram_loss64(model, ids, labels)
    result = evaluate(model, ids, None, batch_size, labels=labels)
    assert result.tokens == n == 7 * 8 - 5 - 1
    # per-token CE in float32 summed in float64: relative error of a few float32 ulps
    assert result.loss == pytest.approx(expected, rel=8 * torch.finfo(torch.float32).eps)
    assert result.perplexity == pytest.approx(math.exp(expected), rel=1e-5)


def test_rows_and_position_ids_reach_the_model():
    model = Uniform(50)
    ids, pos = pack_tokens([[5, 6, 7], [8], [9, 10, 11, 12]], 4, eos_id=0, pad_id=1)
    evaluate(model, ids, pos, batch_size=2)
    assert torch.equal(torch.cat(model.seen), pos)
    assert [p.shape[0] for p in model.seen] == [2, 1]  # 3 rows in batches of 2
    model.seen.clear()
    evaluate(model, ids, None, batch_size=3)
    assert model.seen == [None]


def small_model_copy(small_model):
    model = type(small_model)(small_model.config)
    model.load_state_dict(small_model.state_dict())
    return model


def test_numerics_apply_during_evaluation_only(small_model):
    model = small_model_copy(small_model).train()
    layers = [m for m in model.modules() if isinstance(m, BitLinear)]
    assert layers
    seen = []
    layers[0].register_forward_hook(
        lambda m, i, o: seen.append((m.numerics, m.training, torch.is_inference_mode_enabled()))
    )
    ids = torch.randint(3, 4096, (2, 12))
    a = evaluate(model, ids, batch_size=2, numerics="i2s")
    assert seen == [("i2s", False, True)]
    assert all(m.numerics == "train" for m in layers) and model.training
    layers[1].numerics = "float"  # a mixed model gets its own modes back
    evaluate(model, ids, numerics="train")
    assert [m.numerics for m in layers[:2]] == ["train", "float"]
    # evaluate(i2s) is CE of the model's own i2s logits
    model.set_numerics("i2s").eval()
    with torch.no_grad():
        logits = model(ids).logits
    expected = F.cross_entropy(logits[:, :-1].reshape(-1, 4096).double(), ids[:, 1:].reshape(-1)).item()
    assert a.loss == pytest.approx(expected, rel=1e-6)


def test_packed_rows_score_like_separate_documents(small_model):
    """With position ids, a packed row equals its documents evaluated one by one (float numerics:
    no int8 rounding cliffs, so only float summation order differs)."""
    model = small_model_copy(small_model).set_numerics("float")
    g = torch.Generator().manual_seed(2)
    docs = [torch.randint(3, 4096, (n,), generator=g).tolist() for n in (5, 9, 3)]
    ids, pos = pack_tokens(docs, 21, eos_id=0)  # 1+5 + 1+9 + 1+3 + 1 = 21: exactly one row
    assert ids.shape == (1, 21)
    packed = evaluate(model, ids, pos)
    with torch.inference_mode():
        segments = [[0, *d] for d in docs] + [[0]]
        logits = torch.cat([model(torch.tensor([s])).logits[0] for s in segments])
    expected = F.cross_entropy(logits[:-1].double(), ids[0, 1:]).item()
    assert packed.tokens == 20
    assert packed.loss == pytest.approx(expected, rel=1e-5)
    unmasked = evaluate(model, ids, None)  # without position ids the documents see each other
    assert abs(unmasked.loss - expected) > 1e-4


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"input_ids": torch.zeros(2, 4, dtype=torch.int32)}, "int64 tensor"),
        ({"input_ids": torch.zeros(8, dtype=torch.int64)}, "int64 tensor"),
        ({"input_ids": torch.zeros(2, 1, dtype=torch.int64)}, "nothing to score"),
        ({"input_ids": torch.zeros(0, 4, dtype=torch.int64)}, "nothing to score"),
        ({"position_ids": torch.zeros(2, 3, dtype=torch.int64)}, r"position_ids \(2, 3\) must have the shape"),
        ({"labels": torch.zeros(1, 4, dtype=torch.int64)}, r"labels \(1, 4\) must have the shape"),
        ({"batch_size": 0}, "batch_size must be a positive integer"),
        ({"numerics": "int4"}, "unknown numerics 'int4'; choose one of train, i2s, tq, f16, float"),
        ({"labels": torch.full((2, 4), -100)}, "no target is scored"),
    ],
)
def test_bad_input(kwargs, message):
    args = {"input_ids": torch.zeros(2, 4, dtype=torch.int64), "position_ids": None, "batch_size": 1, "numerics": None}
    labels = kwargs.pop("labels", None)
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        evaluate(Uniform(5), **args, labels=labels)
