"""build_optimizer: parameter groups (decay / no decay / Muon), learning, exact state round trip."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from bitk.models import CausalLM, preset
from bitk.nn import BitLinear
from bitk.nn.lrc import BitLinearLRC
from bitk.train.config import TrainingConfig
from bitk.train.optim import MuonAdamW, build_optimizer, param_groups, sync_hyperparameters

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def cfg(**changes):
    base = {"optimizer": "adamw", "lr": 3e-3, "weight_decay": 0.1, "betas": (0.9, 0.95), "eps": 1e-8, "muon_lr": 0.02}
    base.update(changes)
    return TrainingConfig(**base)


def micro_model(seed=0, **changes):
    torch.manual_seed(seed)
    fields = {
        "vocab_size": 128,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
    }
    fields.update(changes)
    return CausalLM(preset("tiny", **fields))


def names_by_group(model, opt):
    name_of = {id(p): n for n, p in model.named_parameters()}
    return {g["group"]: sorted(name_of[id(p)] for p in g["params"]) for g in opt.param_groups}


def is_projection(name):
    return any(f".{p}.weight" in name for p in PROJECTIONS)


def test_adamw_groups():
    model = micro_model(tie_word_embeddings=False, attention_bias=True)
    opt = build_optimizer(model, cfg())
    assert isinstance(opt, torch.optim.AdamW)
    groups = names_by_group(model, opt)
    assert set(groups) == {"decay", "no_decay"}
    assert groups["decay"] == sorted(n for n, _ in model.named_parameters() if is_projection(n))
    no_decay = groups["no_decay"]
    assert "model.embed_tokens.weight" in no_decay and "lm_head.weight" in no_decay
    assert any(n.endswith("q_proj.bias") for n in no_decay) and any("norm" in n for n in no_decay)
    assert len(groups["decay"]) + len(no_decay) == len(list(model.parameters()))
    wd = {g["group"]: g["weight_decay"] for g in opt.param_groups}
    assert wd == {"decay": 0.1, "no_decay": 0.0}
    for g in opt.param_groups:
        assert g["initial_lr"] == g["lr"] == 3e-3 and g["betas"] == (0.9, 0.95) and g["eps"] == 1e-8
        assert g["foreach"] and not g["fused"]  # CPU: foreach (fused is chosen on CUDA)


def test_muon_groups():
    model = micro_model()  # tied embeddings: the head is the embedding
    opt = build_optimizer(model, cfg(optimizer="muon"))
    assert isinstance(opt, MuonAdamW) and isinstance(opt, torch.optim.Optimizer)
    groups = names_by_group(model, opt)
    assert set(groups) == {"muon", "no_decay"}  # every matrix but the embedding is a projection
    assert groups["muon"] == sorted(n for n, _ in model.named_parameters() if is_projection(n))
    assert len(groups["muon"]) == 7 * 2
    assert "model.embed_tokens.weight" in groups["no_decay"]
    lrs = {g["group"]: (g["lr"], g["initial_lr"]) for g in opt.param_groups}
    assert lrs == {"muon": (0.02, 0.02), "no_decay": (3e-3, 3e-3)}
    assert opt.param_groups[0]["weight_decay"] == 0.1


def test_lrc_factors_train_with_adamw_and_frozen_weights_are_left_out():
    model = micro_model(tie_word_embeddings=False)
    attn = model.model.layers[0].self_attn
    assert isinstance(attn.q_proj, BitLinear)
    attn.q_proj = BitLinearLRC.from_bitlinear(attn.q_proj, rank=4, init="random")  # weight frozen
    groups = {k: [n for n, _ in v] for k, v in param_groups(model, muon=True).items()}
    assert sorted(groups["decay"]) == ["model.layers.0.self_attn.q_proj.lrc_u", "model.layers.0.self_attn.q_proj.lrc_v"]
    assert "model.layers.0.self_attn.q_proj.weight" not in [n for names in groups.values() for n in names]
    assert "lm_head.weight" in groups["no_decay"] and len(groups["muon"]) == 13
    opt = build_optimizer(model, cfg(optimizer="muon"))
    assert [g["group"] for g in opt.param_groups] == ["muon", "decay", "no_decay"]


def batch(seed=1, n=4, length=24):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 128, (n, length), generator=g)


def train(model, opt, steps, data):
    losses = []
    for _ in range(steps):
        logits = model(data).logits
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), data[:, 1:].reshape(-1))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("kind", ["adamw", "muon"])
def test_a_few_steps_reduce_the_loss(kind):
    model = micro_model()
    losses = train(model, build_optimizer(model, cfg(optimizer=kind)), 8, batch())
    assert losses[-1] < losses[0] - 0.3, losses  # about 0.55 in 8 steps from ln(128) = 4.85


@pytest.mark.parametrize("kind", ["adamw", "muon"])
def test_state_dict_round_trip_gives_identical_steps(kind):
    data = batch()
    model = micro_model()
    opt = build_optimizer(model, cfg(optimizer=kind))
    train(model, opt, 3, data)
    saved_model = copy.deepcopy(model.state_dict())
    saved_opt = copy.deepcopy(opt.state_dict())
    expected = train(model, opt, 3, data)

    resumed = micro_model(seed=123)  # other weights, overwritten by the checkpoint
    resumed.load_state_dict(saved_model)
    opt2 = build_optimizer(resumed, cfg(optimizer=kind))
    opt2.load_state_dict(saved_opt)
    assert train(resumed, opt2, 3, data) == expected
    for (n, a), b in zip(model.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), n
    if kind == "muon":  # the inner optimizers still see the loaded groups and state
        assert opt2._muon.param_groups[0] is opt2.param_groups[0] and opt2._adamw.state is opt2.state
        assert all("momentum_buffer" in opt2.state[p] for p in opt2.param_groups[0]["params"])


def test_group_lr_reaches_the_inner_optimizers():
    model = micro_model()
    opt = build_optimizer(model, cfg(optimizer="muon"))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for g in opt.param_groups:
        g["lr"] = 0.0
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    opt.step()
    # lr 0: no update at all (also no decoupled weight decay, which is scaled by lr)
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())


def test_bad_optimizer():
    with pytest.raises(ValueError, match="adamw, muon"):
        build_optimizer(micro_model(), cfg(optimizer="sgd"))
    frozen = micro_model().requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable"):
        build_optimizer(frozen, cfg())


def test_cpu_muon_orthogonalises_in_float32():
    """On CPU the Newton-Schulz iteration runs in float32 (bf16 matmuls are slow there): torch's update up to bf16."""
    import torch.optim._muon as torch_muon

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, 64, bias=False))
    reference = copy.deepcopy(model)
    grad = torch.randn(64, 32)
    model[0].weight.grad, reference[0].weight.grad = grad.clone(), grad.clone()
    opt = build_optimizer(model, cfg(optimizer="muon", weight_decay=0.0))
    assert isinstance(opt, MuonAdamW)
    stock = torch.optim.Muon(reference.parameters(), lr=0.02, weight_decay=0.0)
    before = model[0].weight.detach().clone()
    original = torch_muon._zeropower_via_newtonschulz
    opt.step()
    stock.step()
    assert torch_muon._zeropower_via_newtonschulz is original  # swapped for the step only
    ours, theirs = model[0].weight - before, reference[0].weight - before
    relative = ((ours - theirs).norm() / theirs.norm()).item()
    assert 0 < relative < 0.05  # the same iteration, without bf16 rounding


@pytest.mark.parametrize("kind", ["adamw", "muon"])
def test_sync_hyperparameters_after_loading(kind):
    model = micro_model()
    old = build_optimizer(model, cfg(optimizer=kind))
    train(model, old, 1, batch())
    saved = copy.deepcopy(old.state_dict())
    # the same config: nothing changes
    same = build_optimizer(model, cfg(optimizer=kind))
    same.load_state_dict(saved)
    sync_hyperparameters(same, cfg(optimizer=kind))
    assert same.state_dict()["param_groups"] == saved["param_groups"]
    # a new lr / weight decay / betas on resume: the loaded groups take them
    new_cfg = cfg(optimizer=kind, lr=1e-4, muon_lr=0.01, weight_decay=0.0, betas=(0.8, 0.9))
    new = build_optimizer(model, new_cfg)
    new.load_state_dict(saved)
    assert {g["initial_lr"] for g in new.param_groups} != {1e-4, 0.01}
    sync_hyperparameters(new, new_cfg)
    for g in new.param_groups:
        assert g["initial_lr"] == (0.01 if g["group"] == "muon" else 1e-4) and g["weight_decay"] == 0.0
        if g["group"] != "muon":
            assert g["betas"] == (0.8, 0.9)
