"""Submission exports round-trip: DCASE 2025 CSV and MMAU's JSON with model_prediction."""

import csv
import json

import numpy as np
import pytest

from aqa.cli import main
from aqa.data.records import load_records
from aqa.eval.metrics import compute_metrics
from aqa.export import IncompleteSubmission, export_dcase2025, export_mmau
from aqa.io import write_json, write_jsonl
from conftest import MMAU_JSON


def dcase_like(tmp_path, n=6):
    recs = []
    for i in range(n):
        orig = ["A. dog barking", "B. car horn,", "C. rain"][: 2 + i % 2]
        recs.append({"id": f"dev_{i}", "audio": "a.wav", "question": "What?", "choices": [o[3:].rstrip(",") for o in orig],
                     "answer": None, "subset": "tsqa", "split": "eval",
                     "meta": {"original_choices": orig, "original_id": f"dev_{i}"}})
    (tmp_path / "a.wav").write_bytes(b"x")
    write_jsonl(tmp_path / "eval.jsonl", recs)
    preds = [{"id": r["id"], "subset": "tsqa", "choices": r["choices"], "answer": None, "probs": None,
              "pred": (i * 7) % len(r["choices"]), "correct": None} for i, r in enumerate(recs)]
    d = tmp_path / "pred"
    write_jsonl(d / "predictions.jsonl", preds)
    write_json(d / "eval_config.json", {"data": str(tmp_path / "eval.jsonl")})
    return d, recs, preds


def test_dcase2025_csv_round_trips(tmp_path):
    d, recs, preds = dcase_like(tmp_path)
    out = export_dcase2025(d, tmp_path / "submission.csv")
    rows = list(csv.DictReader(out.open()))
    assert [r["question_id"] for r in rows] == [r["id"] for r in recs]
    for row, rec, pred in zip(rows, recs, preds):
        # The option as the question file wrote it, letter and stray comma included.
        assert row["answer"] == rec["meta"]["original_choices"][pred["pred"]]
        assert rec["meta"]["original_choices"].index(row["answer"]) == pred["pred"]


def test_dcase2025_refuses_an_incomplete_set(tmp_path):
    d, recs, preds = dcase_like(tmp_path)
    write_jsonl(d / "predictions.jsonl", preds[:-1])
    with pytest.raises(IncompleteSubmission, match="dev_5"):
        export_dcase2025(d, tmp_path / "s.csv")
    assert main(["export", "dcase2025", str(d), "-o", str(tmp_path / "s.csv")]) == 1
    assert not (tmp_path / "s.csv").exists()
    preds[-1]["pred"] = None
    write_jsonl(d / "predictions.jsonl", preds)
    with pytest.raises(IncompleteSubmission, match="unparsed"):
        export_dcase2025(d, tmp_path / "s.csv")


@pytest.mark.skipif(not MMAU_JSON.is_file(), reason="the MMAU file is not present")
def test_mmau_export_scores_like_aqa(tmp_path):
    data = tmp_path / "mmau.jsonl"
    assert main(["data", "mmau", str(MMAU_JSON), "-o", str(data)]) == 0
    recs = load_records(data, allow_outside_root=True)
    rng = np.random.default_rng(0)
    preds = []
    for r in recs:
        pred = r.answer if rng.random() < 0.6 else int(rng.integers(len(r.choices)))
        preds.append({"id": r.id, "subset": r.subset, "choices": r.choices, "answer": r.answer, "pred": pred,
                      "probs": None, "correct": pred == r.answer})
    d = tmp_path / "pred"
    write_jsonl(d / "predictions.jsonl", preds)
    write_json(d / "eval_config.json", {"data": str(data)})
    out, empty = export_mmau(d, MMAU_JSON, tmp_path / "mmau-predictions.json", allow_outside_root=True)
    items = json.loads(out.read_text())
    assert empty == 0 and len(items) == 1000 and all("model_prediction" in it for it in items)
    # A scorer that compares the prediction with the benchmark's own answer string.
    scorer = np.mean([it["model_prediction"].strip() == it["answer"].strip() for it in items])
    assert scorer == pytest.approx(compute_metrics(preds, n_boot=0)["weighted_mean"]["value"], abs=1e-6)
    original = {it["id"]: it for it in json.loads(MMAU_JSON.read_text())}
    assert all(it["model_prediction"] in original[it["id"]]["choices"] for it in items)
