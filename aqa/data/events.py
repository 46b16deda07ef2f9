"""Strongly labelled sound events: reading them (AudioSet-Strong TSV, label names, ontology),
finding a clip's audio, and what a listener hears in them (occurrences, first onsets).

The strong TSV has the header `segment_id start_time_seconds end_time_seconds label` (label
is a MID such as `/m/053hz1`); `mid_to_display_name.tsv` is `mid<TAB>name` lines without a
header; the ontology is AudioSet's ontology.json. A malformed line is reported with its file
and line and skipped, never fatal.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

#: Lossless first; .m4a and .webm are how downloaders save YouTube's audio (AudioSet's source).
AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".aac", ".webm")
#: Bad lines logged one by one; the rest are counted in one line (all go to `problems`).
_SHOWN_BAD_LINES = 20


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
# Reading


class _BadLines:
    """Reports skipped lines of one file: each to `problems` when given, the first few to the
    log (a badly broken file would otherwise flood the terminal)."""

    def __init__(self, path: str | os.PathLike, problems: list[str] | None):
        self.path, self.problems, self.shown = path, problems, 0

    def __call__(self, lineno: int, problem: str) -> None:
        msg = f"{self.path}:{lineno}: {problem}; line skipped"
        if self.problems is not None:
            self.problems.append(msg)
        self.shown += 1
        if self.shown <= _SHOWN_BAD_LINES:
            log.warning("%s", msg)
        elif self.shown == _SHOWN_BAD_LINES + 1:
            log.warning("%s: more bad lines; not showing each", self.path)


def _tsv_rows(path: str | os.PathLike, *, skip_comments: bool) -> Iterator[tuple[int, list[str]]]:
    """(line number, its tab-separated fields stripped) for each line that is not blank (nor,
    with `skip_comments`, a `#` comment)."""
    with open(path, encoding="utf-8", newline="") as fh:
        for lineno, line in enumerate(fh, 1):
            line = line.rstrip("\r\n")
            if not line.strip() or (skip_comments and line.lstrip().startswith("#")):
                continue
            yield lineno, [p.strip() for p in line.split("\t")]


def read_strong_tsv(path: str | os.PathLike, *, problems: list[str] | None = None
                    ) -> dict[str, list[Event]]:
    """Events per segment id, in file order. A line that is not `segment_id, onset, offset,
    label` with 0 <= onset < offset is reported (file and line, logged and appended to
    `problems`) and skipped. Header lines are skipped wherever they appear, so concatenated
    files read fine."""
    clips: dict[str, list[Event]] = {}
    bad = _BadLines(path, problems)
    for lineno, parts in _tsv_rows(path, skip_comments=True):
        if parts[0] == "segment_id":
            continue
        if len(parts) != 4:
            bad(lineno, f"expected 4 tab-separated fields, got {len(parts)}")
            continue
        seg, on_s, off_s, label = parts
        try:
            onset, offset = float(on_s), float(off_s)
        except ValueError:
            bad(lineno, f"times must be numbers, got {on_s!r} and {off_s!r}")
            continue
        if not seg or not label:
            bad(lineno, "empty segment_id or label")
        elif not (math.isfinite(onset) and math.isfinite(offset)):
            bad(lineno, "times must be finite")
        elif onset < 0:
            bad(lineno, f"negative onset {onset:g}")
        elif offset <= onset:
            bad(lineno, f"offset {offset:g} is not after onset {onset:g}")
        else:
            clips.setdefault(seg, []).append(Event(label, onset, offset))
    return clips


def read_labels(path: str | os.PathLike, *, problems: list[str] | None = None) -> dict[str, str]:
    """`mid -> display name` from `mid<TAB>name` lines (no header). Malformed lines are
    reported and skipped; a repeated MID keeps its first name."""
    labels: dict[str, str] = {}
    bad = _BadLines(path, problems)
    for lineno, parts in _tsv_rows(path, skip_comments=False):
        if len(parts) != 2 or not parts[0] or not parts[1]:
            bad(lineno, "expected `mid<TAB>display name`")
            continue
        mid, name = parts
        if mid in labels:
            if labels[mid] != name:
                bad(lineno, f"{mid} named again ({name!r}); keeping {labels[mid]!r}")
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


def find_audio(audio_root: str | os.PathLike, segment_id: str) -> Path | None:
    """`<audio_root>/<segment_id>` with the first extension that exists, else None."""
    for ext in AUDIO_EXTENSIONS:
        p = Path(audio_root) / f"{segment_id}{ext}"
        if p.is_file():
            return p
    return None


# ---------------------------------------------------------------------------------------------
# What a listener hears


def merge_occurrences(events: Iterable[Event]) -> list[Event]:
    """Same-label events that overlap or touch become one (annotators often split one sound
    into pieces, and a listener hears one); the result is sorted by (onset, offset, label)."""
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


def onsets_and_counts(events: Iterable[Event]) -> dict[str, tuple[float, int]]:
    """label -> (first onset, occurrences), the occurrences counted after `merge_occurrences`.
    Ordered by first onset; labels that start together keep merge_occurrences' order (the
    shorter first occurrence, then the label)."""
    out: dict[str, tuple[float, int]] = {}
    for e in merge_occurrences(events):
        onset, n = out.get(e.label, (e.onset, 0))
        out[e.label] = (onset, n + 1)
    return out
