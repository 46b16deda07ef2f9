"""Submission exports round-trip: DCASE 2025 CSV and MMAU's JSON with model_prediction."""

import csv
import json

import numpy as np
import pytest

from aqa.cli import main
from aqa.data.records import load_records
from aqa.eval.metrics import compute_metrics
from aqa.io import UserError
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
    assert [r["question"] for r in rows] == [r["id"] for r in recs]
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
    out, empty, *_ = export_mmau(d, MMAU_JSON, tmp_path / "mmau-predictions.json", allow_outside_root=True)
    items = json.loads(out.read_text())
    assert empty == 0 and len(items) == 1000 and all("model_prediction" in it for it in items)
    # A scorer that compares the prediction with the benchmark's own answer string.
    scorer = np.mean([it["model_prediction"].strip() == it["answer"].strip() for it in items])
    assert scorer == pytest.approx(compute_metrics(preds, n_boot=0)["weighted_mean"]["value"], abs=1e-6)
    original = {it["id"]: it for it in json.loads(MMAU_JSON.read_text())}
    assert all(it["model_prediction"] in original[it["id"]]["choices"] for it in items)


# --------------------------------------------------------------------------- issue 16 and 15

def test_header_is_question_answer_by_default_and_a_flag(tmp_path):
    d, recs, preds = dcase_like(tmp_path)
    out = tmp_path / "s.csv"
    assert main(["export", "dcase2025", str(d), "-o", str(out)]) == 0
    assert out.read_text().splitlines()[0] == "question,answer"
    assert main(["export", "dcase2025", str(d), "-o", str(out), "--header", "question_id,answer"]) == 0
    assert out.read_text().splitlines()[0] == "question_id,answer"
    # The exact option text, letter prefix and stray comma included.
    rows = list(csv.reader(out.open()))
    assert [r[1] for r in rows[1:]] == [r["meta"]["original_choices"][p["pred"]] for r, p in zip(recs, preds)]


@pytest.mark.parametrize("bad_line, problem", [
    ('{"id": "dev_9", "audio": ', "not valid JSON"),
    ('{"id": "dev_9", "audio": "../../../x.wav", "question": "Q?", "choices": ["a", "b"], "answer": null, '
     '"subset": "tsqa", "split": "eval"}', "outside the dataset root"),
    (b'{"id": "dev_9", "question": "caf\xe9"}', "not valid UTF-8"),
])
def test_export_refuses_a_question_file_with_a_bad_line(tmp_path, capsys, bad_line, problem):
    d, recs, preds = dcase_like(tmp_path, n=8)
    data = tmp_path / "eval.jsonl"
    lines = data.read_bytes().splitlines(keepends=True)
    lines.insert(3, (bad_line if isinstance(bad_line, bytes) else bad_line.encode()) + b"\n")
    data.write_bytes(b"".join(lines))
    out = tmp_path / "s.csv"
    rc = main(["export", "dcase2025", str(d), "-o", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and not out.exists()
    assert err.startswith(f"aqa: error: {data}:4:") and problem in err and "\n" not in err


def test_export_from_a_folder_that_is_no_eval_output(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["export", "dcase2025", str(empty), "-o", str(tmp_path / "s.csv")]) == 2
    assert capsys.readouterr().err.strip() == (f"aqa: error: {empty}: not an `aqa eval` output folder "
                                               f"(no eval_config.json)")
    d, _, _ = dcase_like(tmp_path)
    (d / "predictions.jsonl").unlink()
    assert main(["export", "dcase2025", str(d), "-o", str(tmp_path / "s.csv")]) == 2
    assert "(no predictions.jsonl)" in capsys.readouterr().err


def test_repeated_option_exports_the_answers_spelling(tmp_path):
    from aqa.data.sources.dcase2025 import convert_question
    from conftest import write_audio

    write_audio(tmp_path / "a.wav")
    q = {"id": "dev_1", "question": "What?", "choice": ["A. dog", "B. cat", "C. dog", "D. cow"], "answer": "C. dog",
         "audio_url": "a.wav"}
    rec = convert_question(q, json_path=tmp_path / "q.json", dataset_root=tmp_path, split="dev")
    assert rec.choices == ["dog", "cat", "cow"] and rec.answer == 0
    from aqa.data.records import write_records

    write_records(tmp_path / "dev.jsonl", [rec], relative_to=tmp_path)
    d = tmp_path / "pred"
    write_jsonl(d / "predictions.jsonl", [{"id": "dev_1", "choices": rec.choices, "pred": 0, "answer": 0}])
    write_json(d / "eval_config.json", {"data": str(tmp_path / "dev.jsonl")})
    out = export_dcase2025(d, tmp_path / "s.csv")
    assert out.read_text().splitlines()[1] == "dev_1,C. dog"


@pytest.mark.parametrize("answer, prediction, choices, credited", [
    ("Dog barking", "dog barking", ["Dog barking", "Cat"], True),
    ("Dog barking", "barking, dog", ["Dog barking", "Cat"], True),     # the same words, another order
    ("Dog barking", "Dog barking and a cat", ["Dog barking", "Cat"], False),  # a wrong option's word
    ("one", "three", ["one", "three", "three"], False),
    ("Dog", "", ["Dog", "Cat"], False),
    ("a man", "man", ["a man", "a woman"], False),  # every answer word is needed
    ("red car", "car red", ["red car", "car, red", "blue"], True),  # an option with the answer's words
])
def test_mmau_match_follows_mmau_evaluation_py(answer, prediction, choices, credited):
    from aqa.export import mmau_match

    assert mmau_match(answer, prediction, choices) is credited


@pytest.mark.skipif(not MMAU_JSON.is_file(), reason="the MMAU file is not present")
def test_mmau_export_has_the_key_the_scorer_reads_and_both_accuracies(tmp_path, capsys):
    data = tmp_path / "mmau.jsonl"
    assert main(["data", "mmau", str(MMAU_JSON), "-o", str(data)]) == 0
    recs = load_records(data, allow_outside_root=True)
    preds = [{"id": r.id, "subset": r.subset, "choices": r.choices, "answer": r.answer,
              "pred": r.answer if i % 3 else (r.answer + 1) % len(r.choices), "probs": None} for i, r in enumerate(recs)]
    d = tmp_path / "pred"
    write_jsonl(d / "predictions.jsonl", preds)
    write_json(d / "eval_config.json", {"data": str(data)})
    out = tmp_path / "m.json"
    assert main(["export", "mmau", str(d), "--questions", str(MMAU_JSON), "-o", str(out), "--allow-outside-root"]) == 0
    items = json.loads(out.read_text())
    # MMAU's evaluation.py reads model_output and skips items without it; the README names model_prediction.
    assert all(it["model_output"] == it["model_prediction"] != "" for it in items)
    printed = capsys.readouterr().out
    aqa_acc = np.mean([p["pred"] == p["answer"] for p in preds])
    assert f"aqa {100 * aqa_acc:.2f}%" in printed and "MMAU's evaluation.py" in printed
    from aqa.export import mmau_match

    mmau_acc = np.mean([mmau_match(it["answer"], it["model_output"], it["choices"]) for it in items])
    assert f"evaluation.py {100 * mmau_acc:.2f}%" in printed


def test_dcase2025_first_column_is_the_id_or_the_question_files_name(tmp_path, caplog):
    from aqa.data.sources.dcase2025 import convert_question
    from aqa.data.records import write_records
    from conftest import write_audio

    write_audio(tmp_path / "a.wav")
    recs = [convert_question({"id": qid, "question": "What?", "choice": ["A. dog", "B. cat"], "answer": "B. cat",
                              "audio_url": "a.wav"}, json_path=tmp_path / f"{stem}.json", dataset_root=tmp_path,
                             split="dev") for qid, stem in (("q1", "q1"), ("q2", "bqa_0002"))]
    write_records(tmp_path / "dev.jsonl", recs, relative_to=tmp_path)
    d = tmp_path / "pred"
    write_jsonl(d / "predictions.jsonl", [{"id": r.id, "choices": r.choices, "pred": 1, "answer": 1} for r in recs])
    write_json(d / "eval_config.json", {"data": str(tmp_path / "dev.jsonl")})
    out = tmp_path / "s.csv"
    assert main(["export", "dcase2025", str(d), "-o", str(out)]) == 0
    assert out.read_text().splitlines() == ["question,answer", "q1,B. cat", "q2,B. cat"]
    assert "1 question id(s) differ from their file's name" in caplog.text
    assert main(["export", "dcase2025", str(d), "-o", str(out), "--question-column", "file"]) == 0
    assert out.read_text().splitlines() == ["question,answer", "q1,B. cat", "bqa_0002,B. cat"]
    # Two questions from one file cannot be told apart by the file's name.
    recs[1].meta["file"] = recs[0].meta["file"]
    write_records(tmp_path / "dev.jsonl", recs, relative_to=tmp_path)
    with pytest.raises(UserError, match="same file q1.json"):
        export_dcase2025(d, out, question_column="file")
