"""GRPO reward functions: pure functions in TRL's style (completions and solutions in, one
float per completion out), so that each can be tested from a table and a new one added by
name (`rewards=[accuracy,format]` in the GRPO config; the reward is their sum).

Completions are answer texts exactly as `aqa eval` reads them: the backend's `decode` of the
generated ids for `generate` rollouts, the sampled option's letter for `choice` rollouts. Each
is read by `aqa.prompts.parse_answer`, the parser of `aqa eval --mode generate`, so a reward
can never read an answer differently from the evaluation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from aqa.prompts import parse_answer


def accuracy_reward(completions: Sequence[str], solutions: Sequence[int], choices: Sequence[Sequence[str]],
                    **_) -> list[float]:
    """1.0 where the completion names the right option (index `solutions[i]` of the options
    `choices[i]` as shown), else 0.0: the reference report's reward."""
    return [float(parse_answer(c, opts) == s) for c, s, opts in zip(completions, solutions, choices)]


def format_reward(completions: Sequence[str], choices: Sequence[Sequence[str]], **_) -> list[float]:
    """1.0 where the completion names exactly one of the options, right or wrong."""
    return [float(parse_answer(c, opts) is not None) for c, opts in zip(completions, choices)]


#: Reward functions by the name the GRPO config uses.
REWARDS: dict[str, Callable[..., list[float]]] = {"accuracy": accuracy_reward, "format": format_reward}


def score_completions(names: Sequence[str], completions: Sequence[str], solutions: Sequence[int],
                      choices: Sequence[Sequence[str]]) -> tuple[list[float], dict[str, list[float]]]:
    """The total reward of each completion (the sum of the named rewards) and each reward's
    own values, for logging."""
    per = {n: REWARDS[n](completions, solutions=solutions, choices=choices) for n in names}
    total = [float(sum(v)) for v in zip(*per.values())]
    return total, per
