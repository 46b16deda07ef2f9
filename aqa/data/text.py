"""Text normalisation shared by the converters: option letter prefixes, stray trailing
punctuation, and matching an answer string to the options.

The record format (`aqa.data.records`) stores plain option texts and an index. Sources write options
as "B. dog", "(B) dog" or "B) dog", sometimes with a stray trailing comma the answer string
lacks, sometimes with a sentence period on some options only (in MMAU test-mini the correct
option is then often the only one without it, a formatting cue a model can learn). Everything
here is a pure function of its inputs; the converters keep the original strings in `meta`.

Matching an answer never guesses: when the answer's letter and its text point at different
options, both are returned and the caller flags the record (`match_answer`).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field

from aqa.prompts import LETTERS

# Upper-case letters only: lower-case "a) " is rarer in sources than prose starting "a ",
# and the whitespace after the mark keeps "A.M. radio" and "F.C. Barcelona" intact.
_LETTER_PREFIX = re.compile(r"^\s*(?:\(([A-Z])\)|([A-Z])[.):])\s+(?=\S)")
_BARE_LETTER = re.compile(r"\(([A-Z])\)|([A-Z])[.):]?")
# Marks that never end an option on purpose. A period is stripped too (see
# strip_stray_punctuation) unless it ends an ellipsis or an abbreviation.
_STRAY = ",;:"
# "D.C.", "U.S.A.", "e.g." end in a period that belongs to the word.
_DOTTED_ABBREV = re.compile(r"(?:^|[\s(\"'])(?:[A-Za-z]\.){2,}$")
_ABBREVIATIONS = frozenset({"etc.", "mr.", "mrs.", "ms.", "dr.", "st.", "jr.", "sr.", "vs.",
                            "inc.", "ltd.", "co.", "no.", "approx.", "min.", "sec.", "hr.", "op."})

#: Note kinds `normalise_options` can report.
NOTE_STRAY_PUNCT = "stray-trailing-punctuation"
NOTE_DUPLICATES = "duplicate-choices-merged"
NOTE_PARTIAL_PREFIX = "choice-letter-prefix-partial"
NOTE_LETTER_ORDER = "choice-letters-out-of-order"
#: Defect kinds `match_answer` can report.
DEFECT_LETTER_TEXT = "answer-letter-text-mismatch"
DEFECT_TEXT_NO_CHOICE = "answer-text-matches-no-choice"
DEFECT_LETTER_NO_CHOICE = "answer-letter-matches-no-choice"
DEFECT_NO_CHOICE = "answer-matches-no-choice"


def split_letter_prefix(text: str) -> tuple[str | None, str]:
    """("B", "dog") for "B. dog", "(B) dog", "B) dog" or "B: dog"; (None, text) otherwise."""
    m = _LETTER_PREFIX.match(text)
    if not m:
        return None, text
    return m.group(1) or m.group(2), text[m.end():]


def clean_whitespace(text: str) -> str:
    """NFC form, runs of whitespace made one space, ends stripped."""
    return re.sub(r"\s+", " ", unicodedata.normalize("NFC", text)).strip()


def _period_is_stray(text: str) -> bool:
    if text.endswith(".."):  # an ellipsis is content
        return False
    if _DOTTED_ABBREV.search(text):
        return False
    last = text.rsplit(" ", 1)[-1].lower()
    return last not in _ABBREVIATIONS


def strip_stray_punctuation(text: str) -> str:
    """Remove trailing ',', ';', ':' and a sentence-final '.', repeatedly ("dog.," -> "dog").
    Kept: '?', '!', '#' ("G#"), closing brackets and quotes, ellipses, and the period of an
    abbreviation ("Washington D.C.", "etc."). Options of one item then agree in form, so
    the period no longer tells the answer apart from the distractors."""
    out = text.rstrip()
    while out:
        if out[-1] in _STRAY or (out[-1] == "." and _period_is_stray(out)):
            out = out[:-1].rstrip()
        else:
            break
    # An option made only of punctuation ("..." or ",") keeps its text rather than vanish.
    return out if out else text.strip()


def normalise_option(text: str) -> str:
    """The form an option text is stored in: whitespace cleaned, stray punctuation removed."""
    return strip_stray_punctuation(clean_whitespace(text))


def match_key(text: str) -> str:
    """A looser key for a second matching pass: normalised and case-folded."""
    return normalise_option(text).casefold()


def find_choice(answer: str, choices: Sequence[str]) -> int | None:
    """The index of the option `answer` names by its text, or None. Compares normalised
    texts first (the first of identical options wins, as they are one option), then
    case-folded ones, where more than one different option matching gives None."""
    want = normalise_option(answer)
    if not want:
        return None
    norm = [normalise_option(c) for c in choices]
    if want in norm:
        return norm.index(want)
    key = want.casefold()
    hits = sorted({norm.index(n) for n in norm if n.casefold() == key})
    return hits[0] if len(hits) == 1 else None


@dataclass
class Options:
    """One item's options after normalisation.

    `choices` are the stored texts, unique; `original` the strings as the source wrote them;
    `labels[i]` the letter option `original[i]` answers to (its own prefix when every option
    carries one, else its position's letter); `index_of[i]` where `original[i]` landed in
    `choices` (options identical after normalisation are merged into the first)."""

    choices: list[str]
    original: list[str]
    labels: list[str]
    index_of: list[int]
    notes: list[str] = field(default_factory=list)

    def index_for_letter(self, letter: str) -> int | None:
        """The `choices` index of the option labelled `letter`, or None."""
        hits = [i for i, lab in enumerate(self.labels) if lab == letter.upper()]
        return self.index_of[hits[0]] if len(hits) == 1 else None


def normalise_options(raw: Sequence[str], *, strip_letters: bool = True) -> Options:
    """Normalise one item's option strings. With `strip_letters`, letter prefixes are
    removed when every option has one; when only some have one, only those whose letter is
    their position's letter lose it (so an option text such as "F. Scott Fitzgerald" in
    third place survives). Sources with plain option texts (MMAU) pass strip_letters=False."""
    raw = list(raw)
    notes: list[str] = []
    split = [split_letter_prefix(s) if strip_letters else (None, s) for s in raw]
    letters = [letter for letter, _ in split]
    positional = list(LETTERS[:len(raw)])
    if strip_letters and raw and all(letters):
        texts = [t for _, t in split]
        labels = [str(letter) for letter in letters]
        if len(set(labels)) != len(labels):
            # Repeated labels cannot address an option; fall back to positions.
            labels = positional
            notes.append(NOTE_LETTER_ORDER)
        elif labels != positional:
            notes.append(NOTE_LETTER_ORDER)
    elif strip_letters and any(letters):
        texts = [t if letter == positional[i] else s for i, (s, (letter, t)) in enumerate(zip(raw, split))]
        labels = positional
        notes.append(NOTE_PARTIAL_PREFIX)
    else:
        texts, labels = raw, positional

    choices: list[str] = []
    index_of: list[int] = []
    stray = False
    for t in texts:
        cleaned = clean_whitespace(t)
        n = strip_stray_punctuation(cleaned)
        stray = stray or n != cleaned
        if n in choices:
            index_of.append(choices.index(n))
        else:
            index_of.append(len(choices))
            choices.append(n)
    if stray:
        notes.append(NOTE_STRAY_PUNCT)
    if len(choices) != len(raw):
        notes.append(NOTE_DUPLICATES)
    return Options(choices=choices, original=raw, labels=labels, index_of=index_of, notes=notes)


@dataclass
class AnswerMatch:
    """Where an answer string points. `index` is what a record stores: the letter's option
    when the answer has a letter that names one (the letter is the explicit label, the text
    is what disagrees when they differ), else the text's option, else None. `defects` says
    what disagreed; an empty list means letter and text (those present) agree."""

    index: int | None
    by_letter: int | None
    by_text: int | None
    letter: str | None
    text: str
    defects: list[str] = field(default_factory=list)


def match_answer(answer: str, options: Options, *, use_letter: bool = True) -> AnswerMatch:
    """Match an answer string ("B. dog", "dog", "B") to `options` by its letter and by its
    text, separately. Never picks a side silently:

    - letter and text name different options: `answer-letter-text-mismatch`, index = letter's;
    - the letter names an option, the text none: `answer-text-matches-no-choice`, index = letter's;
    - the letter names no option, the text one: `answer-letter-matches-no-choice`, index = text's;
    - neither: `answer-matches-no-choice`, index None.
    """
    letter, text = split_letter_prefix(answer) if use_letter else (None, answer)
    bare = _BARE_LETTER.fullmatch(answer.strip()) if use_letter else None
    if bare and find_choice(answer, options.choices) is None:
        # A lone "B" (or "(B)", "B.") is a letter unless some option's text is literally "B".
        letter, text = bare.group(1) or bare.group(2), ""
    by_letter = options.index_for_letter(letter) if letter else None
    by_text = find_choice(text, options.choices) if text.strip() else None
    if by_text is None and letter and by_letter is None:
        # "F. Scott Fitzgerald" read as letter F: the whole string may be the text.
        whole = find_choice(answer, options.choices)
        if whole is not None:
            return AnswerMatch(whole, None, whole, None, answer)
    defects: list[str] = []
    if by_letter is not None and by_text is not None:
        index = by_letter
        if by_letter != by_text:
            defects.append(DEFECT_LETTER_TEXT)
    elif by_letter is not None:
        index = by_letter
        if text.strip():
            defects.append(DEFECT_TEXT_NO_CHOICE)
    elif by_text is not None:
        index = by_text
        if letter:
            defects.append(DEFECT_LETTER_NO_CHOICE)
    else:
        index = None
        defects.append(DEFECT_NO_CHOICE)
    return AnswerMatch(index, by_letter, by_text, letter, text, defects)
