"""`aqa data airbench`: AIR-Bench Foundation (``Foundation_meta.json``) as AQA records.

Source: github.com/OFA-Sys/AIR-Bench at d5c1bdf (Inference_Foundation.py, score_foundation.py).
The file is one JSON list; each item has ``path``, ``question``, ``choice_a``, ``choice_b``,
``choice_c`` and ``choice_d`` (the last two absent on two-option items: the scripts read them
with ``.get``), ``answer_gt`` (the text of one option), ``task_name``, ``dataset_name`` and
``uniq_id``. The clip lies at ``<root>/<task_name>_<dataset_name>/<path>``, except that for
``Audio_Grounding`` the ``.wav`` of ``path`` is a ``.flac`` on disk (Inference_Foundation.py
replaces the last three characters). score_foundation.py reports accuracy per
``task_name + '_' + dataset_name``: that is the ``subset`` (``airbench-<task>_<dataset>``),
``question_type`` the task name.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from aqa.data.convert import (ConversionReport, SkipItem, add_converter_arguments, benchmark_audio, collect_items,
                              make_record, plain_options, progress, read_json_document, run_converter, string_id)
from aqa.data.records import AQARecord
from aqa.data.text import clean_whitespace

SOURCE = "airbench"
CHOICE_KEYS = ("choice_a", "choice_b", "choice_c", "choice_d")
_TEXT = ("path", "question", "answer_gt", "task_name", "dataset_name")


def clip_path(item: dict) -> str:
    """Where Inference_Foundation.py reads an item's clip, relative to the Foundation folder."""
    rel = f"{item['task_name']}_{item['dataset_name']}/{item['path']}"
    return rel[:-3] + "flac" if item["task_name"] == "Audio_Grounding" else rel


def convert_item(item: Any, *, audio_root: Path, allow_outside_root: bool = False,
                 check_audio: bool = False) -> tuple[AQARecord, bool]:
    if not isinstance(item, dict):
        raise SkipItem("not-an-object", f"expected a JSON object, got {type(item).__name__}")
    rid = string_id(item.get("uniq_id"))
    missing = [k for k in _TEXT if not isinstance(item.get(k), str) or not item[k].strip()]
    if rid is None or missing:
        raise SkipItem("missing-field", "missing or empty: " + ", ".join((["uniq_id"] if rid is None else []) + missing))
    # The scripts write an absent choice_c/choice_d as None; a None between two options would
    # shift the letters the scorer reads, so it is refused rather than closed up.
    raw = [item.get(k) for k in CHOICE_KEYS]
    while raw and raw[-1] is None:
        raw.pop()
    if any(c is None for c in raw):
        raise SkipItem("missing-field", f"a choice between two others is missing: {raw}")
    notes: list[str] = []
    meta: dict[str, Any] = {}
    choices, answer = plain_options(raw, item["answer_gt"], meta, notes)
    task, dataset = clean_whitespace(item["task_name"]), clean_whitespace(item["dataset_name"])
    meta.update({"original_id": item["uniq_id"], "audio_id": item["path"], "task_name": item["task_name"],
                 "dataset_name": item["dataset_name"], "original_choices": raw, "original_answer": item["answer_gt"]})
    audio_path, defects, present = benchmark_audio(clip_path(item), audio_root, allow_outside_root=allow_outside_root,
                                                   check_audio=check_audio, meta=meta, notes=notes)
    d = {"id": rid, "audio": str(audio_path), "question": clean_whitespace(item["question"]), "choices": choices,
         "answer": answer, "subset": f"{SOURCE}-{task}_{dataset}", "question_type": task, "source": SOURCE,
         "split": "foundation", "meta": meta}
    return make_record(d, audio_path, notes=notes, defects=defects, require_answer=True), present


def convert_airbench(json_path: str | os.PathLike, audio_root: str | os.PathLike | None = None, *,
                     allow_outside_root: bool = False, check_audio: bool = False,
                     show_progress: bool = True) -> ConversionReport:
    """Convert Foundation_meta.json; `audio_root` (default: its folder) holds the
    ``<task>_<dataset>/`` folders."""
    json_path = Path(json_path)
    root = Path(os.path.abspath(audio_root if audio_root is not None else json_path.parent))
    data = read_json_document(json_path)
    if not isinstance(data, list):
        raise ValueError(f"{json_path}: expected a JSON list of items, got {type(data).__name__}")
    report = ConversionReport(source=SOURCE, split="foundation", inputs=len(data), dataset_root=root)
    items = [(f"{json_path}[{n}]", it) for n, it in enumerate(data)]
    collect_items(report, progress(items, desc=SOURCE, enabled=show_progress), lambda it: convert_item(
        it, audio_root=root, allow_outside_root=allow_outside_root, check_audio=check_audio), file=json_path, id_key="uniq_id")
    return report


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("airbench", help="convert AIR-Bench Foundation (Foundation_meta.json) to AQA records",
                              description="Convert AIR-Bench's Foundation_meta.json to an AQA JSONL; one subset per "
                                          "task and dataset, as score_foundation.py reports.")
    p.add_argument("json", type=Path, help="Foundation_meta.json")
    p.add_argument("--audio-root", type=Path, default=None,
                   help="the Foundation folder holding <task_name>_<dataset_name>/ (default: the JSON's folder)")
    add_converter_arguments(p, outside_root="accept paths that leave the audio root",
                            check_audio="decode every audio file present (slow); decoding problems become defects")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    return run_converter(lambda: convert_airbench(
        args.json, args.audio_root, allow_outside_root=args.allow_outside_root, check_audio=args.check_audio,
        show_progress=not args.no_progress), args.output, fatal=(OSError, ValueError))
