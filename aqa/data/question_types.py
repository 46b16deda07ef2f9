"""The temporal question types, one generator each, and the rules that keep answers defensible.

- counting: how many different sounds the clip holds;
- sequencing: which two sounds come first, in order ("bark, then vehicle horn");
- duration: how long a sound that occurs once lasts ("about 2.5 seconds");
- frequency: how many times one sound occurs ("twice");
- identification: which of the options is present (used for the synthetic data).

The first four, and the first question template of each, are the temporal question taxonomy
of Cai et al., Parameter-efficient tuning of large audio-language models for DCASE 2025
Challenge Task 5, USTC technical report, section 2.2, Table 1.

A generator looks at one clip's cleaned events (`Clip`) and returns a `Draft`: the question,
its answer and rule-based distractors, or None when the clip cannot support a question of
its type under these rules:

- sequencing needs the first two sounds to start at least `MIN_ORDER_GAP_S` apart, and the
  third (if any) that far after the second;
- frequency needs the occurrences at least `MIN_REPEAT_GAP_S` apart and at most `MAX_TIMES`
  of them; counting at most `MAX_TIMES` different sounds;
- duration needs a sound that occurs once and lasts at least `MIN_DURATION_S`.

All randomness comes from the generator passed in, drawn in a fixed order, so a clip's
questions are a function of its generator's seed.
"""

from __future__ import annotations

import argparse
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property

from aqa.data.events import Event, onsets_and_counts
from aqa.data.spoken import (format_count, format_duration, format_times, parse_count, parse_duration,
                             quantize_duration)
from aqa.textnorm import loose_key

#: Two sounds whose first onsets are closer than this cannot be put in order by ear.
MIN_ORDER_GAP_S = 0.3
#: Occurrences closer than this blur into one; such a label gets no frequency question.
MIN_REPEAT_GAP_S = 0.2
#: Shorter sounds are not asked about: "about half a second" would be wrong for them.
MIN_DURATION_S = 0.4
#: More occurrences (or more different sounds) than this are too many to count reliably.
MAX_TIMES = 10

COUNTING_QUESTIONS = (
    "How many different sounds are in the audio clip?",
    "How many distinct kinds of sound can be heard in the recording?",
    "How many different sound events occur in the audio?",
    "Count the different types of sound in this clip. How many are there?",
)
SEQUENCING_QUESTIONS = (
    "What is the sequence of the first two sounds in the audio?",
    "Which two sounds are heard first, and in what order?",
    "In what order do the first two sounds occur in the clip?",
)
DURATION_QUESTIONS = (
    "What is the duration of the {x} sound?",
    "How long does the {x} sound last?",
    "For about how long can the {x} sound be heard?",
)
FREQUENCY_QUESTIONS = (
    "How many times does the {x} sound occur?",
    "How often is the {x} sound heard in the clip?",
    "How many separate times can you hear the {x} sound?",
)
IDENTIFICATION_QUESTIONS = (
    "Which of these sounds occurs in the clip?",
    "Which of the following sounds can be heard in the audio?",
    "One of these sounds is in the recording. Which one?",
)


@dataclass
class Draft:
    """A question before its options are finished (LLM suggestions, shuffling)."""

    question: str
    answer: str
    fallback: list[str]  # rule-based distractors, most wanted first
    canon: Callable[[str], str | None] | None = None  # how an LLM suggestion is re-worded/vetted
    forbidden: list[str] = field(default_factory=list)  # texts that would also be correct
    hint: str = ""
    meta: dict = field(default_factory=dict)
    qtype: str = ""  # set by `drafts` from the registry key


@dataclass
class Clip:
    """What a generator knows about one clip: its cleaned events, the text each label gets,
    where label distractors come from, and how many options a question has."""

    events: list[Event]
    names: Mapping[str, str]
    pool: Sequence[str]  # labels distractors are drawn from first
    extra_pool: Sequence[str]  # drawn from only when `pool` runs short
    n_choices: int
    length: float | None = None  # the clip's seconds, when known: no duration option exceeds it

    def __post_init__(self) -> None:
        self.by_label: dict[str, list[Event]] = {}
        for e in self.events:
            self.by_label.setdefault(e.label, []).append(e)
        self.present = sorted(self.by_label)
        #: Rule candidates kept: enough to replace every one an LLM suggestion displaces.
        self.keep = 3 * self.n_choices

    # Lazy: only sequencing and identification name absent sounds, and the pools can be the
    # whole AudioSet vocabulary.
    @cached_property
    def absent(self) -> list[str]:
        """Labels of `pool` that the clip does not hold."""
        return [m for m in self.pool if m not in self.by_label and m in self.names]

    @cached_property
    def reserve(self) -> list[str]:
        """Labels of `extra_pool` (not in `pool`) that the clip does not hold; empty unless
        `absent` has too few to fill the options."""
        if len(self.absent) >= max(3, self.n_choices):
            return []
        in_pool = set(self.pool)
        return [m for m in self.extra_pool if m not in self.by_label and m not in in_pool and m in self.names]


# ---------------------------------------------------------------------------------------------
# Rule-based distractors and the vetting of suggested ones


def _spread(value: float, cands: Iterable[float], k: int, rng: random.Random) -> list[float]:
    """`k` candidates nearest `value`, a random number of them below it and the rest above,
    so the answer's rank among the options is uniform (a model must not learn "the smallest
    number is right"); then every other candidate, nearest first, to fill in with."""
    below = sorted((c for c in cands if c < value), reverse=True)
    above = sorted(c for c in cands if c > value)
    lo, hi = max(0, k - len(above)), min(k, len(below))
    n_below = rng.randint(lo, hi) if lo <= hi else len(below)  # too few: take them all
    head = below[:n_below] + above[:k - n_below]
    rng.shuffle(head)
    rest = sorted((c for c in below[n_below:] + above[k - n_below:]), key=lambda c: (abs(c - value), c))
    return head + rest


def _nearby(n: int, rng: random.Random, k: int = 3, lo: int = 1, hi: int = MAX_TIMES + 3) -> list[int]:
    """Whole numbers near `n`, never `n` itself (see _spread)."""
    return [int(c) for c in _spread(n, range(lo, hi + 1), k, rng)]


def _duration_distractors(q: float, rng: random.Random, k: int = 3, longest: float | None = None) -> list[float]:
    """Half-second values far enough from `q` that rounding cannot make them right too, and,
    with `longest` (the clip's length), none longer than the clip: "about 12 seconds" in a
    10-second clip is an option a listener can rule out without hearing the sound."""
    gap = max(1.0, 0.3 * q)
    grid = [h / 2 for h in range(1, int(max(20.0, 3 * q) * 2) + 1)]
    if longest is not None:
        grid = [c for c in grid if c <= longest]
    return _spread(q, [c for c in grid if abs(c - q) >= gap], k, rng)


def _count_canon(lo: int, answer: int, fmt: Callable[[int], str], parse: Callable[[str], int | None]):
    def canon(text: str) -> str | None:
        v = parse(text)
        return fmt(v) if v is not None and v >= lo and v != answer else None
    return canon


def _duration_canon(q: float, longest: float | None = None):
    def canon(text: str) -> str | None:
        v = parse_duration(text)
        if v is None or v <= 0:
            return None
        c = quantize_duration(v)
        if longest is not None and c > longest:
            return None
        return format_duration(c) if abs(c - q) >= max(1.0, 0.3 * q) else None
    return canon


def _label_canon(present: Sequence[str]):
    """Reject a suggested label that names (or contains the name of) a sound in the clip."""
    keys = [loose_key(p) for p in present]

    def canon(text: str) -> str | None:
        k = f" {loose_key(text)} "
        if any(f" {p} " in k or f" {k.strip()} " in f" {p} " for p in keys if p):
            return None
        return text
    return canon


# ---------------------------------------------------------------------------------------------
# One generator per question type


def counting(clip: Clip, rng: random.Random) -> Draft | None:
    n = len(clip.present)
    if n > MAX_TIMES:
        return None
    return Draft(
        rng.choice(COUNTING_QUESTIONS), format_count(n),
        [format_count(k) for k in _nearby(n, rng, clip.n_choices - 1)[:clip.keep]],
        canon=_count_canon(1, n, format_count, parse_count),
        hint="Options are whole numbers written as numerals.",
        meta={"value": n, "labels": clip.present})


def sequencing(clip: Clip, rng: random.Random) -> Draft | None:
    # Ties in onset are ordered by label, so the order never depends on the file's.
    order = sorted((t, lab) for lab, (t, _) in onsets_and_counts(clip.events).items())
    if len(order) < 2 or order[1][0] - order[0][0] < MIN_ORDER_GAP_S:
        return None
    if len(order) > 2 and order[2][0] - order[1][0] < MIN_ORDER_GAP_S:
        return None  # the second sound is not clearly second
    a, b = order[0][1], order[1][1]

    def seq(x: str, y: str) -> str:
        return f"{clip.names[x]}, then {clip.names[y]}"
    others_in = [lab for _, lab in order[2:]]
    outs = rng.sample(clip.absent, min(3, len(clip.absent)))
    outs += rng.sample(clip.reserve, min(3 - len(outs), len(clip.reserve)))
    cands = [seq(x, y) for x in clip.present for y in clip.present
             if x != y and (x, y) != (a, b) and (x, y) != (b, a)]
    cands += [seq(a, o) for o in outs] + [seq(o, b) for o in outs] + [seq(b, o) for o in outs]
    rng.shuffle(cands)
    return Draft(
        rng.choice(SEQUENCING_QUESTIONS), seq(a, b), [seq(b, a)] + cands,
        hint="Each option names two sounds in the form '<sound>, then <sound>'.",
        meta={"value": [a, b], "others_in_clip": others_in})


def duration(clip: Clip, rng: random.Random) -> Draft | None:
    by_label = clip.by_label
    eligible = [lab for lab in clip.present if len(by_label[lab]) == 1
                and by_label[lab][0].duration >= MIN_DURATION_S]
    if not eligible:
        return None
    lab = rng.choice(eligible)
    d = by_label[lab][0].duration
    q = quantize_duration(d)
    return Draft(
        rng.choice(DURATION_QUESTIONS).format(x=clip.names[lab]), format_duration(d),
        [format_duration(c) for c in _duration_distractors(q, rng, clip.n_choices - 1, clip.length)[:clip.keep]],
        canon=_duration_canon(q, clip.length),
        hint="Options are durations such as 'about 1.5 seconds'.",
        meta={"value": round(d, 3), "label": lab})


def frequency(clip: Clip, rng: random.Random) -> Draft | None:
    eligible = []
    for lab in clip.present:
        evs = clip.by_label[lab]
        gaps = [b.onset - a.offset for a, b in zip(evs, evs[1:])]
        if len(evs) <= MAX_TIMES and all(g >= MIN_REPEAT_GAP_S for g in gaps):
            eligible.append(lab)
    if not eligible:
        return None
    lab = rng.choice(eligible)
    n = len(clip.by_label[lab])
    return Draft(
        rng.choice(FREQUENCY_QUESTIONS).format(x=clip.names[lab]), format_times(n),
        [format_times(k) for k in _nearby(n, rng, clip.n_choices - 1)[:clip.keep]],
        canon=_count_canon(1, n, format_times, parse_count),
        hint="Options are counts such as 'once', 'twice', 'three times'.",
        meta={"value": n, "label": lab})


def identification(clip: Clip, rng: random.Random) -> Draft | None:
    if not clip.absent and not clip.reserve:
        return None
    names = clip.names
    lab = rng.choice(clip.present)
    wrong = rng.sample(clip.absent, min(clip.keep, len(clip.absent)))
    wrong += rng.sample(clip.reserve, min(clip.n_choices, len(clip.reserve)))
    return Draft(
        rng.choice(IDENTIFICATION_QUESTIONS), names[lab], [names[m] for m in wrong],
        canon=_label_canon([names[m] for m in clip.present]),
        forbidden=[names[m] for m in clip.present if m != lab],
        hint="Each option is the name of one sound; none of them may be in the clip.",
        meta={"value": lab})


#: Question type -> its generator, in the order the types are listed to users.
GENERATORS: dict[str, Callable[[Clip, random.Random], Draft | None]] = {
    "counting": counting,
    "sequencing": sequencing,
    "duration": duration,
    "frequency": frequency,
    "identification": identification,
}
QUESTION_TYPES = tuple(GENERATORS)


def drafts(events: list[Event], names: Mapping[str, str], pool: Sequence[str], extra_pool: Sequence[str],
           rng: random.Random, types: Sequence[str], n_choices: int, length: float | None = None) -> list[Draft]:
    """At most one draft per type in `types`, in that order, for one clip's cleaned events.
    `length` (the clip's seconds) bounds the duration options. Raises ValueError for a type
    the registry does not know."""
    clip = Clip(events, names, pool, extra_pool, n_choices, length)
    out: list[Draft] = []
    for qtype in types:
        make = GENERATORS.get(qtype)
        if make is None:
            raise ValueError(f"unknown question type {qtype!r}; known: {', '.join(QUESTION_TYPES)}")
        draft = make(clip, rng)
        if draft is not None:
            draft.qtype = qtype
            out.append(draft)
    return out


def parse_types(text: str) -> tuple[str, ...]:
    """`--types counting,duration` -> ("counting", "duration"), checked against QUESTION_TYPES."""
    types = tuple(t.strip() for t in text.split(",") if t.strip())
    bad = [t for t in types if t not in QUESTION_TYPES]
    if bad or not types:
        raise argparse.ArgumentTypeError(
            f"unknown question type(s) {', '.join(bad) or '(none given)'}; choose from "
            f"{', '.join(QUESTION_TYPES)}")
    return tuple(dict.fromkeys(types))
