"""Exports for challenge organisers and other scorers (`aqa export ...`).

- `dcase2025`, `dcase2026` (the same shape): a CSV with one row per question of the evaluated file: the question id and the
  chosen option exactly as the question file writes it (the record's `meta.original_choices`,
  letter prefix and all). An incomplete set (a question without a prediction, or whose
  prediction could not be parsed) is refused: a submission must answer every question.
- `mmau`: the benchmark's own JSON with a `model_prediction` key on every item, holding the
  chosen option's original text, which is what MMAU's evaluation.py reads (its README: "the
  original MMAU benchmark file with an additional key named 'model_prediction'").
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
from pathlib import Path

from aqa.io import atomic_write_text, read_json, write_json

log = logging.getLogger(__name__)


class IncompleteSubmission(ValueError):
    pass


def _records_for(pred_dir: Path, questions: str | None, allow_outside_root: bool):
    from aqa.data.records import load_records

    data = questions or json.loads((pred_dir / "eval_config.json").read_text())["data"]
    return load_records(data, allow_outside_root=allow_outside_root, require_answer=False), data


def original_choice(record, index: int) -> str:
    """The option at `index` of the record's choices, as the source file wrote it."""
    original = record.meta.get("original_choices")
    if not original:
        return record.choices[index]
    index_of = record.meta.get("choice_index_of")
    if index_of:  # converters merge repeated options; take the first original that maps here
        return next(original[i] for i, j in enumerate(index_of) if j == index)
    return original[index]


def export_dcase2025(pred_dir: str | Path, out: str | Path, *, questions: str | None = None,
                     allow_outside_root: bool = False) -> Path:
    from aqa.eval.metrics import load_predictions

    pred_dir = Path(pred_dir)
    records, data = _records_for(pred_dir, questions, allow_outside_root)
    preds = {r["id"]: r for r in load_predictions(pred_dir)}
    missing = [r.id for r in records if r.id not in preds]
    unanswered = [r.id for r in records if r.id in preds and preds[r.id].get("pred") is None]
    if missing or unanswered:
        raise IncompleteSubmission(
            f"{pred_dir}: {len(missing)} question(s) of {data} have no prediction and {len(unanswered)} an "
            f"unparsed one (e.g. {', '.join((missing + unanswered)[:5])}); a submission must answer all "
            f"{len(records)}")
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["question_id", "answer"])
    for r in records:
        pred = preds[r.id]
        if pred["choices"] != r.choices:
            raise ValueError(f"{pred_dir}: the options of {r.id} differ from {data}'s; was it evaluated on this file?")
        w.writerow([r.meta.get("original_id", r.id), original_choice(r, int(pred["pred"]))])
    return atomic_write_text(out, buf.getvalue())


def export_mmau(pred_dir: str | Path, questions_json: str | Path, out: str | Path, *,
                data: str | None = None, allow_outside_root: bool = False) -> tuple[Path, int]:
    """Returns the file and how many items got no prediction (written as an empty string)."""
    from aqa.eval.metrics import load_predictions

    pred_dir = Path(pred_dir)
    records, _ = _records_for(pred_dir, data, allow_outside_root)
    by_id = {r.meta.get("original_id", r.id): r for r in records}
    preds = {r["id"]: r for r in load_predictions(pred_dir)}
    items = read_json(questions_json)
    empty = 0
    for item in items:
        rec = by_id.get(item["id"])
        pred = preds.get(rec.id) if rec else None
        if pred is None or pred.get("pred") is None:
            item["model_prediction"] = ""
            empty += 1
        else:
            item["model_prediction"] = original_choice(rec, int(pred["pred"]))
    if empty:
        log.warning("%d of %d MMAU items have no prediction; written as empty strings (scored wrong)", empty, len(items))
    return write_json(out, items), empty


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="write submission files for challenges and other scorers")
    esub = p.add_subparsers(dest="export_command", required=True)
    for edition in ("2025", "2026"):  # the two editions' submissions have the same shape
        d = esub.add_parser(f"dcase{edition}", help=f"DCASE {edition} Task 5 submission CSV (question id, chosen option)")
        d.add_argument("pred_dir")
        d.add_argument("-o", "--output", required=True)
        d.add_argument("--questions", help="the AQA JSONL evaluated (default: the one in PRED_DIR/eval_config.json)")
        d.add_argument("--allow-outside-root", action="store_true")
        d.set_defaults(func=_run_dcase)
    m = esub.add_parser("mmau", help="MMAU JSON with model_prediction, for MMAU's evaluation.py")
    m.add_argument("pred_dir")
    m.add_argument("--questions", required=True, help="the original mmau-test-mini.json (or test) file")
    m.add_argument("--data", help="the AQA JSONL evaluated (default: the one in PRED_DIR/eval_config.json)")
    m.add_argument("-o", "--output", required=True)
    m.add_argument("--allow-outside-root", action="store_true")
    m.set_defaults(func=_run_mmau)


def _run_dcase(args) -> int:
    try:
        out = export_dcase2025(args.pred_dir, args.output, questions=args.questions,
                               allow_outside_root=args.allow_outside_root)
    except IncompleteSubmission as e:
        print(f"refused: {e}")
        return 1
    print(f"wrote {out}")
    return 0


def _run_mmau(args) -> int:
    out, empty = export_mmau(args.pred_dir, args.questions, args.output, data=args.data,
                             allow_outside_root=args.allow_outside_root)
    print(f"wrote {out}" + (f" ({empty} item(s) without a prediction)" if empty else ""))
    return 0
