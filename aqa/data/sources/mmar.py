"""`aqa data mmar`: MMAR (``MMAR-meta.jsonl``) as AQA records.

Source: github.com/ddlBoJack/MMAR at 3bce090 (MMAR-meta.jsonl, 1,000 lines). Each line has
``id``, ``audio_path`` (``./audio/<id>.wav``), ``question``, ``choices`` (2 to 6 plain texts),
``answer`` (the text of one of them), ``modality`` (sound, music, speech, and the mixes
mix-sound-music, mix-sound-speech, mix-music-speech, mix-sound-music-speech), ``category``
(Signal / Perception / Semantic / Cultural Layer), ``sub-category``, ``language``, ``source``,
``url``, ``timestamp``, and the reference material ``thinking`` (text), ``cue`` and ``rubric``
(lists). MMAR's evaluation.py reports accuracy per modality, per category and per
sub-category: ``subset`` is ``mmar-<modality>``, ``question_type`` the sub-category, and
``meta`` keeps the category.

The reference reasoning is evaluation material: ``thinking`` goes to
``meta["reference_reasoning"]`` (never ``rationale``, which training reads as a target, and
never the prompt), where `aqa data check --against` compares training rationales with it;
``cue`` and ``rubric`` stay in ``meta`` for MMAR's rubric scorer.

Traps in the real file: four items list an empty last option (``[..., "Word guessing game", ""]``),
left out (note ``empty-choice-dropped``; ``meta["choice_index_of"]`` maps the originals); four
have spaces around an option or the answer, stripped like MMAU's.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from aqa.data.convert import (ConversionReport, SkipItem, add_converter_arguments, benchmark_audio, collect_items,
                              make_record, plain_options, progress, run_converter, string_id)
from aqa.data.records import REFERENCE_REASONING, AQARecord
from aqa.data.text import clean_whitespace
from aqa.io import BadJSONLine, iter_jsonl

SOURCE = "mmar"
MODALITIES = ("sound", "music", "speech", "mix-sound-music", "mix-sound-speech", "mix-music-speech",
              "mix-sound-music-speech")
_TEXT = ("audio_path", "question", "answer", "modality")


def convert_item(item: Any, *, audio_root: Path, allow_outside_root: bool = False,
                 check_audio: bool = False) -> tuple[AQARecord, bool]:
    """One MMAR line as a record, and whether its audio is present; SkipItem when it cannot be one."""
    if not isinstance(item, dict):
        raise SkipItem("not-an-object", f"expected a JSON object, got {type(item).__name__}")
    rid = string_id(item.get("id"))
    missing = [k for k in _TEXT if not isinstance(item.get(k), str) or not item[k].strip()]
    if rid is None or missing:
        raise SkipItem("missing-field", "missing or empty: " + ", ".join((["id"] if rid is None else []) + missing))
    notes: list[str] = []
    meta: dict[str, Any] = {}
    choices, answer = plain_options(item.get("choices"), item["answer"], meta, notes)
    modality = clean_whitespace(item["modality"]).lower()
    if modality not in MODALITIES:
        notes.append("unknown-modality")
    meta.update({
        "original_id": item["id"], "audio_id": item["audio_path"], "modality": modality,
        "category": clean_whitespace(str(item.get("category") or "")),
        "sub-category": clean_whitespace(str(item.get("sub-category") or "")),
        "original_choices": list(item["choices"]), "original_answer": item["answer"],
    })
    for k in ("language", "source", "url", "timestamp", "cue", "rubric"):
        if item.get(k) is not None:
            meta[k] = item[k]
    if isinstance(item.get("thinking"), str) and item["thinking"].strip():
        meta[REFERENCE_REASONING] = item["thinking"].strip()
    audio_path, defects, present = benchmark_audio(item["audio_path"], audio_root, allow_outside_root=allow_outside_root,
                                                   check_audio=check_audio, meta=meta, notes=notes)
    d = {"id": rid, "audio": str(audio_path), "question": clean_whitespace(item["question"]),
         "choices": choices, "answer": answer, "subset": f"{SOURCE}-{modality}",
         "question_type": meta["sub-category"] or meta["category"], "source": SOURCE, "split": "test", "meta": meta}
    return make_record(d, audio_path, notes=notes, defects=defects, require_answer=True), present


def read_mmar(path: Path) -> list[tuple[str, Any]]:
    """(place, item) for every line of MMAR-meta.jsonl; a line that is not JSON is an item that
    `convert_item` refuses, so that it is listed with its line like any other bad row."""
    out: list[tuple[str, Any]] = []
    for lineno, obj in iter_jsonl(path, yield_bad=True):
        out.append((f"{path}:{lineno}", BadLine(obj.problem) if isinstance(obj, BadJSONLine) else obj))
    return out


class BadLine(str):
    """A line of a JSON Lines file that did not parse (its problem as the text)."""


def convert_mmar(jsonl: str | os.PathLike, audio_root: str | os.PathLike | None = None, *,
                 allow_outside_root: bool = False, check_audio: bool = False,
                 show_progress: bool = True) -> ConversionReport:
    """Convert MMAR-meta.jsonl; `audio_root` (default: the file's folder) holds ``audio/``."""
    jsonl = Path(jsonl)
    root = Path(os.path.abspath(audio_root if audio_root is not None else jsonl.parent))
    items = read_mmar(jsonl)
    report = ConversionReport(source=SOURCE, split="test", inputs=len(items), dataset_root=root)

    def one(item):
        if isinstance(item, BadLine):
            raise SkipItem("bad-json", str(item))
        return convert_item(item, audio_root=root, allow_outside_root=allow_outside_root, check_audio=check_audio)

    collect_items(report, progress(items, desc="mmar", enabled=show_progress), one, file=jsonl)
    return report


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("mmar", help="convert MMAR (MMAR-meta.jsonl) to AQA records",
                              description="Convert MMAR-meta.jsonl to an AQA JSONL; subsets by modality. The "
                                          "reference reasoning stays in meta, never in a prompt or a target.")
    p.add_argument("jsonl", type=Path, help="MMAR-meta.jsonl")
    p.add_argument("--audio-root", type=Path, default=None,
                   help="folder holding audio/ (default: the file's folder)")
    add_converter_arguments(p, outside_root="accept audio_path values that leave the audio root",
                            check_audio="decode every audio file present (slow); decoding problems become defects")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    return run_converter(lambda: convert_mmar(
        args.jsonl, args.audio_root, allow_outside_root=args.allow_outside_root, check_audio=args.check_audio,
        show_progress=not args.no_progress), args.output, fatal=(OSError, ValueError))
