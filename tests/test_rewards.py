"""GRPO rewards: pure functions read through the evaluation's answer parser."""

import pytest

from aqa.train.rewards import REWARDS, accuracy_reward, format_reward, score_completions

OPTS = ["dog barking", "cat meowing", "car horn", "rain"]


@pytest.mark.parametrize("completion, answer, accuracy, formatted", [
    ("B", 1, 1.0, 1.0),                       # a bare letter, as choice rollouts give
    ("A", 1, 0.0, 1.0),
    ("The answer is B", 1, 1.0, 1.0),
    ("(C)", 2, 1.0, 1.0),
    ("C. car horn", 2, 1.0, 1.0),
    ("cat meowing", 1, 1.0, 1.0),             # the option text alone
    ("<answer>D</answer>", 3, 1.0, 1.0),
    ("The answer is A or B", 0, 0.0, 0.0),    # names two: no answer
    ("E", 0, 0.0, 0.0),                       # no option E among four
    ("", 0, 0.0, 0.0),
    ("I cannot tell", 2, 0.0, 0.0),
])
def test_rewards_table(completion, answer, accuracy, formatted):
    assert accuracy_reward([completion], solutions=[answer], choices=[OPTS]) == [accuracy]
    assert format_reward([completion], solutions=[answer], choices=[OPTS]) == [formatted]


def test_rewards_agree_with_eval_generate_parsing():
    """The reward of a completion is whether `aqa eval --mode generate` would count it right."""
    from aqa.prompts import parse_answer

    texts = ["B", "answer: C", "rain", "A dog barking", "(D) rain", "x"]
    got = accuracy_reward(texts, solutions=[1] * len(texts), choices=[OPTS] * len(texts))
    assert got == [float(parse_answer(t, OPTS) == 1) for t in texts]


def test_total_is_the_sum_and_each_part_is_kept():
    total, parts = score_completions(["accuracy", "format"], ["B", "A", "nope"], [1, 1, 1], [OPTS] * 3)
    assert total == [2.0, 1.0, 0.0]
    assert parts == {"accuracy": [1.0, 0.0, 0.0], "format": [1.0, 1.0, 0.0]}
    assert set(REWARDS) == {"accuracy", "format"}


def test_unknown_reward_is_a_config_error():
    from aqa.train.grpo import GRPOConfig

    with pytest.raises(ValueError, match="rewards must name"):
        GRPOConfig(rewards=["accuracy", "lenght"])
