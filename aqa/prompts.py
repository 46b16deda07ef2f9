"""Prompt text, option letters and answer parsing: one place shared by SFT targets, `aqa eval`,
GRPO rewards and the interchange export, so that they can never disagree.

The prompt follows the style the challenge baselines use, which the reference report adopts
for its added data too (Cai et al., Parameter-efficient tuning of large audio-language models
for DCASE 2025 Challenge Task 5, USTC technical report, section 2.2: "adding letter codes to
match the task format"): the question, then the options each behind a letter, then an
instruction to answer with the letter. The SFT target is the letter alone, which makes scoring one forward pass (the letter
is the first answer token) and GRPO's `choice` rollouts exact.

A model that reasons first (Qwen3-Omni-Thinking) writes a think block before its answer
(`ThinkFormat`): its answer is read only after the block (`split_reasoning`, `final_answer`),
by `aqa eval --mode generate` and the GRPO rewards alike, and `well_formed` is what the
`format` reward asks of a reasoning completion.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

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


# --- reasoning -----------------------------------------------------------------------------
#: The think delimiters of Qwen3 and Qwen3-Omni-Thinking (and MOSS-Audio-Thinking), which every
#: thinking checkpoint here uses; a family with others sets its own `ThinkFormat`.
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


@dataclass(frozen=True)
class ThinkFormat:
    """How a family's assistant turn holds a reasoning: `open`, the rationale, `close`, then the
    answer, laid out as Qwen3's chat template renders an assistant turn with reasoning
    (`<think>\\n{rationale}\\n</think>\\n\\n{answer}`). An empty block (`empty`) is how Qwen3's
    template switches thinking off (`enable_thinking=False` renders `<think>\\n\\n</think>\\n\\n`
    after the assistant's start). `start`: what the rendered generation prompt already holds of
    the block (a template that opens it itself: `<think>\\n`), empty when the model writes it."""

    open: str = THINK_OPEN
    close: str = THINK_CLOSE
    start: str = ""
    #: The empty block where a family documents another one than Qwen3's (empty: Qwen3's).
    empty_block: str = ""

    def block(self, rationale: str | None) -> str:
        """The whole think block around `rationale` (None or "": the empty block), with the
        blank line before the answer."""
        r = (rationale or "").strip()
        if not r and self.empty_block:
            return self.empty_block
        return f"{self.open}\n{r}\n{self.close}\n\n"

    @property
    def empty(self) -> str:
        return self.block("")

    def after_start(self, text: str) -> str:
        """`text` (a think block) less what the prompt already holds of it."""
        return text[len(self.start):] if self.start and text.startswith(self.start) else text


@dataclass(frozen=True)
class Reasoned:
    """A completion split at its think block: `reasoning` (None: it has no think block),
    `answer` (the text after the block; None while the block is still open) and whether the
    block was left open (cut by the token budget, or the turn ended inside it)."""

    reasoning: str | None
    answer: str | None
    unfinished: bool = False

    @property
    def blocks(self) -> int:
        return 0 if self.reasoning is None else 1


def split_reasoning(text: str | None, think: ThinkFormat | None) -> Reasoned:
    """`text` (what the assistant wrote after the prompt) split at its think block. The answer
    is only what follows the (last) closing delimiter: a letter inside the reasoning never
    counts. A completion with no delimiter (and a prompt that did not open the block) is all
    answer."""
    text = text or ""
    if think is None:
        return Reasoned(None, text)
    opened = bool(think.start) or text.lstrip().startswith(think.open)
    at = text.rfind(think.close)
    if at >= 0:
        inside = text[:at].lstrip()
        inside = inside[len(think.open):] if inside.startswith(think.open) else inside
        return Reasoned(inside.strip(), text[at + len(think.close):])
    if opened:
        inside = text.lstrip()
        return Reasoned((inside[len(think.open):] if inside.startswith(think.open) else inside).strip(), None, True)
    return Reasoned(None, text)


def final_answer(text: str | None, choices: Sequence[str], think: ThinkFormat | None = None) -> int | None:
    """The option a completion names in its answer, read only after its think block (None while
    the block is open, or when the answer names none or several)."""
    return parse_answer(split_reasoning(text, think).answer, choices)


def well_formed(text: str | None, choices: Sequence[str], think: ThinkFormat | None = None) -> bool:
    """A thinking completion (one holding a delimiter, or after a prompt that opened the block):
    exactly one think block, opened first (or by the prompt) and closed, then an answer that
    names exactly one option. Any other completion: it names exactly one option."""
    text = text or ""
    if think is None or not (think.start or think.open in text or think.close in text):
        return parse_answer(text, choices) is not None
    opens = text.count(think.open)
    if text.count(think.close) != 1 or opens != (0 if think.start else 1):
        return False
    if not think.start and not text.lstrip().startswith(think.open):
        return False
    return parse_answer(split_reasoning(text, think).answer, choices) is not None
