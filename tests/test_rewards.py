"""GRPO rewards: pure functions read through the evaluation's answer parser."""

import pytest

from aqa.prompts import ThinkFormat
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
    assert set(REWARDS) == {"accuracy", "format", "overlong"}


def test_weights_scale_each_reward_in_the_total():
    total, parts = score_completions(["accuracy", "format"], ["B", "A", "nope"], [1, 1, 1], [OPTS] * 3,
                                     weights=[2.0, 0.5])
    assert total == [2.5, 0.5, 0.0]  # 2 x 1 + 0.5 x 1, 2 x 0 + 0.5 x 1, 0
    assert parts == {"accuracy": [1.0, 0.0, 0.0], "format": [1.0, 1.0, 0.0]}  # unweighted


def test_overlong_penalty_by_hand():
    """DAPO's soft overlong punishment, L_max 10, L_cache 0.2 x 10 = 2: nothing up to 8 tokens,
    then -1/2 per token to -1 at 10, -1 past it."""
    from aqa.train.rewards import overlong_reward

    got = overlong_reward(["x"] * 6, lengths=[5, 8, 9, 10, 11, 1], max_new_tokens=10, overlong_buffer=0.2)
    assert got == pytest.approx([0.0, 0.0, -0.5, -1.0, -1.0, 0.0])
    assert overlong_reward(["x"] * 2, lengths=[9, 10], max_new_tokens=10, overlong_buffer=0.0) == [0.0, 0.0]


def test_unknown_reward_is_a_config_error():
    from aqa.train.grpo import GRPOConfig

    with pytest.raises(ValueError, match="rewards must name"):
        GRPOConfig(rewards=["accuracy", "lenght"])


# Reasoning completions (Qwen3-Omni-Thinking's layout), worked by hand: the answer is only what
# follows </think>, and `format` wants one block, opened and closed, then one named option.
THINK = ThinkFormat()  # <think> ... </think>, the model writes <think> itself
OPENED = ThinkFormat(start="<think>\n")  # a template whose prompt opened the block already


@pytest.mark.parametrize("think, completion, answer, accuracy, formatted", [
    (THINK, "<think>\nA dog barks.\n</think>\n\nA", 0, 1.0, 1.0),
    (THINK, "<think>\nA dog barks.\n</think>\n\nA", 1, 0.0, 1.0),        # well formed, wrong
    (THINK, "<think>\nOption B is a cat, so not B.\n</think>\n\nA", 1, 0.0, 1.0),  # B only inside the reasoning
    (THINK, "<think>\nOption B is a cat, so not B.\n</think>\n\nA", 0, 1.0, 1.0),
    (THINK, "<think>\nThe answer is B, I think", 1, 0.0, 0.0),          # cut by the budget: no answer
    (THINK, "<think>\n\n</think>\n\nThe answer is C", 2, 1.0, 1.0),     # the empty block, then an answer
    (THINK, "<think>\nhmm\n</think>\n\n", 0, 0.0, 0.0),                 # closed, but no answer
    (THINK, "<think>\nhmm\n</think>\n\nA or B", 0, 0.0, 0.0),           # names two
    (THINK, "<think>\na\n</think>\n<think>\nb\n</think>\n\nB", 1, 1.0, 0.0),  # two blocks: read, not well formed
    (THINK, "hmm\n</think>\n\nB", 1, 1.0, 0.0),                        # closed without opening
    (THINK, "B. cat meowing", 1, 1.0, 1.0),                            # no block at all: today's meaning
    (THINK, "The answer is A or B", 0, 0.0, 0.0),
    (OPENED, "It meows.\n</think>\n\nB", 1, 1.0, 1.0),                 # the prompt opened the block
    (OPENED, "<think>\nIt meows.\n</think>\n\nB", 1, 1.0, 0.0),        # opened twice
    (OPENED, "It meows, answer B", 1, 0.0, 0.0),                       # still inside the block
    (None, "<think>\nnot A\n</think>\n\nB", 1, 0.0, 0.0),              # read whole (no think format): A and B
])
def test_rewards_of_reasoning_completions(think, completion, answer, accuracy, formatted):
    assert accuracy_reward([completion], solutions=[answer], choices=[OPTS], think=think) == [accuracy]
    assert format_reward([completion], solutions=[answer], choices=[OPTS], think=think) == [formatted]


def test_reasoning_rewards_read_the_answer_as_eval_generate_does():
    from aqa.prompts import parse_answer, split_reasoning

    texts = ["<think>\nnot A\n</think>\n\nB", "<think>\nB?", "rain", "x\n</think>\nD"]
    got = accuracy_reward(texts, solutions=[1] * 4, choices=[OPTS] * 4, think=THINK)
    assert got == [float(parse_answer(split_reasoning(t, THINK).answer, OPTS) == 1) for t in texts]
    total, parts = score_completions(["accuracy", "format"], texts, [1] * 4, [OPTS] * 4, think=THINK)
    # "rain" has no block: it names option D, well formed but wrong; "x</think>D" never opened one.
    assert parts == {"accuracy": [1.0, 0.0, 0.0, 0.0], "format": [1.0, 0.0, 1.0, 0.0]} and total == [2.0, 0, 1.0, 0]
