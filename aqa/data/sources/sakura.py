"""`aqa data sakura`: SAKURA (a clone of github.com/ckyang1124/SAKURA) as AQA records.

Source: ckyang1124/SAKURA at a1fdb14, ``data/<track>/metadata.json`` for the tracks Animal,
Emotion, Gender and Language (500 clips each). Each file is one JSON object keyed by the
clip's path from the clone's root (``"data/Animal/audio/dog28.wav"``); each value has
``attribute_label``, ``single_instruction``, ``single_answer``, ``multi_instruction`` and
``multi_answer`` (Language adds ``gender``). An instruction ends with its options written
inline, ``"... (a) dog (b) crow (c) cow (d) rooster"``, and an answer is written
``"(a) dog"``. So every clip gives two questions, a single-hop and a multi-hop one: the
benchmark reports each track's two sub-tracks apart, and ``subset`` is
``sakura-<track>-single`` / ``sakura-<track>-multi`` (``question_type`` the track).

The answer's letter picks the option; its text must agree with that option's (the Emotion
track writes 300 answers with a leading space, " (d) angry": stripped). An answer whose
letter names no option, or whose text is another option's, is skipped.

The repository ships its clips but states no licence: run this on your own clone
(``aqa data sakura path/to/SAKURA -o data/sakura.jsonl``), never copy the clips here.
"""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path
from typing import Any

from aqa.data.convert import (ConversionReport, SkipItem, add_converter_arguments, benchmark_audio, collect_items,
                              make_record, progress, read_json_document, run_converter)
from aqa.data.records import AQARecord
from aqa.data.text import clean_whitespace, normalise_option, normalise_options

SOURCE = "sakura"
TRACKS = ("Animal", "Emotion", "Gender", "Language")
HOPS = {"single": "single", "multi": "multi"}
_OPTION = re.compile(r"\(([a-z])\)\s*")
_ANSWER = re.compile(r"^\(([a-z])\)\s*(.*)$", re.S)


def split_inline_options(instruction: str) -> tuple[str, list[str]]:
    """(question, options) of ``"Q? (a) x (b) y"``. The options are the last run of markers
    (a), (b), ... in order, so a "(a)" inside the question's own words is not taken for one."""
    marks = list(_OPTION.finditer(instruction))
    start = None
    for i, m in enumerate(marks):
        if m.group(1) == "a" and [x.group(1) for x in marks[i:]] == [chr(97 + k) for k in range(len(marks) - i)]:
            start = i
            break
    if start is None or len(marks) - start < 2:
        raise SkipItem("no-inline-options", f"no options (a), (b), ... at the end of {instruction!r:.120}")
    run = marks[start:]
    options = [instruction[m.end():(run[k + 1].start() if k + 1 < len(run) else len(instruction))].strip()
               for k, m in enumerate(run)]
    return instruction[:run[0].start()].strip(), options


def convert_question(key: str, value: Any, hop: str, *, track: str, root: Path, allow_outside_root: bool,
                     check_audio: bool) -> tuple[AQARecord, bool]:
    if not isinstance(value, dict):
        raise SkipItem("not-an-object", f"expected a JSON object, got {type(value).__name__}")
    ins, ans = value.get(f"{hop}_instruction"), value.get(f"{hop}_answer")
    if not isinstance(ins, str) or not ins.strip() or not isinstance(ans, str) or not ans.strip():
        raise SkipItem("missing-field", f"'{hop}_instruction' and '{hop}_answer' must be non-empty strings")
    question, raw = split_inline_options(ins)
    m = _ANSWER.match(ans.strip())
    if not m:
        raise SkipItem("answer-matches-no-choice", f"answer {ans!r} is not written '(x) text'")
    k = ord(m.group(1)) - 97
    if k >= len(raw):
        raise SkipItem("answer-matches-no-choice", f"answer {ans!r}: no option ({m.group(1)}) in {raw}")
    if normalise_option(m.group(2)).casefold() != normalise_option(raw[k]).casefold():
        raise SkipItem("answer-matches-no-choice", f"answer {ans!r} names ({m.group(1)}) but that option is {raw[k]!r}")
    notes: list[str] = []
    options = normalise_options(raw, strip_letters=False)
    notes += options.notes
    if len(options.choices) < 2 or any(not c for c in options.choices):
        raise SkipItem("too-few-choices", f"options {raw}")
    stem = Path(key).stem
    meta: dict[str, Any] = {"original_id": key, "audio_id": key, "track": track, "hop": f"{hop}-hop",
                            "original_choices": raw, "original_answer": ans,
                            **{k2: value[k2] for k2 in ("attribute_label", "gender") if k2 in value}}
    if "duplicate-choices-merged" in notes:
        meta["choice_index_of"] = options.index_of
    audio_path, defects, present = benchmark_audio(key, root, allow_outside_root=allow_outside_root,
                                                   check_audio=check_audio, meta=meta, notes=notes)
    d = {"id": f"{track.lower()}-{stem}-{hop}", "audio": str(audio_path), "question": clean_whitespace(question),
         "choices": options.choices, "answer": options.index_of[k], "subset": f"{SOURCE}-{track.lower()}-{hop}",
         "question_type": track.lower(), "source": SOURCE, "split": "test", "meta": meta}
    return make_record(d, audio_path, notes=notes, defects=defects, require_answer=True), present


def convert_sakura(clone: str | os.PathLike, *, allow_outside_root: bool = False, check_audio: bool = False,
                   show_progress: bool = True) -> ConversionReport:
    """Convert every ``data/<track>/metadata.json`` of a SAKURA clone (at least one must be
    there); the clip paths are read from the clone's root."""
    root = Path(os.path.abspath(clone))
    files = [(t, root / "data" / t / "metadata.json") for t in TRACKS if (root / "data" / t / "metadata.json").is_file()]
    if not files:
        raise FileNotFoundError(f"{root}: no data/<track>/metadata.json (tracks {', '.join(TRACKS)}); "
                                f"expected a clone of github.com/ckyang1124/SAKURA")
    report = ConversionReport(source=SOURCE, split="test", dataset_root=root)
    for track, path in files:
        data = read_json_document(path)
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a JSON object keyed by clip path, got {type(data).__name__}")
        items = [(f"{path}[{key!r}] {hop}-hop", (key, value, hop)) for key, value in data.items() for hop in HOPS]
        report.inputs += len(items)
        collect_items(report, progress(items, desc=f"{SOURCE} {track}", enabled=show_progress),
                      lambda it, track=track: convert_question(*it, track=track, root=root,
                                                               allow_outside_root=allow_outside_root,
                                                               check_audio=check_audio), file=path)
    report.records.sort(key=lambda r: r.id)
    report.missing_audio.sort()
    return report


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("sakura", help="convert SAKURA (a clone of ckyang1124/SAKURA) to AQA records",
                              description="Convert SAKURA's data/<track>/metadata.json files to an AQA JSONL: two "
                                          "questions per clip, single-hop and multi-hop, as subsets per track.")
    p.add_argument("clone", type=Path, help="the SAKURA clone (the folder holding data/Animal/, ...)")
    add_converter_arguments(p, outside_root="accept clip paths that leave the clone",
                            check_audio="decode every audio file present (slow); decoding problems become defects")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    return run_converter(lambda: convert_sakura(
        args.clone, allow_outside_root=args.allow_outside_root, check_audio=args.check_audio,
        show_progress=not args.no_progress), args.output, fatal=(OSError, ValueError))
