import pytest

from aqa.prompts import parse_answer, question_text, target_text

CH = ["dog barking", "cat meowing", "car horn", "dog"]


@pytest.mark.parametrize("text,want", [
    ("C", 2), ("C.", 2), (" b ", None), ("B", 1), ("(D)", 3), ("[A]", 0),
    ("The answer is C", 2), ("the answer is (B).", 1), ("Answer: D", 3), ("Option B", 1),
    ("C. car horn", 2), ("A. dog barking", 0), ("A) dog barking", 0),
    ("<answer>C</answer>", 2), ("<think>maybe A</think><answer>B</answer>", 1),
    ("car horn", 2), ("Car horn.", 2), ("It is a dog barking.", 0), ("dog", 3),
    ("A dog barking", 0),  # 'A' is the article here, the text says option A anyway
    ("", None), (None, None), ("I cannot tell", None), ("E", None), ("The answer is A or B", None),
    ("<answer></answer>", None),
])
def test_parse_answer(text, want):
    assert parse_answer(text, CH) == want


def test_article_is_not_a_letter():
    ch = ["whistle", "a bird", "siren"]
    assert parse_answer("A siren", ch) == 2
    assert parse_answer("A bird", ch) == 1


def test_prompt_has_lettered_options_and_target():
    q = question_text("What is it?", ["x", "y"])
    assert "A. x\nB. y" in q and q.startswith("What is it?")
    assert target_text(1) == "B"
