"""`aqa data dcase2026` and `aqa data audiomcq`: the DCASE 2026 Task 5 (Audio-Dependent QA)
question files and its AudioMCQ training file as AQA records, and the 2026 submission CSV.

Both inputs are JSONL, one question per line:

- DCASE 2026 (``dev.jsonl``, the evaluation file): ``id``, ``audio_path`` (relative to the
  dataset root, e.g. ``dev_audios/x.wav``), ``question_text``, ``multi_choice`` (option
  texts) and ``answer`` (the option *text*; absent or null in the evaluation file). Records
  get subset ``adqa``, source ``dcase2026`` and, when the item carries one, its own
  ``question_type`` (or ``category``).
- AudioMCQ, and the DCASE 2026 training file built from it (AudioMCQ-StrongAC-GeminiCoT,
  ``data.jsonl``, 19,480 items): ``source_dataset``, ``id``, ``question_type``, ``audio_path``,
  ``question``, ``choices``, ``answer`` (text) and a chain of thought. Records get subset
  ``audiomcq-<source_dataset>`` (lower-case, spaces as dashes), source ``audiomcq`` and
  split ``train``.

  The chain of thought becomes the record's ``rationale``, taken from the first of
  `COT_KEYS` the item has as non-empty text: ``gemini_cot`` (the training file's Gemini CoT;
  the name is what two public conversion scripts of that file read, Harland's dataset card
  was not readable here), then ``cot``, ``chain_of_thought`` and ``reasoning`` (this
  converter's earlier guesses for the full AudioMCQ release, whose card names two CoT kinds
  but not their keys; kept so that such files still convert). A CoT that is not text (a
  structured object or a list) cannot be a rationale: it is kept as written in
  ``meta["cot"]`` with the note ``cot-not-text``. The other fields are the ones NVIDIA NeMo
  RL's AudioMCQ loader reads from the same file (nemo_rl/data/datasets/response_datasets/
  audiomcq.py and its test).

What each record holds and how defects are handled:

- ``choices`` are the option texts with whitespace and stray trailing punctuation normalised
  (`aqa.data.text.normalise_options`, no letter stripping: these files write plain texts, and
  stripping would eat "F. Scott Fitzgerald"). The source strings stay in
  ``meta["original_choices"]``, the source id in ``meta["original_id"]`` and the answer
  string in ``meta["original_answer"]``, so an export can write back what the file wrote.
- ``answer`` is the index of the option the answer text names (`aqa.data.text.match_answer`
  by text only). An answer text that names no option, or names two (two source options equal
  after normalisation, or equal but for case), is a defect that cannot be flagged and kept:
  a labelled split cannot hold a null answer and picking one of two would be a guess. The
  item is therefore skipped and listed in the report (``answer-matches-no-choice`` /
  ``answer-matches-several-choices``).
- On the ``eval`` split answers are not read: ``answer`` is null. Converting a file without
  answers as ``dev`` skips every item as ``answer-missing``; the summary then says to pass
  ``--split eval``.
- Audio: ``audio_path`` is resolved against the dataset root (``--audio-root``, default the
  JSONL's folder); a path that leaves it is refused (item skipped and reported) unless
  ``--allow-outside-root``. A missing or empty audio file is a defect in ``meta["defects"]``
  (``--drop-flagged`` leaves such records out), an MP3 named ``.wav`` a note.
- A line that is not JSON, not an object, or lacks a field is skipped and reported with its
  file and line (``file`` is ``PATH:LINE``; ``line`` holds the number). Repeated ids are
  skipped after the first (in line order). Output is sorted by id, so reruns are
  byte-identical; the report goes to ``OUT.report.json`` (`aqa.data.convert.write_conversion`).

The 2026 submission CSV (question id and the chosen option as the question file wrote it,
header ``question,answer`` unless ``--header`` says otherwise) has the 2025 shape, so
``aqa export dcase2026`` writes it with the 2025 code (`aqa.export.export_dcase2025`): one
code path, one set of refusals.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aqa.data.convert import (ConversionReport, SkipItem, add_converter_arguments, checked_options,
                              keep_records, locate_audio, make_record, progress, run_converter, string_id)
from aqa.data.records import AQARecord
from aqa.data.text import NOTE_DUPLICATES, clean_whitespace, match_answer, match_key, normalise_options
from aqa.io import BadJSONLine, iter_jsonl

SOURCE = "dcase2026"
AUDIOMCQ_SOURCE = "audiomcq"
SUBSET = "adqa"
SPLITS = ("dev", "eval")
#: Splits published without answers.
UNLABELLED = frozenset({"eval"})
#: Keys a chain of thought may sit under in AudioMCQ, first present wins (the module docstring
#: says where each name comes from).
COT_KEYS = ("gemini_cot", "cot", "chain_of_thought", "reasoning")
DEFECT_SEVERAL = "answer-matches-several-choices"
DEFECT_NONE = "answer-matches-no-choice"

#: An item converter: (parsed object, dataset root, split, allow_outside_root) -> record.
ItemConverter = Callable[[Any, Path, str, bool], AQARecord]


# ---------------------------------------------------------------------------------------------
# One item


def _string_id(obj: dict) -> str:
    rid = string_id(obj.get("id"))
    if rid is None:
        raise SkipItem("missing-field", "'id' missing or empty")
    return rid


def _text_field(obj: dict, key: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value.strip():
        raise SkipItem("missing-field", f"'{key}' missing or empty")
    return value


def answer_index(raw_answer: Any, raw_choices: list[str]) -> int:
    """The index in ``normalise_options(raw_choices).choices`` of the option `raw_answer`
    names by its text. Raises `SkipItem` when it names none or more than one option."""
    if not isinstance(raw_answer, str) or not raw_answer.strip():
        raise SkipItem("answer-missing", f"'answer' missing or not a string: {raw_answer!r} "
                                         f"(an evaluation file is converted with --split eval)")
    options = normalise_options(raw_choices, strip_letters=False)
    m = match_answer(raw_answer, options, use_letter=False)
    if m.index is not None:
        # The normalised match may land on an option that several source strings merged
        # into ("dog" and "dog."): the answer then names two of the file's options.
        sources = [raw_choices[i] for i, j in enumerate(options.index_of) if j == m.index]
        if len(sources) > 1:
            raise SkipItem(DEFECT_SEVERAL, f"answer {raw_answer!r} names {len(sources)} options "
                                           f"{sources} of {raw_choices}")
        return m.index
    # find_choice returns None both for no match and for a case-insensitive tie; tell them apart
    # so that the report says which defect the file has.
    key = match_key(raw_answer)
    ties = [c for c in options.choices if match_key(c) == key]
    if len(ties) > 1:
        raise SkipItem(DEFECT_SEVERAL, f"answer {raw_answer!r} names {len(ties)} options "
                                       f"{ties} (differing only in case) of {raw_choices}")
    raise SkipItem(DEFECT_NONE, f"answer {raw_answer!r} names no option of {raw_choices}")


def _build_record(*, rid: str, original_id: Any, audio: str, question: str, raw_choices: Any,
                  raw_answer: Any, labelled: bool, subset: str, question_type: str, source: str,
                  split: str, root: Path, allow_outside_root: bool,
                  extra_meta: dict[str, Any] | None = None, rationale: str | None = None,
                  extra_notes: list[str] | None = None) -> AQARecord:
    """What both formats share once their fields are picked out: options, answer, audio
    checks, meta and validation. Raises `SkipItem` for an item that cannot be stored."""
    if not isinstance(raw_choices, list) or not all(isinstance(c, str) for c in raw_choices):
        raise SkipItem("missing-field", "options missing or not a list of strings")
    options = checked_options(raw_choices, strip_letters=False)
    notes = list(options.notes) + list(extra_notes or [])
    defects: list[str] = []

    meta: dict[str, Any] = {"original_id": original_id, "audio_path": audio,
                            "original_choices": list(raw_choices)}
    if raw_answer is not None:
        meta["original_answer"] = raw_answer
    answer = answer_index(raw_answer, raw_choices) if labelled else None
    if NOTE_DUPLICATES in notes:
        # original_choice (aqa.export) needs this to map a merged option back to its source text.
        meta["choice_index_of"] = options.index_of
    if extra_meta:
        meta.update(extra_meta)

    # The path is relative to the dataset root, so the root is also the base it joins.
    audio_path = locate_audio(audio, root, root, allow_outside_root=allow_outside_root, decode=False,
                              meta=meta, notes=notes, defects=defects)
    d = {"id": rid, "audio": str(audio_path), "question": clean_whitespace(question),
         "choices": options.choices, "answer": answer, "subset": subset,
         "question_type": question_type, "source": source, "split": split, "meta": meta}
    if rationale is not None:
        d["rationale"] = rationale
    return make_record(d, audio_path, notes=notes, defects=defects, require_answer=labelled)


def _question_type(obj: dict, *keys: str) -> str:
    for k in keys:
        v = obj.get(k)
        if isinstance(v, str) and v.strip():
            return clean_whitespace(v)
    return ""


def convert_dcase2026_item(obj: Any, root: Path, split: str, allow_outside_root: bool = False) -> AQARecord:
    """One DCASE 2026 question object as a record; raises `SkipItem` when it cannot be one."""
    if not isinstance(obj, dict):
        raise SkipItem("not-an-object", f"expected a JSON object, got {type(obj).__name__}")
    rid = _string_id(obj)
    return _build_record(
        rid=rid, original_id=obj["id"], audio=_text_field(obj, "audio_path"),
        question=_text_field(obj, "question_text"), raw_choices=obj.get("multi_choice"),
        raw_answer=obj.get("answer"), labelled=split not in UNLABELLED, subset=SUBSET,
        question_type=_question_type(obj, "question_type", "category"), source=SOURCE,
        split=split, root=root, allow_outside_root=allow_outside_root)


def audiomcq_subset(source_dataset: str) -> str:
    """``audiomcq-<name>``: the source dataset lower-cased, whitespace runs made one dash."""
    return "audiomcq-" + "-".join(source_dataset.lower().split())


def convert_audiomcq_item(obj: Any, root: Path, split: str = "train",
                          allow_outside_root: bool = False) -> AQARecord:
    """One AudioMCQ object as a record; raises `SkipItem` when it cannot be one."""
    if not isinstance(obj, dict):
        raise SkipItem("not-an-object", f"expected a JSON object, got {type(obj).__name__}")
    rid = _string_id(obj)
    source_dataset = _text_field(obj, "source_dataset")
    extra: dict[str, Any] = {"source_dataset": source_dataset}
    rationale, notes = None, []
    for k in COT_KEYS:
        value = obj.get(k)
        if isinstance(value, str) and value.strip():
            rationale = value
            break
        if value is not None and not isinstance(value, str):
            # A structured CoT has no one text to train on; kept whole so that nothing is lost.
            extra["cot"] = value
            notes.append("cot-not-text")
            break
    return _build_record(
        rid=rid, original_id=obj["id"], audio=_text_field(obj, "audio_path"),
        question=_text_field(obj, "question"), raw_choices=obj.get("choices"),
        raw_answer=obj.get("answer"), labelled=True, subset=audiomcq_subset(source_dataset),
        question_type=_question_type(obj, "question_type"), source=AUDIOMCQ_SOURCE, split=split,
        root=root, allow_outside_root=allow_outside_root, extra_meta=extra, rationale=rationale,
        extra_notes=notes)


# ---------------------------------------------------------------------------------------------
# A whole file


def _convert_jsonl(path: str | os.PathLike, convert: ItemConverter, *, source: str, split: str,
                   audio_root: str | os.PathLike | None, drop_flagged: bool,
                   allow_outside_root: bool, show_progress: bool) -> ConversionReport:
    """Run `convert` over every line of `path`. Never raises for a bad line: it is skipped
    and listed in the report with ``PATH:LINE``. Raises FileNotFoundError for a missing file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    # abspath, so that a relative root and the paths resolved against it agree.
    root = Path(os.path.abspath(audio_root if audio_root is not None else path.parent))
    report = ConversionReport(source=source, split=split, dataset_root=root)
    converted: list[tuple[str, int, AQARecord]] = []

    for lineno, obj in progress(iter_jsonl(path, yield_bad=True), desc=f"{source} {split}",
                                enabled=show_progress):
        report.inputs += 1
        if isinstance(obj, BadJSONLine):
            report.error("bad-json", obj.problem, file=f"{path}:{lineno}", line=lineno)
            continue
        try:
            rec = convert(obj, root, split, allow_outside_root)
        except SkipItem as e:
            report.skipped(obj, e, file=f"{path}:{lineno}", line=lineno)
            continue
        converted.append((rec.id, lineno, rec))

    # Sorted by id then line: the first line of a repeated id wins, whatever the file order.
    keep_records(report, converted, drop_flagged=drop_flagged,
                 on_duplicate=lambda rid, first, lineno: report.error(
                     "duplicate-id", f"id {rid!r} already used on line {first}; this one skipped",
                     file=f"{path}:{lineno}", id=rid, line=lineno))
    return report


def convert_dcase2026(path: str | os.PathLike, *, audio_root: str | os.PathLike | None = None,
                      split: str = "dev", drop_flagged: bool = False,
                      allow_outside_root: bool = False, show_progress: bool = True) -> ConversionReport:
    """Convert a DCASE 2026 Task 5 JSONL (dev or eval). `audio_root` is the dataset root the
    audio paths are relative to (default: the JSONL's folder)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return _convert_jsonl(path, convert_dcase2026_item, source=SOURCE, split=split,
                          audio_root=audio_root, drop_flagged=drop_flagged,
                          allow_outside_root=allow_outside_root, show_progress=show_progress)


def convert_audiomcq(path: str | os.PathLike, *, audio_root: str | os.PathLike | None = None,
                     drop_flagged: bool = False, allow_outside_root: bool = False,
                     show_progress: bool = True) -> ConversionReport:
    """Convert the AudioMCQ training JSONL; every record is split ``train``."""
    return _convert_jsonl(path, convert_audiomcq_item, source=AUDIOMCQ_SOURCE, split="train",
                          audio_root=audio_root, drop_flagged=drop_flagged,
                          allow_outside_root=allow_outside_root, show_progress=show_progress)


# ---------------------------------------------------------------------------------------------
# Command line


def _common_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--audio-root", type=Path,
                   help="dataset root the audio paths are relative to (default: the JSONL's folder)")
    add_converter_arguments(p, drop_flagged="leave out records with a defect in meta['defects'] (e.g. missing audio)",
                            outside_root="accept audio paths that leave the dataset root")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``dcase2026`` and ``audiomcq`` under ``aqa data``."""
    p = subparsers.add_parser(
        "dcase2026", help="convert a DCASE 2026 Task 5 (Audio-Dependent QA) JSONL to AQA records",
        description="Convert a DCASE 2026 Task 5 question file (JSONL: id, audio_path, "
                    "question_text, multi_choice, answer text) to an AQA JSONL. Items whose answer "
                    "names no option or several are skipped and listed in OUT.report.json.")
    p.add_argument("jsonl", type=Path, help="the question file (dev.jsonl or the evaluation file)")
    p.add_argument("--split", default="dev", choices=SPLITS,
                   help="dev (answers required) or eval (answers not read); default dev")
    _common_args(p)
    p.set_defaults(func=run_dcase2026)

    m = subparsers.add_parser(
        "audiomcq", help="convert the AudioMCQ training JSONL to AQA records",
        description="Convert the AudioMCQ training file (JSONL: source_dataset, id, question_type, "
                    "audio_path, question, choices, answer text, chain of thought) to an AQA JSONL "
                    "with subset audiomcq-<source_dataset> and the chain of thought (gemini_cot, cot, "
                    "chain_of_thought or reasoning) as each record's rationale.")
    m.add_argument("jsonl", type=Path, help="the AudioMCQ JSONL")
    _common_args(m)
    m.set_defaults(func=run_audiomcq)


def _no_answers_hint(report: ConversionReport) -> str | None:
    if report.errors and all(e["kind"] == "answer-missing" for e in report.errors):
        return "no item has an answer; an evaluation file is converted with --split eval"
    return None


def run_dcase2026(args: argparse.Namespace) -> int:
    """`aqa data dcase2026`: 0 when records were written, 1 when none, 2 for a missing file."""
    return run_converter(lambda: convert_dcase2026(
        args.jsonl, audio_root=args.audio_root, split=args.split, drop_flagged=args.drop_flagged,
        allow_outside_root=args.allow_outside_root, show_progress=not args.no_progress),
        args.output, hint=_no_answers_hint)


def run_audiomcq(args: argparse.Namespace) -> int:
    """`aqa data audiomcq`: 0 when records were written, 1 when none, 2 for a missing file."""
    return run_converter(lambda: convert_audiomcq(
        args.jsonl, audio_root=args.audio_root, drop_flagged=args.drop_flagged,
        allow_outside_root=args.allow_outside_root, show_progress=not args.no_progress),
        args.output, hint=_no_answers_hint)
