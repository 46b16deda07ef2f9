"""AudioSet-Strong (or any TSV in its format) turned into temporal multiple-choice QA.

Input: a TSV with header `segment_id start_time_seconds end_time_seconds label` (label is a
MID such as `/m/053hz1`) and `mid_to_display_name.tsv` (`mid<TAB>name`, no header). Output:
AQA records (DESIGN 2.1) with subset `temporal` and one question per clip for each type:

- counting: how many different sounds the clip holds;
- sequencing: which two sounds come first, in order ("bark, then vehicle horn");
- duration: how long a sound that occurs once lasts ("about 2.5 seconds");
- frequency: how many times one sound occurs ("twice");
- identification: which of the options is present (used for the synthetic data).

Rules that keep every answer defensible (each is a constant below, so it can be cited):

1. Events of the same label that overlap or touch are merged into one occurrence: the
   annotators often split one sound into pieces, and a listener hears one.
2. Labels are dropped from a clip when they are unknown (no display name), generic
   (`GENERIC_NAMES`: names of recording conditions or catch-all categories that nobody would
   call "a sound", e.g. "Noise", "Inside, small room"), or, when an AudioSet ontology is
   given, a parent whose event overlaps one of its descendants' events (the "Dog" around
   a "Bark": counting both would count one sound twice).
3. Sequencing needs the first sounds to start at least `MIN_ORDER_GAP_S` apart; frequency
   needs the occurrences at least `MIN_REPEAT_GAP_S` apart and at most `MAX_TIMES` of them;
   duration needs a sound that occurs once and lasts at least `MIN_DURATION_S`. A clip with
   no usable label, or no question that passes these rules, is skipped and counted.

Distractors come from rules (nearby numbers; other labels of the clip or of the dataset;
the reversed order); an OpenAI-compatible LLM can propose them instead (aqa.data.llm), and
the rules fill in whatever it gets wrong. Randomness comes from one generator per clip,
seeded by (seed, segment_id), so the output is byte-identical for a seed and a clip's
questions do not change when other clips are added or removed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import random
import re
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from aqa.data.llm import LLMDistractors, merge_distractors
from aqa.data.records import AQARecord, write_records
from aqa.textnorm import loose_key

log = logging.getLogger(__name__)

QUESTION_TYPES = ("counting", "sequencing", "duration", "frequency", "identification")
#: What `aqa data audioset-strong` makes unless told otherwise (DESIGN 1: the 4 temporal types).
DEFAULT_TYPES = ("counting", "sequencing", "duration", "frequency")
AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg")

#: Display names (compared case-insensitively) that name a recording condition or a catch-all
#: category rather than a sound a listener could point at; such labels are dropped.
GENERIC_NAMES = frozenset({
    "sound", "sounds", "noise", "background noise", "environmental noise", "static",
    "silence", "sound effect", "unknown sound", "generic impact sounds",
    "miscellaneous sources", "source-ambiguous sounds", "sounds of things", "natural sounds",
    "channel, environment and background", "acoustic environment", "mechanisms",
    "inside, small room", "inside, large room or hall", "inside, public space",
    "outside, urban or manmade", "outside, rural or natural",
})
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

_NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
                 "ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen",
                 "seventeen", "eighteen", "nineteen", "twenty")
_WORD_VALUE = {w: i for i, w in enumerate(_NUMBER_WORDS)}


@dataclass(frozen=True, slots=True)
class Event:
    """One labelled sound event: `label` is a MID, times are seconds from the clip's start."""

    label: str
    onset: float
    offset: float

    @property
    def duration(self) -> float:
        return self.offset - self.onset


# ---------------------------------------------------------------------------------------------
# Numbers as a person says them


def format_count(n: int) -> str:
    """How many different sounds: a numeral ("3"), the way the DCASE questions write counts."""
    return str(int(n))


def format_times(n: int) -> str:
    """How many times: "once", "twice", "three times" ... "ten times", then "11 times"."""
    n = int(n)
    if n == 1:
        return "once"
    if n == 2:
        return "twice"
    return f"{_NUMBER_WORDS[n]} times" if 0 <= n <= 10 else f"{n} times"


def quantize_duration(seconds: float) -> float:
    """Nearest half second, at least half a second (round half up, not to even)."""
    return max(0.5, math.floor(seconds * 2 + 0.5) / 2)


def format_duration(seconds: float) -> str:
    """"about half a second", "about 1 second", "about 1.5 seconds", "about 12 seconds"."""
    q = quantize_duration(seconds)
    if q == 0.5:
        return "about half a second"
    if q == 1:
        return "about 1 second"
    return f"about {q:g} seconds"


def _number(token: str) -> float | None:
    if token in _WORD_VALUE:
        return float(_WORD_VALUE[token])
    try:
        return float(token)
    except ValueError:
        return None


def parse_count(text: str) -> int | None:
    """The whole number an option states: "3", "three", "once", "twice", "4 times"; else None."""
    t = loose_key(text, keep=".").rstrip(". ")
    t = re.sub(r"^(?:about|around|exactly|only|just)\s+", "", t)
    if t in ("once", "one time"):
        return 1
    if t in ("twice", "two times"):
        return 2
    if t == "thrice":
        return 3
    m = re.fullmatch(r"([\w.]+)(?:\s+times?)?", t)
    if not m:
        return None
    v = _number(m.group(1))
    return int(v) if v is not None and v == int(v) else None


def parse_duration(text: str) -> float | None:
    """Seconds an option states: "about 2.5 seconds", "1 s", "two seconds", "half a second"."""
    t = text.casefold()
    if re.search(r"\bhalf (?:a|of a) second\b", t):
        return 0.5
    m = re.search(r"([\d.]+|\b[a-z]+)\s*(?:s|sec|secs|seconds?)\b", t)
    if not m:
        return None
    return _number(m.group(1))


# ---------------------------------------------------------------------------------------------
# Reading


def _report(problems: list[str] | None, path, lineno: int, problem: str, shown: list[int]) -> None:
    msg = f"{path}:{lineno}: {problem}; line skipped"
    if problems is not None:
        problems.append(msg)
    # A badly broken file would otherwise flood the terminal; the full list is in `problems`.
    shown[0] += 1
    if shown[0] <= 20:
        log.warning("%s", msg)
    elif shown[0] == 21:
        log.warning("%s: more bad lines; not showing each", path)


def read_strong_tsv(path: str | os.PathLike, *, problems: list[str] | None = None
                    ) -> dict[str, list[Event]]:
    """Events per segment id, in file order. A line that is not `segment_id, onset, offset,
    label` with 0 <= onset < offset is reported (file and line, logged and appended to
    `problems`) and skipped. Header lines are skipped wherever they appear, so concatenated
    files read fine."""
    clips: dict[str, list[Event]] = {}
    shown = [0]
    with open(path, encoding="utf-8", newline="") as fh:
        for lineno, line in enumerate(fh, 1):
            line = line.rstrip("\r\n")
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            parts = [p.strip() for p in line.split("\t")]
            if parts[0] == "segment_id":
                continue
            if len(parts) != 4:
                _report(problems, path, lineno, f"expected 4 tab-separated fields, got {len(parts)}",
                        shown)
                continue
            seg, on_s, off_s, label = parts
            try:
                onset, offset = float(on_s), float(off_s)
            except ValueError:
                _report(problems, path, lineno, f"times must be numbers, got {on_s!r} and {off_s!r}",
                        shown)
                continue
            if not seg or not label:
                _report(problems, path, lineno, "empty segment_id or label", shown)
            elif not (math.isfinite(onset) and math.isfinite(offset)):
                _report(problems, path, lineno, "times must be finite", shown)
            elif onset < 0:
                _report(problems, path, lineno, f"negative onset {onset:g}", shown)
            elif offset <= onset:
                _report(problems, path, lineno, f"offset {offset:g} is not after onset {onset:g}",
                        shown)
            else:
                clips.setdefault(seg, []).append(Event(label, onset, offset))
    return clips


def read_labels(path: str | os.PathLike, *, problems: list[str] | None = None) -> dict[str, str]:
    """`mid -> display name` from `mid<TAB>name` lines (no header). Malformed lines are
    reported and skipped; a repeated MID keeps its first name."""
    labels: dict[str, str] = {}
    shown = [0]
    with open(path, encoding="utf-8", newline="") as fh:
        for lineno, line in enumerate(fh, 1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            parts = [p.strip() for p in line.split("\t")]
            if len(parts) != 2 or not parts[0] or not parts[1]:
                _report(problems, path, lineno, "expected `mid<TAB>display name`", shown)
                continue
            mid, name = parts
            if mid in labels:
                if labels[mid] != name:
                    _report(problems, path, lineno, f"{mid} named again ({name!r}); keeping "
                                                    f"{labels[mid]!r}", shown)
                continue
            labels[mid] = name
    return labels


def read_ontology(path: str | os.PathLike) -> dict[str, frozenset[str]]:
    """`mid -> all its descendants` from AudioSet's ontology.json (a list of objects with `id`
    and `child_ids`)."""
    with open(path, encoding="utf-8") as fh:
        nodes = json.load(fh)
    children = {n["id"]: list(n.get("child_ids") or ()) for n in nodes}
    memo: dict[str, frozenset[str]] = {}

    def descendants(mid: str, stack: frozenset[str] = frozenset()) -> frozenset[str]:
        if mid in memo:
            return memo[mid]
        out: set[str] = set()
        for c in children.get(mid, ()):
            if c in stack:  # a cycle would be a broken file; do not recurse forever
                continue
            out.add(c)
            out |= descendants(c, stack | {mid})
        memo[mid] = frozenset(out)
        return memo[mid]

    return {mid: descendants(mid) for mid in children}


def spoken_names(labels: Mapping[str, str]) -> dict[str, str]:
    """The name each label gets in question text: the display name's first comma-separated
    part, lower-cased ("Vehicle horn, car horn, honking" -> "vehicle horn"), acronyms kept.
    Where two labels would then share a name, both keep their full display name."""
    def lower(text: str) -> str:
        return " ".join(w if (len(w) > 1 and w.isupper()) else w.lower() for w in text.split())

    short = {mid: lower(name.split(",")[0].strip()) or lower(name) for mid, name in labels.items()}
    uses = Counter(short.values())
    return {mid: (s if uses[s] == 1 else lower(labels[mid])) for mid, s in short.items()}


def find_audio(audio_root: str | os.PathLike, segment_id: str) -> Path | None:
    """`<audio_root>/<segment_id>` with the first extension that exists, else None."""
    for ext in AUDIO_EXTENSIONS:
        p = Path(audio_root) / f"{segment_id}{ext}"
        if p.is_file():
            return p
    return None


def clip_rng(seed: int, segment_id: str) -> random.Random:
    """A generator that depends only on (seed, clip): Python's hash() is salted per process,
    so the key is hashed with sha256."""
    digest = hashlib.sha256(f"{seed}\0{segment_id}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


# ---------------------------------------------------------------------------------------------
# Cleaning


def merge_occurrences(events: Iterable[Event]) -> list[Event]:
    """Same-label events that overlap or touch become one; the result is sorted by onset."""
    by_label: dict[str, list[Event]] = {}
    for e in events:
        by_label.setdefault(e.label, []).append(e)
    out: list[Event] = []
    for label, evs in by_label.items():
        evs.sort(key=lambda e: (e.onset, e.offset))
        cur = evs[0]
        for e in evs[1:]:
            if e.onset <= cur.offset:
                cur = Event(label, cur.onset, max(cur.offset, e.offset))
            else:
                out.append(cur)
                cur = e
        out.append(cur)
    out.sort(key=lambda e: (e.onset, e.offset, e.label))
    return out


def clean_events(events: Sequence[Event], labels: Mapping[str, str], *,
                 generic_names: Iterable[str] = GENERIC_NAMES,
                 ontology: Mapping[str, frozenset[str]] | None = None,
                 dropped: Counter | None = None) -> list[Event]:
    """Apply the module's rules 1 and 2: drop unknown and generic labels and (with an ontology)
    parents overlapping their descendants, then merge overlapping same-label events. Dropped
    and merged events are tallied in `dropped` by reason. Idempotent."""
    generic = {g.casefold() for g in generic_names}
    tally = dropped if dropped is not None else Counter()
    kept: list[Event] = []
    for e in events:
        name = labels.get(e.label)
        if name is None:
            tally["unknown label"] += 1
        elif name.strip().casefold() in generic:
            tally["generic label"] += 1
        else:
            kept.append(e)
    if ontology:
        parents = set()
        for e in kept:
            below = ontology.get(e.label, frozenset())
            if any(o.label in below and o.onset < e.offset and e.onset < o.offset for o in kept):
                parents.add(e.label)
        if parents:
            tally["parent of an overlapping label"] += sum(e.label in parents for e in kept)
            kept = [e for e in kept if e.label not in parents]
    merged = merge_occurrences(kept)
    tally["merged into an overlapping event"] += len(kept) - len(merged)
    return merged


# ---------------------------------------------------------------------------------------------
# Questions


@dataclass
class _Draft:
    """A question before its options are finished (LLM suggestions, shuffling)."""

    qtype: str
    question: str
    answer: str
    fallback: list[str]  # rule-based distractors, most wanted first
    canon: Callable[[str], str | None] | None = None  # how an LLM suggestion is re-worded/vetted
    forbidden: list[str] = field(default_factory=list)  # texts that would also be correct
    hint: str = ""
    meta: dict = field(default_factory=dict)


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


def _duration_distractors(q: float, rng: random.Random, k: int = 3) -> list[float]:
    """Half-second values far enough from `q` that rounding cannot make them right too."""
    gap = max(1.0, 0.3 * q)
    grid = [h / 2 for h in range(1, int(max(20.0, 3 * q) * 2) + 1)]
    return _spread(q, [c for c in grid if abs(c - q) >= gap], k, rng)


def _count_canon(lo: int, answer: int, fmt: Callable[[int], str], parse: Callable[[str], int | None]):
    def canon(text: str) -> str | None:
        v = parse(text)
        return fmt(v) if v is not None and v >= lo and v != answer else None
    return canon


def _duration_canon(q: float):
    def canon(text: str) -> str | None:
        v = parse_duration(text)
        if v is None or v <= 0:
            return None
        c = quantize_duration(v)
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


def _first_onsets(events: Sequence[Event]) -> list[tuple[float, str]]:
    first: dict[str, float] = {}
    for e in events:
        first[e.label] = min(first.get(e.label, e.onset), e.onset)
    return sorted((t, lab) for lab, t in first.items())


def _drafts(events: list[Event], names: Mapping[str, str], pool: Sequence[str],
            extra_pool: Sequence[str], rng: random.Random, types: Sequence[str], n_choices: int
            ) -> list[_Draft]:
    by_label: dict[str, list[Event]] = {}
    for e in events:
        by_label.setdefault(e.label, []).append(e)
    present = sorted(by_label)
    absent: list[str] = []
    reserve: list[str] = []
    if "sequencing" in types or "identification" in types:  # only these name absent sounds
        absent = [m for m in pool if m not in by_label and m in names]
        if len(absent) < max(3, n_choices):
            # Labels of the wider vocabulary, used only when the preferred pool runs short.
            in_pool = set(pool)
            reserve = [m for m in extra_pool if m not in by_label and m not in in_pool and m in names]
    keep = 3 * n_choices  # rule candidates kept: enough to replace every rejected one
    drafts: list[_Draft] = []
    for qtype in types:
        if qtype == "counting":
            n = len(present)
            if n > MAX_TIMES:
                continue
            drafts.append(_Draft(
                qtype, rng.choice(COUNTING_QUESTIONS), format_count(n),
                [format_count(k) for k in _nearby(n, rng, n_choices - 1)[:keep]],
                canon=_count_canon(1, n, format_count, parse_count),
                hint="Options are whole numbers written as numerals.",
                meta={"value": n, "labels": present}))
        elif qtype == "sequencing":
            order = _first_onsets(events)
            if len(order) < 2 or order[1][0] - order[0][0] < MIN_ORDER_GAP_S:
                continue
            if len(order) > 2 and order[2][0] - order[1][0] < MIN_ORDER_GAP_S:
                continue  # the second sound is not clearly second
            a, b = order[0][1], order[1][1]

            def seq(x: str, y: str) -> str:
                return f"{names[x]}, then {names[y]}"
            others_in = [lab for _, lab in order[2:]]
            outs = rng.sample(absent, min(3, len(absent)))
            outs += rng.sample(reserve, min(3 - len(outs), len(reserve)))
            cands = [seq(x, y) for x in present for y in present if x != y and (x, y) != (a, b)
                     and (x, y) != (b, a)]
            cands += [seq(a, o) for o in outs] + [seq(o, b) for o in outs] + [seq(b, o) for o in outs]
            rng.shuffle(cands)
            drafts.append(_Draft(
                qtype, rng.choice(SEQUENCING_QUESTIONS), seq(a, b), [seq(b, a)] + cands,
                hint="Each option names two sounds in the form '<sound>, then <sound>'.",
                meta={"value": [a, b], "others_in_clip": others_in}))
        elif qtype == "duration":
            eligible = [lab for lab in present if len(by_label[lab]) == 1
                        and by_label[lab][0].duration >= MIN_DURATION_S]
            if not eligible:
                continue
            lab = rng.choice(eligible)
            d = by_label[lab][0].duration
            q = quantize_duration(d)
            drafts.append(_Draft(
                qtype, rng.choice(DURATION_QUESTIONS).format(x=names[lab]), format_duration(d),
                [format_duration(c) for c in _duration_distractors(q, rng, n_choices - 1)[:keep]],
                canon=_duration_canon(q),
                hint="Options are durations such as 'about 1.5 seconds'.",
                meta={"value": round(d, 3), "label": lab}))
        elif qtype == "frequency":
            eligible = []
            for lab in present:
                evs = by_label[lab]
                gaps = [b.onset - a.offset for a, b in zip(evs, evs[1:])]
                if len(evs) <= MAX_TIMES and all(g >= MIN_REPEAT_GAP_S for g in gaps):
                    eligible.append(lab)
            if not eligible:
                continue
            lab = rng.choice(eligible)
            n = len(by_label[lab])
            drafts.append(_Draft(
                qtype, rng.choice(FREQUENCY_QUESTIONS).format(x=names[lab]), format_times(n),
                [format_times(k) for k in _nearby(n, rng, n_choices - 1)[:keep]],
                canon=_count_canon(1, n, format_times, parse_count),
                hint="Options are counts such as 'once', 'twice', 'three times'.",
                meta={"value": n, "label": lab}))
        elif qtype == "identification":
            if not absent and not reserve:
                continue
            lab = rng.choice(present)
            wrong = rng.sample(absent, min(keep, len(absent)))
            wrong += rng.sample(reserve, min(n_choices, len(reserve)))
            drafts.append(_Draft(
                qtype, rng.choice(IDENTIFICATION_QUESTIONS), names[lab], [names[m] for m in wrong],
                canon=_label_canon([names[m] for m in present]),
                forbidden=[names[m] for m in present if m != lab],
                hint="Each option is the name of one sound; none of them may be in the clip.",
                meta={"value": lab}))
        else:
            raise ValueError(f"unknown question type {qtype!r}; known: {', '.join(QUESTION_TYPES)}")
    return drafts


def usable_labels(labels: Mapping[str, str], generic_names: Iterable[str] = GENERIC_NAMES) -> list[str]:
    """The MIDs of `labels` that are not generic, sorted (a stable order keeps seeds meaningful)."""
    generic = {g.casefold() for g in generic_names}
    return sorted(m for m, n in labels.items() if n.strip().casefold() not in generic)


def make_questions(segment_id: str, events: Sequence[Event], labels: Mapping[str, str],
                   rng: random.Random, types: Sequence[str] = DEFAULT_TYPES,
                   audio: str | os.PathLike = "", *, pool: Sequence[str] | None = None,
                   extra_pool: Sequence[str] | None = None,
                   names: Mapping[str, str] | None = None, n_choices: int = 4,
                   ontology: Mapping[str, frozenset[str]] | None = None,
                   generic_names: Iterable[str] = GENERIC_NAMES, llm: LLMDistractors | None = None,
                   source: str = "audioset-strong", id_prefix: str = "as-", split: str = "train",
                   ) -> list[AQARecord]:
    """The questions for one clip: at most one per type in `types`, each with `n_choices`
    unique options and the answer at a random position. `events` may be raw (they are
    cleaned here). `pool` is the MIDs that label distractors come from (default: every
    usable label); `names` the text each MID gets (default: `spoken_names(labels)`; pass it
    precomputed when calling per clip on a large label set). A question type the clip cannot
    support (see the module's rules), or that cannot get enough distinct distractors, is
    left out. `audio` becomes the record's audio (and its resolved `audio_path`).
    `extra_pool` (default: every usable label) is drawn from only when `pool` runs short."""
    names = spoken_names(labels) if names is None else names
    clean = clean_events(events, labels, generic_names=generic_names, ontology=ontology)
    if not clean:
        return []
    if pool is None or extra_pool is None:
        usable = usable_labels(labels, generic_names)
        pool = usable if pool is None else pool
        extra_pool = usable if extra_pool is None else extra_pool
    audio_path = Path(audio).resolve() if str(audio) else None
    records: list[AQARecord] = []
    for d in _drafts(clean, names, pool, extra_pool, rng, types, n_choices):
        suggested = None
        if llm is not None:
            suggested = llm.suggest(d.question, d.answer, n_choices - 1, hint=d.hint)
        distractors, from_llm = merge_distractors(suggested, d.answer, d.fallback, n_choices - 1,
                                                  canon=d.canon, forbidden=d.forbidden)
        if len(distractors) < n_choices - 1:
            continue
        choices = distractors + [d.answer]
        rng.shuffle(choices)
        how = "rules" if not from_llm else ("llm" if from_llm == len(distractors) else "llm+rules")
        meta = {"segment_id": segment_id, **d.meta, "distractors": how}
        rec = AQARecord(id=f"{id_prefix}{segment_id}-{d.qtype}", audio=str(audio), question=d.question,
                        choices=choices, answer=choices.index(d.answer), subset="temporal",
                        question_type=d.qtype, source=source, split=split, meta=meta)
        rec.audio_path = audio_path
        records.append(rec)
    return records


# ---------------------------------------------------------------------------------------------
# A whole file


@dataclass
class ConvertStats:
    """What a conversion did, for the summary and for tests."""

    clips: int = 0
    clips_used: int = 0
    skipped: Counter = field(default_factory=Counter)  # reason -> clips
    dropped_events: Counter = field(default_factory=Counter)  # reason -> events
    questions: Counter = field(default_factory=Counter)  # type -> records
    llm_distractors: int = 0  # questions whose options include LLM suggestions

    def lines(self) -> list[str]:
        out = [f"clips: {self.clips} read, {self.clips_used} with questions"]
        for reason, n in sorted(self.skipped.items()):
            out.append(f"  skipped ({reason}): {n}")
        out.append("questions: " + (", ".join(f"{t} {n}" for t, n in sorted(self.questions.items()))
                                    or "none") + f" (total {sum(self.questions.values())})")
        if self.dropped_events:
            out.append("events dropped or merged: " + ", ".join(
                f"{r} {n}" for r, n in sorted(self.dropped_events.items()) if n))
        return out


def convert_strong(clips: Mapping[str, Sequence[Event]], labels: Mapping[str, str],
                   audio_root: str | os.PathLike, *, seed: int = 0,
                   types: Sequence[str] = DEFAULT_TYPES, n_choices: int = 4,
                   ontology: Mapping[str, frozenset[str]] | None = None,
                   generic_names: Iterable[str] = GENERIC_NAMES, llm: LLMDistractors | None = None,
                   source: str = "audioset-strong", id_prefix: str = "as-", split: str = "train",
                   max_per_clip: int | None = None, require_audio: bool = True,
                   progress: bool = False) -> tuple[list[AQARecord], ConvertStats]:
    """Questions for every clip, in the order of `clips`. Label distractors are drawn from the
    usable labels that occur in `clips` (sounds the dataset really has), then from the rest
    of `labels` when those run short. `max_per_clip` keeps
    a random subset of each clip's questions. Clips without an audio file (unless
    `require_audio` is False), without usable labels, or without any possible question are
    skipped and counted in the stats."""
    from tqdm import tqdm

    stats = ConvertStats()
    names = spoken_names(labels)
    generic = {g.casefold() for g in generic_names}
    pool = sorted({e.label for evs in clips.values() for e in evs
                   if e.label in labels and labels[e.label].strip().casefold() not in generic})
    extra_pool = usable_labels(labels, generic)
    records: list[AQARecord] = []
    for seg, events in tqdm(clips.items(), total=len(clips), desc="audioset-strong", unit="clip",
                            disable=not progress):
        stats.clips += 1
        audio = find_audio(audio_root, seg)
        if audio is None:
            if require_audio:
                stats.skipped["no audio file"] += 1
                continue
            audio = Path(audio_root) / f"{seg}.wav"
        clean = clean_events(events, labels, generic_names=generic, ontology=ontology,
                             dropped=stats.dropped_events)
        if not clean:
            stats.skipped["no usable label"] += 1
            continue
        rng = clip_rng(seed, seg)
        recs = make_questions(seg, clean, labels, rng, types, audio, pool=pool,
                              extra_pool=extra_pool, names=names,
                              n_choices=n_choices, generic_names=generic, llm=llm, source=source,
                              id_prefix=id_prefix, split=split)
        if max_per_clip is not None and len(recs) > max_per_clip:
            keep = set(rng.sample(range(len(recs)), max_per_clip))
            recs = [r for i, r in enumerate(recs) if i in keep]
        if not recs:
            stats.skipped["no question possible"] += 1
            continue
        stats.clips_used += 1
        for r in recs:
            stats.questions[r.question_type] += 1
            stats.llm_distractors += r.meta.get("distractors") != "rules"
        records.extend(recs)
    return records, stats


def parse_types(text: str) -> tuple[str, ...]:
    """`--types counting,duration` -> ("counting", "duration"), checked against QUESTION_TYPES."""
    types = tuple(t.strip() for t in text.split(",") if t.strip())
    bad = [t for t in types if t not in QUESTION_TYPES]
    if bad or not types:
        raise argparse.ArgumentTypeError(
            f"unknown question type(s) {', '.join(bad) or '(none given)'}; choose from "
            f"{', '.join(QUESTION_TYPES)}")
    return tuple(dict.fromkeys(types))


def add_llm_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("LLM distractors (optional; rule-based distractors otherwise)")
    g.add_argument("--llm-base-url", help="OpenAI-compatible server, e.g. http://localhost:8000/v1")
    g.add_argument("--llm-model", help="model name to request")
    g.add_argument("--llm-api-key-env", metavar="VAR",
                   help="name of the environment variable holding the API key (never the key)")
    g.add_argument("--llm-timeout", type=float, default=30.0, help="seconds per request")


def llm_from_args(args: argparse.Namespace) -> LLMDistractors | None:
    """The LLM helper the options ask for, or None. Raises ValueError on half-given options."""
    if not args.llm_base_url and not args.llm_model:
        return None
    if not (args.llm_base_url and args.llm_model):
        raise ValueError("--llm-base-url and --llm-model go together")
    from aqa.data.llm import ChatClient

    return LLMDistractors(ChatClient(args.llm_base_url, args.llm_model, args.llm_api_key_env,
                                     timeout=args.llm_timeout))


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "audioset-strong", help="AudioSet-Strong TSV -> temporal QA (counting, sequencing, ...)",
        description="Turn strongly labelled audio (AudioSet-Strong TSV format) into temporal "
                    "multiple-choice questions.")
    p.add_argument("tsv", type=Path, help="segment_id, start_time_seconds, end_time_seconds, label")
    p.add_argument("--labels", type=Path, required=True, help="mid_to_display_name.tsv")
    p.add_argument("--audio-root", type=Path, required=True,
                   help="folder holding <segment_id>.wav (or .flac/.mp3/.ogg)")
    p.add_argument("-o", "--output", type=Path, required=True, help="output JSONL")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--types", type=parse_types, default=DEFAULT_TYPES,
                   help=f"comma-separated, from {','.join(QUESTION_TYPES)} "
                        f"(default {','.join(DEFAULT_TYPES)})")
    p.add_argument("--choices", type=int, default=4, help="options per question (default 4)")
    p.add_argument("--ontology", type=Path,
                   help="AudioSet ontology.json: drop parent labels that overlap their children")
    p.add_argument("--split", default="train", help="the records' split field (default train)")
    add_llm_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    for what, path in (("TSV", args.tsv), ("labels file", args.labels)):
        if not Path(path).is_file():
            print(f"error: {what} {path} not found", file=sys.stderr)
            return 2
    if not Path(args.audio_root).is_dir():
        print(f"error: audio root {args.audio_root} is not a folder", file=sys.stderr)
        return 2
    if args.choices < 2:
        print("error: --choices must be at least 2", file=sys.stderr)
        return 2
    try:
        llm = llm_from_args(args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    problems: list[str] = []
    labels = read_labels(args.labels, problems=problems)
    clips = read_strong_tsv(args.tsv, problems=problems)
    ontology = read_ontology(args.ontology) if args.ontology else None
    records, stats = convert_strong(clips, labels, args.audio_root, seed=args.seed, types=args.types,
                                    n_choices=args.choices, ontology=ontology, llm=llm,
                                    split=args.split, progress=True)
    out = Path(args.output)
    write_records(out, records, relative_to=out.parent.resolve())
    print(f"aqa data audioset-strong: {len(records)} questions from {stats.clips_used} of "
          f"{stats.clips} clips")
    for line in stats.lines()[1:]:
        print(line)
    if problems:
        print(f"bad input lines skipped: {len(problems)} (see warnings above)")
    if llm is not None:
        print(f"LLM: {llm.requests} requests, {llm.errors} failed, {stats.llm_distractors} "
              f"questions use its distractors")
    print(f"wrote {out}")
    return 0 if records else 1
