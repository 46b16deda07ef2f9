"""GRPO reward functions: pure functions in TRL's style (completions and solutions in, one
float per completion out), so that each can be tested from a table and a new one added by
name (`rewards=[accuracy,format]` in the GRPO config, weighted by `reward_weights`; how they
become one advantage: aqa.train.grpo_loss).

Completions are answer texts exactly as `aqa eval` reads them: the backend's `decode` of the
generated ids for `generate` rollouts, the sampled option's letter for `choice` rollouts. Each
is read by `aqa.prompts.parse_answer`, the parser of `aqa eval --mode generate`, so a reward
can never read an answer differently from the evaluation. A reasoning completion (`think`: the
family's think block, for `generate` rollouts) is read as the evaluation reads it: the answer
only after the closing delimiter (`aqa.prompts.final_answer`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from aqa.prompts import ThinkFormat, final_answer, well_formed


def accuracy_reward(completions: Sequence[str], solutions: Sequence[int], choices: Sequence[Sequence[str]],
                    think: ThinkFormat | None = None, **_) -> list[float]:
    """1.0 where the completion's answer names the right option (index `solutions[i]` of the
    options `choices[i]` as shown), else 0.0: the reference report's reward. The answer is what
    follows the think block when there is one; a letter inside the reasoning never counts."""
    return [float(final_answer(c, opts, think) == s) for c, s, opts in zip(completions, solutions, choices)]


def format_reward(completions: Sequence[str], choices: Sequence[Sequence[str]], think: ThinkFormat | None = None,
                  **_) -> list[float]:
    """A thinking completion (one holding a think delimiter, or after a prompt that opened the
    block): 1.0 for exactly one think block, opened and closed, then an answer that names exactly
    one option. Any other completion: 1.0 where it names exactly one of the options, right or
    wrong (`aqa.prompts.well_formed`)."""
    return [float(well_formed(c, opts, think)) for c, opts in zip(completions, choices)]


def overlong_reward(completions: Sequence[str], lengths: Sequence[int], max_new_tokens: int,
                    overlong_buffer: float = 0.2, **_) -> list[float]:
    """DAPO's soft overlong punishment (arXiv 2503.14476, eq. 13) of a completion of `lengths`
    tokens, with L_max = `max_new_tokens` and L_cache = `overlong_buffer` x L_max (DAPO: 4,096 of
    20,480, 0.2): 0 up to L_max - L_cache, then falling linearly to -1 at L_max, -1 beyond."""
    cache = overlong_buffer * max_new_tokens
    start = max_new_tokens - cache
    return [0.0 if n <= start else -1.0 if n > max_new_tokens or cache <= 0 else (start - n) / cache
            for n in lengths]


#: Reward functions by the name the GRPO config uses.
REWARDS: dict[str, Callable[..., list[float]]] = {"accuracy": accuracy_reward, "format": format_reward,
                                                 "overlong": overlong_reward}


def score_completions(names: Sequence[str], completions: Sequence[str], solutions: Sequence[int],
                      choices: Sequence[Sequence[str]], *, weights: Sequence[float] | None = None,
                      **context) -> tuple[list[float], dict[str, list[float]]]:
    """The total reward of each completion (the named rewards times their `weights`, 1 each
    when None, summed) and each reward's own values. `context`: what some rewards also read
    (`lengths` in tokens, `max_new_tokens`, `overlong_buffer`, `think`)."""
    per = {n: REWARDS[n](completions, solutions=solutions, choices=choices, **context) for n in names}
    w = list(weights) if weights else [1.0] * len(names)
    total = [float(sum(wk * v for wk, v in zip(w, vals))) for vals in zip(*per.values())]
    return total, per


@dataclass
class RewardSpec:
    """Which rewards a GRPO run sums, with what weights, and how they become advantages."""

    names: list[str]
    weights: list[float] = field(default_factory=list)  # one per name; empty: 1 each
    advantage: str = "grpo"  # grpo: sum, then normalise in the group; gdpo: see aqa.train.grpo_loss
    max_new_tokens: int = 16  # the overlong reward's L_max
    overlong_buffer: float = 0.2  # the overlong reward's L_cache, as a share of L_max

    def score(self, completions: Sequence[str], solutions: Sequence[int], choices: Sequence[Sequence[str]],
              lengths: Sequence[int], think: ThinkFormat | None = None) -> tuple[list[float], dict[str, list[float]]]:
        """`think`: the family's think block, for completions the model generated after the
        prompt (None: answers read whole, as `choice` rollouts' letters are)."""
        return score_completions(self.names, completions, solutions, choices, weights=self.weights,
                                 lengths=lengths, max_new_tokens=self.max_new_tokens,
                                 overlong_buffer=self.overlong_buffer, think=think)

    def weight_list(self) -> list[float]:
        return list(self.weights) if self.weights else [1.0] * len(self.names)
