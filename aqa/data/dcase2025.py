"""`aqa data dcase2025`: the DCASE 2025 Challenge Task 5 question files as AQA records.

Layout (DESIGN 2.2): ``ROOT/dcase_2025_question_path/{train,dev,eval}/*.json``, one question
per file with ``question``, ``choice`` ("A. text", ...), ``answer`` (one of those strings),
``id``, ``audio_url`` (relative to the JSON file) and ``question_type``; audio under
``ROOT/local_audio_path/``. ROOT may also be the question folder itself
(``dcase_2025_question_path``) or the split's folder; the dataset root, inside which every
audio path must stay, is then the folder above the question folder.

What each record holds, and the known defects of the real data:

- ``subset`` comes from the audio file's name: ``fold*`` is TSQA, ``audio*`` CQA, the rest BQA.
- ``choices`` lose their letter prefix and stray trailing punctuation (a trailing comma the
  answer lacks); the source strings stay in ``meta["original_choices"]`` and
  ``meta["original_answer"]``, the normalisations applied in ``meta["notes"]``.
- ``answer`` is matched to the options by its letter and by its text separately
  (`aqa.data.text.match_answer`). When they disagree the record keeps the index the letter
  names, lists ``answer-letter-text-mismatch`` in ``meta["defects"]`` and both candidate
  indices in ``meta["answer_candidates"]``: the letter is the source's explicit label and
  nothing in the file says which side is wrong, so the record is flagged, not repaired.
  ``--drop-flagged`` leaves flagged records out. An answer that names no option at all (no
  valid letter, no matching text) cannot be stored on a labelled split and is skipped.
- Audio: a missing or empty file is a defect in ``meta["defects"]``, not an error; an MP3
  named ``.wav`` (hundreds in the real dev set) is a note (``audio-format-mismatch``, with
  ``meta["audio_format"]``) since `aqa.data.audio.load_audio` decodes by content. With
  ``--check-audio`` every file is decoded and decoding problems become defects too.
  An ``audio_url`` that leaves the dataset root is refused (the item is skipped and
  reported) unless ``--allow-outside-root``.
- The eval split has no answers: ``answer`` is null and ``split`` is ``eval``.

Items that cannot become a record (bad JSON, missing fields, fewer than two options,
duplicate ids, ...) are skipped and listed, with their file, in the report written next to
the output (``OUT.report.json``). Output order is sorted by id, so reruns are byte-identical.

`ConversionReport`, `SkipItem` and `inspect_audio_file` are shared with the other converters.
"""

from __future__ import annotations

import argparse
import json
import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

from aqa.data.records import AQARecord, PathOutsideRoot, RecordError, resolve_audio_path, write_records
from aqa.data.text import NOTE_DUPLICATES, clean_whitespace, match_answer, normalise_options
from aqa.io import write_json

T = TypeVar("T")

SOURCE = "dcase2025"
SPLITS = ("train", "dev", "eval")
QUESTION_DIR = "dcase_2025_question_path"
AUDIO_DIR = "local_audio_path"
#: Splits published without answers.
UNLABELLED = frozenset({"eval"})
#: How many example ids a summary line names.
EXAMPLES = 5

_EXT_FORMAT = {".wav": "wav", ".wave": "wav", ".mp3": "mp3", ".flac": "flac", ".ogg": "ogg",
               ".oga": "ogg", ".opus": "ogg", ".m4a": "mp4", ".mp4": "mp4", ".aac": "aac",
               ".aif": "aiff", ".aiff": "aiff"}


# ---------------------------------------------------------------------------------------------
# Shared by the converters


@dataclass
class ConversionReport:
    """What a converter produced and everything it met on the way.

    `records` are the converted records (sorted by id); `errors` the items skipped, one dict
    each with ``kind``, ``file``, ``id``, ``problem``; `dropped` the ids left out by
    ``--drop-flagged``; `missing_audio` the ids whose audio file is absent."""

    source: str
    split: str
    inputs: int = 0
    records: list[AQARecord] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    missing_audio: list[str] = field(default_factory=list)
    outputs: list[Path] = field(default_factory=list)

    def error(self, kind: str, problem: str, *, file: str | os.PathLike | None = None,
              id: str | None = None) -> None:
        self.errors.append({"kind": kind, "file": None if file is None else str(file), "id": id,
                            "problem": problem})

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
    ``<out without .jsonl>.report.json``, both atomically. Returns the two paths."""
    out = Path(out)
    # Resolved, because ".." in a relative path climbs the physical folder, not a symlink.
    jsonl = write_records(out, report.records, relative_to=out.parent.resolve())
    report_path = out.with_name(out.name.removesuffix(".jsonl") + ".report.json")
    report.outputs = [jsonl, report_path]
    write_json(report_path, report.to_dict())
    return report.outputs


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


def progress(iterable: Iterable[T], *, desc: str, total: int | None = None,
             enabled: bool = True) -> Iterable[T]:
    """tqdm on a terminal, the bare iterable elsewhere (tqdm decides when `enabled`)."""
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, total=total, unit="item", disable=None if enabled else True,
                leave=False)


# ---------------------------------------------------------------------------------------------
# DCASE 2025 Task 5


def subset_for_audio(name: str) -> str:
    """The Task 5 part a question belongs to, from its audio file's name."""
    base = PurePosixPath(name.replace("\\", "/")).name.lower()
    if base.startswith("fold"):
        return "tsqa"
    if base.startswith("audio"):
        return "cqa"
    return "bqa"


def locate_questions(root: str | os.PathLike, split: str) -> tuple[Path, Path]:
    """(folder holding the split's question files, dataset root). Accepts the dataset root,
    the question folder, or the split's folder itself; raises FileNotFoundError otherwise."""
    # abspath, so that the parent of "." or ".." is the real folder above.
    root = Path(os.path.abspath(root))
    candidates = [(root / QUESTION_DIR / split, root), (root / split, root.parent)]
    if root.name == split:
        candidates.append((root, root.parent.parent))
    for qdir, droot in candidates:
        if qdir.is_dir():
            return qdir, droot
    tried = ", ".join(str(q) for q, _ in candidates)
    raise FileNotFoundError(f"no question folder for split {split!r} under {root} (looked for {tried})")


class SkipItem(Exception):
    """An item that cannot become a record; `kind` names why (it keys the report's counts)."""

    def __init__(self, kind: str, problem: str):
        super().__init__(problem)
        self.kind, self.problem = kind, problem


def locate_audio(path: str, base: Path, root: Path, *, allow_outside_root: bool, decode: bool,
                 meta: dict, notes: list, defects: list) -> Path:
    """Resolve an item's audio path (SkipItem when it leaves the root) and record what the file
    is: its format in meta, a missing or empty file as a defect, an extension that lies as a note."""
    try:
        audio_path = resolve_audio_path(path.strip(), base, root, allow_outside_root=allow_outside_root)
    except PathOutsideRoot as e:
        raise SkipItem("audio-outside-root", str(e)) from None
    fmt, audio_defect = inspect_audio_file(audio_path, decode=decode)
    if audio_defect:
        defects.append(audio_defect)
    if fmt:
        meta["audio_format"] = fmt
        if format_mismatch(audio_path, fmt):
            notes.append("audio-format-mismatch")
    return audio_path


def convert_question(obj: Any, *, json_path: Path, dataset_root: Path, split: str,
                     allow_outside_root: bool = False, check_audio: bool = False) -> AQARecord:
    """One question object as a record (its `audio_path` resolved, `audio` absolute).
    Raises `SkipItem` for an item that cannot be stored."""
    if not isinstance(obj, dict):
        raise SkipItem("not-an-object", f"expected a JSON object, got {type(obj).__name__}")
    notes: list[str] = []
    defects: list[str] = []
    rid = obj.get("id")
    if isinstance(rid, (int, float)) and not isinstance(rid, bool):
        rid = str(rid)
    if not isinstance(rid, str) or not rid.strip():
        rid = json_path.stem
        notes.append("id-from-filename")
    rid = rid.strip()
    question = obj.get("question")
    if not isinstance(question, str) or not question.strip():
        raise SkipItem("missing-field", "'question' missing or empty")
    raw_choices = obj.get("choice", obj.get("choices"))
    if not isinstance(raw_choices, list) or not all(isinstance(c, str) for c in raw_choices):
        raise SkipItem("missing-field", "'choice' missing or not a list of strings")
    audio_url = obj.get("audio_url")
    if not isinstance(audio_url, str) or not audio_url.strip():
        raise SkipItem("missing-field", "'audio_url' missing or empty")

    options = normalise_options(raw_choices, strip_letters=True)
    notes += options.notes
    if len(options.choices) < 2:
        raise SkipItem("too-few-choices",
                       f"{len(options.choices)} distinct option(s) after normalisation: {raw_choices}")
    if any(not c for c in options.choices):
        raise SkipItem("empty-choice", f"an option is empty: {raw_choices}")

    meta: dict[str, Any] = {"file": _relative(json_path, dataset_root), "audio_url": audio_url,
                            "original_choices": list(raw_choices)}
    raw_answer = obj.get("answer")
    if raw_answer is not None:
        meta["original_answer"] = raw_answer
    answer: int | None = None
    if split not in UNLABELLED:
        if not isinstance(raw_answer, str) or not raw_answer.strip():
            raise SkipItem("answer-missing", f"'answer' missing or not a string: {raw_answer!r}")
        m = match_answer(raw_answer, options, use_letter=True)
        if m.index is None:
            raise SkipItem("answer-matches-no-choice",
                           f"answer {raw_answer!r} names no option by letter or text: {raw_choices}")
        answer = m.index
        defects += m.defects
        if m.defects:
            meta["answer_candidates"] = {"letter": m.by_letter, "text": m.by_text}
    if NOTE_DUPLICATES in notes:
        meta["choice_index_of"] = options.index_of

    audio_path = locate_audio(audio_url, json_path.parent, dataset_root, allow_outside_root=allow_outside_root,
                              decode=check_audio, meta=meta, notes=notes, defects=defects)

    if notes:
        meta["notes"] = notes
    if defects:
        meta["defects"] = defects
    qtype = obj.get("question_type")
    d = {"id": rid, "audio": str(audio_path), "question": clean_whitespace(question),
         "choices": options.choices, "answer": answer, "subset": subset_for_audio(audio_url),
         "question_type": clean_whitespace(qtype) if isinstance(qtype, str) else "",
         "source": SOURCE, "split": split, "meta": meta}
    try:
        rec = AQARecord.from_dict(d, require_answer=split not in UNLABELLED)
    except RecordError as e:
        raise SkipItem("invalid-record", e.problem) from None
    rec.audio_path = audio_path
    return rec


def _relative(path: Path, root: Path) -> str:
    try:
        return Path(os.path.relpath(path, root)).as_posix()
    except ValueError:  # another drive on Windows
        return path.as_posix()


def convert_dcase2025(root: str | os.PathLike, split: str, *, drop_flagged: bool = False,
                      allow_outside_root: bool = False, check_audio: bool = False,
                      show_progress: bool = True) -> ConversionReport:
    """Convert one split. Never raises for a bad item: it is skipped and listed in the
    report. Raises FileNotFoundError when no question folder is found."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    qdir, droot = locate_questions(root, split)
    report = ConversionReport(source=SOURCE, split=split)
    files = sorted(qdir.glob("*.json"))
    converted: list[tuple[str, str, AQARecord]] = []
    for path in progress(files, desc=f"dcase2025 {split}", enabled=show_progress):
        try:
            # utf-8-sig: a byte-order mark is harmless, not a reason to drop a question.
            with open(path, encoding="utf-8-sig") as fh:
                obj = json.load(fh)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            report.inputs += 1
            report.error("bad-json", f"not valid JSON: {e}", file=path)
            continue
        except OSError as e:
            report.inputs += 1
            report.error("unreadable", str(e), file=path)
            continue
        # A file holding a list of questions is read item by item.
        items = obj if isinstance(obj, list) else [obj]
        for item in items:
            report.inputs += 1
            item_id = item.get("id") if isinstance(item, dict) else None
            try:
                rec = convert_question(item, json_path=path, dataset_root=droot, split=split,
                                       allow_outside_root=allow_outside_root, check_audio=check_audio)
            except SkipItem as e:
                report.error(e.kind, e.problem, file=path, id=None if item_id is None else str(item_id))
                continue
            converted.append((rec.id, str(path), rec))

    keep_records(report, converted, drop_flagged=drop_flagged,
                 on_duplicate=lambda rid, first, file: report.error(
                     "duplicate-id", f"id {rid!r} already used by {first}; this one skipped", file=file, id=rid))
    return report


def keep_records(report: ConversionReport, converted: list, *, drop_flagged: bool, on_duplicate) -> None:
    """Add (id, where, record) triples to the report in id order: the first of a repeated id
    wins (the others go to `on_duplicate(id, first_where, where)`), flagged records are dropped
    on request, and records whose audio is missing are counted."""
    converted.sort(key=lambda t: (t[0], t[1]))
    seen: dict = {}
    for rid, where, rec in converted:
        if rid in seen:
            on_duplicate(rid, seen[rid], where)
            continue
        seen[rid] = where
        if drop_flagged and rec.meta.get("defects"):
            report.dropped.append(rid)
            continue
        if "audio-missing" in (rec.meta.get("defects") or []):
            report.missing_audio.append(rid)
        report.records.append(rec)


# ---------------------------------------------------------------------------------------------
# Command line


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "dcase2025", help="convert DCASE 2025 Task 5 question files to AQA records",
        description="Convert one split of the DCASE 2025 Task 5 data (ROOT/dcase_2025_question_path/"
                    "SPLIT/*.json) to an AQA JSONL. Defects are flagged in each record's meta and "
                    "counted in OUT.report.json; nothing is silently repaired.")
    p.add_argument("root", type=Path, help="dataset root (or its dcase_2025_question_path folder)")
    p.add_argument("--split", required=True, choices=SPLITS)
    p.add_argument("-o", "--output", required=True, type=Path, help="output JSONL")
    p.add_argument("--drop-flagged", action="store_true",
                   help="leave out records with a defect in meta['defects']")
    p.add_argument("--allow-outside-root", action="store_true",
                   help="accept audio_url paths that leave the dataset root")
    p.add_argument("--check-audio", action="store_true",
                   help="decode every audio file (slow); decoding problems become defects")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        report = convert_dcase2025(args.root, args.split, drop_flagged=args.drop_flagged,
                                   allow_outside_root=args.allow_outside_root,
                                   check_audio=args.check_audio, show_progress=not args.no_progress)
    except FileNotFoundError as e:
        print(f"error: {e}")
        return 2
    return finish_conversion(report, args.output)


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
