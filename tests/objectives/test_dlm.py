"""DLM masking and loss (Fast-dLLM v2, arXiv 2509.26328): what is masked, complementary masks, token shift."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bitk.objectives.dlm import dlm_eligible, dlm_loss, dlm_mask, init_mask_embedding
from bitk_objectives_testing import random_ids, tiny_model

MASK, PAD = 2, 1


def _padded_ids(seed=0):
    ids = random_ids(4, 24, seed=seed)
    ids[1, 18:] = PAD
    ids[3, 5:] = PAD
    return ids


def _masked(batch):
    return batch.labels != -100


def test_never_masks_first_last_or_padding():
    ids = _padded_ids()
    for seed in range(5):
        batch = dlm_mask(
            ids,
            mask_token_id=MASK,
            probability=0.95,
            complementary=False,
            pad_token_id=PAD,
            generator=torch.Generator().manual_seed(seed),
        )
        masked = _masked(batch)
        assert not masked[:, 0].any() and not masked[:, -1].any()
        assert not masked[ids == PAD].any()
        # everything not masked is the input as it was; masked tokens are the mask id, labels the originals
        assert torch.equal(batch.input_ids[~masked], ids[~masked])
        assert (batch.input_ids[masked] == MASK).all()
        assert torch.equal(batch.labels[masked], ids[masked])
        assert masked.any()


def test_complementary_masks_every_interior_token_exactly_once():
    ids = _padded_ids(1)
    batch = dlm_mask(
        ids, mask_token_id=MASK, probability=0.3, pad_token_id=PAD, generator=torch.Generator().manual_seed(3)
    )
    assert batch.input_ids.shape == (8, 24)
    masked = _masked(batch)
    count = masked[:4].int() + masked[4:].int()
    # interior non-pad positions, written out independently of the code under test
    interior = np.zeros((4, 24), dtype=np.int64)
    interior[:, 1:23] = 1
    interior[ids.numpy() == PAD] = 0
    assert np.array_equal(count.numpy(), interior)
    assert torch.equal(batch.labels[:4].clamp(min=0) + batch.labels[4:].clamp(min=0), ids * torch.from_numpy(interior))


def test_probability_zero_masks_nothing_and_keeps_one_copy():
    ids = _padded_ids()
    for complementary in (True, False):
        batch = dlm_mask(ids, mask_token_id=MASK, probability=0.0, complementary=complementary, pad_token_id=PAD)
        assert torch.equal(batch.input_ids, ids)
        assert (batch.labels == -100).all()


def test_document_starts_are_never_masked_in_packed_rows():
    ids = random_ids(2, 16, seed=4)
    pos = torch.tensor(
        [[0, 1, 2, 3, 0, 1, 2, 0, 1, 2, 3, 4, 5, 0, 1, 2], [2, 3, 4, 0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3, 4]]
    )
    batch = dlm_mask(
        ids, mask_token_id=MASK, probability=0.5, position_ids=pos, generator=torch.Generator().manual_seed(0)
    )
    masked = _masked(batch)
    count = masked[:2].int() + masked[2:].int()
    want = (pos != 0).int()
    want[:, 0] = want[:, -1] = 0
    assert torch.equal(count, want)
    assert torch.equal(batch.position_ids, torch.cat([pos, pos]))
    one_row = dlm_mask(ids, mask_token_id=MASK, probability=0.5, position_ids=pos[0])
    assert torch.equal(one_row.position_ids, pos[0])


def test_generator_makes_masks_reproducible_and_rate_is_p():
    ids = random_ids(8, 512, seed=5)
    a = dlm_mask(
        ids, mask_token_id=MASK, probability=0.15, complementary=False, generator=torch.Generator().manual_seed(7)
    )
    b = dlm_mask(
        ids, mask_token_id=MASK, probability=0.15, complementary=False, generator=torch.Generator().manual_seed(7)
    )
    assert torch.equal(a.input_ids, b.input_ids)
    rate = _masked(a).float().sum().item() / (8 * 510)
    assert abs(rate - 0.15) < 0.02  # 4080 Bernoulli draws: std 0.0056


def test_loss_is_token_shifted_ce_on_masked_positions():
    # label only at position 2 (token 1): scored by the logits at position 1, (0, ln 3): -ln(3/4)
    logits = torch.tensor([[[9.0, 0.0], [0.0, math.log(3.0)], [0.0, 9.0], [5.0, 0.0]]])
    labels = torch.tensor([[-100, -100, 1, -100]])
    assert dlm_loss(logits, labels).item() == pytest.approx(math.log(4.0 / 3.0), rel=1e-6)


def test_loss_trains_a_model_through_the_masked_batch():
    model = tiny_model(ternary=False)
    ids = random_ids(2, 16, seed=6)
    batch = dlm_mask(ids, mask_token_id=MASK, generator=torch.Generator().manual_seed(0))
    loss = dlm_loss(model(batch.input_ids, batch.position_ids).logits, batch.labels)
    loss.backward()
    assert math.isfinite(loss.item()) and loss.item() > 0
    assert model.model.embed_tokens.weight.grad[MASK].abs().sum() > 0  # the mask token is seen as input


def test_eligible_and_bad_arguments():
    ids = random_ids(1, 4)
    assert dlm_eligible(ids).tolist() == [[False, True, True, False]]
    with pytest.raises(ValueError, match="probability"):
        dlm_mask(ids, mask_token_id=MASK, probability=1.5)
    with pytest.raises(ValueError, match="pad token"):
        dlm_mask(ids, mask_token_id=PAD, pad_token_id=PAD)
    with pytest.raises(ValueError, match="position_ids"):
        dlm_mask(ids, mask_token_id=MASK, position_ids=torch.arange(5))
    with pytest.raises(ValueError, match="batch, length"):
        dlm_mask(ids[0], mask_token_id=MASK)


def test_init_mask_embedding_is_the_mean_of_the_other_rows():
    model = tiny_model(ternary=False)
    table = model.model.embed_tokens.weight.detach().numpy().astype(np.float64)
    want = np.delete(table, MASK, axis=0).mean(axis=0)
    init_mask_embedding(model, MASK)
    got = model.model.embed_tokens.weight[MASK].detach().numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert model.model.embed_tokens.weight.requires_grad
    np.testing.assert_array_equal(
        np.delete(model.model.embed_tokens.weight.detach().numpy(), MASK, axis=0),
        np.delete(table, MASK, axis=0).astype(np.float32),
    )
    with pytest.raises(ValueError, match="outside"):
        init_mask_embedding(model, 64)
