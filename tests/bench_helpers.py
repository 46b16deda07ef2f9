"""An `aqa eval` output folder written by hand, for the benchmark export tests."""

from __future__ import annotations

from pathlib import Path

from aqa.data.records import load_records
from aqa.io import write_json, write_jsonl


def eval_dir(tmp_path: Path, data: Path, pick) -> tuple[Path, list]:
    """PRED folder over the records of `data`, each predicting `pick(record)` (None: unparsed)."""
    recs = load_records(data, allow_outside_root=True, require_answer=False)
    preds = []
    for r in recs:
        k = pick(r)
        preds.append({"id": r.id, "subset": r.subset, "choices": r.choices, "answer": r.answer, "pred": k,
                      "probs": None, "correct": None if k is None or r.answer is None else k == r.answer})
    d = tmp_path / "pred"
    write_jsonl(d / "predictions.jsonl", preds)
    write_json(d / "eval_config.json", {"data": str(data)})
    return d, recs
