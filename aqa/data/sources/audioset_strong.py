"""AudioSet-Strong (or any TSV in its format) turned into temporal multiple-choice QA.

Input: a TSV with header `segment_id start_time_seconds end_time_seconds label` (label is a
MID such as `/m/053hz1`) and `mid_to_display_name.tsv` (`mid<TAB>name`, no header), read by
`aqa.data.events`. Output: AQA records with subset `temporal` and at most one question per
clip for each question type of `aqa.data.question_types` (counting, sequencing, duration,
frequency; identification on request).

Rules that keep every answer defensible (each is a constant, so it can be cited):

1. Events of the same label that overlap or touch are merged into one occurrence: the
   annotators often split one sound into pieces, and a listener hears one.
2. Labels are dropped from a clip when they are unknown (no display name), generic
   (`GENERIC_NAMES`: names of recording conditions or catch-all categories that nobody would
   call "a sound", e.g. "Noise", "Inside, small room"), or, when an AudioSet ontology is
   given, a parent whose event overlaps one of its descendants' events (the "Dog" around
   a "Bark": counting both would count one sound twice).
3. Each question type asks only what the clip's events support (`aqa.data.question_types`:
   `MIN_ORDER_GAP_S`, `MIN_REPEAT_GAP_S`, `MIN_DURATION_S`, `MAX_TIMES`). A clip with no
   usable label, or no question that passes these rules, is skipped and counted.

Distractors come from rules (nearby numbers; other labels of the clip or of the dataset;
the reversed order); an OpenAI-compatible LLM can propose them instead (aqa.data.llm), and
the rules fill in whatever it gets wrong. Randomness comes from one generator per clip,
seeded by (seed, segment_id), so the output is byte-identical for a seed and a clip's
questions do not change when other clips are added or removed.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import sys
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from aqa.data.events import Event, find_audio, merge_occurrences, read_labels, read_ontology, read_strong_tsv
from aqa.data.llm import LLMDistractors, add_llm_arguments, llm_from_args, merge_distractors
from aqa.data.question_types import QUESTION_TYPES, drafts, parse_types
from aqa.data.records import AQARecord, write_records
from aqa.data.spoken import spoken_names

#: What `aqa data audioset-strong` makes unless told otherwise: the four temporal types.
DEFAULT_TYPES = ("counting", "sequencing", "duration", "frequency")
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


def clip_rng(seed: int, segment_id: str) -> random.Random:
    """A generator that depends only on (seed, clip): Python's hash() is salted per process,
    so the key is hashed with sha256."""
    digest = hashlib.sha256(f"{seed}\0{segment_id}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


# ---------------------------------------------------------------------------------------------
# Cleaning


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


def usable_labels(labels: Mapping[str, str], generic_names: Iterable[str] = GENERIC_NAMES) -> list[str]:
    """The MIDs of `labels` that are not generic, sorted (a stable order keeps seeds meaningful)."""
    generic = {g.casefold() for g in generic_names}
    return sorted(m for m, n in labels.items() if n.strip().casefold() not in generic)


# ---------------------------------------------------------------------------------------------
# Questions


def make_questions(segment_id: str, events: Sequence[Event], labels: Mapping[str, str],
                   rng: random.Random, types: Sequence[str] = DEFAULT_TYPES,
                   audio: str | os.PathLike = "", *, pool: Sequence[str] | None = None,
                   extra_pool: Sequence[str] | None = None,
                   names: Mapping[str, str] | None = None, n_choices: int = 4,
                   ontology: Mapping[str, frozenset[str]] | None = None,
                   generic_names: Iterable[str] = GENERIC_NAMES, llm: LLMDistractors | None = None,
                   source: str = "audioset-strong", id_prefix: str = "as-", split: str = "train",
                   limit: int | None = None, length: float | None = None) -> list[AQARecord]:
    """The questions for one clip: at most one per type in `types`, each with `n_choices`
    unique options and the answer at a random position. `events` may be raw (they are
    cleaned here). `pool` is the MIDs that label distractors come from (default: every
    usable label); `names` the text each MID gets (default: `spoken_names(labels)`; pass it
    precomputed when calling per clip on a large label set). A question type the clip cannot
    support (see the module's rules), or that cannot get enough distinct distractors, is
    left out. `audio` becomes the record's audio (and its resolved `audio_path`).
    `extra_pool` (default: every usable label) is drawn from only when `pool` runs short.
    With `limit`, the types are tried in the order given until `limit` questions are made.
    `length` (the clip's seconds) keeps duration options within the clip."""
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
    # One drafts() call for every type unless limited, so that an unlimited call draws from
    # `rng` exactly as it always has (the synthetic data's bytes depend on it).
    groups = [list(types)] if limit is None else [[t] for t in types]
    for group in groups:
        if limit is not None and len(records) >= limit:
            break
        records += _finish(segment_id, drafts(clean, names, pool, extra_pool, rng, group, n_choices, length),
                           rng, audio, audio_path, n_choices=n_choices, llm=llm, source=source,
                           id_prefix=id_prefix, split=split)
    return records


def _finish(segment_id, clip_drafts, rng, audio, audio_path, *, n_choices, llm, source, id_prefix,
            split) -> list[AQARecord]:
    """Records from drafts: LLM suggestions merged with the rules' distractors, options shuffled;
    a draft left without enough distractors is dropped."""
    records: list[AQARecord] = []
    for d in clip_drafts:
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
                   progress: bool = False, per_clip: int | None = 1,
                   durations_within_clip: bool = True) -> tuple[list[AQARecord], ConvertStats]:
    """Questions for every clip, in the order of `clips`. Label distractors are drawn from the
    usable labels that occur in `clips` (sounds the dataset really has), then from the rest
    of `labels` when those run short.

    `per_clip` questions per clip (default 1, as the reference generates: "for each audio
    sample ... randomly generated a type of question", Cai et al., USTC technical report for
    DCASE 2025 Task 5, section 2.2): the clip's generator (`clip_rng(seed, clip)`) shuffles
    `types` and they are tried in that order until `per_clip` questions are made. None makes
    one question per type. `max_per_clip` then keeps a random subset of those (the synthetic
    data's `--questions-per-clip`). `durations_within_clip` keeps duration options within the
    clip's length, read from its audio file's header. `aqa data synth` passes
    ``per_clip=None, durations_within_clip=False``, the behaviour its files were made with.
    Clips without an audio file (unless `require_audio` is False), without usable labels, or
    without any possible question are skipped and counted in the stats."""
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
        order = rng.sample(list(types), len(types)) if per_clip is not None else types
        length = _clip_seconds(audio) if durations_within_clip else None
        recs = make_questions(seg, clean, labels, rng, order, audio, pool=pool,
                              extra_pool=extra_pool, names=names,
                              n_choices=n_choices, generic_names=generic, llm=llm, source=source,
                              id_prefix=id_prefix, split=split, limit=per_clip, length=length)
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


def _clip_seconds(audio: Path) -> float | None:
    """The clip's length from its audio header; None when the header cannot tell (no cap then)."""
    from aqa.data.audio import header_duration

    seconds = header_duration(audio) if Path(audio).is_file() else 0.0
    return seconds or None


def _per_clip(text: str) -> int | None:
    n = int(text)
    if n < 0:
        raise argparse.ArgumentTypeError("--per-clip must be 0 (one per type) or more")
    return n or None


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "audioset-strong", help="AudioSet-Strong TSV -> temporal QA (counting, sequencing, ...)",
        description="Turn strongly labelled audio (AudioSet-Strong TSV format) into temporal "
                    "multiple-choice questions.")
    p.add_argument("tsv", type=Path, help="segment_id, start_time_seconds, end_time_seconds, label")
    p.add_argument("--labels", type=Path, required=True, help="mid_to_display_name.tsv")
    p.add_argument("--audio-root", type=Path, required=True,
                   help="folder holding <segment_id>.wav (or .flac/.mp3/.ogg/.opus/.m4a/.aac/.webm)")
    p.add_argument("-o", "--output", type=Path, required=True, help="output JSONL")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of every random choice, question types included (default 0)")
    p.add_argument("--per-clip", type=_per_clip, default=1, metavar="N",
                   help="questions per clip, their types drawn at random (default 1, as the USTC "
                        "reference; 0: one per type the clip supports)")
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
                                    split=args.split, progress=True, per_clip=args.per_clip)
    out = Path(args.output)
    if records:
        write_records(out, records, relative_to=out.parent.resolve(), dataset_root=args.audio_root)
    print(f"aqa data audioset-strong: {len(records)} questions from {stats.clips_used} of "
          f"{stats.clips} clips")
    for line in stats.lines()[1:]:
        print(line)
    if problems:
        print(f"bad input lines skipped: {len(problems)} (see warnings above)")
    if llm is not None:
        print(f"LLM: {llm.requests} requests, {llm.errors} failed, {stats.llm_distractors} "
              f"questions use its distractors")
    if not records:
        # An empty output would reach training as a file of nothing; the summary above says why.
        print(f"error: no questions made; {out} not written", file=sys.stderr)
        return 1
    print(f"wrote {out}")
    return 0
