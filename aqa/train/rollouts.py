"""GRPO rollouts: G answers to each question of a micro-batch, sampled from the policy as it
stands (pi_old), with their rewards, advantages and reference log-probs.

Two ways to sample, one result type (`Rollouts`):
- `rollout_choice`: the answers are option letters drawn from the policy's distribution over
  the letters at the answer position (renormalised over the options, at the temperature). One
  forward pass per question serves all G samples; exact for one-token answers, which is what
  SFT teaches.
- `rollout_generate`: G completions sampled with the backend's `generate_ids`, decoded as
  `aqa eval` decodes them; on a thinking checkpoint (or after SFT with `target=reasoning`) each
  is a reasoning, then the answer, which the rewards read only after the think block.
Either way the rewards come from `aqa.train.rewards`, read by the evaluation's answer parser.
On a thinking checkpoint the letters of `choice` rollouts are sampled at the answer position
after an empty think block (`Backend.answer_batch`), where `aqa eval` scores them.
`reference()` gives the context in which the module computes the reference policy.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from aqa.prompts import LETTERS
from aqa.train.grpo_loss import gdpo_group_sum, group_advantages
from aqa.train.rewards import RewardSpec


@dataclass
class Rollouts:
    """One micro-batch's rollouts: Q questions, G answers each, N = Q * G answers grouped by
    question, answers of up to L tokens (L = 1 for `choice`)."""

    kind: str  # "choice" or "generate"
    batch: dict  # choice: the Q prompts; generate: the N prompt + completion rows, with labels
    n_options: list[int]  # (Q,) options of each question
    samples: torch.Tensor | None  # choice: (Q, G) option indices sampled; generate: None
    completions: list[str]  # (N,) the answers as text
    rewards: torch.Tensor  # (Q, G) total reward (the weighted sum)
    reward_parts: dict[str, list[float]]  # each named reward's (N,) values
    lengths: list[int]  # (N,) answer tokens (1 for choice)
    # share of the Q questions the policy's top option gets right (None: a policy that reasons)
    greedy_accuracy: float | None
    # (N,); with advantage=gdpo the weighted sum of the in-group normalised rewards until the
    # recipe normalises it over the step (`normalize_over_step`)
    advantages: torch.Tensor
    ref_logp: torch.Tensor  # (N, L) log-probs under the reference (the SFT model)
    old_logp: torch.Tensor | None = None  # (N, L) under pi_old, set on the first pass


def choice_logprobs(module, batch, n: list[int], samples: torch.Tensor, temperature: float):
    """(Q*G, 1) log-probs of the sampled letters under the option distribution at
    `temperature`, and its (Q,) entropy."""
    logits = module(batch, "option_logits", n_options=n) / temperature  # (Q, n_max)
    logp_all = torch.log_softmax(logits, -1)
    logp = logp_all.gather(1, samples.to(logits.device))  # (Q, G)
    p = logp_all.exp()
    entropy = -(torch.where(p > 0, p * logp_all, torch.zeros_like(p))).sum(-1)
    return logp.reshape(-1, 1), entropy


def policy_logprobs(module, r: Rollouts, temperature: float):
    """Log-probs (N, L) of the rollouts' answers under the module's current weights at the
    sampling temperature (as TRL computes them: the logits divided by it), which tokens count
    (N, L), and the mean entropy of each answer's distribution."""
    if r.kind == "choice":
        logp, ent = choice_logprobs(module, r.batch, r.n_options, r.samples, temperature)
        return logp, torch.ones_like(logp), ent
    logp, mask, ent = module(r.batch, "target_logprobs_entropy", temperature=temperature)
    return logp, mask, (ent * mask).sum(1) / mask.sum(1).clamp_min(1)


def reward_spec(rewards: RewardSpec | list[str]) -> RewardSpec:
    return rewards if isinstance(rewards, RewardSpec) else RewardSpec(list(rewards))


def _finish(kind, module, backend, reference, batch, n, samples, completions, lengths, items, group_size,
            spec: RewardSpec, greedy, temperature, think=None) -> Rollouts:
    """Rewards, advantages and the reference log-probs of sampled answers."""
    G, Q = group_size, len(items)
    shown = [[it.record.choices[o] for o in it.order] for it in items]
    total, parts = spec.score(completions, [it.answer for it in items for _ in range(G)],
                              [opts for opts in shown for _ in range(G)], lengths, think=think)
    rewards = torch.tensor(total).reshape(Q, G)
    if spec.advantage == "gdpo":
        kinds = torch.tensor([parts[name] for name in spec.names]).T.reshape(Q, G, -1)  # (Q, G, K)
        advantages = gdpo_group_sum(kinds, torch.tensor(spec.weight_list()))
    else:
        advantages = group_advantages(rewards)
    r = Rollouts(kind=kind, batch=batch, n_options=n, samples=samples, completions=completions, rewards=rewards,
                 reward_parts=parts, lengths=list(lengths), greedy_accuracy=greedy,
                 advantages=advantages.reshape(-1).to(backend.device), ref_logp=None)
    with torch.no_grad(), reference():
        r.ref_logp = policy_logprobs(module, r, temperature)[0]
    return r


def rollout_choice(module, backend, reference, items, *, group_size: int, temperature: float,
                   rewards: RewardSpec | list[str], seed: int, batch: dict | None = None) -> Rollouts:
    """G option letters per question from one forward pass (`batch`: the items' prompts to the
    answer position, `Backend.answer_batch`, collated already)."""
    batch = backend.answer_batch([it.example for it in items]) if batch is None else batch
    n = [len(it.order) for it in items]
    with torch.no_grad():
        logits = module(batch, "option_logits", n_options=n)  # (Q, n_max)
    probs = torch.softmax(logits / temperature, -1).cpu()
    samples = torch.multinomial(probs, group_size, replacement=True,
                                generator=torch.Generator().manual_seed(seed))  # (Q, G)
    answers = torch.tensor([it.answer for it in items])
    greedy = (logits.argmax(-1).cpu() == answers).float().mean().item()
    completions = [LETTERS[int(s)] for s in samples.reshape(-1)]
    return _finish("choice", module, backend, reference, batch, n, samples, completions, [1] * len(completions), items,
                   group_size, reward_spec(rewards), greedy, temperature)


def rollout_generate(module, backend, reference, items, *, group_size: int, temperature: float,
                     rewards: RewardSpec | list[str], seed: int, max_new_tokens: int,
                     batch: dict | None = None) -> Rollouts:
    """G sampled completions per question; the policy then scores them as targets (`batch`:
    the items' prompts, collated already)."""
    from aqa.models.base import Example

    torch.manual_seed(seed)  # generate() samples from the global RNG
    prompts = backend.collate([it.example for it in items]) if batch is None else batch
    n = [len(it.order) for it in items]
    greedy = None
    with torch.no_grad():
        # A policy that reasons answers after its reasoning: the letter at the direct answer
        # position (after an empty think block) is not its answer, so it gets no greedy accuracy.
        if not backend.thinks:
            greedy_pick = module(prompts, "option_logits", n_options=n).argmax(-1).cpu()
            greedy = sum(int(g) == it.answer for g, it in zip(greedy_pick, items)) / len(items)
        seqs = backend.generate_ids(prompts, max_new_tokens=max_new_tokens, do_sample=True,
                                    temperature=temperature, num_return_sequences=group_size)
    completions = backend.decode(seqs)
    # An empty completion (max_new_tokens 0) still needs one token to score.
    batch = backend.collate([Example(it.example.audio, it.example.text, target_ids=seqs[q * group_size + g]
                                     or backend.end_ids)
                             for q, it in enumerate(items) for g in range(group_size)], with_target=True)
    return _finish("generate", module, backend, reference, batch, n, None, completions, [len(q) for q in seqs], items,
                   group_size, reward_spec(rewards), greedy, temperature, think=backend.think_format)


def normalize_over_step(rolls: list[Rollouts], gather) -> None:
    """GDPO's last step: every rollout's advantages (the weighted sums of its in-group
    normalised rewards) normalised over the whole optimizer step, `gather` collecting the
    values of every process (accelerate's `gather`)."""
    from aqa.train.grpo_loss import batch_normalize

    everything = gather(torch.cat([r.advantages for r in rolls]))
    for r in rolls:
        r.advantages = batch_normalize(r.advantages, everything)
