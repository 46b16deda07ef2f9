"""`aqa data mmau-pro`: the multiple-choice items of MMAU-Pro (``test.parquet``) as AQA records.

Sources: the scorer github.com/sonalkum/MMAUPro at 960e93a (evaluate_mmau_pro_comprehensive.py)
reads the columns ``category``, ``question``, ``answer``, ``choices`` (a list), and for
instruction following ``task_identifier`` and ``kwargs``; the dataset card's loaders
(NVIDIA-NeMo/Skills at 0aa29b3, nemo_skills/dataset/mmau-pro/prepare.py) add ``id`` and
``audio_path``, a list of ``data/<uuid>.wav`` paths relative to the folder data.zip extracts
into (the parquet's folder by default). Other columns (``sub-cat``, ``perceptual_skills``,
``reasoning_skills``, ``length_type``, ``transcription``, ...) are kept in ``meta`` as they are.
Third-party loaders of the same file describe open-ended rows with an empty ``choices`` array,
instruction-following rows with a null ``answer``, and some hundreds of rows with several
clips; the real file was not at hand to count them here.

The scorer treats ``category == "open"`` as open-ended (an LLM judge) and
``"instruction following"`` as instruction following (rule checks); every other category is
multiple choice, scored only when ``choices`` has more than one entry. aqa answers by choosing
an option, so it converts the multiple-choice items only; the others are skipped and counted
by kind (``open-ended``, ``instruction-following``, ``no-choices``). An item with more than one
clip (``multi-audio``) is skipped and counted too: no backend takes several clips in one
prompt. ``subset`` is ``mmau-pro-<category>``, as the scorer reports.
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path
from typing import Any

from aqa.data.convert import (ConversionReport, SkipItem, add_converter_arguments, benchmark_audio, collect_items,
                              make_record, plain_options, progress, run_converter, string_id)
from aqa.data.records import AQARecord
from aqa.data.text import clean_whitespace

SOURCE = "mmau-pro"
#: The scorer's two categories that are not multiple choice, and the kind each is skipped as.
NOT_MULTIPLE_CHOICE = {"open": "open-ended", "instruction following": "instruction-following"}
_USED = ("id", "audio_path", "question", "choices", "answer", "category")
#: A note on items whose answer is an option only after normalisation: the scorer compares the
#: answer string with the matched option string exactly, so it can never credit them.
NOTE_NOT_VERBATIM = "answer-not-verbatim-option"


def _plain(value: Any) -> Any:
    """A parquet cell as JSON: NaN (a float column's missing value) as None."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def convert_item(item: dict, *, audio_root: Path, allow_outside_root: bool = False,
                 check_audio: bool = False) -> tuple[AQARecord, bool]:
    category = item.get("category")
    if not isinstance(category, str) or not category.strip():
        raise SkipItem("missing-field", f"'category' must be a non-empty string, got {category!r:.80}")
    if category in NOT_MULTIPLE_CHOICE:
        raise SkipItem(NOT_MULTIPLE_CHOICE[category], f"category {category!r}: not multiple choice")
    raw = item.get("choices")
    if not isinstance(raw, list) or len(raw) < 2:
        # The scorer leaves these out of its multiple-choice accuracy too.
        raise SkipItem("no-choices", f"category {category!r} but choices {raw!r:.80}")
    rid = string_id(item.get("id"))
    if rid is None or not isinstance(item.get("question"), str) or not item["question"].strip():
        raise SkipItem("missing-field", "missing or empty: " + ", ".join(
            k for k, bad in (("id", rid is None), ("question", not isinstance(item.get("question"), str)
                                                    or not item["question"].strip())) if bad))
    paths = item.get("audio_path")
    paths = [paths] if isinstance(paths, str) else paths
    if not isinstance(paths, list) or not paths or not all(isinstance(p, str) and p.strip() for p in paths):
        raise SkipItem("missing-field", f"'audio_path' must be a list of paths, got {item.get('audio_path')!r:.80}")
    if len(paths) > 1:
        raise SkipItem("multi-audio", f"{len(paths)} clips; no backend takes several clips in one prompt")
    notes: list[str] = []
    meta: dict[str, Any] = {}
    choices, answer = plain_options(raw, item.get("answer"), meta, notes)
    if item["answer"] not in raw:
        notes.append(NOTE_NOT_VERBATIM)
    meta.update({k: v for k, v in item.items() if k not in _USED and v is not None})
    meta.update({"original_id": item["id"], "audio_id": paths[0], "category": category,
                 "original_choices": list(raw), "original_answer": item["answer"]})
    audio_path, defects, present = benchmark_audio(paths[0], audio_root, allow_outside_root=allow_outside_root,
                                                   check_audio=check_audio, meta=meta, notes=notes)
    sub = item.get("sub-cat")
    d = {"id": rid, "audio": str(audio_path), "question": clean_whitespace(item["question"]), "choices": choices,
         "answer": answer, "subset": f"{SOURCE}-{clean_whitespace(category).lower()}",
         "question_type": clean_whitespace(sub) if isinstance(sub, str) and sub.strip() else category,
         "source": SOURCE, "split": "test", "meta": meta}
    return make_record(d, audio_path, notes=notes, defects=defects, require_answer=True), present


def read_parquet_rows(path: Path) -> list[dict]:
    """Every row of a parquet file as a dict of JSON values; ValueError naming the file."""
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except OSError:
        raise
    except Exception as e:  # pyarrow's ArrowInvalid for a file that is not parquet
        raise ValueError(f"{path}: not a readable parquet file ({e})") from None
    return [{k: _plain(v) for k, v in row.items()} for row in table.to_pylist()]


def convert_mmau_pro(parquet: str | os.PathLike, audio_root: str | os.PathLike | None = None, *,
                     allow_outside_root: bool = False, check_audio: bool = False,
                     show_progress: bool = True) -> ConversionReport:
    parquet = Path(parquet)
    root = Path(os.path.abspath(audio_root if audio_root is not None else parquet.parent))
    rows = read_parquet_rows(parquet)
    report = ConversionReport(source=SOURCE, split="test", inputs=len(rows), dataset_root=root)
    items = [(f"{parquet}[row {n}]", r) for n, r in enumerate(rows)]
    collect_items(report, progress(items, desc=SOURCE, enabled=show_progress), lambda it: convert_item(
        it, audio_root=root, allow_outside_root=allow_outside_root, check_audio=check_audio), file=parquet)
    return report


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("mmau-pro", help="convert MMAU-Pro's multiple-choice items (test.parquet) to AQA records",
                              description="Convert MMAU-Pro's test.parquet to an AQA JSONL: its multiple-choice items; "
                                          "open-ended, instruction-following and multi-audio items are counted and "
                                          "skipped by kind.")
    p.add_argument("parquet", type=Path, help="test.parquet")
    p.add_argument("--audio-root", type=Path, default=None,
                   help="folder holding data/ (from data.zip; default: the parquet's folder)")
    add_converter_arguments(p, outside_root="accept audio_path values that leave the audio root",
                            check_audio="decode every audio file present (slow); decoding problems become defects")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    return run_converter(lambda: convert_mmau_pro(
        args.parquet, args.audio_root, allow_outside_root=args.allow_outside_root, check_audio=args.check_audio,
        show_progress=not args.no_progress), args.output, fatal=(OSError, ValueError))
