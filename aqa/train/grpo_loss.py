"""The GRPO objective of the reference report (section 2.4, after DeepSeekMath), as pure
tensor functions so that it can be checked against values worked out by hand.

For a question q with G sampled answers o_1..o_G and rewards r_1..r_G:

    A_i      = (r_i - mean(r)) / std(r)            (0 for every answer when std(r) = 0)
    ratio    = pi_theta(o_i,t | q, o_i,<t) / pi_old(o_i,t | q, o_i,<t)
    term_i,t = min(ratio * A_i, clip(ratio, 1 - eps, 1 + eps) * A_i) - beta * KL_t
    J        = mean_i ( 1/|o_i| sum_t term_i,t ),       loss = -J

std is the sample standard deviation (n - 1 in the denominator), as TRL computes it.
KL estimator: k3 of Schulman, "Approximating KL divergence" (2020), as DeepSeekMath uses it:
KL_t = exp(ref_t - logp_t) - (ref_t - logp_t) - 1, unbiased and never negative.
"""

from __future__ import annotations

import torch


def group_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """(Q, G) rewards -> (Q, G) advantages; a group whose rewards are all equal gets zeros."""
    mean = rewards.mean(dim=1, keepdim=True)
    std = rewards.std(dim=1, keepdim=True, unbiased=True) if rewards.size(1) > 1 else torch.zeros_like(mean)
    safe = torch.where(std > 0, std, torch.ones_like(std))
    return torch.where(std > 0, (rewards - mean) / safe, torch.zeros_like(rewards))


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimate of KL(pi_theta || pi_ref) from the sampled tokens' log-probs."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1


def grpo_loss(logp: torch.Tensor, old_logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor,
              advantages: torch.Tensor, eps: float = 0.2, beta: float = 0.1) -> tuple[torch.Tensor, dict]:
    """Loss (to minimise) over N = Q*G answers of up to L tokens.

    logp, old_logp, ref_logp, mask: (N, L) token log-probs under the policy, the sampling
    policy and the reference, and which tokens exist; advantages: (N,).
    Returns the loss and detached statistics (KL, share of clipped tokens)."""
    mask = mask.to(logp.dtype)
    ratio = torch.exp(logp - old_logp)
    a = advantages[:, None]
    unclipped = ratio * a
    clipped = torch.clamp(ratio, 1 - eps, 1 + eps) * a
    surrogate = torch.minimum(unclipped, clipped)
    kl = kl_k3(logp, ref_logp)
    per_token = surrogate - beta * kl
    lengths = mask.sum(1).clamp_min(1)
    per_answer = (per_token * mask).sum(1) / lengths  # each answer averaged over its own length
    loss = -per_answer.mean()
    with torch.no_grad():
        n_tok = mask.sum().clamp_min(1)
        stats = {"kl": float((kl * mask).sum() / n_tok),
                 "clip_fraction": float(((clipped < unclipped).to(mask.dtype) * mask).sum() / n_tok)}
    return loss, stats
