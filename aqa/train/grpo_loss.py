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

Several rewards r^1..r^K with weights w_k become one advantage in one of two ways:
- `grpo` (the report's, TRL's `multi_objective_aggregation="sum_then_normalize"`): r = sum_k
  w_k r^k, then A as above;
- `gdpo` (GDPO, arXiv 2601.05242; TRL's "normalize_then_sum", ms-swift's `--scale_rewards
  gdpo`): each r^k normalised within its group as above, the weighted sum taken, then that sum
  normalised over the whole batch (every question of the optimizer step, on every process), so
  that a reward of large spread cannot drown the others. TRL adds 1e-4 to each std; here a
  spread of zero gives zeros instead, as for `grpo`.

The loss over a batch's token terms (`loss_type`, TRL's names):
- `grpo` (the report's): each answer averaged over its own length, then the mean over answers;
- `dapo` (DAPO): the sum over every token of the step, divided by the step's token count, so
  a long answer weighs by its length;
- `dr_grpo` (Dr. GRPO): the sum over tokens divided by answers x the longest allowed length, a
  constant, so no length is favoured.
For one-token answers (`choice` rollouts) the three are equal.
"""

from __future__ import annotations

import torch


def group_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """(Q, G) rewards -> (Q, G) advantages; a group whose rewards are all equal gets zeros."""
    mean = rewards.mean(dim=1, keepdim=True)
    std = rewards.std(dim=1, keepdim=True, unbiased=True) if rewards.size(1) > 1 else torch.zeros_like(mean)
    safe = torch.where(std > 0, std, torch.ones_like(std))
    return torch.where(std > 0, (rewards - mean) / safe, torch.zeros_like(rewards))


def gdpo_group_sum(parts: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """(Q, G, K) rewards of K kinds -> (Q, G): each kind normalised within its group (as
    `group_advantages`), then weighted by `weights` (K,) and summed. Normalise the result over
    the batch with `batch_normalize` to get GDPO's advantages."""
    per_kind = torch.stack([group_advantages(parts[..., k]) for k in range(parts.shape[-1])], -1)
    return (per_kind * weights.to(per_kind)).sum(-1)


def batch_normalize(values: torch.Tensor, everything: torch.Tensor) -> torch.Tensor:
    """`values` less the mean of `everything` (the batch they belong to, gathered from every
    process), over its sample standard deviation; zeros when that spread is zero."""
    std = everything.std(unbiased=True) if everything.numel() > 1 else everything.new_zeros(())
    if std <= 0:
        return torch.zeros_like(values)
    return (values - everything.mean()) / std


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimate of KL(pi_theta || pi_ref) from the sampled tokens' log-probs."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1


LOSS_TYPES = ("grpo", "dapo", "dr_grpo")


def grpo_loss(logp: torch.Tensor, old_logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor,
              advantages: torch.Tensor, eps: float = 0.2, beta: float = 0.1, loss_type: str = "grpo",
              tokens: float | None = None, max_len: int | None = None) -> tuple[torch.Tensor, dict]:
    """Loss (to minimise) over N = Q*G answers of up to L tokens.

    logp, old_logp, ref_logp, mask: (N, L) token log-probs under the policy, the sampling
    policy and the reference, and which tokens exist; advantages: (N,). `loss_type` `dapo`
    divides the token sum by `tokens` (the step's token count over its micro-batches and
    processes, divided by their number: the micro-batch losses are then averaged as
    accumulation and data parallelism average them, which gives the step's sum over its
    tokens); `dr_grpo` by N x `max_len` (the longest answer allowed).
    Returns the loss and detached statistics (KL, share of clipped tokens)."""
    mask = mask.to(logp.dtype)
    ratio = torch.exp(logp - old_logp)
    a = advantages[:, None]
    unclipped = ratio * a
    clipped = torch.clamp(ratio, 1 - eps, 1 + eps) * a
    surrogate = torch.minimum(unclipped, clipped)
    kl = kl_k3(logp, ref_logp)
    per_token = surrogate - beta * kl
    if loss_type == "grpo":
        per_answer = (per_token * mask).sum(1) / mask.sum(1).clamp_min(1)  # each answer over its own length
        loss = -per_answer.mean()
    elif loss_type == "dapo":
        loss = -(per_token * mask).sum() / max(float(tokens or mask.sum()), 1.0)
    elif loss_type == "dr_grpo":
        loss = -(per_token * mask).sum() / (mask.shape[0] * (max_len or mask.shape[1]))
    else:
        raise ValueError(f"loss_type must be one of {', '.join(LOSS_TYPES)}, got {loss_type!r}")
    with torch.no_grad():
        n_tok = mask.sum().clamp_min(1)
        stats = {"kl": float((kl * mask).sum() / n_tok),
                 "clip_fraction": float(((clipped < unclipped).to(mask.dtype) * mask).sum() / n_tok)}
    return loss, stats
