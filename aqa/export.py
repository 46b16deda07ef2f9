"""Exports for challenge organisers and other scorers (`aqa export ...`).

- `dcase2025`, `dcase2026` (the same shape): a CSV with one row per question of the evaluated
  file: the question id and the chosen option exactly as the question file writes it (the
  record's `meta.original_choices`, letter prefix and all). The header is ``question,answer``
  by default (`--header` changes it): the organisers' example file could not be read, and a
  participant's published 2025 system writes that header with the option string of the
  question file's ``choice`` list as the answer (github.com/HuffmanJoey/dcase25_t5_EchoTwin-QA,
  evaluate.py, ``csv.DictWriter(..., fieldnames=["question", "answer"])``). No 2026 example
  was found; 2026 gets the same header. The first column is the question's id by default; that
  participant's code writes the question file's name without ``.json`` instead (``jp.stem``), and
  `--question-column file` does the same. The two agree when every file is named after its
  question's id; where they differ the export says how many differ, since the organisers' own
  key could not be checked. An incomplete set (a question without a prediction,
  or whose prediction could not be parsed) is refused, and so is a question file with a line
  that is not a usable record: a submission must answer every question.
- `mmau`: the benchmark's own JSON with the chosen option's original text on every item under
  two keys: ``model_output``, the key MMAU's evaluation.py reads (it skips items without it),
  and ``model_prediction``, the key its README names. Source: github.com/Sakshi113/MMAU at
  110127f, evaluation.py (``output_key = 'model_output'``) and README.md ("an additional key
  named 'model_prediction'"). The export also reports the accuracy under MMAU's own matching
  rule (`mmau_match`) beside aqa's, so that a number can be compared with the leaderboard.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import re
from pathlib import Path
from typing import NamedTuple

from aqa.io import UserError, atomic_write_text, write_json

log = logging.getLogger(__name__)

#: The DCASE submission header (see the module docstring for its source).
DEFAULT_HEADER = ("question", "answer")
#: What the first column of a DCASE submission can hold (see the module docstring).
QUESTION_COLUMNS = ("id", "file")


class IncompleteSubmission(UserError):
    pass


def _eval_dir_file(pred_dir: Path, name: str) -> Path:
    """A file an `aqa eval` folder holds; a UserError naming the folder when it is not there."""
    if not pred_dir.is_dir():
        raise UserError(f"{pred_dir}: no such folder (expected the output folder of `aqa eval`)")
    path = pred_dir / name
    if not path.is_file():
        raise UserError(f"{pred_dir}: not an `aqa eval` output folder (no {name})")
    return path


def _records_for(pred_dir: Path, questions: str | None, allow_outside_root: bool):
    """The evaluated questions, read strictly: a broken line or a refused record in the
    question file would otherwise vanish before the completeness check."""
    from aqa.data.records import load_all_records

    if questions:
        data = questions
    else:
        config = _eval_dir_file(pred_dir, "eval_config.json")
        try:
            data = json.loads(config.read_text(encoding="utf-8"))["data"]
        except (ValueError, KeyError, TypeError) as e:
            raise UserError(f"{config}: cannot read the evaluated data file from it ({e})") from None
    return load_all_records(data, allow_outside_root=allow_outside_root, require_answer=False), data


def _predictions(pred_dir: Path) -> dict:
    from aqa.eval.metrics import load_predictions

    if not pred_dir.is_file():
        _eval_dir_file(pred_dir, "predictions.jsonl")
    return {r["id"]: r for r in load_predictions(pred_dir)}


def original_choice(record, index: int) -> str:
    """The option at `index` of the record's choices, as the source file wrote it. Where the
    converter merged repeated options ("A. dog" and "C. dog") and the source's answer is one
    of them, that one: a scorer comparing strings with the answer must see the answer's."""
    original = record.meta.get("original_choices")
    if not original:
        return record.choices[index]
    index_of = record.meta.get("choice_index_of")
    if not index_of:
        return original[index]
    merged = [original[i] for i, j in enumerate(index_of) if j == index]
    answer = record.meta.get("original_answer")
    if len(merged) > 1 and isinstance(answer, str):
        for same in (lambda c: c == answer, lambda c: c.strip() == answer.strip()):
            hit = next((c for c in merged if same(c)), None)
            if hit is not None:
                return hit
    return merged[0]


def question_keys(records, data, column: str = "id") -> tuple[list[str], int]:
    """The submission's first column for each record ("id": the source's question id; "file":
    the question file's name without its suffix, for records converted from one file per
    question), and how many records' two keys differ."""
    if column not in QUESTION_COLUMNS:
        raise ValueError(f"question column must be one of {QUESTION_COLUMNS}, got {column!r}")
    ids = [str(r.meta.get("original_id", r.id)) for r in records]
    stems = [Path(r.meta["file"]).stem if r.meta.get("file") else None for r in records]
    differ = sum(s is not None and s != i for s, i in zip(stems, ids))
    if column == "id":
        return ids, differ
    lacking = [r.id for r, s in zip(records, stems) if s is None]
    if lacking:
        raise UserError(f"{data}: --question-column file needs records converted from one JSON file per question "
                        f"(`aqa data dcase2025`); {len(lacking)} have no source file (e.g. {', '.join(lacking[:3])})")
    seen: dict[str, str] = {}
    for r, s in zip(records, stems):
        if s in seen:
            raise UserError(f"{data}: {seen[s]} and {r.id} come from the same file {s}.json, so the file name cannot "
                            f"key the submission; use --question-column id")
        seen[s] = r.id
    return stems, differ


def export_dcase2025(pred_dir: str | Path, out: str | Path, *, questions: str | None = None,
                     allow_outside_root: bool = False, header: tuple[str, str] = DEFAULT_HEADER,
                     question_column: str = "id") -> Path:
    pred_dir = Path(pred_dir)
    records, data = _records_for(pred_dir, questions, allow_outside_root)
    keys, differ = question_keys(records, data, question_column)
    if differ:
        log.warning("%s: %d question id(s) differ from their file's name; the first column holds the %s "
                    "(--question-column %s for the other)", data, differ,
                    "id" if question_column == "id" else "file name", "file" if question_column == "id" else "id")
    preds = _predictions(pred_dir)
    missing = [r.id for r in records if r.id not in preds]
    unanswered = [r.id for r in records if r.id in preds and preds[r.id].get("pred") is None]
    if missing or unanswered:
        raise IncompleteSubmission(
            f"{pred_dir}: {len(missing)} question(s) of {data} have no prediction and {len(unanswered)} an "
            f"unparsed one (e.g. {', '.join((missing + unanswered)[:5])}); a submission must answer all "
            f"{len(records)}")
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(list(header))
    for r, key in zip(records, keys):
        pred = preds[r.id]
        if pred["choices"] != r.choices:
            raise UserError(f"{pred_dir}: the options of {r.id} differ from {data}'s; was it evaluated on this file?")
        w.writerow([key, original_choice(r, int(pred["pred"]))])
    return atomic_write_text(out, buf.getvalue())


# ---------------------------------------------------------------------------------------------
# MMAU


_WORD = re.compile(r"\b\w+\b")


def _words(text: str) -> set[str]:
    return set(_WORD.findall(text.lower()))


def mmau_match(answer: str, prediction: str, choices: list[str]) -> bool:
    """Whether MMAU's evaluation.py counts `prediction` right (github.com/Sakshi113/MMAU at
    110127f, `string_match`): its word set (lower-cased ``\\b\\w+\\b`` tokens) is not empty,
    holds every word of the answer, and holds no word of a wrong option, where a wrong option
    is one whose word set differs from the answer's and its words shared with the answer
    do not count. So an option whose words equal the answer's ("dog, barking" for "Dog
    barking") is credited as the answer, which aqa's exact option index does not do."""
    said, right = _words(prediction), _words(answer)
    if not said:
        return False
    wrong: set[str] = set()
    for c in choices:
        words = _words(c)
        if words != right:
            wrong |= words - right
    return right <= said and not (said & wrong)


class MMAUExport(NamedTuple):
    path: Path
    empty: int  # items written without a prediction (scored wrong)
    scored: int  # items with an answer to score against
    aqa_correct: int  # the chosen option is the answer's option (aqa's accuracy)
    mmau_correct: int  # MMAU's evaluation.py would count it right (`mmau_match`)


def _read_mmau_items(path: str | Path) -> list:
    try:
        with open(path, encoding="utf-8") as fh:
            items = json.load(fh)
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not a valid JSON file ({e})") from None
    if not isinstance(items, list) or not all(isinstance(it, dict) and "id" in it for it in items):
        raise UserError(f"{path}: expected MMAU's JSON list of items, each with an 'id'")
    return items


def export_mmau(pred_dir: str | Path, questions_json: str | Path, out: str | Path, *,
                data: str | None = None, allow_outside_root: bool = False) -> MMAUExport:
    """Write MMAU's JSON with the predictions; returns the file, how many items got no
    prediction (written as an empty string) and both accuracies' counts."""
    pred_dir = Path(pred_dir)
    records, _ = _records_for(pred_dir, data, allow_outside_root)
    by_id = {r.meta.get("original_id", r.id): r for r in records}
    preds = _predictions(pred_dir)
    items = _read_mmau_items(questions_json)
    empty = scored = aqa_correct = mmau_correct = 0
    for item in items:
        rec = by_id.get(item["id"])
        pred = preds.get(rec.id) if rec else None
        if pred is None or pred.get("pred") is None:
            text = ""
            empty += 1
        else:
            text = original_choice(rec, int(pred["pred"]))
        item["model_output"] = item["model_prediction"] = text
        if isinstance(item.get("answer"), str) and isinstance(item.get("choices"), list):
            scored += 1
            aqa_correct += bool(text) and rec is not None and int(pred["pred"]) == rec.answer
            mmau_correct += mmau_match(item["answer"], text, [str(c) for c in item["choices"]])
    if empty:
        log.warning("%d of %d MMAU items have no prediction; written as empty strings (scored wrong)", empty, len(items))
    return MMAUExport(write_json(out, items), empty, scored, aqa_correct, mmau_correct)


# ---------------------------------------------------------------------------------------------
# Command line


def _header(text: str) -> tuple[str, str]:
    cols = tuple(c.strip() for c in text.split(","))
    if len(cols) != 2 or not all(cols):
        raise argparse.ArgumentTypeError(f"expected two column names such as question,answer; got {text!r}")
    return cols  # type: ignore[return-value]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="write submission files for challenges and other scorers")
    esub = p.add_subparsers(dest="export_command", required=True)
    for edition in ("2025", "2026"):  # the two editions' submissions have the same shape
        d = esub.add_parser(f"dcase{edition}", help=f"DCASE {edition} Task 5 submission CSV (question id, chosen option)")
        d.add_argument("pred_dir")
        d.add_argument("-o", "--output", required=True)
        d.add_argument("--questions", help="the AQA JSONL evaluated (default: the one in PRED_DIR/eval_config.json)")
        d.add_argument("--header", type=_header, default=DEFAULT_HEADER,
                       help="the CSV's two column names (default question,answer, as a participant's "
                            "published 2025 submission writes; the organisers' example could not be read)")
        d.add_argument("--question-column", choices=QUESTION_COLUMNS, default="id",
                       help="first column: the question's id (default) or its question file's name without "
                            ".json, as a participant's published 2025 code writes; the same when files are "
                            "named by id")
        d.add_argument("--allow-outside-root", action="store_true")
        d.set_defaults(func=_run_dcase)
    m = esub.add_parser("mmau", help="MMAU JSON with model_output (and model_prediction), for MMAU's evaluation.py")
    m.add_argument("pred_dir")
    m.add_argument("--questions", required=True, help="the original mmau-test-mini.json (or test) file")
    m.add_argument("--data", help="the AQA JSONL evaluated (default: the one in PRED_DIR/eval_config.json)")
    m.add_argument("-o", "--output", required=True)
    m.add_argument("--allow-outside-root", action="store_true")
    m.set_defaults(func=_run_mmau)


def _run_dcase(args) -> int:
    try:
        out = export_dcase2025(args.pred_dir, args.output, questions=args.questions,
                               allow_outside_root=args.allow_outside_root, header=args.header,
                               question_column=args.question_column)
    except IncompleteSubmission as e:
        print(f"refused: {e}")
        return 1
    print(f"wrote {out}")
    return 0


def _run_mmau(args) -> int:
    r = export_mmau(args.pred_dir, args.questions, args.output, data=args.data,
                    allow_outside_root=args.allow_outside_root)
    print(f"wrote {r.path}" + (f" ({r.empty} item(s) without a prediction)" if r.empty else ""))
    if r.scored:
        print(f"accuracy over {r.scored} items: aqa {100 * r.aqa_correct / r.scored:.2f}% (the option chosen), "
              f"MMAU's evaluation.py {100 * r.mmau_correct / r.scored:.2f}% (its word-set match)")
    return 0
