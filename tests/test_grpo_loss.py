"""The GRPO objective against values worked out by hand."""

import math

import pytest
import torch

from aqa.train.grpo_loss import grpo_loss, group_advantages, kl_k3


def test_advantages_normalise_within_each_group():
    r = torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 1.0]])
    a = group_advantages(r)
    # group 1: mean 0.5, sample std sqrt(1/3) -> +-0.5*sqrt(3)
    assert a[0].tolist() == pytest.approx([0.5 * math.sqrt(3), -0.5 * math.sqrt(3)] * 1 + [-0.5 * math.sqrt(3), 0.5 * math.sqrt(3)])
    # all equal: zero advantage, never NaN
    assert a[1].tolist() == [0.0, 0.0, 0.0, 0.0]
    # mean 0.25, sample std 0.5 -> (0-0.25)/0.5 = -0.5, (1-0.25)/0.5 = 1.5
    assert a[2].tolist() == pytest.approx([-0.5, -0.5, -0.5, 1.5])
    assert not torch.isnan(group_advantages(torch.zeros(2, 6))).any()


def test_kl_k3_by_hand():
    logp, ref = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    # d = ln(0.25/0.5) = -ln 2: e^d - d - 1 = 0.5 + ln 2 - 1
    assert kl_k3(logp, ref).item() == pytest.approx(0.5 + math.log(2) - 1)
    assert kl_k3(ref, ref).item() == 0.0


def test_loss_by_hand():
    eps, beta = 0.2, 0.1
    ln = math.log
    # Answer 1: two tokens, A=+1. Token ratios 1.5 (clipped from above to 1.2) and 0.5 (kept:
    # min(0.5, 0.8) = 0.5). Answer 2: one token, A=-1, ratio 0.5: min(-0.5, -0.8) = -0.8
    # (clipped from below). Answer 3: one token, A=-1, ratio 1.5: min(-1.5, -1.2) = -1.5.
    old = torch.tensor([[ln(0.2), ln(0.4)], [ln(0.4), 0.0], [ln(0.2), 0.0]])
    new = torch.tensor([[ln(0.3), ln(0.2)], [ln(0.2), 0.0], [ln(0.3), 0.0]])
    ref = new.clone()
    ref[0, 0] = ln(0.15)  # KL only on one token: d = ln(0.5): 0.5 + ln 2 - 1
    mask = torch.tensor([[1, 1], [1, 0], [1, 0]])
    adv = torch.tensor([1.0, -1.0, -1.0])
    loss, stats = grpo_loss(new, old, ref, mask, adv, eps=eps, beta=beta)
    kl = 0.5 + ln(2) - 1
    a1 = ((1.2 - beta * kl) + 0.5) / 2  # averaged over its own 2 tokens
    a2 = -0.8
    a3 = -1.5
    assert loss.item() == pytest.approx(-(a1 + a2 + a3) / 3, abs=1e-6)
    assert stats["kl"] == pytest.approx(kl / 4, abs=1e-6)
    # Clipped: answer 1 token 1 (from above) and answer 2 (from below): 2 of 4 tokens.
    assert stats["clip_fraction"] == pytest.approx(0.5)


def test_zero_variance_group_only_feels_the_kl():
    logp = torch.tensor([[-1.0], [-2.0]], requires_grad=True)
    ref = torch.tensor([[-1.0], [-2.0]])
    loss, _ = grpo_loss(logp, logp.detach(), ref, torch.ones(2, 1), group_advantages(torch.ones(1, 2))[0])
    loss.backward()
    assert loss.item() == 0.0 and torch.all(logp.grad == 0)


def test_gradient_pushes_towards_good_answers():
    logp = torch.tensor([[-1.0], [-1.0]], requires_grad=True)
    loss, _ = grpo_loss(logp, logp.detach(), logp.detach(), torch.ones(2, 1), torch.tensor([1.0, -1.0]))
    loss.backward()
    assert logp.grad[0, 0] < 0 < logp.grad[1, 0]  # descending raises the good answer's log-prob
