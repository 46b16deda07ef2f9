"""`aqa data mmau`: MMAU test-mini (``mmau-test-mini.json``) as AQA records.

Each item has ``id``, ``audio_id`` (``./test-mini-audios/<id>.wav``), ``question``,
``choices`` (plain texts, 2 to 8), ``answer`` (the text of one of them), ``dataset``,
``task`` (sound / music / speech), ``split``, ``category``, ``sub-category``, ``difficulty``.
A record keeps the item's ``id``; ``subset`` is ``mmau-<task>``, ``question_type`` the
sub-category (the category when that is empty), and ``meta`` the category, sub-category,
difficulty, dataset, original id, ``audio_id`` and the original choice and answer strings (the
official scorer compares output text with those strings; `meta["choice_index_of"]` maps
each original option to its stored index when options were merged).

Traps in the real file, handled here:

- Options are never letter-stripped: "F. Scott Fitzgerald" is an option text, not option F.
- 27 items repeat an option verbatim (["one", "three", "three", "zero"]), 16 of them the
  answer itself; records refuse repeated options, so identical options are merged into
  the first (note ``duplicate-choices-merged``). The answer text is unambiguous either way.
- Leading or trailing spaces on options and answers (" First speaker ...", "A dog
  barking "), and on 23 questions: stripped.
- In some items every option but the answer ends in a period; periods that end a sentence
  are stripped from every option so that form no longer marks the answer
  (``stray-trailing-punctuation``); "Washington D.C." and "G#" keep theirs.
- ``category`` is a one-element list (["Reasoning"]) on 13 items: joined to a string
  (note ``category-was-list``).

The full test split (``mmau-test.json``) has the same items without ``answer``: its records
carry ``answer: null`` and the split ``test-unlabelled`` (the item's own split in
``meta["split"]``), for evaluation and `aqa export mmau` only.

The audio is distributed separately: missing files are counted and reported with a few ids,
and the records are written anyway. ``--audio-root`` may be the folder holding
``test-mini-audios/`` or that folder itself.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path, PurePosixPath
from typing import Any

from aqa.data.convert import (ConversionReport, SkipItem, add_converter_arguments, first_of_each_id,
                              format_mismatch, inspect_audio_file, make_record, progress, resolve_item_audio,
                              run_converter)
from aqa.data.records import AQARecord
from aqa.data.text import NOTE_DUPLICATES, clean_whitespace, match_answer, normalise_options

SOURCE = "mmau"
TASKS = ("sound", "music", "speech")
_REQUIRED = ("id", "audio_id", "question", "choices", "task")
#: The split of records from MMAU's full test set, whose file has no answers: records allow a
#: null answer only on such splits, and the item's own split stays in meta.
UNLABELLED_TEST = "test-unlabelled"


def _as_text(value: Any, notes: list[str], key: str) -> str:
    """A metadata field as one string; lists (category: ["Reasoning"]) are joined."""
    if value is None:
        return ""
    if isinstance(value, list):
        notes.append(f"{key}-was-list")
        return "; ".join(clean_whitespace(str(v)) for v in value)
    return clean_whitespace(str(value))


def audio_location(audio_id: str, audio_root: Path) -> str:
    """The path of `audio_id` relative to `audio_root`: as written when that exists or when
    the root holds the audio folder, else the bare file name when the root *is* the audio
    folder (``--audio-root .../test-mini-audios``)."""
    rel = PurePosixPath(audio_id.replace("\\", "/"))
    as_written = str(rel)
    if (audio_root / as_written).exists():
        return as_written
    if (audio_root / rel.name).exists():
        return rel.name
    parts = [p for p in rel.parts if p not in (".", "")]
    if len(parts) > 1 and audio_root.name == parts[-2]:
        return rel.name
    return as_written


def convert_item(item: Any, *, audio_root: Path, allow_outside_root: bool = False,
                 check_audio: bool = False) -> tuple[AQARecord, bool]:
    """One MMAU item as a record, and whether its audio file is present. Raises `SkipItem`
    for an item that cannot be stored."""
    if not isinstance(item, dict):
        raise SkipItem("not-an-object", f"expected a JSON object, got {type(item).__name__}")
    missing = [k for k in _REQUIRED if k not in item]
    if missing:
        raise SkipItem("missing-field", "missing: " + ", ".join(missing))
    labelled = item.get("answer") is not None
    for k in ("id", "audio_id", "question", "task") + (("answer",) if labelled else ()):
        if not isinstance(item[k], str) or not item[k].strip():
            raise SkipItem("missing-field", f"{k!r} must be a non-empty string, got {item[k]!r}")
    raw = item["choices"]
    if not isinstance(raw, list) or not all(isinstance(c, str) for c in raw):
        raise SkipItem("missing-field", "'choices' must be a list of strings")
    notes: list[str] = []
    options = normalise_options(raw, strip_letters=False)
    notes += options.notes
    if len(options.choices) < 2:
        raise SkipItem("too-few-choices", f"{len(options.choices)} distinct option(s): {raw}")
    m = match_answer(item["answer"], options, use_letter=False) if labelled else None
    if m is not None and m.index is None:
        raise SkipItem("answer-matches-no-choice", f"answer {item['answer']!r} is none of {raw}")

    meta: dict[str, Any] = {
        "original_id": item["id"],
        "audio_id": item["audio_id"],
        "dataset": _as_text(item.get("dataset"), notes, "dataset"),
        "category": _as_text(item.get("category"), notes, "category"),
        "sub-category": _as_text(item.get("sub-category"), notes, "sub-category"),
        "difficulty": _as_text(item.get("difficulty"), notes, "difficulty"),
        "original_choices": list(raw),
    }
    if labelled:
        meta["original_answer"] = item["answer"]
    if NOTE_DUPLICATES in notes:
        meta["choice_index_of"] = options.index_of
    task = clean_whitespace(item["task"]).lower()
    if task not in TASKS:
        notes.append("unknown-task")

    rel = audio_location(item["audio_id"], audio_root)
    audio_path = resolve_item_audio(rel, audio_root, audio_root, allow_outside_root=allow_outside_root)
    fmt, audio_defect = inspect_audio_file(audio_path, decode=check_audio)
    present = audio_defect != "audio-missing"
    # A file that is not there yet is reported, not stored: the audio comes separately and a
    # flag in the record would outlive the download. A file that is there and bad is a defect.
    defects = [audio_defect] if audio_defect and present else []
    if fmt and format_mismatch(audio_path, fmt):
        meta["audio_format"] = fmt
        notes.append("audio-format-mismatch")

    split = clean_whitespace(str(item.get("split") or "test-mini"))
    if not labelled:
        meta["split"], split = split, UNLABELLED_TEST
    d = {"id": clean_whitespace(item["id"]), "audio": str(audio_path),
         "question": clean_whitespace(item["question"]), "choices": options.choices,
         "answer": m.index if m is not None else None,
         "subset": f"mmau-{task}", "question_type": meta["sub-category"] or meta["category"],
         "source": SOURCE, "split": split, "meta": meta}
    return make_record(d, audio_path, notes=notes, defects=defects, require_answer=labelled), present


def convert_mmau(json_path: str | os.PathLike, audio_root: str | os.PathLike | None = None, *,
                 allow_outside_root: bool = False, check_audio: bool = False,
                 show_progress: bool = True) -> ConversionReport:
    """Convert an MMAU JSON file (a list of items). `audio_root` defaults to the JSON's
    folder. Bad items are skipped and listed; raises only when the file itself is unusable
    (OSError, ValueError)."""
    json_path = Path(json_path)
    # abspath, so that "--audio-root ." still has a folder name to compare.
    root = Path(os.path.abspath(audio_root if audio_root is not None else json_path.parent))
    with open(json_path, encoding="utf-8") as fh:
        try:
            data = json.load(fh)
        except json.JSONDecodeError as e:
            raise ValueError(f"{json_path}: not valid JSON ({e})") from None
        except UnicodeDecodeError as e:
            # One JSON document: a bad byte spoils all of it, so say where it is.
            raise ValueError(f"{json_path}: not valid UTF-8 (byte 0x{e.object[e.start]:02x} at offset "
                             f"{e.start})") from None
    if not isinstance(data, list):
        raise ValueError(f"{json_path}: expected a JSON list of items, got {type(data).__name__}")
    splits = sorted({str(x.get("split")) for x in data if isinstance(x, dict) and x.get("split")})
    report = ConversionReport(source=SOURCE, split="+".join(splits) or "test-mini", inputs=len(data),
                              dataset_root=root)
    converted: list[tuple[str, int, tuple[AQARecord, bool]]] = []
    for n, item in enumerate(progress(data, desc="mmau", enabled=show_progress)):
        try:
            rec, present = convert_item(item, audio_root=root, allow_outside_root=allow_outside_root,
                                        check_audio=check_audio)
        except SkipItem as e:
            report.skipped(item, e, file=f"{json_path}[{n}]")
            continue
        converted.append((rec.id, n, (rec, present)))
    for rid, _, (rec, present) in first_of_each_id(converted, lambda rid, first, n: report.error(
            "duplicate-id", f"id {rid!r} repeats; later item skipped", file=str(json_path), id=rid)):
        if not present:
            report.missing_audio.append(rid)
        report.records.append(rec)
    return report


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "mmau", help="convert MMAU JSON (test-mini, or the answerless test) to AQA records",
        description="Convert MMAU (mmau-test-mini.json) to an AQA JSONL. The audio is distributed "
                    "separately; missing files are reported, and the records written anyway.")
    p.add_argument("json", type=Path, help="mmau-test-mini.json (or mmau-test.json, without answers)")
    p.add_argument("--audio-root", type=Path, default=None,
                   help="folder holding test-mini-audios/ (or that folder); default: the JSON's folder")
    add_converter_arguments(
        p, outside_root="accept audio_id paths that leave the audio root",
        check_audio="decode every audio file present (slow); decoding problems become defects")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """`aqa data mmau`: 0 when records were written, 1 when none, 2 when the file is unusable."""
    return run_converter(lambda: convert_mmau(
        args.json, args.audio_root, allow_outside_root=args.allow_outside_root, check_audio=args.check_audio,
        show_progress=not args.no_progress), args.output, fatal=(OSError, ValueError))
