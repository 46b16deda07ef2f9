"""The GRPO objective against values worked out by hand."""

import math

import pytest
import torch

from aqa.train.grpo_loss import batch_normalize, gdpo_group_sum, grpo_loss, group_advantages, kl_k3


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


R3 = 1 / math.sqrt(3)  # a group of three with one value apart: sample std sqrt(1/3)


def test_gdpo_normalises_each_reward_in_its_group_then_the_weighted_sum_over_the_batch():
    """Two questions, three answers, rewards (accuracy, format) weighted (1, 0.5)."""
    acc = [[1.0, 0.0, 0.0], [1.0, 1.0, 1.0]]
    fmt = [[1.0, 1.0, 0.0], [1.0, 0.0, 1.0]]
    parts = torch.tensor([acc, fmt]).permute(1, 2, 0)  # (Q, G, K)
    summed = gdpo_group_sum(parts, torch.tensor([1.0, 0.5]))
    # accuracy, question 1: mean 1/3, std sqrt(1/3): 2/sqrt(3), -1/sqrt(3), -1/sqrt(3); question 2: all
    # equal, zeros. format, question 1: 1/sqrt(3), 1/sqrt(3), -2/sqrt(3); question 2: the same, reordered.
    want = [[2 * R3 + 0.5 * R3, -R3 + 0.5 * R3, -R3 - R3], [0.5 * R3, -R3, 0.5 * R3]]
    assert summed.tolist() == [pytest.approx(w) for w in want]
    # Over the batch: mean 0; squares 25/12, 1/12, 4/3, 1/12, 1/3, 1/12 sum to 4, sample std sqrt(4/5).
    a = batch_normalize(summed.reshape(-1), summed.reshape(-1))
    assert a.tolist() == pytest.approx([x / math.sqrt(0.8) for row in want for x in row])
    # GRPO sums first: question 1's totals 1.5, 0.5, 0 normalise otherwise.
    totals = (parts * torch.tensor([1.0, 0.5])).sum(-1)
    assert not torch.allclose(group_advantages(totals)[0], a[:3])
    assert batch_normalize(torch.ones(3), torch.ones(6)).tolist() == [0.0, 0.0, 0.0]  # no spread: zeros


@pytest.mark.parametrize("loss_type, want", [
    ("grpo", 0.0),  # answers' means 1 and -1, averaged
    ("dapo", -(3 - 1) / 4),  # 3 tokens of +1, 1 of -1, over the 4 tokens
    ("dr_grpo", -(3 - 1) / (2 * 4)),  # over 2 answers x 4 tokens allowed
])
def test_loss_types_by_hand(loss_type, want):
    """Ratio 1 and no KL: each token's term is its answer's advantage."""
    logp = torch.zeros(2, 3)
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    loss, _ = grpo_loss(logp, logp, logp, mask, torch.tensor([1.0, -1.0]), loss_type=loss_type, tokens=4, max_len=4)
    assert loss.item() == pytest.approx(want)


def test_loss_types_agree_on_one_token_answers():
    logp = torch.log(torch.tensor([[0.3], [0.6], [0.1]]))
    old, adv = logp - 0.1, torch.tensor([1.0, -0.5, 0.2])
    got = [grpo_loss(logp, old, logp, torch.ones(3, 1), adv, loss_type=t, tokens=3, max_len=1)[0].item()
           for t in ("grpo", "dapo", "dr_grpo")]
    assert got == pytest.approx([got[0]] * 3)
    with pytest.raises(ValueError, match="loss_type"):
        grpo_loss(logp, old, logp, torch.ones(3, 1), adv, loss_type="bnpo")
