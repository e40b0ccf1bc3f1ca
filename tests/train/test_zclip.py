"""ZClip (docs/numerics.md "ZClip") against hand-computed norms, no host sync, exact state round trip."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from bitk.train.config import TrainingConfig
from bitk.train.zclip import ZClip, clip_gradients, make_zclip, total_grad_norm


def params_with_norm(norm: float) -> list[torch.nn.Parameter]:
    """Two parameters whose gradients together have the given L2 norm (3-4-5 split)."""
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(3, 1))
    a.grad = torch.tensor([0.6 * norm, 0.0])
    b.grad = torch.tensor([[0.0], [0.8 * norm], [0.0]])
    return [a, b]


def norm_of(params) -> float:
    return math.sqrt(sum(float(p.grad.double().pow(2).sum()) for p in params))


def test_hand_computed_sequence():
    zc = ZClip(alpha=0.9, z_thresh=2.0, warmup_steps=3)
    # warm-up: nothing clipped, statistics from the three norms
    for g in (1.0, 2.0, 3.0):
        ps = params_with_norm(g)
        out = zc(ps)
        assert out.dim() == 0 and out.item() == pytest.approx(g)
        assert norm_of(ps) == pytest.approx(g)
    mu, var = 2.0, 2.0 / 3.0  # population variance
    assert zc.mean.item() == pytest.approx(mu) and zc.var.item() == pytest.approx(var)
    # an ordinary norm: not clipped, statistics updated with it
    ps = params_with_norm(2.5)
    zc(ps)
    assert norm_of(ps) == pytest.approx(2.5)
    mu = 0.9 * mu + 0.1 * 2.5
    var = 0.9 * var + 0.1 * (2.5 - mu) ** 2
    assert zc.mean.item() == pytest.approx(mu, rel=1e-6) and zc.var.item() == pytest.approx(var, rel=1e-6)
    # a spike: clipped to mu + z_thr^2 * std / z, and the statistics see that value
    ps = params_with_norm(10.0)
    out = zc(ps)
    assert out.item() == pytest.approx(10.0)  # the pre-clip norm is returned
    std = math.sqrt(var)
    z = (10.0 - mu) / (std + 1e-6)
    assert z > 2.0
    target = mu + 4.0 * std / z
    assert norm_of(ps) == pytest.approx(target, rel=1e-5)
    mu2 = 0.9 * mu + 0.1 * target
    var2 = 0.9 * var + 0.1 * (target - mu2) ** 2
    assert zc.mean.item() == pytest.approx(mu2, rel=1e-6) and zc.var.item() == pytest.approx(var2, rel=1e-6)


def test_clip_factor_and_max_grad_norm():
    zc = ZClip(alpha=0.9, z_thresh=2.0, warmup_steps=3, clip_factor=0.5, max_grad_norm=2.5)
    # during the warm-up only max_grad_norm clips
    for g, after in ((1.0, 1.0), (2.0, 2.0), (3.0, 2.5)):
        ps = params_with_norm(g)
        zc(ps)
        assert norm_of(ps) == pytest.approx(after, rel=1e-6)
    assert zc.mean.item() == pytest.approx(2.0)  # the statistics saw the real norms
    mu, std = 2.0, math.sqrt(2 / 3)
    ps = params_with_norm(5.0)
    zc(ps)
    z = (5.0 - mu) / (std + 1e-6)
    threshold = (mu + 4.0 * std / z) * 0.5
    assert threshold < 2.5
    assert norm_of(ps) == pytest.approx(threshold, rel=1e-5)
    # a spike whose ZClip threshold is above max_grad_norm: the cap clips, the statistics see the threshold
    zc = ZClip(alpha=0.9, z_thresh=2.0, warmup_steps=3, max_grad_norm=2.1)
    for g in (1.0, 2.0, 3.0):
        zc(params_with_norm(g))
    ps = params_with_norm(5.0)
    zc(ps)
    threshold = mu + 4.0 * std / z
    assert threshold > 2.1
    assert norm_of(ps) == pytest.approx(2.1, rel=1e-6)
    assert zc.mean.item() == pytest.approx(0.9 * mu + 0.1 * threshold, rel=1e-6)


def test_non_finite_norm_keeps_the_statistics():
    zc = ZClip(warmup_steps=2)
    for g in (1.0, 2.0):
        zc(params_with_norm(g))
    mean, var = zc.mean.clone(), zc.var.clone()
    ps = params_with_norm(1.0)
    ps[0].grad[1] = float("nan")
    assert torch.isnan(zc(ps))
    assert torch.equal(zc.mean, mean) and torch.equal(zc.var, var)
    # and a NaN during the warm-up is left out of the statistics
    zc = ZClip(warmup_steps=3)
    for g in (1.0, float("inf"), 3.0):
        zc(params_with_norm(g))
    assert zc.mean.item() == pytest.approx(2.0) and zc.var.item() == pytest.approx(1.0)


def test_no_host_sync(monkeypatch):
    """The clipping path never reads a tensor on the host (item/tolist/bool/float/int all raise here)."""
    zc = ZClip(warmup_steps=3, max_grad_norm=5.0)
    cfg = TrainingConfig(clip="norm", max_grad_norm=1.0)
    norms = [1.0, 2.0, 1.5, 1.7, 40.0, 1.6]

    def forbidden(*args, **kwargs):
        raise AssertionError("host sync")

    with monkeypatch.context() as mp:
        for name in ("item", "tolist", "__bool__", "__float__", "__int__", "__index__", "cpu", "numpy"):
            mp.setattr(torch.Tensor, name, forbidden)
        outs = [zc(params_with_norm(g)) for g in norms]
        outs.append(clip_gradients(params_with_norm(3.0), cfg, None))
        cfg.clip = "none"
        outs.append(clip_gradients(params_with_norm(3.0), cfg, None))
    assert all(isinstance(o, torch.Tensor) and o.dim() == 0 for o in outs)
    assert [o.item() for o in outs] == pytest.approx(norms + [3.0, 3.0], rel=1e-6)


def run(zc, norms):
    results = []
    for g in norms:
        ps = params_with_norm(g)
        results.append((zc(ps).item(), norm_of(ps)))
    return results


@pytest.mark.parametrize("split", [2, 7])  # inside the warm-up, after it
def test_state_round_trip(split):
    norms = [1.0, 1.3, 0.9, 1.1, 1.2, 6.0, 1.0, 9.0, 1.05, 1.1]
    ref = ZClip(warmup_steps=4, max_grad_norm=8.0)
    expected = run(ref, norms)
    first = ZClip(warmup_steps=4, max_grad_norm=8.0)
    run(first, norms[:split])
    state = copy.deepcopy(first.state_dict())
    resumed = ZClip(warmup_steps=4, max_grad_norm=8.0)
    resumed.load_state_dict(state)
    assert run(resumed, norms[split:]) == expected[split:]  # bit for bit
    assert torch.equal(resumed.mean, ref.mean) and torch.equal(resumed.var, ref.var)


def test_state_into_another_warmup_length():
    norms = [1.0, 2.0, 3.0, 4.0]
    first = ZClip(warmup_steps=5)
    run(first, norms[:2])
    # a shorter warm-up in progress continues from the recorded norms
    shorter = ZClip(warmup_steps=3)
    shorter.load_state_dict(first.state_dict())
    run(shorter, norms[2:3])
    assert shorter.initialized and shorter.mean.item() == pytest.approx(2.0)
    # already enough recorded norms: the statistics come at once
    first_more = ZClip(warmup_steps=5)
    run(first_more, norms)
    done = ZClip(warmup_steps=2)
    done.load_state_dict(first_more.state_dict())
    assert done.initialized and done.mean.item() == pytest.approx(1.5)
    # finished statistics stay finished under a longer warm-up
    longer = ZClip(warmup_steps=10)
    longer.load_state_dict(shorter.state_dict())
    assert longer.initialized and torch.equal(longer.mean, shorter.mean)


def test_bad_arguments():
    for kwargs in ({"alpha": 1.0}, {"z_thresh": 0}, {"warmup_steps": 0}, {"clip_factor": -1}, {"max_grad_norm": 0}):
        with pytest.raises(ValueError):
            ZClip(**kwargs)


def test_clip_gradients_dispatch():
    cfg = TrainingConfig(
        clip="norm", max_grad_norm=1.0, zclip_alpha=0.97, zclip_z_thresh=2.5, zclip_warmup_steps=25, zclip_factor=1.0
    )
    ps = params_with_norm(4.0)
    assert clip_gradients(ps, cfg, None).item() == pytest.approx(4.0)
    assert norm_of(ps) == pytest.approx(1.0, rel=1e-6)
    ps = params_with_norm(0.5)
    clip_gradients(ps, cfg, None)
    assert norm_of(ps) == pytest.approx(0.5)  # never scaled up
    cfg.clip = "none"
    ps = params_with_norm(4.0)
    assert clip_gradients(iter(ps), cfg, None).item() == pytest.approx(4.0)
    assert norm_of(ps) == pytest.approx(4.0)
    cfg.clip = "zclip"
    with pytest.raises(ValueError, match="ZClip"):
        clip_gradients(ps, cfg, None)
    zc = make_zclip(cfg)
    assert (zc.alpha, zc.z_thresh, zc.warmup_steps, zc.max_grad_norm) == (0.97, 2.5, 25, None)
    assert make_zclip(TrainingConfig(zclip_max_grad_norm=3.0)).max_grad_norm == 3.0
    assert clip_gradients(ps, cfg, zc).item() == pytest.approx(4.0)
    assert zc.steps == 1
    cfg.clip = "value"
    with pytest.raises(ValueError, match="zclip, norm, none"):
        clip_gradients(ps, cfg, None)
    assert make_zclip(TrainingConfig(clip="norm")) is None


def test_total_grad_norm_skips_parameters_without_grad():
    ps = params_with_norm(2.0) + [torch.nn.Parameter(torch.ones(3))]
    assert total_grad_norm(ps).item() == pytest.approx(2.0)
    assert total_grad_norm([torch.nn.Parameter(torch.ones(3))]).item() == 0.0
