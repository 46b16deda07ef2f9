"""DCASE 2026 Task 5 (Audio-Dependent QA) and AudioMCQ converters, and the 2026 submission CSV,
on small JSONL files written to tmp_path with real audio."""

import argparse
import csv
import json
from pathlib import Path

import pytest

from aqa.data.convert import write_conversion
from aqa.data.sources.dcase2026 import audiomcq_subset, convert_audiomcq, convert_dcase2026, register
from aqa.data.records import read_records
from aqa.export import IncompleteSubmission, export_dcase2025
from aqa.io import write_json, write_jsonl
from conftest import write_audio


def run_cli(argv: list[str]) -> int:
    """Parse `argv` as `aqa data ...` with only this module registered (the lead wires it into
    aqa.cli's DATA_COMMANDS), then run it as aqa.cli.main would."""
    parser = argparse.ArgumentParser(prog="aqa data")
    register(parser.add_subparsers(dest="data_command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def write_lines(path: Path, lines: list) -> Path:
    """One JSON object per line; a str is written as is (to plant a line that is not JSON)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines),
                    encoding="utf-8")
    return path


def item(i, answer, choices=("dog barking", "car horn", "rain"), **kw):
    d = {"id": f"adqa_{i}", "audio_path": f"dev_audios/{i}.wav", "question_text": f"What is heard {i}?",
         "multi_choice": list(choices), "answer": answer}
    d.update(kw)
    return d


@pytest.fixture
def dev(tmp_path):
    root = tmp_path / "ds"
    for i in range(1, 8):
        write_audio(root / "dev_audios" / f"{i}.wav")
    lines = [
        item(3, "rain"),                                           # -> 2
        item(1, "car horn.", question_type="counting"),            # stray period still matches -> 1
        item(2, "thunder"),                                        # names no option: skipped
        '{"id": "adqa_bad", "audio_path": ',                       # line 4: not JSON
        item(5, "dog", choices=("dog", "dog.", "cat")),            # names two source options: skipped
        item(6, "RAIN", choices=("Rain", "rain", "wind")),         # case-only tie: skipped
        {"id": "adqa_8", "audio_path": "dev_audios/7.wav", "multi_choice": ["a", "b"], "answer": "a"},
        item(4, "Dog Barking", audio_path="../outside.wav"),       # leaves the root: skipped
        item(7, "DOG BARKING"),                                    # case-insensitive, unique -> 0
    ]
    write_lines(root / "dev.jsonl", lines)
    (tmp_path / "outside.wav").write_bytes((root / "dev_audios" / "1.wav").read_bytes())
    return root


def test_answer_text_mapped_and_defects_skipped(dev, tmp_path):
    report = convert_dcase2026(dev / "dev.jsonl", show_progress=False)
    by_id = {r.id: r for r in report.records}
    assert sorted(by_id) == ["adqa_1", "adqa_3", "adqa_7"]
    assert by_id["adqa_3"].answer == 2 and by_id["adqa_1"].answer == 1 and by_id["adqa_7"].answer == 0
    r = by_id["adqa_1"]
    assert (r.subset, r.source, r.split, r.question_type) == ("adqa", "dcase2026", "dev", "counting")
    assert r.meta["original_id"] == "adqa_1" and r.meta["original_answer"] == "car horn."
    assert r.meta["original_choices"] == ["dog barking", "car horn", "rain"]
    kinds = {(e["id"], e["kind"]) for e in report.errors}
    assert ("adqa_2", "answer-matches-no-choice") in kinds
    assert ("adqa_5", "answer-matches-several-choices") in kinds
    assert ("adqa_6", "answer-matches-several-choices") in kinds
    assert ("adqa_4", "audio-outside-root") in kinds
    missing = [e for e in report.errors if e["kind"] == "missing-field"]
    assert len(missing) == 1 and missing[0]["id"] == "adqa_8" and missing[0]["line"] == 7 and "question_text" in missing[0]["problem"]
    bad = [e for e in report.errors if e["kind"] == "bad-json"]
    assert len(bad) == 1 and bad[0]["line"] == 4 and bad[0]["file"].endswith("dev.jsonl:4")


def test_cli_writes_sorted_valid_records_and_report(dev, tmp_path, capsys):
    out = tmp_path / "out" / "adqa_dev.jsonl"
    assert run_cli(["dcase2026", str(dev / "dev.jsonl"), "-o", str(out), "--no-progress"]) == 0
    text = out.read_text()
    recs, errors = read_records(out, allow_outside_root=True)
    assert not errors and [r.id for r in recs] == ["adqa_1", "adqa_3", "adqa_7"]
    assert all(r.audio_path.is_file() for r in recs)
    report = json.loads((tmp_path / "out" / "adqa_dev.report.json").read_text())
    assert report["records"] == 3 and report["skipped"]["bad-json"] == 1
    assert "dev.jsonl:4" in capsys.readouterr().out
    # Deterministic: a rerun writes the same bytes.
    assert run_cli(["dcase2026", str(dev / "dev.jsonl"), "-o", str(out), "--no-progress"]) == 0
    assert out.read_text() == text


def test_outside_root_allowed_on_request(dev):
    report = convert_dcase2026(dev / "dev.jsonl", allow_outside_root=True, show_progress=False)
    assert "adqa_4" in {r.id for r in report.records}
    assert next(r for r in report.records if r.id == "adqa_4").answer == 0


def test_audio_root_option_and_missing_audio_flagged(tmp_path):
    root = tmp_path / "data"
    write_audio(root / "dev_audios" / "1.wav")
    qfile = write_lines(tmp_path / "q" / "dev.jsonl", [item(1, "rain"), item(2, "rain")])
    report = convert_dcase2026(qfile, audio_root=root, show_progress=False)
    assert [r.id for r in report.records] == ["adqa_1", "adqa_2"]
    assert report.records[1].meta["defects"] == ["audio-missing"] and report.missing_audio == ["adqa_2"]
    dropped = convert_dcase2026(qfile, audio_root=root, drop_flagged=True, show_progress=False)
    assert [r.id for r in dropped.records] == ["adqa_1"] and dropped.dropped == ["adqa_2"]


def test_eval_file_without_answers(tmp_path, capsys):
    write_audio(tmp_path / "eval_audios" / "a.wav")
    lines = [{"id": 12, "audio_path": "eval_audios/a.wav", "question_text": "Q?", "multi_choice": ["x", "y"]},
             {"id": "e_1", "audio_path": "eval_audios/a.wav", "question_text": "Q?",
              "multi_choice": ["x", "y", "z"], "answer": None}]
    qfile = write_lines(tmp_path / "eval.jsonl", lines)
    report = convert_dcase2026(qfile, split="eval", show_progress=False)
    assert not report.errors
    assert [(r.id, r.answer, r.split) for r in report.records] == [("12", None, "eval"), ("e_1", None, "eval")]
    assert report.records[0].meta["original_id"] == 12
    # Converted as dev, every item lacks an answer: nothing written, a hint printed.
    out = tmp_path / "o.jsonl"
    assert run_cli(["dcase2026", str(qfile), "-o", str(out), "--no-progress"]) == 1
    assert not out.exists() and "--split eval" in capsys.readouterr().out
    assert run_cli(["dcase2026", str(qfile), "--split", "eval", "-o", str(out), "--no-progress"]) == 0
    recs, errors = read_records(out)
    assert not errors and all(r.answer is None for r in recs)


def test_audiomcq_subset_and_rationale(tmp_path):
    for name in ("a", "b", "c", "d", "e"):
        write_audio(tmp_path / "wav" / f"{name}.wav")
    lines = [
        # The DCASE 2026 training file's key; it wins over the older guesses on the same item.
        {"source_dataset": "Clotho AQA", "id": "m1", "question_type": "sound", "audio_path": "wav/a.wav",
         "question": "What?", "choices": ["bird", "dog"], "answer": "dog",
         "gemini_cot": "I hear barking.\nSo it is a dog.", "cot": "older field"},
        {"source_dataset": "AudioCaps", "id": "m2", "question_type": "count", "audio_path": "wav/b.wav",
         "question": "How many?", "choices": ["1", "2"], "answer": "1", "reasoning": ["one", "onset"]},
        {"source_dataset": "AudioCaps", "id": "m3", "question_type": "count", "audio_path": "wav/c.wav",
         "question": "How many?", "choices": ["1", "2"], "answer": "3"},
        # A blank gemini_cot is no rationale; the next key is read.
        {"source_dataset": "AudioCaps", "id": "m4", "question_type": "count", "audio_path": "wav/d.wav",
         "question": "How many?", "choices": ["1", "2"], "answer": "2", "gemini_cot": "  ",
         "chain_of_thought": "Two knocks."},
        {"source_dataset": "AudioCaps", "id": "m5", "question_type": "count", "audio_path": "wav/e.wav",
         "question": "How many?", "choices": ["1", "2"], "answer": "2"},
    ]
    qfile = write_lines(tmp_path / "audiomcq.jsonl", lines)
    report = convert_audiomcq(qfile, show_progress=False)
    by_id = {r.id: r for r in report.records}
    assert sorted(by_id) == ["m1", "m2", "m4", "m5"]
    assert by_id["m1"].subset == "audiomcq-clotho-aqa" and by_id["m2"].subset == "audiomcq-audiocaps"
    assert by_id["m1"].rationale == "I hear barking.\nSo it is a dog." and "cot" not in by_id["m1"].meta
    assert by_id["m4"].rationale == "Two knocks." and by_id["m5"].rationale is None
    # A structured CoT is no text to train on: kept in meta, noted, no rationale.
    assert by_id["m2"].rationale is None and by_id["m2"].meta["cot"] == ["one", "onset"]
    assert "cot-not-text" in by_id["m2"].meta["notes"] and report.note_counts()["cot-not-text"] == 1
    assert (by_id["m1"].answer, by_id["m1"].question_type, by_id["m1"].split) == (1, "sound", "train")
    assert [(e["id"], e["kind"]) for e in report.errors] == [("m3", "answer-matches-no-choice")]
    assert audiomcq_subset("  Mixed  Case  Set ") == "audiomcq-mixed-case-set"
    out = tmp_path / "mcq.jsonl"
    assert run_cli(["audiomcq", str(qfile), "-o", str(out), "--no-progress"]) == 0
    rows = {json.loads(x)["id"]: json.loads(x) for x in out.read_text().splitlines()}
    assert rows["m1"]["rationale"] == "I hear barking.\nSo it is a dog." and "rationale" not in rows["m5"]
    recs, errors = read_records(out)
    assert not errors and {r.id: r.rationale for r in recs} == {r.id: r.rationale for r in report.records}


def eval_predictions(tmp_path):
    """An eval file converted, and a predictions dir answering every question."""
    write_audio(tmp_path / "eval_audios" / "a.wav")
    lines = [{"id": f"q{i}", "audio_path": "eval_audios/a.wav", "question_text": "Q?",
              "multi_choice": ["Dog barking.", "dog barking", "car horn ", "rain"][: 3 + i % 2]}
             for i in range(4)]
    data = tmp_path / "adqa_eval.jsonl"
    report = convert_dcase2026(write_lines(tmp_path / "eval.jsonl", lines), split="eval", show_progress=False)
    write_conversion(report, data)
    recs, _ = read_records(data, require_answer=False)
    preds = [{"id": r.id, "subset": r.subset, "choices": r.choices, "answer": None, "probs": None,
              "pred": i % len(r.choices), "correct": None} for i, r in enumerate(recs)]
    d = tmp_path / "pred"
    write_jsonl(d / "predictions.jsonl", preds)
    write_json(d / "eval_config.json", {"data": str(data)})
    return d, recs, preds


def test_export_round_trip(tmp_path):
    d, recs, preds = eval_predictions(tmp_path)
    # The 2026 CSV has the 2025 shape: `aqa export dcase2026` runs export_dcase2025.
    out = export_dcase2025(d, tmp_path / "submission.csv")
    assert out.read_text().splitlines()[0] == "question,answer"
    rows = list(csv.DictReader(out.open(newline="")))
    assert [r["question"] for r in rows] == ["q0", "q1", "q2", "q3"]
    for row, rec, pred in zip(rows, recs, preds):
        # The text the question file wrote (stray period, trailing space and all).
        assert row["answer"] == rec.meta["original_choices"][pred["pred"]]


def test_export_refuses_an_incomplete_set(tmp_path, capsys):
    from aqa.cli import main

    d, recs, preds = eval_predictions(tmp_path)
    write_jsonl(d / "predictions.jsonl", preds[:-1])
    with pytest.raises(IncompleteSubmission, match="q3"):
        export_dcase2025(d, tmp_path / "s.csv")
    assert main(["export", "dcase2026", str(d), "-o", str(tmp_path / "s.csv")]) == 1
    assert "refused" in capsys.readouterr().out
    assert not (tmp_path / "s.csv").exists()


def test_through_aqa_cli_main(dev, tmp_path):
    import aqa.cli

    out = tmp_path / "via_main.jsonl"
    assert aqa.cli.main(["data", "dcase2026", str(dev / "dev.jsonl"), "-o", str(out), "--no-progress"]) == 0
    assert [json.loads(x)["id"] for x in out.read_text().splitlines()] == ["adqa_1", "adqa_3", "adqa_7"]
