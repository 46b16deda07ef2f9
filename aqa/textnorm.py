"""Loose text comparison: the keys under which two strings count as "the same text".

Three keys, because three comparisons want different things and their results are stored
(eval predictions, generated options, check reports), so none may drift:

- `loose_key`: words only. Case, punctuation and spacing do not make two options different
  ("Dog." and "dog"); `keep` spares characters that carry meaning for a caller (the period
  of "2.5" when a number is read back).
- `answer_key`: what `aqa.prompts.parse_answer` compares a model's reply with the options
  by. It deletes ASCII punctuation instead of splitting on it ("it's" matches "its") and
  keeps hyphens, so "rock-and-roll" stays one word for its word-boundary search.
- `question_key`: case and spacing only. Two questions that differ in punctuation ("Is it
  a dog?" and "Is it a dog.") are kept apart when looking for repeated items.

The converters' own storage form of an option (NFC, stray trailing punctuation, abbreviations
kept) is `aqa.data.text.normalise_option`, with `match_key` its case-folded form: it decides
what a record stores, not only what compares equal, so it stays with the converters.

This module imports nothing from the package: `aqa.prompts` and the data layer both use it.
"""

from __future__ import annotations

import re
import string

_ANSWER_PUNCT = str.maketrans("", "", string.punctuation.replace("-", ""))


def loose_key(text: str, keep: str = "") -> str:
    """Case-folded words: every character that is neither a word character, whitespace nor in
    `keep` counts as a space, and runs of whitespace become one space."""
    drop = rf"[^\w\s{re.escape(keep)}]" if keep else r"[^\w\s]"
    return " ".join(re.sub(drop, " ", text.casefold()).split())


def answer_key(text: str) -> str:
    """Lower-cased, ASCII punctuation but '-' deleted, whitespace runs made one space."""
    s = text.lower().strip().translate(_ANSWER_PUNCT)
    return re.sub(r"\s+", " ", s).strip()


def question_key(text: str) -> str:
    """Lower-cased with whitespace runs made one space; punctuation kept."""
    return re.sub(r"\s+", " ", text.strip().lower())
