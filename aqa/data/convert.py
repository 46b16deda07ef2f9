"""What the `aqa data <source>` converters share: the report of what a conversion made and
met, how an item is skipped, where an item's audio is and what is wrong with it, which of
several records with one id is kept, and how a converter command ends.

A converter turns each source item into an `AQARecord` or raises `SkipItem`: no bad item
stops a run. Skipped items are listed with their file in the report, defects and
normalisations stay in each record's ``meta``, and `write_conversion` puts the report next
to the output as ``OUT.report.json``.
"""

from __future__ import annotations

import argparse
import os
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from aqa.data.records import (AQARecord, PathOutsideRoot, RecordError, resolve_audio_path, root_file,
                              write_records)
from aqa.data.text import Options, normalise_options
from aqa.io import write_json

T = TypeVar("T")
W = TypeVar("W")

#: How many example ids a summary line names.
EXAMPLES = 5

_EXT_FORMAT = {".wav": "wav", ".wave": "wav", ".mp3": "mp3", ".flac": "flac", ".ogg": "ogg",
               ".oga": "ogg", ".opus": "ogg", ".m4a": "mp4", ".mp4": "mp4", ".aac": "aac",
               ".aif": "aiff", ".aiff": "aiff"}


# ---------------------------------------------------------------------------------------------
# The report


@dataclass
class ConversionReport:
    """What a converter produced and everything it met on the way.

    `records` are the converted records (sorted by id); `errors` the items skipped, one dict
    each with ``kind``, ``file``, ``id``, ``problem`` (and ``line`` for line-based inputs);
    `dropped` the ids left out by ``--drop-flagged``; `missing_audio` the ids whose audio
    file is absent."""

    source: str
    split: str
    inputs: int = 0
    records: list[AQARecord] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    missing_audio: list[str] = field(default_factory=list)
    outputs: list[Path] = field(default_factory=list)
    #: The folder the audio paths were checked against; recorded beside an output that lies
    #: outside it, so that readers of the output accept the paths (`records.write_root`).
    dataset_root: Path | None = None

    def error(self, kind: str, problem: str, *, file: str | os.PathLike | None = None,
              id: str | None = None, line: int | None = None) -> None:
        entry: dict[str, Any] = {"kind": kind, "file": None if file is None else str(file), "id": id,
                                 "problem": problem}
        if line is not None:
            entry["line"] = line
        self.errors.append(entry)

    def skipped(self, item: Any, e: SkipItem, *, file: str | os.PathLike, line: int | None = None) -> None:
        """List `item`, which raised `e`, under the id it carries (if any)."""
        item_id = item.get("id") if isinstance(item, dict) else None
        self.error(e.kind, e.problem, file=file, id=None if item_id is None else str(item_id), line=line)

    def subset_counts(self) -> dict[str, int]:
        return dict(sorted(Counter(r.subset for r in self.records).items()))

    def defect_counts(self) -> dict[str, int]:
        return _count_meta_lists(self.records, "defects")

    def note_counts(self) -> dict[str, int]:
        return _count_meta_lists(self.records, "notes")

    def error_counts(self) -> dict[str, int]:
        return dict(sorted(Counter(e["kind"] for e in self.errors).items()))

    def flagged(self) -> int:
        return sum(1 for r in self.records if r.meta.get("defects"))

    def to_dict(self) -> dict[str, Any]:
        """The report file's content: counts, then every skipped item and affected id."""
        return {
            "source": self.source, "split": self.split, "inputs": self.inputs,
            "records": len(self.records), "subsets": self.subset_counts(),
            "flagged_records": self.flagged(), "defects": self.defect_counts(),
            "notes": self.note_counts(), "skipped": self.error_counts(),
            "dropped_flagged": len(self.dropped), "missing_audio": len(self.missing_audio),
            "outputs": [str(p) for p in self.outputs],
            "errors": self.errors, "dropped_ids": self.dropped, "missing_audio_ids": self.missing_audio,
        }

    def summary(self) -> str:
        """A few lines for stdout: counts per subset, defects and skips by kind, files."""
        def kinds(d: dict[str, int]) -> str:
            return ", ".join(f"{k} {v}" for k, v in d.items()) if d else "none"

        subsets = kinds(self.subset_counts())
        lines = [f"{self.source} {self.split}: {len(self.records)} records from {self.inputs} items "
                 f"({subsets})"]
        flag_hint = " (meta['defects']; --drop-flagged leaves them out)" if self.flagged() else ""
        lines.append(f"  flagged records: {self.flagged()}{flag_hint}  defects: {kinds(self.defect_counts())}")
        lines.append(f"  normalised: {kinds(self.note_counts())}")
        lines.append(f"  skipped: {len(self.errors)} ({kinds(self.error_counts())})")
        for e in self.errors[:EXAMPLES]:
            rid = f" (id {e['id']})" if e["id"] else ""
            problem = e["problem"] if len(e["problem"]) <= 100 else e["problem"][:97] + "..."
            lines.append(f"    {e['kind']}: {e['file'] or ''}{rid}: {problem}")
        if len(self.errors) > EXAMPLES:
            lines.append(f"    ... {len(self.errors) - EXAMPLES} more in the report file")
        if self.dropped:
            lines.append(f"  dropped (--drop-flagged): {len(self.dropped)}")
        if self.missing_audio:
            ex = ", ".join(self.missing_audio[:EXAMPLES])
            more = ", ..." if len(self.missing_audio) > EXAMPLES else ""
            lines.append(f"  audio missing: {len(self.missing_audio)} (e.g. {ex}{more})")
        if self.outputs:
            lines.append("  wrote: " + ", ".join(str(p) for p in self.outputs))
        return "\n".join(lines)


def _count_meta_lists(records: list[AQARecord], key: str) -> dict[str, int]:
    c: Counter[str] = Counter()
    for r in records:
        c.update(r.meta.get(key) or [])
    return dict(sorted(c.items()))


def write_conversion(report: ConversionReport, out: str | os.PathLike) -> list[Path]:
    """Write the records to `out` (audio paths relative to its folder) and the report to
    ``<out without .jsonl>.report.json``, both atomically, and, when the audio lies outside
    `out`'s folder, the dataset root to ``<out without .jsonl>.root.json``. Returns the paths."""
    out = Path(out)
    # Resolved, because ".." in a relative path climbs the physical folder, not a symlink.
    jsonl = write_records(out, report.records, relative_to=out.parent.resolve(),
                          dataset_root=report.dataset_root)
    report_path = out.with_name(out.name.removesuffix(".jsonl") + ".report.json")
    report.outputs = [jsonl, report_path]
    if root_file(jsonl).is_file():
        report.outputs.append(root_file(jsonl))
    write_json(report_path, report.to_dict())
    return report.outputs


def progress(iterable: Iterable[T], *, desc: str, total: int | None = None,
             enabled: bool = True) -> Iterable[T]:
    """tqdm on a terminal, the bare iterable elsewhere (tqdm decides when `enabled`)."""
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, total=total, unit="item", disable=None if enabled else True,
                leave=False)


# ---------------------------------------------------------------------------------------------
# One item


class SkipItem(Exception):
    """An item that cannot become a record; `kind` names why (it keys the report's counts)."""

    def __init__(self, kind: str, problem: str):
        super().__init__(problem)
        self.kind, self.problem = kind, problem


def string_id(value: Any) -> str | None:
    """An item's id as a stripped string, or None when missing or blank. Numbers are
    accepted, since JSON writers often emit them."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value.strip():
        return None
    return value.strip()


def checked_options(raw_choices: list[str], *, strip_letters: bool) -> Options:
    """`normalise_options`, refusing (SkipItem) an item left with fewer than two options or
    with an empty one."""
    options = normalise_options(raw_choices, strip_letters=strip_letters)
    if len(options.choices) < 2:
        raise SkipItem("too-few-choices",
                       f"{len(options.choices)} distinct option(s) after normalisation: {raw_choices}")
    if any(not c for c in options.choices):
        raise SkipItem("empty-choice", f"an option is empty: {raw_choices}")
    return options


def make_record(fields: dict[str, Any], audio_path: Path, *, notes: list[str], defects: list[str],
                require_answer: bool) -> AQARecord:
    """The record `fields` describe, with the notes and defects met on the way added last to
    its meta and `audio_path` set. A record the format refuses is a SkipItem."""
    meta = fields["meta"]
    if notes:
        meta["notes"] = notes
    if defects:
        meta["defects"] = defects
    try:
        rec = AQARecord.from_dict(fields, require_answer=require_answer)
    except RecordError as e:
        raise SkipItem("invalid-record", e.problem) from None
    rec.audio_path = audio_path
    return rec


# ---------------------------------------------------------------------------------------------
# Audio files


def sniff_audio_format(head: bytes) -> str | None:
    """The container a file's first bytes announce (wav, mp3, aac, flac, ogg, aiff, mp4),
    or None when they announce none of these."""
    if head[:4] in (b"RIFF", b"RIFX", b"RF64") and head[8:12] == b"WAVE":
        return "wav"
    if head[:3] == b"ID3":
        return "mp3"
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0:
        # MPEG frame sync; layer bits 00 is ADTS AAC, anything else MPEG audio.
        return "aac" if (head[1] >> 1) & 3 == 0 else "mp3"
    if head[:4] == b"fLaC":
        return "flac"
    if head[:4] == b"OggS":
        return "ogg"
    if head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC"):
        return "aiff"
    if head[4:8] == b"ftyp":
        return "mp4"
    return None


def inspect_audio_file(path: str | os.PathLike, *, decode: bool = False) -> tuple[str | None, str | None]:
    """(format by content, defect kind or None) for one audio file. Cheap by default: it
    reads the first bytes only. With `decode`, the whole file goes through `load_audio`,
    and an `AudioError` of kind K becomes the defect ``audio-K``."""
    p = Path(path)
    if not p.is_file():
        return None, "audio-missing"
    if p.stat().st_size == 0:
        return None, "audio-empty"
    with open(p, "rb") as fh:
        fmt = sniff_audio_format(fh.read(16))
    if decode:
        from aqa.data.audio import AudioError, load_audio

        try:
            audio = load_audio(p, max_seconds=None, long_policy="keep")
        except AudioError as e:
            return fmt, f"audio-{e.kind}"
        fmt = fmt or audio.format.lower()
    return fmt, None


def format_mismatch(path: str | os.PathLike, fmt: str | None) -> bool:
    """Whether content format `fmt` differs from what the file's extension claims."""
    claimed = _EXT_FORMAT.get(Path(path).suffix.lower())
    return fmt is not None and claimed is not None and claimed != fmt


def resolve_item_audio(path: str, base: Path, root: Path, *, allow_outside_root: bool) -> Path:
    """`resolve_audio_path`, with a path that leaves the root made a SkipItem."""
    try:
        return resolve_audio_path(path, base, root, allow_outside_root=allow_outside_root)
    except PathOutsideRoot as e:
        raise SkipItem("audio-outside-root", str(e)) from None


def locate_audio(path: str, base: Path, root: Path, *, allow_outside_root: bool, decode: bool,
                 meta: dict, notes: list, defects: list) -> Path:
    """Resolve an item's audio path (SkipItem when it leaves the root) and record what the file
    is: its format in meta, a missing or empty file as a defect, an extension that lies as a note."""
    audio_path = resolve_item_audio(path.strip(), base, root, allow_outside_root=allow_outside_root)
    fmt, audio_defect = inspect_audio_file(audio_path, decode=decode)
    if audio_defect:
        defects.append(audio_defect)
    if fmt:
        meta["audio_format"] = fmt
        if format_mismatch(audio_path, fmt):
            notes.append("audio-format-mismatch")
    return audio_path


# ---------------------------------------------------------------------------------------------
# Keeping records


def first_of_each_id(items: Iterable[tuple[str, W, T]], on_duplicate: Callable[[str, W, W], None],
                     ) -> list[tuple[str, W, T]]:
    """(id, where, thing) triples sorted by id then where, the first of each id kept: so the
    earliest place wins, whatever order the items were met in. Each later one goes to
    `on_duplicate(id, first_where, where)`."""
    kept: list[tuple[str, W, T]] = []
    first: dict[str, W] = {}
    for rid, where, thing in sorted(items, key=lambda t: (t[0], t[1])):
        if rid in first:
            on_duplicate(rid, first[rid], where)
            continue
        first[rid] = where
        kept.append((rid, where, thing))
    return kept


def keep_records(report: ConversionReport, converted: Iterable[tuple[str, Any, AQARecord]], *,
                 drop_flagged: bool, on_duplicate: Callable[[str, Any, Any], None]) -> None:
    """Add (id, where, record) triples to the report in id order (`first_of_each_id`),
    flagged records dropped on request, and records whose audio is missing counted."""
    for rid, _, rec in first_of_each_id(converted, on_duplicate):
        if drop_flagged and rec.meta.get("defects"):
            report.dropped.append(rid)
            continue
        if "audio-missing" in (rec.meta.get("defects") or []):
            report.missing_audio.append(rid)
        report.records.append(rec)


# ---------------------------------------------------------------------------------------------
# Command line


def add_converter_arguments(p: argparse.ArgumentParser, *, outside_root: str, drop_flagged: str | None = None,
                            check_audio: str | None = None) -> None:
    """The options every converter command takes: -o, --allow-outside-root, --no-progress,
    and --drop-flagged / --check-audio where it offers them. The strings are their help
    texts, which say what each format's audio paths are called."""
    p.add_argument("-o", "--output", required=True, type=Path, help="output JSONL")
    if drop_flagged is not None:
        p.add_argument("--drop-flagged", action="store_true", help=drop_flagged)
    p.add_argument("--allow-outside-root", action="store_true", help=outside_root)
    if check_audio is not None:
        p.add_argument("--check-audio", action="store_true", help=check_audio)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def finish_conversion(report: ConversionReport, output: Path, hint: str | None = None) -> int:
    """A converter command's ending: write the records and print the summary (exit 0), or,
    when nothing converted, print the summary, `hint` if given, and exit 1 without writing."""
    if not report.records:
        print(report.summary())
        if hint:
            print(f"hint: {hint}")
        print(f"error: no records converted; {output} not written")
        return 1
    write_conversion(report, output)
    print(report.summary())
    return 0


def run_converter(convert: Callable[[], ConversionReport], output: Path, *,
                  fatal: tuple[type[Exception], ...] = (FileNotFoundError,),
                  hint: Callable[[ConversionReport], str | None] | None = None) -> int:
    """A converter command: `convert()`, then `finish_conversion` (0 when records were
    written, 1 when none). An error in `fatal` means the input itself is unusable: it is
    printed and the exit code is 2."""
    try:
        report = convert()
    except fatal as e:
        print(f"error: {e}")
        return 2
    return finish_conversion(report, output, hint=hint(report) if hint else None)


# ---------------------------------------------------------------------------------------------
# Benchmark files (one document of items, audio distributed apart)


def read_json_document(path: str | os.PathLike) -> Any:
    """A whole JSON file; ValueError naming the file (and the offset of a bad byte)."""
    import json

    with open(path, encoding="utf-8") as fh:
        try:
            return json.load(fh)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None
        except UnicodeDecodeError as e:
            # One JSON document: a bad byte spoils all of it, so say where it is.
            raise ValueError(f"{path}: not valid UTF-8 (byte 0x{e.object[e.start]:02x} at offset "
                             f"{e.start})") from None


def benchmark_audio(rel: str, root: Path, *, allow_outside_root: bool, check_audio: bool, meta: dict,
                    notes: list) -> tuple[Path, list[str], bool]:
    """(resolved path, defects, present) of a benchmark item's clip. A file that is not there
    yet is reported, not a defect: benchmark audio comes as a separate download, and a flag
    in the record would outlive it."""
    audio_path = resolve_item_audio(rel.strip(), root, root, allow_outside_root=allow_outside_root)
    fmt, audio_defect = inspect_audio_file(audio_path, decode=check_audio)
    present = audio_defect != "audio-missing"
    if fmt and format_mismatch(audio_path, fmt):
        meta["audio_format"] = fmt
        notes.append("audio-format-mismatch")
    return audio_path, [audio_defect] if audio_defect and present else [], present


def collect_items(report: ConversionReport, items: Iterable[tuple[str, Any]],
                  convert_one: Callable[[Any], tuple[AQARecord, bool]], *, file: str | os.PathLike,
                  id_key: str = "id") -> None:
    """Convert (where, item) pairs into the report: skips listed with their place (and the
    item's `id_key`, the source's own id field), the first of each id kept, absent audio counted."""
    converted: list[tuple[str, int, tuple[AQARecord, bool]]] = []
    for n, (where, item) in enumerate(items):
        try:
            rec, present = convert_one(item)
        except SkipItem as e:
            item_id = string_id(item.get(id_key)) if isinstance(item, dict) else None
            report.error(e.kind, e.problem, file=where, id=item_id)
            continue
        converted.append((rec.id, n, (rec, present)))
    for rid, _, (rec, present) in first_of_each_id(converted, lambda rid, first, n: report.error(
            "duplicate-id", f"id {rid!r} repeats; later item skipped", file=file, id=rid)):
        if not present:
            report.missing_audio.append(rid)
        report.records.append(rec)


#: Note on a record whose source listed an empty option (MMAR has 4 items ending in ``""``).
NOTE_EMPTY_DROPPED = "empty-choice-dropped"


def plain_options(raw: Any, answer: Any, meta: dict, notes: list) -> tuple[list[str], int]:
    """(stored options, answer index) for a benchmark item whose options are plain texts and
    whose answer is one option's text. An empty option is left out (it names nothing and
    records refuse it); where options were merged or left out, ``meta["choice_index_of"]``
    maps each original option to its stored index (-1: left out), so exports can write the
    source's own string. SkipItem when fewer than two options remain or the answer is none."""
    from aqa.data.text import NOTE_DUPLICATES, match_answer

    if not isinstance(raw, list) or not all(isinstance(c, str) for c in raw):
        raise SkipItem("missing-field", f"'choices' must be a list of strings, got {raw!r:.80}")
    if not isinstance(answer, str) or not answer.strip():
        raise SkipItem("missing-field", f"'answer' must be a non-empty string, got {answer!r:.80}")
    kept = [i for i, c in enumerate(raw) if c.strip()]
    options = normalise_options([raw[i] for i in kept], strip_letters=False)
    notes += options.notes
    if len(options.choices) < 2:
        raise SkipItem("too-few-choices", f"{len(options.choices)} distinct option(s): {raw}")
    m = match_answer(answer, options, use_letter=False)
    if m.index is None:
        raise SkipItem("answer-matches-no-choice", f"answer {answer!r} is none of {raw}")
    if len(kept) < len(raw):
        notes.append(NOTE_EMPTY_DROPPED)
    if len(kept) < len(raw) or NOTE_DUPLICATES in notes:
        index_of = [-1] * len(raw)
        for k, i in enumerate(kept):
            index_of[i] = options.index_of[k]
        meta["choice_index_of"] = index_of
    return options.choices, m.index
