"""Prompt text, option letters and answer parsing: one place shared by SFT targets, `aqa eval`,
GRPO rewards and the interchange export, so that they can never disagree.

The prompt follows the style the challenge baselines use, which the reference report adopts
for its added data too (Cai et al., Parameter-efficient tuning of large audio-language models
for DCASE 2025 Challenge Task 5, USTC technical report, section 2.2: "adding letter codes to
match the task format"): the question, then the options each behind a letter, then an
instruction to answer with the letter. The SFT target is the letter alone, which makes scoring one forward pass (the letter
is the first answer token) and GRPO's `choice` rollouts exact.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from aqa.textnorm import answer_key

#: Option letters, in order; records are limited to as many options as there are letters
#: (the longest MMAU item has 8).
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
INSTRUCTION = "Answer with the option's letter from the given choices directly."


def option_lines(choices: Sequence[str]) -> str:
    return "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(choices))


def question_text(question: str, choices: Sequence[str]) -> str:
    """The user turn's text (the audio goes before it, in the model's own way)."""
    return f"{question.strip()}\nOptions:\n{option_lines(choices)}\n{INSTRUCTION}"


def target_text(answer: int) -> str:
    """What the assistant should say: the answer's letter."""
    return LETTERS[answer]


_TAGGED = re.compile(r"<answer>\s*(.*?)\s*</answer>", re.S | re.I)
_PHRASE = re.compile(r"(?:answer|option|choice)\s*(?:is|:)?\s*\(?([A-Z])\)?(?![A-Za-z])", re.I)
_LEAD = re.compile(r"^\s*[\(\[]?([A-Z])(?:[\)\]\.:,]|\s|$)")


def parse_answer(text: str | None, choices: Sequence[str]) -> int | None:
    """The option index a model's free-text answer names, or None if it names none or is
    ambiguous. Accepts a bare letter, "The answer is C", "C. dog barking", "(C)",
    "<answer>C</answer>", and the option text alone."""
    if not text:
        return None
    n = len(choices)
    m = _TAGGED.search(text)
    if m:
        return parse_answer(m.group(1), choices) if m.group(1) != text else None
    s = text.strip()
    letters = LETTERS[:n]

    def idx(letter: str) -> int | None:
        i = letters.find(letter.upper())
        return i if i >= 0 else None

    # A bare letter, or a letter leading the answer ("C. dog barking", "(B)").
    m = _LEAD.match(s)
    if m and m.group(1).isupper() and idx(m.group(1)) is not None:
        rest = answer_key(s[m.end():])
        i = idx(m.group(1))
        # "A dog barking" starts with the article, not a letter: trust the letter only when
        # nothing follows it or what follows is that option's own text.
        if not rest or rest == answer_key(choices[i]) or s[m.end() - 1] in ".):]," or len(s) <= 3:
            return i
    # "The answer is C", "Option: B".
    m = _PHRASE.search(s)
    if m and m.group(1).isupper() and idx(m.group(1)) is not None:
        # "The answer is A or B" names two: every lone capital letter after the phrase counts.
        named = {idx(g) for g in re.findall(r"\b([A-Z])\b", s[m.start():]) if idx(g) is not None}
        return named.pop() if len(named) == 1 else None
    # The option text alone (or the text with a letter in front).
    ns = answer_key(s)
    keys = [answer_key(c) for c in choices]
    exact = [i for i, k in enumerate(keys) if k == ns]
    if len(exact) == 1:
        return exact[0]
    contained = [i for i, k in enumerate(keys) if k and re.search(rf"\b{re.escape(k)}\b", ns)]
    # Longest match wins only when it contains every other match ("dog" inside "dog barking").
    if contained:
        best = max(contained, key=lambda i: len(keys[i]))
        if all(keys[i] in keys[best] for i in contained):
            return best
    return None
