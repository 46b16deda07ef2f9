"""Numbers and sound names as a question says them, and numbers read back from option text.

Counts of different sounds are numerals ("3", the way the DCASE questions write them), counts
of occurrences are words ("once", "twice", "three times"), durations are rounded to the half
second ("about 1.5 seconds"). The parsers accept the other ways an option may say the same
thing, so that a suggested distractor can be checked and re-worded in this style.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Mapping

from aqa.textnorm import loose_key

_NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
                 "ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen",
                 "seventeen", "eighteen", "nineteen", "twenty")
_WORD_VALUE = {w: i for i, w in enumerate(_NUMBER_WORDS)}


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
    # The period is kept so that "2.5" stays one (non-whole) number.
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


def spoken_names(labels: Mapping[str, str]) -> dict[str, str]:
    """The name each label gets in question text: the display name's first comma-separated
    part, lower-cased ("Vehicle horn, car horn, honking" -> "vehicle horn"), acronyms kept.
    Where two labels would then share a name, both keep their full display name."""
    def lower(text: str) -> str:
        return " ".join(w if (len(w) > 1 and w.isupper()) else w.lower() for w in text.split())

    short = {mid: lower(name.split(",")[0].strip()) or lower(name) for mid, name in labels.items()}
    uses = Counter(short.values())
    return {mid: (s if uses[s] == 1 else lower(labels[mid])) for mid, s in short.items()}
