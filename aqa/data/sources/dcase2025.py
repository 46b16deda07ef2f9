"""`aqa data dcase2025`: the DCASE 2025 Challenge Task 5 question files as AQA records.

Layout: ``ROOT/dcase_2025_question_path/{train,dev,eval}/*.json``, one question
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
The machinery for that (report, skipping, audio checks, first id wins) is `aqa.data.convert`.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path, PurePosixPath
from typing import Any

from aqa.data.convert import (ConversionReport, SkipItem, add_converter_arguments, checked_options,
                              keep_records, locate_audio, make_record, progress, run_converter, string_id)
from aqa.data.records import AQARecord
from aqa.data.text import NOTE_DUPLICATES, clean_whitespace, match_answer

SOURCE = "dcase2025"
SPLITS = ("train", "dev", "eval")
QUESTION_DIR = "dcase_2025_question_path"
AUDIO_DIR = "local_audio_path"
#: Splits published without answers.
UNLABELLED = frozenset({"eval"})


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


def convert_question(obj: Any, *, json_path: Path, dataset_root: Path, split: str,
                     allow_outside_root: bool = False, check_audio: bool = False) -> AQARecord:
    """One question object as a record (its `audio_path` resolved, `audio` absolute).
    Raises `SkipItem` for an item that cannot be stored."""
    if not isinstance(obj, dict):
        raise SkipItem("not-an-object", f"expected a JSON object, got {type(obj).__name__}")
    notes: list[str] = []
    defects: list[str] = []
    rid = string_id(obj.get("id"))
    if rid is None:
        rid = json_path.stem.strip()
        notes.append("id-from-filename")
    question = obj.get("question")
    if not isinstance(question, str) or not question.strip():
        raise SkipItem("missing-field", "'question' missing or empty")
    raw_choices = obj.get("choice", obj.get("choices"))
    if not isinstance(raw_choices, list) or not all(isinstance(c, str) for c in raw_choices):
        raise SkipItem("missing-field", "'choice' missing or not a list of strings")
    audio_url = obj.get("audio_url")
    if not isinstance(audio_url, str) or not audio_url.strip():
        raise SkipItem("missing-field", "'audio_url' missing or empty")

    options = checked_options(raw_choices, strip_letters=True)
    notes += options.notes

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

    qtype = obj.get("question_type")
    d = {"id": rid, "audio": str(audio_path), "question": clean_whitespace(question),
         "choices": options.choices, "answer": answer, "subset": subset_for_audio(audio_url),
         "question_type": clean_whitespace(qtype) if isinstance(qtype, str) else "",
         "source": SOURCE, "split": split, "meta": meta}
    return make_record(d, audio_path, notes=notes, defects=defects, require_answer=split not in UNLABELLED)


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
    report = ConversionReport(source=SOURCE, split=split, dataset_root=droot)
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
            try:
                rec = convert_question(item, json_path=path, dataset_root=droot, split=split,
                                       allow_outside_root=allow_outside_root, check_audio=check_audio)
            except SkipItem as e:
                report.skipped(item, e, file=path)
                continue
            converted.append((rec.id, str(path), rec))

    keep_records(report, converted, drop_flagged=drop_flagged,
                 on_duplicate=lambda rid, first, file: report.error(
                     "duplicate-id", f"id {rid!r} already used by {first}; this one skipped", file=file, id=rid))
    return report


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
    add_converter_arguments(p, drop_flagged="leave out records with a defect in meta['defects']",
                            outside_root="accept audio_url paths that leave the dataset root",
                            check_audio="decode every audio file (slow); decoding problems become defects")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """`aqa data dcase2025`: 0 when records were written, 1 when none, 2 when ROOT holds no split."""
    return run_converter(lambda: convert_dcase2025(
        args.root, args.split, drop_flagged=args.drop_flagged, allow_outside_root=args.allow_outside_root,
        check_audio=args.check_audio, show_progress=not args.no_progress), args.output)
